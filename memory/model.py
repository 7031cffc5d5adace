"""A whole LongTake model: the causal video VAE, the text encoder and the denoiser, with one config."""
from __future__ import annotations

from typing import Callable

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

    def compile_denoiser(self, backend: str | Callable = "inductor") -> None:
        """Compile each denoiser block with `torch.compile`, and run one small pass at once.

        Blocks, not the whole pass: on this project's 2-core CPU compiling the whole pass took 4.8 minutes
        for the dozen pass shapes of a 10 s video, and ran about 10% faster than the compiled blocks, which
        took 1 minute for their 8 shapes. The pass here makes the first compile happen now, so that a
        machine without a working compiler says so at load and not in the middle of a video. Compiled
        kernels are cached on disk by torch: the next process loads them in seconds.
        """
        import torch._dynamo
        config = torch._dynamo.config
        # Every block shares one `forward`, and torch counts each shape (and model) it compiles for against
        # that function's limit of 8: a 60-second video needs 8, other settings and models more.
        limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # older torch
        setattr(config, limit, max(getattr(config, limit), 64))
        for block in self.denoiser.blocks:
            block.compile(backend=backend, dynamic=False)
        cfg = self.config.denoiser
        x = torch.zeros(1, cfg.latent_channels, cfg.chunk_frames, cfg.latent_size, cfg.latent_size, device=self.device)
        t = torch.full(x.shape[:1] + x.shape[2:3], 0.5, device=self.device)
        try:
            with torch.no_grad():
                self.denoiser(x, t, *self.text([""]), self.denoiser.initial_state(1))
        except Exception as error:
            for block in self.denoiser.blocks:  # back to the plain blocks: the model stays usable
                block._compiled_call_impl = None
            cause = error  # torch wraps the compiler's own error, which names the problem
            while getattr(cause, "inner_exception", None) or cause.__cause__:
                cause = getattr(cause, "inner_exception", None) or cause.__cause__
            reason = f"{type(cause).__name__}: {str(cause).strip().splitlines()[0]}" if str(cause).strip() else type(cause).__name__
            raise RuntimeError(f"torch.compile does not work here ({reason})") from error
