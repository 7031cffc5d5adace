"""The LongTake model, pure torch: denoiser with memory, causal video VAE, text encoder, checkpoints."""
from .checkpoint import CheckpointError, load_checkpoint, read_config, save_checkpoint
from .config import DenoiserConfig, ModelConfig, TextConfig, VAEConfig
from .model import LongTakeModel

__all__ = ["CheckpointError", "DenoiserConfig", "LongTakeModel", "ModelConfig", "TextConfig", "VAEConfig",
           "load_checkpoint", "read_config", "save_checkpoint"]
