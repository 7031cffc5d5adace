"""Stage 1: train the causal video VAE on pixels, then fix its latent normalisation.

Reads top to bottom: settings, data, model, the loop, held-out PSNR, latent statistics, save.
Under `torchrun` every rank draws its own clips and DistributedDataParallel averages the gradients.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..memory.config import VAEConfig
from ..memory.vae import CausalVideoVAE
from .common import LossLog, cosine_lr, hardware, load_training_state, save_training_state, setup_distributed
from .data import to_pixels


@dataclass
class VAETraining:
    steps: int = 3000
    batch: int = 4               # clips per step (per rank)
    frames: int = 16             # frames per clip the loss is taken on
    # Each step first decodes a past of 0 to this many latents without gradients and trains on what
    # follows it, as the decoder runs in a video: streamed, its cold start (the first latent repeated)
    # soon out of view. 12 latents cover the decoder's causal reach (about 11 with the default config).
    # Trained only from cold starts, it learned nothing for frames past its clips: a cut at frame 16.
    past_latents: int = 12
    lr: float = 1e-3
    warmup: int = 100
    l1_weight: float = 0.5       # L1 next to MSE keeps edges sharp
    kl_weight: float = 1e-6      # just enough to keep the latent space smooth for diffusion
    # The decoder also sees latents off by up to this share of each channel's spread, so that the small
    # errors a denoiser makes decode to a clean frame instead of a patch of wrong colour.
    decoder_noise: float = 0.2
    # ...and each latent's channels shifted as a whole, by noise of up to this share of their spread (the
    # standard deviation, drawn per clip between 0 and this): a denoiser gets
    # each chunk's overall tint slightly wrong (about 0.01-0.09 of a channel's spread from one latent to the
    # next in the demo model's videos, where the world's own latents hold still), and a decoder that passes
    # such a shift on makes a jump where one latent's frames meet the next, which on a still scene the cut
    # detector reads as a cut.
    tint_noise: float = 0.0
    # L1 weight on the change of the reconstruction error where one latent's frames meet the next one's: an
    # error held across the seam (a tint kept) shows far less than one that jumps there. (The same weight
    # on every frame pair made the frames inside a latent stiller and left the seams as they were.)
    seam_weight: float = 0.0
    # Train the decoder alone: the encoder and the latent statistics stay as they are, so a denoiser
    # trained on this VAE's latents keeps working with the new decoder.
    decoder_only: bool = False
    heldout_clips: int = 16
    log_every: int = 25
    save_every: int = 250
    seed: int = 0


class ReconstructionLoss(torch.nn.Module):
    """The VAE objective as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, vae: CausalVideoVAE, settings: VAETraining):
        super().__init__()
        self.vae, self.settings = vae, settings

    def forward(self, clips: torch.Tensor, past_latents: int = 0):
        """`clips`: `frame_delay` frames more than the encoder sees; the decoder owes the earliest ones.
        The first `past_latents` latents are decoded without gradients, only for the cache they leave."""
        delay = self.vae.cfg.frame_delay
        pixels, wanted = clips[:, :, delay:], clips[:, :, :clips.shape[2] - delay]
        mean, logvar = self.vae.moments(pixels)
        latents = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        spread = mean.detach().std(dim=(0, 2, 3, 4), keepdim=True)
        level = self.settings.decoder_noise * torch.rand(mean.shape[0], 1, 1, 1, 1, device=mean.device)
        latents = latents + level * spread * torch.randn_like(mean)
        if self.settings.tint_noise:
            batch, channels, times = mean.shape[:3]
            tint = self.settings.tint_noise * torch.rand(batch, 1, 1, 1, 1, device=mean.device)
            latents = latents + tint * spread * torch.randn(batch, channels, times, 1, 1, device=mean.device)
        cache = None
        if past_latents:
            with torch.no_grad():
                _, cache = self.vae.decode(latents[:, :, :past_latents])
            latents = latents[:, :, past_latents:]
            wanted = wanted[:, :, past_latents * self.vae.cfg.time_factor:]
        recon, _ = self.vae.decode(latents, cache)
        error = recon - wanted
        mse = error.pow(2).mean()
        l1 = error.abs().mean()
        seam = seam_jump(error, self.vae.cfg.time_factor)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        loss = mse + self.settings.l1_weight * l1 + self.settings.seam_weight * seam
        if not self.settings.decoder_only:  # a frozen encoder's posterior is not this loss's to shape
            loss = loss + self.settings.kl_weight * kl
        return loss, {"mse": mse.item(), "l1": l1.item(), "seam": seam.item(), "kl": kl.item()}


def seam_jump(error: torch.Tensor, step: int) -> torch.Tensor:
    """Mean absolute change of a reconstruction error `[B, C, T, H, W]` (frames from latent boundaries on,
    `step` frames per latent) from each latent's last frame to the next one's first: zero for an error that
    holds across the seams, however large."""
    if error.shape[2] <= step:  # one latent's frames: no seam to charge
        return error.new_zeros(())
    return (error[:, :, step::step] - error[:, :, step - 1:-1:step]).abs().mean()


def heldout_measures(vae: CausalVideoVAE, source, clips: int, frames: int = 64) -> dict:
    """Reconstruction of held-out clips (deterministic latent means) against the frames it shows
    (`frame_delay` earlier), in 8-bit units:

    - `psnr_db`: the usual PSNR;
    - `step_ratio`: mean frame-to-frame change where one latent's frames meet the next one's, over the
      change between frames of the same latent, divided by the same ratio of the clips themselves
      (1 = motion as smooth as the source; above 1 = motion in steps of `time_factor` frames).
    """
    errors, change = [], {"decoded": np.zeros(2), "source": np.zeros(2)}
    step, delay = vae.cfg.time_factor, vae.cfg.frame_delay
    meets = np.arange(1, frames) % step == 0  # frame i against frame i - 1, across a latent boundary
    with torch.no_grad():
        for i in range(clips):
            longer, _ = source.clip(10_000_000 + i, frames + delay)
            video = longer[:frames]  # what the decoder owes for the frames the encoder sees
            latents, _ = vae.encode(to_pixels(longer[delay:]).to(vae.latent_mean.device))
            recon, _ = vae.decode(latents)
            restored = ((recon[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 3, 0).cpu().numpy()
            errors.append(np.mean((restored - video.astype(np.float64)) ** 2))
            for key, clip in (("decoded", restored), ("source", video.astype(np.float64))):
                moved = np.abs(np.diff(clip, axis=0)).mean(axis=(1, 2, 3))
                change[key] += [moved[meets].mean(), moved[~meets].mean()]
    ratios = {key: a / max(b, 1e-6) for key, (a, b) in change.items()}
    return {"psnr_db": round(float(10 * math.log10(255.0 ** 2 / max(np.mean(errors), 1e-10))), 2),
            "step_ratio": round(float(ratios["decoded"] / max(ratios["source"], 1e-6)), 2)}


def latent_statistics(vae: CausalVideoVAE, source, clips: int = 64, frames: int = 32):
    """Per-channel mean and std of the latent means, so the diffusion sees unit-scale latents."""
    means = []
    with torch.no_grad():
        for i in range(clips):
            video, _ = source.clip(20_000_000 + i, frames)
            mean, _ = vae.moments(to_pixels(video).to(vae.latent_mean.device))
            means.append(mean.transpose(0, 1).flatten(1))
    values = torch.cat(means, dim=1)
    return values.mean(dim=1), values.std(dim=1)


def train_vae(source, heldout, config: VAEConfig, out: Path, settings: VAETraining,
              initial: dict | None = None) -> dict:
    """`initial`: a trained VAE's weights to fine-tune from, instead of a fresh VAE."""
    if settings.decoder_only and initial is None:
        raise ValueError("training the decoder alone needs a trained VAE to start from: give --init CHECKPOINT")
    rank, world, device = setup_distributed()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    vae = CausalVideoVAE(config)
    if initial is not None:
        vae.load_state_dict(initial)
    kept_statistics = vae.latent_mean.clone(), vae.latent_std.clone()
    # Training works on un-normalised latents; the statistics are set again at the end.
    vae.latent_mean.zero_()
    vae.latent_std.fill_(1.0)
    vae.encoder.requires_grad_(not settings.decoder_only)
    vae = vae.to(device)
    objective = ReconstructionLoss(vae, settings)
    if world > 1:
        objective = torch.nn.parallel.DistributedDataParallel(objective)
    trained = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=settings.lr, betas=(0.9, 0.99), weight_decay=0.0)
    state_path = out / "vae_train_state.safetensors"
    progress = {"step": 0, "seconds": 0.0}
    if state_path.exists():
        progress = load_training_state(state_path, vae, None, optimizer)
        if rank == 0:
            print(f"resuming VAE training at step {progress['step']}")
    log = LossLog(out / "vae_log.jsonl", resume=progress["step"] > 0)
    started = time.monotonic() - progress["seconds"]

    for step in range(progress["step"], settings.steps):
        lr = cosine_lr(step, settings.steps, settings.lr, settings.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        seeds = [(step * world + rank) * settings.batch + b for b in range(settings.batch)]
        torch.manual_seed(settings.seed * 1_000_003 + step * world + rank)  # resumed runs repeat each step
        past = int(torch.randint(settings.past_latents + 1, ()))
        length = past * config.time_factor + settings.frames + config.frame_delay
        clips = np.stack([source.clip(s, length)[0] for s in seeds])

        loss, parts = objective(to_pixels(clips).to(device), past)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()

        if rank == 0 and (step % settings.log_every == 0 or step == settings.steps - 1):
            # PSNR of the training batch, in the 8-bit units people quote.
            batch_psnr = 10 * math.log10(4.0 / max(parts["mse"], 1e-10))
            log.write(step=step, loss=loss.item(), lr=lr, psnr=batch_psnr, **parts)
            print(f"vae step {step:5d}  loss {loss.item():.5f}  psnr {batch_psnr:5.2f} dB  "
                  f"{time.monotonic() - started:6.0f} s", flush=True)
        if rank == 0 and (step + 1) % settings.save_every == 0:
            save_training_state(state_path, vae, None, optimizer,
                                {"step": step + 1, "seconds": time.monotonic() - started})

    vae.eval()
    result = {}
    if rank == 0:
        measured = heldout_measures(vae, heldout, settings.heldout_clips)
        result.update(heldout_psnr_db=measured["psnr_db"], heldout_step_ratio=measured["step_ratio"])
        if settings.decoder_only:
            mean, std = kept_statistics
        else:
            mean, std = latent_statistics(vae, source)
        vae.latent_mean.copy_(mean)
        vae.latent_std.copy_(std.clamp_min(1e-3))
        result.update(steps=settings.steps, seconds=round(time.monotonic() - started), hardware=hardware(),
                      settings=asdict(settings))
        save_file({k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}, str(out / "vae.safetensors"),
                  metadata={"vae_config": json.dumps(asdict(config)), "record": json.dumps(result)})
        print(f"VAE done: held-out PSNR {result['heldout_psnr_db']} dB, "
              f"step ratio {result['heldout_step_ratio']}; saved {out / 'vae.safetensors'}", flush=True)
    return result


def load_trained_vae(out: Path) -> tuple[CausalVideoVAE, VAEConfig, dict]:
    from safetensors import safe_open
    path = out / "vae.safetensors"
    if not path.exists():
        raise ValueError(f"{path}: no trained VAE here; run `longtake train vae --out {out}` first")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    config = VAEConfig(**json.loads(meta["vae_config"]))
    vae = CausalVideoVAE(config)
    vae.load_state_dict(load_file(str(path)))
    return vae.eval(), config, json.loads(meta["record"])
