"""A whole LongTake model: the causal video VAE, the text encoder and the denoiser, with one config."""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .denoiser import Denoiser
from .text import TextEncoder
from .vae import CausalVideoVAE

PARTS = ("vae", "text", "denoiser")


class LongTakeModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.vae = CausalVideoVAE(config.vae)
        self.text = TextEncoder(config.text)
        self.denoiser = Denoiser(config.denoiser)

    def parameter_counts(self) -> dict[str, int]:
        return {part: sum(p.numel() for p in getattr(self, part).parameters()) for part in PARTS}

    @property
    def device(self) -> torch.device:
        return self.denoiser.patch_in.weight.device
