"""The autoregressive window and the three ways to move it along a video.

A `Window` holds the clean chunks kept in front (context that is never denoised again) and the noisy
chunks being denoised, each knowing its index in the video and how many of the `S` steps it has taken.
Between two yields it is a complete description of where sampling stands, so it can be saved and
resumed. The samplers are generators that mutate the window and yield each finished chunk in order:

- `progressive` (PA-VDM): noisy chunks sit `M = S/K` steps apart; after every `M` steps the oldest is
  clean, it is yielded, becomes the new clean front chunk, and a fresh noise chunk enters at the back.
- `replacement` with `renoise=True` (RW) or `False` (RN): blocks of `K` chunks at one shared `t`,
  conditioned on `overlap` clean chunks that are re-noised to `t` (RW) or kept clean (RN) every step.

They talk to the model only through two callables:
`denoise(x, t, indexes) -> velocity` for a window `x [B, C, T, H, W]` at per-frame times `t [B, T]`
whose chunks have the video indexes `indexes`; and `leave(chunk)` for a chunk that leaves the window
(its memory write). A chunk leaves exactly once, in order, when no window holds it any longer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from .schedule import check_progressive, euler_step

Denoise = Callable[[torch.Tensor, torch.Tensor, list[int]], torch.Tensor]
NoiseFor = Callable[[int], torch.Tensor]


@dataclass(eq=False)
class Chunk:
    index: int              # position in the video, in chunks (negative for start frames)
    latents: torch.Tensor   # [B, C, chunk_frames, H, W]
    steps: int              # sampling steps taken; a clean chunk has taken all of them


@dataclass
class Window:
    clean: list[Chunk] = field(default_factory=list)   # oldest first, always at t = 0
    noisy: list[Chunk] = field(default_factory=list)   # oldest first
    ready: list[Chunk] = field(default_factory=list)   # finished, not yet yielded (RW/RN finish blocks)
    next_index: int = 0                                # index of the next chunk to enter


def window_tensors(window: Window, levels: torch.Tensor, clean_level=None):
    """Latents `[B, C, T, H, W]` and per-frame times `[B, T]` of the window, clean chunks first."""
    chunks = window.clean + window.noisy
    x = torch.cat([c.latents for c in chunks], dim=2)
    batch, frames_per_chunk = x.shape[0], chunks[0].latents.shape[2]
    per_chunk = [0.0 if clean_level is None else clean_level] * len(window.clean)
    per_chunk += [float(levels[c.steps]) for c in window.noisy]
    t = torch.tensor(per_chunk, dtype=torch.float32, device=x.device).repeat_interleave(frames_per_chunk)
    return x, t[None].expand(batch, -1)


def denoise_noisy(window: Window, x, velocity, levels: torch.Tensor):
    """One Euler step for the noisy chunks; the clean ones are left exactly as they were."""
    frames = window.noisy[0].latents.shape[2]
    first = len(window.clean) * frames
    t = torch.tensor([float(levels[c.steps]) for c in window.noisy], dtype=torch.float32)
    t_next = torch.tensor([float(levels[c.steps + 1]) for c in window.noisy], dtype=torch.float32)
    t, t_next = (v.repeat_interleave(frames)[None].to(x.device) for v in (t, t_next))
    moved = euler_step(x[:, :, first:], velocity[:, :, first:], t, t_next)
    for i, chunk in enumerate(window.noisy):
        chunk.latents = moved[:, :, i * frames:(i + 1) * frames]
        chunk.steps += 1


def progressive(window: Window, denoise: Denoise, leave: Callable[[Chunk], None], noise_for: NoiseFor,
                levels: torch.Tensor, window_chunks: int, total_chunks: int | None,
                on_step: Callable[[], None] = lambda: None) -> Iterator[Chunk]:
    """PA-VDM: yields chunks `window.next_index ...` in order; runs forever when `total_chunks` is None.

    With `total_chunks` the window drains at the end (no chunk beyond the last enters); without it the
    window stays full, which is what a run that will be resumed later needs.
    """
    steps = len(levels) - 1
    steps_between_shifts = check_progressive(steps, window_chunks)
    while True:
        if total_chunks is None or window.next_index < total_chunks:
            window.noisy.append(Chunk(window.next_index, noise_for(window.next_index), 0))
            window.next_index += 1
        if not window.noisy:
            return
        for _ in range(steps_between_shifts):
            on_step()
            x, t = window_tensors(window, levels)
            denoise_noisy(window, x, denoise(x, t, [c.index for c in window.clean + window.noisy]), levels)
        if window.noisy[0].steps == steps:
            done = window.noisy.pop(0)
            for old in window.clean:
                leave(old)
            window.clean = [done]
            yield done


def replacement(window: Window, denoise: Denoise, leave: Callable[[Chunk], None], noise_for: NoiseFor,
                levels: torch.Tensor, window_chunks: int, total_chunks: int | None, overlap: int, renoise: bool,
                renoise_for: Callable[[int, int], torch.Tensor] | None = None,
                on_step: Callable[[], None] = lambda: None) -> Iterator[Chunk]:
    """RW (`renoise=True`) and RN: blocks of `window_chunks` new chunks conditioned on `overlap` clean ones.

    `renoise_for(index, step)` gives the noise that re-noises condition chunk `index` at that step (RW).
    """
    steps = len(levels) - 1
    while True:
        while window.ready:
            yield window.ready.pop(0)
        remaining = window_chunks if total_chunks is None else min(window_chunks, total_chunks - window.next_index)
        if remaining <= 0:
            return
        start = window.next_index
        window.noisy = [Chunk(start + i, noise_for(start + i), 0) for i in range(remaining)]
        window.next_index += remaining
        condition = [c.latents for c in window.clean]
        for step in range(steps):
            on_step()
            level = float(levels[step])
            if renoise:
                for chunk, clean in zip(window.clean, condition):
                    eps = renoise_for(chunk.index, step).to(clean.device, clean.dtype)
                    chunk.latents = (1 - level) * clean + level * eps
            x, t = window_tensors(window, levels, clean_level=level if renoise else None)
            denoise_noisy(window, x, denoise(x, t, [c.index for c in window.clean + window.noisy]), levels)
        # The condition returns to its clean self: the re-noised latents were only its view at the step's t.
        for chunk, clean in zip(window.clean, condition):
            chunk.latents = clean
        in_window = window.clean + window.noisy
        split = max(0, len(in_window) - overlap)
        for old in in_window[:split]:
            leave(old)
        window.clean, window.ready, window.noisy = in_window[split:], window.noisy, []
