"""The demo world and the training of the VAE and denoiser."""
