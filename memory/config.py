"""Configuration of a LongTake model: one frozen dataclass per part, stored as JSON in checkpoints.

Everything a checkpoint needs to rebuild its modules lives here, so a file alone says what it is.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

FORMAT_VERSION = 2  # 2: each block's self-attention projects queries, keys and values in one layer
MEMORY_MODES = ("none", "malt", "lstm")


@dataclass(frozen=True)
class VAEConfig:
    """Causal video VAE: `time_factor` frames x `space_factor`^2 pixels become one latent position."""
    image_channels: int = 3
    latent_channels: int = 8
    time_factor: int = 4
    space_factor: int = 8
    base_channels: int = 16        # encoder width at full resolution; doubled at each spatial halving
    max_channels: int = 64
    temporal_kernel: int = 3       # causal kernel length of the 3D convolutions at latent resolution
    # Decoded frame f shows video frame f - frame_delay. A latent stands for its time_factor frames as a
    # whole; a decoder that must paint exactly those frames from it and the past alone paints them nearly
    # alike and jumps at the next latent (motion in steps). Rendered a little late, each latent's frames
    # lie between it and the latent before, so the decoder can draw the motion between them.
    frame_delay: int = 0


@dataclass(frozen=True)
class TextConfig:
    """Word-level text encoder: a fixed vocabulary, a learned start token, a small transformer."""
    vocab: tuple[str, ...] = ()
    width: int = 128
    depth: int = 2
    heads: int = 4
    max_words: int = 32


@dataclass(frozen=True)
class DenoiserConfig:
    """Latent-video transformer over a window of chunks, with an optional memory."""
    latent_channels: int = 8
    latent_size: int = 8           # latent height = width
    patch: int = 2
    chunk_frames: int = 2          # latent frames per chunk; a chunk always shares one noise level
    width: int = 128
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    text_width: int = 128
    block_causal: bool = True      # a chunk never attends to later chunks
    memory: str = "malt"           # none | malt | lstm
    memory_slots: int = 32         # malt: slots per layer
    recall_chunks: int = 0         # malt: also keep the last this-many written chunks, read by their own attention
    lstm_layers: tuple[int, ...] | None = None  # lstm: the blocks with an LSTM; None: every other one, from 1
    lstm_width: int = 96
    write_noise: float = 0.05      # noise level of the clean pass that writes a chunk into memory

    def __post_init__(self):
        if self.memory not in MEMORY_MODES:
            raise ValueError(f"memory mode {self.memory!r} is not one of {', '.join(MEMORY_MODES)}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.latent_size % self.patch:
            raise ValueError(f"latent_size {self.latent_size} is not divisible by patch {self.patch}")
        if self.recall_chunks < 0 or (self.recall_chunks and self.memory != "malt"):
            raise ValueError(f"recall_chunks keeps written chunks beside MALT's slots: give 0, or a positive "
                             f"number with memory 'malt' (got {self.recall_chunks} with memory {self.memory!r})")
        if self.lstm_layers is None:  # (1, 3, 5) in the default six blocks
            object.__setattr__(self, "lstm_layers", tuple(range(1, self.depth, 2)) or (0,))
        if self.memory == "lstm" and any(not 0 <= i < self.depth for i in self.lstm_layers):
            raise ValueError(f"lstm_layers {self.lstm_layers} must lie in 0..{self.depth - 1}")

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_size // self.patch) ** 2


@dataclass(frozen=True)
class ModelConfig:
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    fps: int = 24
    resolution: int = 64
    # How the weights were made (steps, seeds, losses, wall time, hardware); free-form, never read by code.
    record: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.resolution % self.vae.space_factor:
            raise ValueError(f"resolution {self.resolution} is not a multiple of the VAE's {self.vae.space_factor}x")
        if self.resolution // self.vae.space_factor != self.denoiser.latent_size:
            raise ValueError(
                f"denoiser latent_size {self.denoiser.latent_size} does not match resolution "
                f"{self.resolution} / {self.vae.space_factor}")
        if self.vae.latent_channels != self.denoiser.latent_channels:
            raise ValueError("VAE and denoiser disagree on latent channels")
        if self.text.width != self.denoiser.text_width:
            raise ValueError("text encoder width and denoiser text_width differ")

    @property
    def frames_per_chunk(self) -> int:
        """Video frames that one chunk of latents decodes to."""
        return self.denoiser.chunk_frames * self.vae.time_factor

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        raw = json.loads(text)
        return cls(
            vae=VAEConfig(**raw["vae"]),
            text=_with_tuples(TextConfig, raw["text"]),
            denoiser=_with_tuples(DenoiserConfig, raw["denoiser"]),
            fps=raw["fps"],
            resolution=raw["resolution"],
            record=raw.get("record", {}),
        )

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _with_tuples(cls, raw: dict):
    """JSON turns tuples into lists; frozen configs keep tuples so they stay hashable."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
