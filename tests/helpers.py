"""Small random models for fast tests."""
import torch

from longtake.memory import DenoiserConfig, ModelConfig, TextConfig, VAEConfig
from longtake.memory.denoiser import Denoiser
from longtake.memory.text import TextEncoder

VOCAB = ("a", "red", "blue", "ball", "square", "bouncing", "on", "black", "white", "background")


def small_denoiser_config(**changes) -> DenoiserConfig:
    base = dict(width=48, depth=3, heads=4, text_width=32, memory_slots=4, lstm_layers=(0, 2), lstm_width=16)
    base.update(changes)
    return DenoiserConfig(**base)


def small_model_config(memory="malt") -> ModelConfig:
    return ModelConfig(vae=VAEConfig(base_channels=8, max_channels=16),
                       text=TextConfig(vocab=VOCAB, width=32, depth=1, heads=2),
                       denoiser=small_denoiser_config(memory=memory))


def randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Overwrite every parameter with noise, as if trained: zero-initialised gates become non-zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * scale)
    return module


def denoiser_inputs(cfg: DenoiserConfig, chunks: int, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    frames = chunks * cfg.chunk_frames
    x = torch.randn(batch, cfg.latent_channels, frames, cfg.latent_size, cfg.latent_size, generator=generator)
    t = torch.rand(batch, frames, generator=generator)
    text = torch.randn(batch, 5, cfg.text_width, generator=generator)
    bias = torch.zeros(batch, 5)
    bias[:, 3:] = float("-inf")
    return x, t, text, bias


def text_encoder(width=32) -> TextEncoder:
    return TextEncoder(TextConfig(vocab=VOCAB, width=width, depth=1, heads=2))


# Every memory a denoiser can have, as `denoiser(*MEMORIES[i])` makes it: (mode, recall_chunks).
MEMORIES = [("malt", 0), ("malt", 3), ("lstm", 0)]
MEMORY_IDS = ["malt", "malt-recall", "lstm"]


def denoiser(memory="none", recall_chunks=0, seed=0, **changes) -> Denoiser:
    changes["recall_chunks"] = recall_chunks
    torch.manual_seed(seed)
    return Denoiser(small_denoiser_config(memory=memory, **changes)).eval()


def read_gates(denoiser: Denoiser) -> list[torch.nn.Parameter]:
    """The gates through which the memory's reads enter the window (MALT's slots' and recall's, the LSTM's)."""
    return [p for name, p in denoiser.named_parameters()
            if name.endswith(("malt.read_gate", "malt.recall_gate", "lstm.gate"))]


@torch.no_grad()
def shut_reads(denoiser: Denoiser) -> Denoiser:
    """The denoiser with its memory read gates at zero: it reads nothing from its memory."""
    for gate in read_gates(denoiser):
        gate.zero_()
    return denoiser
