"""Rectified-flow time grid, the shift warp, the progressive stage table and the per-frame Euler step.

`t = 1` is pure noise, `x_t = (1 - t) x0 + t eps`, the model predicts `v = eps - x0`; so a step from
`t` to `t_next < t` is `x + (t_next - t) * v`, each latent frame with its own `t` and `t_next`.
"""
from __future__ import annotations

import torch


def warp(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Resolution/length shift: `t' = r t / (1 + (r - 1) t)`; r > 1 spends more steps at high noise."""
    return shift * t / (1 + (shift - 1) * t)


def time_grid(steps: int, shift: float = 1.0) -> torch.Tensor:
    """The `steps + 1` noise levels of an ordinary `steps`-step sample, from 1 down to 0 (float64)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return warp(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)


def stage_table(steps: int, window_chunks: int) -> torch.Tensor:
    """PA-VDM's base levels `[M, K]`: at stage `s`, noisy slot `j` (0 = oldest) sits at `(M j + M - s) / S`.

    Every chunk walks all `S` levels of an `S`-step sample, `M = S / K` steps behind its older neighbour.
    """
    steps_between_shifts = check_progressive(steps, window_chunks)
    stage = torch.arange(steps_between_shifts, dtype=torch.float64)[:, None]
    slot = torch.arange(window_chunks, dtype=torch.float64)[None, :]
    return (steps_between_shifts * slot + steps_between_shifts - stage) / steps


def check_progressive(steps: int, window_chunks: int) -> int:
    """`M`, the steps between window shifts; a clear error where `S` and `K` do not fit together."""
    if window_chunks < 1:
        raise ValueError(f"window chunks must be at least 1, got {window_chunks}")
    if steps < window_chunks or steps % window_chunks:
        raise ValueError(f"progressive sampling needs steps divisible by window chunks: {steps} steps do not split "
                         f"into {window_chunks} equal stages; try steps = {max(1, round(steps / window_chunks)) * window_chunks}")
    return steps // window_chunks


def euler_step(x: torch.Tensor, velocity: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    """x, velocity `[B, C, T, H, W]`; t, t_next `[B, T]`: each latent frame moves by its own Δt."""
    dt = (t_next - t).to(x.dtype)[:, None, :, None, None]
    return x + dt * velocity
