"""Stage 2: train the text encoder and the denoiser with its memory on cached VAE latents.

Each step shows the model a window like the ones sampling builds: one clean front chunk and K noisy
chunks, after a random number of earlier chunks of the same video have been written into memory with
exactly the sampling rule (a chunk is written when it leaves the window, lightly noised). Gradients flow
through the last few writes (truncated backprop through time). Noise levels per chunk come from:
- PA-VDM's progressive layout: slot j at `(j + 1 - u) / K` with one random `u` per sample (the stage
  table with a random shift), warped by the sampling shift;
- independent levels per chunk (any layout the samplers might produce);
- one shared level for all noisy chunks, with the front chunk clean (RN) or noised alike (RW);
and, now and then, windows at a video's start that are still filling up (no front chunk yet), some of
them near pure noise, where only the prompt says what the scene is.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import multiprocessing
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..memory.checkpoint import save_checkpoint
from ..memory.config import ModelConfig, VAEConfig
from ..memory.model import LongTakeModel
from ..samplers.loop import config_fingerprint, guide, stack
from ..samplers.schedule import euler_step, warp
from .common import (EMA, LossLog, cosine_lr, hardware, load_training_state, save_training_state,
                     setup_distributed)
from .data import DemoWorld, to_pixels


@dataclass
class DenoiserTraining:
    steps: int = 3000
    batch: int = 16
    lr: float = 4e-4
    warmup: int = 300
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    videos: int = 600             # videos encoded once into the latent cache
    video_chunks: int = 24        # chunks per cached video (8 s at 24 fps)
    window_chunks: int = 4        # K noisy chunks behind the clean front chunk
    max_prefix: int = 14          # most chunks written into memory before the window
    grad_writes: int = 2          # writes that gradients flow through
    occlusion_grad_writes: int | None = None  # ...in occlusion windows (None: grad_writes); the write that saw
                                  # the object lies 8 or more writes back, out of reach of the default 2
    keep_bias: float = 0.0        # added to every MALT keep gate's bias before training (see open_keep_gates)
    fresh_lr: float | None = None # peak learning rate of the weights a fine-tune adds to its initial model
                                  # (a new memory starts from nothing where the rest is trained); None: lr
    text_dropout: float = 0.1     # null prompt, for classifier-free guidance
    progressive_share: float = 0.6
    independent_share: float = 0.25
    fill_share: float = 0.2       # windows still filling up at a video's start, progressive levels
    opening_share: float = 0.2    # a video's first chunks at mostly high noise: only the prompt tells the scene
    occlusion_share: float = 0.25 # windows where an object comes back from behind the pillar
    occlusion_drop: float = 0.6   # ...with prompts that often leave its color out, so only memory has it
    pillar_videos: int = 0        # ...drawn from this many more videos, every one with a pillar (demo world only;
                                  # 0: from the returns in the cache above). A few hundred returns are learned by
                                  # heart: the model recalls each training scene's object from its memory and reads
                                  # nothing from the memory of a scene it has not seen
    shift: float = 1.0
    context_noise: float = 0.15   # the clean front chunk is noised up to this level in half the windows
    remade_share: float = 0.3     # windows whose front chunk the model made itself, not the truth
    remade_levels: tuple[float, float] = (0.05, 0.4)  # ...from the truth noised to a level in this range
    remade_steps: int = 1         # ...in this many Euler steps (1: the one-step estimate)
    remade_guidance: float = 1.0  # ...at this guidance scale (the sampler's default is 3)
    remade_links: int = 1         # ...at the end of a chain of this many chunks, each remade after the one before
    drifted_share: float = 0.0    # windows whose past (memory and front) shows the scene drifted (world.Drift), demo world only
    drift_easing: int = 0         # ...and whose first this-many noisy chunks still show part of the drift, easing back
                                  # to the truth by equal steps, so the model learns a pull-back without a jump at the front
    object_weight: float = 0.0    # extra loss weight where the latents differ from the background (objects)
    return_weight: float = 0.0    # extra loss weight, in occlusion windows, on the latents of the object coming
                                  # back from behind the pillar (see WindowLoss.forward)
    recolor_returns: bool = False # in occlusion windows, the returning object shown in another object's color in
                                  # the noisy input, its own in the target: its color is in the memory or nowhere
    preview_every: int = 3000
    preview_prompt: str = "a red ball bouncing on a black background"
    save_every: int = 250
    log_every: int = 25
    seed: int = 0


RENDER_BLOCK = 128  # videos drawn at once, across all cores, before they are encoded


def cache_latents(model: LongTakeModel, source, settings: DenoiserTraining, path: Path, drift: float = 0.0) -> None:
    """Encode `videos` videos once into latents `[N, C, T, h, w]` (float16), with the chunks where an
    object comes back from a full occlusion (the windows that teach memory). `drift` above 0: the same
    videos with their objects drawn drifted, that amount of one drift per video (`DemoWorld.drifted_video`)."""
    if path.exists():
        return
    video = functools.partial(source.drifted_video, amount=drift) if drift else source.video
    frames = settings.video_chunks * model.config.frames_per_chunk
    started, latents = time.monotonic(), []
    # Drawing a drifted video takes longer than encoding it on a GPU: every core draws, a block at a time so
    # that drawn frames never pile up in memory. (Fork: the workers only draw, they never touch torch. Where
    # processes cannot fork, as on Windows, this process draws alone.)
    forking = "fork" in multiprocessing.get_all_start_methods()
    pool = multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) if forking else contextlib.nullcontext()
    with pool, torch.no_grad():
        draw = pool.starmap if forking else (lambda function, calls: [function(*call) for call in calls])
        for block in range(0, settings.videos, RENDER_BLOCK):
            drawn = draw(video, [(i, frames) for i in range(block, min(block + RENDER_BLOCK, settings.videos))])
            for first in range(0, len(drawn), 8):
                encoded, _ = model.vae.encode(to_pixels(np.stack(drawn[first:first + 8])).to(model.device))
                latents.append(encoded.half().cpu())
            print(f"caching latents: {block + len(drawn)}/{settings.videos} videos, "
                  f"{time.monotonic() - started:.0f} s", flush=True)
    reappear = [sorted({f // model.config.frames_per_chunk for f in source.reappearances(i, frames)})
                for i in range(settings.videos)]
    save_file({"latents": torch.cat(latents)}, str(path), metadata={"reappear": json.dumps(reappear)})


def drifted_cache(out: Path, amount: float) -> Path:
    """Where a run keeps its videos drawn with `amount` of their drift (the whole drift keeps its old name)."""
    return out / ("drifted_latents.safetensors" if amount == 1 else f"drifted_latents_{amount:.3f}.safetensors")


def load_latents(path: Path) -> tuple[torch.Tensor, list[list[int]]]:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        reappear = json.loads(f.metadata()["reappear"])
    return load_file(str(path))["latents"], reappear


OCCLUSION_PAST = 8  # fewest chunks written before an occlusion window: those that showed the object are then past


def occlusion_windows(reappear: list[list[int]], settings: DenoiserTraining) -> dict[int, list[tuple[int, int]]]:
    """Where the windows that teach memory can lie: for each number of chunks written before the window, from
    min(OCCLUSION_PAST, max_prefix) up, the (video, first chunk of the clip) of every clip whose noisy chunks
    hold a chunk in which an object comes back from behind the pillar, with the front chunk before it (hidden:
    an object stays hidden at least 44 frames, and the front ends at most 32 frames before the return). A clip
    with two returns is listed once for each.

    With OCCLUSION_PAST or more writes before the window, the chunks that last showed the object are in memory
    only. A return too early in its video for that much past, or too late for the window to fit, is left out
    rather than moved: a clip cut where the video allows would not show the return at all."""
    k, placements = settings.window_chunks, {}
    for prefix in range(min(OCCLUSION_PAST, settings.max_prefix), settings.max_prefix + 1):
        last_start = settings.video_chunks - (prefix + 1 + k)
        fits = [(video, back - prefix - slot) for video, chunks in enumerate(reappear) for back in chunks
                for slot in range(1, k + 1) if 0 <= back - prefix - slot <= last_start]
        if fits:
            placements[prefix] = fits
    return placements


def noise_layout(settings: DenoiserTraining, batch: int, noisy: int, front: bool, rng: random.Random):
    """Per-chunk levels `[B, front + noisy]` and whether the front chunk counts in the loss (never)."""
    k = settings.window_chunks
    kind = rng.random()
    if kind < settings.progressive_share:
        u = torch.rand(batch, 1)
        slots = torch.arange(k - noisy, k, dtype=torch.float32)[None]  # a filling window holds the newest slots
        levels = ((slots + 1 - u) / k).clamp(1e-4, 1.0)
        front_level = noised_context(settings, batch)
    elif kind < settings.progressive_share + settings.independent_share:
        levels = torch.rand(batch, noisy)
        front_level = noised_context(settings, batch)
    else:
        shared = torch.rand(batch, 1)
        levels = shared.expand(batch, noisy)
        renoised = torch.rand(batch, 1) < 0.5  # RW noises the condition to the same level, RN keeps it clean
        front_level = torch.where(renoised, shared, torch.zeros_like(shared))
    levels = warp(levels.double(), settings.shift).float()
    return torch.cat([front_level, levels], dim=1) if front else levels


def noised_context(settings: DenoiserTraining, batch: int) -> torch.Tensor:
    """Levels `[B, 1]` for the front chunk: clean in half the windows, lightly noised in the rest. At sampling
    the front chunk is the model's own output, not ground truth; noise hides the difference, so small errors
    do not compound from chunk to chunk (the sampler's `context_noise` does the same)."""
    noised = torch.rand(batch, 1) < 0.5
    return torch.where(noised, settings.context_noise * torch.rand(batch, 1), torch.zeros(batch, 1))


FOREGROUND = 2.0  # latent distance from the background beyond which a latent pixel shows an object or a pillar


def foreground_distance(window: torch.Tensor) -> torch.Tensor:
    """`[B, T, H, W]`: how far each latent pixel is from its window's background, taken as the per-channel
    median (objects and pillars cover a small part of the window). The latents have about unit variance:
    the background lies within 1, objects and pillars mostly beyond 2, about 15% of the demo world's
    latent pixels. With every pixel weighted alike, an object that covers 2 of a frame's 64 latent pixels
    is a few percent of the loss, and a model can score well while it loses its objects."""
    background = window.flatten(2).median(dim=2).values[:, :, None, None, None]
    return (window - background).norm(dim=1)


COVERED = 0.05  # share of a latent's pixels an object must cover for the latent to count as showing it


def latent_mask(pixels: np.ndarray, vae: VAEConfig) -> torch.Tensor:
    """bool `[T / time_factor, H / space_factor, W / space_factor]` (the VAE's factors): the latents whose
    frames and pixels are over COVERED marked in `pixels [T, H, W]` (a latent stands for its `time_factor`
    frames, as the causal encoder reads them). The returning object is 10 px: a latent it grazes by a corner
    does not show it."""
    (t, h, w), time_factor, space_factor = pixels.shape, vae.time_factor, vae.space_factor
    blocks = pixels.reshape(t // time_factor, time_factor, h // space_factor, space_factor, w // space_factor,
                            space_factor)
    return torch.from_numpy(blocks.mean(axis=(1, 3, 5)) > COVERED)


def recolored(window: torch.Tensor, returning: torch.Tensor) -> torch.Tensor:
    """`window` with the latents marked in `returning [B, T, H, W]` (the returning object's, after the front)
    shifted by the difference between another row's mean over its marked latents and this row's: each
    returning object in the mean latent of another one, in its own place and shape. Rows that have marked
    latents each take a partner among the others (their list turned by a random step)."""
    appeared = returning[:, None]
    counts = appeared.sum(dim=(2, 3, 4))
    means = (window * appeared).sum(dim=(2, 3, 4)) / counts.clamp_min(1)  # [B, C]
    rows = (counts[:, 0] > 0).nonzero()[:, 0]
    partner = torch.arange(window.shape[0], device=window.device)
    if len(rows) > 1:
        step = int(torch.randint(1, len(rows), ()))
        partner[rows] = rows.roll(step)
    return window + appeared * (means[partner] - means)[:, :, None, None, None]


class WindowLoss(torch.nn.Module):
    """Memory writes, one window forward and the flow-matching loss, as one module for DDP."""

    def __init__(self, model: LongTakeModel):
        super().__init__()
        self.model = model

    def forward(self, prefix, window, levels, prompts, has_front: bool, grad_writes: int, remade=None,
                object_weight: float = 0.0, remade_steps: int = 1, remade_guidance: float = 1.0,
                coming_back=None, return_weight: float = 0.0, recolor_returns: bool = False):
        """The weighted loss and, for the log, the plain error on foreground latents (objects and pillars).

        `coming_back [B, T, H, W]` (bool, windows whose object comes back from behind the pillar): the latents
        of the returning object itself, from the world's render (`latent_mask` of `DemoWorld.coming_back`).
        `return_weight`: extra weight on them. The front shows the pillar alone, so where and in which color the
        object comes out is in the memory or nowhere; the object is 2 or 3 of a frame's 64 latent pixels, and
        unweighted, a model that lets it stay hidden loses almost nothing. (Weighing "what the front does not
        show" instead, a second object's motion too, taught no read: docs/demo_model.md, walk H1.)

        `recolor_returns`: those same latents are shown in the noisy input shifted to another row's returning
        object's mean latent (another color, at its own place and in its own shape), while the target keeps
        them as they are. At the noise levels where a returning object's place shows, its color shows too, and
        a model learns to take both from the input; shown the wrong color, it has to take the color from memory.

        `remade [B, links]`: levels from which the model remakes the front chunk itself (0: the truth), in
        `remade_steps` Euler steps at guidance `remade_guidance`; with more than one column, the last
        `links - 1` prefix chunks are remade first, each after the one remade before it, so the front is made
        after the model's own chunks as in sampling (as many as the prefix holds).
        """
        model = self.model
        chunk = model.config.denoiser.chunk_frames
        tokens, bias = model.text(prompts)
        writes = prefix.shape[2] // chunk
        # Chunk i of the clip: the prefix's, then (i = writes) the window's front.
        part = lambda i: prefix[:, :, i * chunk:(i + 1) * chunk] if i < writes else window[:, :, :chunk]
        memories = [model.denoiser.initial_state(window.shape[0])]  # after 0, 1, ... writes
        for i in range(writes):
            if i < writes - grad_writes:
                with torch.no_grad():
                    memories.append(model.denoiser.write(memories[-1], part(i), tokens, bias))
            else:
                memories.append(model.denoiser.write(memories[-1], part(i), tokens, bias))
        memory = memories[-1]
        distance = foreground_distance(window)  # before any remake: a remade front is context, not in the loss
        if remade is not None:
            # Each made as sampling made it: after the chunk before it, clean in front and not yet written into
            # memory (chunk i read the memory of its first i - 1 chunks). The memory holds the truth (what is
            # written is not what makes the model's chunks fade).
            links = min(remade.shape[1], writes + 1)
            first = writes + 1 - links
            made = part(first - 1) if first else None
            for link, index in enumerate(range(first, writes + 1)):
                made = self.remade_front(made, part(index), remade[:, link - links].to(window.device), tokens, bias,
                                         memories[max(index - 1, 0)], remade_steps, remade_guidance)
            window = torch.cat([made, window[:, :, chunk:]], dim=2)
        t = levels.repeat_interleave(chunk, dim=1).to(window.device)
        counted = torch.ones_like(distance)  # [B, T, H, W]
        if has_front:
            counted[:, :chunk] = 0  # the front chunk is context: its prediction is never used
        returning = None
        if return_weight or recolor_returns:
            if coming_back is None:
                raise ValueError("return_weight and recolor_returns act on the returning object's latents: give "
                                 "coming_back, the mask of them")
            returning = counted * coming_back.to(counted)
        noise = torch.randn_like(window)
        shown = recolored(window, returning) if recolor_returns else window
        noisy = (1 - t[:, None, :, None, None]) * shown + t[:, None, :, None, None] * noise
        velocity = model.denoiser(noisy, t, tokens, bias, memory)
        error = (velocity - (noise - window)).pow(2).mean(dim=1)  # [B, T, H, W]
        foreground = counted * (distance > FOREGROUND)
        weights = counted * (1 + object_weight * ((distance - 1) / (FOREGROUND - 1)).clamp(0, 1))
        if return_weight:
            weights = weights + return_weight * returning
        object_error = (error * foreground).sum() / foreground.sum()  # NaN when the window shows no object
        return (error * weights).sum() / weights.sum(), object_error.detach()

    @torch.no_grad()
    def remade_front(self, before, front, levels, tokens, bias, memory, steps: int = 1, guidance: float = 1.0):
        """The front chunk as the model would have made it: the truth noised to `levels [B]` and denoised back
        in `steps` Euler steps, after the clean chunk `before` (None at a video's start) and reading `memory`.

        At sampling the front chunk is the model's own output, a little blurred and a little wrong; a model
        that only ever saw true fronts copies such errors forward and they pile up (objects fade, the scene
        drifts). Shown its own chunks with the true continuation as the target, it learns to repair them.
        One step from a low level is the cheapest such chunk; many steps from pure noise at the sampler's
        guidance are the chunks sampling really shows it. Rows at level 0 keep the truth. The memory is read at
        full strength, as everywhere in training: the sampler's `memory_strength` and `recall_strength` correct a
        trained model."""
        denoiser, batch, frames = self.model.denoiser, front.shape[0], front.shape[2]
        s = levels[:, None, None, None, None]
        x = (1 - s) * front + s * torch.randn_like(front)
        guided = guidance != 1
        if guided:  # the null prompt as the second half (padded; the sampler's repeated token reads the same)
            null_tokens, null_bias = stack([self.model.text([""])], length=tokens.shape[1])
            tokens = torch.cat([tokens, null_tokens[:, 0].expand(batch, -1, -1)])
            bias = torch.cat([bias, null_bias[:, 0].expand(batch, -1)])
            memory = {name: torch.cat([value, value]) for name, value in memory.items()}
        for i in range(steps):
            t_now, t_next = (levels[:, None].expand(-1, frames) * (1 - k / steps) for k in (i, i + 1))
            window, t = x, t_now
            if before is not None:
                window, t = torch.cat([before, x], dim=2), torch.cat([torch.zeros_like(t), t], dim=1)
            if guided:
                window, t = torch.cat([window, window]), torch.cat([t, t])
            velocity = denoiser(window, t, tokens, bias, memory)[:, :, -frames:]
            if guided:
                velocity = guide(velocity, guidance)
            x = euler_step(x, velocity, t_now, t_next)
        return torch.where(s > 0, x, front)


def train_denoiser(config: ModelConfig, vae_state: dict, source, out: Path, settings: DenoiserTraining,
                   record: dict, initial: dict | None = None, added: frozenset[str] = frozenset()) -> Path:
    """`initial`: a trained model's weights to fine-tune from (its VAE is replaced by `vae_state`); `added`:
    the names of those that start fresh (from `switch_memory`), trained at `settings.fresh_lr`."""
    if not 0 <= settings.drift_easing <= settings.window_chunks:
        raise ValueError(f"drift_easing eases the drift over the window's noisy chunks: give 0 to "
                         f"{settings.window_chunks}, got {settings.drift_easing}")
    if settings.pillar_videos and not isinstance(source, DemoWorld):
        raise ValueError("pillar_videos draws more demo-world scenes, and footage has no scene to draw: leave it at "
                         "0 when training on a folder of videos")
    if settings.drifted_share and not hasattr(source, "drifted_video"):
        raise ValueError("drifted pasts redraw demo-world scenes, and footage has no scene to redraw: "
                         "leave drifted_share at 0 when training on a folder of videos")
    rank, world, device = setup_distributed()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    model = LongTakeModel(config)
    if initial is not None:
        model.load_state_dict(initial)
    model.vae.load_state_dict(vae_state)
    if settings.keep_bias:
        open_keep_gates(model.denoiser, settings.keep_bias)  # a resumed run's saved weights replace these below
    model = model.to(device)
    model.vae.requires_grad_(False)

    cache_path = out / "latents.safetensors"
    # All of the drift for the past, then what is left of it in each easing chunk: 1, then n/(n+1) ... 1/(n+1).
    drift_amounts = [1 - j / (settings.drift_easing + 1) for j in range(settings.drift_easing + 1)] \
        if settings.drifted_share else []
    drifted_paths = [drifted_cache(out, amount) for amount in drift_amounts]
    pillar_path = out / "pillar_latents.safetensors"
    pillars = DemoWorld(source.seed, drop=source.drop, pillars=True) if settings.pillar_videos else None
    if rank == 0:
        cache_latents(model, source, settings, cache_path)
        for amount, path in zip(drift_amounts, drifted_paths):
            cache_latents(model, source, settings, path, drift=amount)
        if pillars:
            cache_latents(model, pillars, replace(settings, videos=settings.pillar_videos), pillar_path)
    if world > 1:
        torch.distributed.barrier()
    latents, reappear = load_latents(cache_path)
    occlusion_latents, occlusion_source = latents, source
    if pillars:
        occlusion_latents, reappear = load_latents(pillar_path)
        occlusion_source = pillars
        if occlusion_latents.shape[1:] != latents.shape[1:]:
            raise ValueError(f"{pillar_path} holds latents {tuple(occlusion_latents.shape)} where the cache beside it "
                             f"holds {tuple(latents.shape)}: it was made for other settings; delete it to encode "
                             f"it again")
    drifted = [load_latents(path)[0] for path in drifted_paths]  # [the past's, then each easing chunk's]
    for path, cached in zip(drifted_paths, drifted):
        if cached.shape != latents.shape:
            raise ValueError(f"{path} holds latents {tuple(cached.shape)} where the cache beside it holds "
                             f"{tuple(latents.shape)}: it was made for other settings; delete it to encode it again")
    placements = occlusion_windows(reappear, settings)
    if settings.occlusion_share and any(reappear) and not placements and rank == 0:
        warnings.warn(f"LongTake training: no occlusion window fits: every return from behind a pillar lies too "
                      f"early or too late in its {settings.video_chunks}-chunk video for a past of "
                      f"{min(OCCLUSION_PAST, settings.max_prefix)}+ chunks and a window of "
                      f"{1 + settings.window_chunks}; training goes on without them (a longer video_chunks or a "
                      f"shorter max_prefix makes room for them)")

    named = [(name, p) for name, p in model.named_parameters() if not name.startswith("vae.")]
    trained = [p for _, p in named]
    fresh = added if settings.fresh_lr is not None else frozenset()
    groups = [{"params": [p for name, p in named if name not in fresh], "peak_lr": settings.lr},
              {"params": [p for name, p in named if name in fresh], "peak_lr": settings.fresh_lr}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], betas=(0.9, 0.99),
                                  weight_decay=settings.weight_decay)
    ema = EMA(model, settings.ema_decay)
    objective = WindowLoss(model)
    if world > 1:
        objective = torch.nn.parallel.DistributedDataParallel(objective, find_unused_parameters=True)
    state_path = out / "denoiser_train_state.safetensors"
    progress = {"step": 0, "seconds": 0.0, "loss": None}
    if state_path.exists():
        progress = load_training_state(state_path, model, ema, optimizer)
        if rank == 0:
            print(f"resuming denoiser training at step {progress['step']}", flush=True)
    log = LossLog(out / "denoiser_log.jsonl", resume=progress["step"] > 0)
    started = time.monotonic() - progress["seconds"]
    chunk, k, fpc = config.denoiser.chunk_frames, settings.window_chunks, config.frames_per_chunk
    smoothed, object_smoothed = progress.get("loss"), progress.get("object_error")  # absent in older states

    for step in range(progress["step"], settings.steps):
        # Every random draw of a step follows from (seed, step, rank): a resumed run repeats it exactly.
        rng = random.Random(settings.seed * 1_000_003 + step * world + rank)
        torch.manual_seed(settings.seed * 1_000_003 + step * world + rank)
        lr = cosine_lr(step, settings.steps, settings.lr, settings.warmup)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, settings.steps, group["peak_lr"], settings.warmup)

        # One window shape per step, so the batch is one tensor.
        drop, grad_writes, return_weight, recolor_returns = None, settings.grad_writes, 0.0, False
        coming_back = None
        kind = rng.random()
        opening = kind < settings.opening_share
        if kind < settings.opening_share + settings.fill_share:
            has_front, noisy, prefix_chunks = False, rng.randint(1, k), 0
        else:
            has_front, noisy = True, k
            prefix_chunks = 0 if rng.random() < 0.25 else rng.randint(1, settings.max_prefix)
        span = prefix_chunks + int(has_front) + noisy
        drawn_from, prompt_source = latents, source
        if has_front and placements and kind > 1 - settings.occlusion_share:
            drawn_from, prompt_source = occlusion_latents, occlusion_source
            prefix_chunks = rng.choice(sorted(placements))
            span = prefix_chunks + 1 + k
            pool = placements[prefix_chunks]
            videos, offsets = zip(*(pool[rng.randrange(len(pool))] for _ in range(settings.batch)))
            drop, return_weight = settings.occlusion_drop, settings.return_weight
            recolor_returns = settings.recolor_returns
            if return_weight or recolor_returns:
                # The front chunk's last frame: every object hidden there is coming back in the window.
                window_start = [(o + prefix_chunks) * fpc for o in offsets]
                coming_back = torch.stack([latent_mask(
                    occlusion_source.coming_back(v, first, (1 + k) * fpc, first + fpc - 1), config.vae)
                    for v, first in zip(videos, window_start)])
            if settings.occlusion_grad_writes is not None:
                grad_writes = settings.occlusion_grad_writes
        else:
            videos = [rng.randrange(latents.shape[0]) for _ in range(settings.batch)]
            offsets = [0 if not has_front else rng.randrange(settings.video_chunks - span + 1) for _ in videos]
        clips = torch.stack([drawn_from[v, :, o * chunk:(o + span) * chunk] for v, o in zip(videos, offsets)])
        if has_front and drifted and drawn_from is latents and coming_back is None:
            # The same chunks of the same video, its objects drawn drifted, up to the front: what is written into
            # memory and what the window starts from drift alike, as in sampling; the target is the truth, after
            # the easing chunks when there are any. Not where the returning object is weighed: its mask is of
            # the true render. (These draws shift every later one: a run with a share repeats itself, not a run
            # without.)
            shown = torch.tensor([rng.random() < settings.drifted_share for _ in videos])[:, None, None, None, None]
            for j, cache in enumerate(drifted):
                part = slice(0, (prefix_chunks + 1) * chunk) if j == 0 else \
                    slice((prefix_chunks + j) * chunk, (prefix_chunks + j + 1) * chunk)
                drawn = torch.stack([cache[v, :, o * chunk + part.start:o * chunk + part.stop]
                                     for v, o in zip(videos, offsets)])
                clips[:, :, part] = torch.where(shown, drawn, clips[:, :, part])
        clips = clips.float().to(device)
        prefix, window = clips[:, :, :prefix_chunks * chunk], clips[:, :, prefix_chunks * chunk:]
        prompts = ["" if rng.random() < settings.text_dropout
                   else prompt_source.prompts(v, drop)(rng.randrange(1 << 30)) for v in videos]
        if opening:
            # Everywhere else a clean or lightly noised chunk shows the scene, and the model learns to copy
            # it rather than read the prompt. Sampling has no such chunk at the start of a video, so here
            # the levels crowd near pure noise (a third above 0.95), where the prompt is all there is.
            levels = 1 - 0.5 * torch.rand(settings.batch, noisy).pow(2)
        else:
            levels = noise_layout(settings, settings.batch, noisy, has_front, rng)

        remade = None
        if has_front and settings.remade_share:
            low, high = settings.remade_levels
            chosen = torch.rand(settings.batch) < settings.remade_share
            links = settings.remade_links
            remade = torch.where(chosen[:, None], low + (high - low) * torch.rand(settings.batch, links),
                                 torch.zeros(settings.batch, links))
        loss, object_error = objective(prefix, window, levels, prompts, has_front, grad_writes, remade,
                                       settings.object_weight, settings.remade_steps, settings.remade_guidance,
                                       coming_back, return_weight, recolor_returns)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        ema.update(model, step)
        smoothed = smooth(smoothed, loss.item())
        if not math.isnan(object_error.item()):
            object_smoothed = smooth(object_smoothed, object_error.item())

        if rank == 0 and (step % settings.log_every == 0 or step == settings.steps - 1):
            extra = {"text_gain": text_gain(WindowLoss(model), latents, source, settings, device)} \
                if step % settings.save_every == 0 else {}
            log.write(step=step, loss=loss.item(), smoothed=smoothed, object_error_smoothed=object_smoothed,
                      lr=lr, prefix=prefix_chunks, **extra)
            print(f"denoiser step {step:5d}  loss {loss.item():.4f}  smoothed {smoothed:.4f}  "
                  + (f"objects {object_smoothed:.4f}  " if object_smoothed is not None else "")
                  + (f"text gain {extra['text_gain']:+.4f}  " if extra else "")
                  + f"{time.monotonic() - started:6.0f} s", flush=True)
        if rank == 0 and (step + 1) % settings.save_every == 0:
            save_training_state(state_path, model, ema, optimizer,
                                {"step": step + 1, "seconds": time.monotonic() - started, "loss": smoothed,
                                 "object_error": object_smoothed,
                                 "config": config.replace(record=dict(record, denoiser=dict(
                                     data_seed=settings.seed, settings=asdict(settings)))).to_json()})
        if rank == 0 and settings.preview_every and (step + 1) % settings.preview_every == 0:
            preview(model, ema, settings, out / "previews" / f"step_{step + 1:06d}.mp4")

    if rank != 0:
        return out / "model.safetensors"
    record = dict(record, denoiser=dict(steps=settings.steps, final_loss=round(smoothed, 4),
                                        final_object_error=rounded(object_smoothed), data_seed=settings.seed,
                                        seconds=round(time.monotonic() - started), hardware=hardware(),
                                        settings=asdict(settings)))
    final = shipped_model(model, ema)
    path = out / "model.safetensors"
    save_checkpoint(final, path, config=config.replace(record=record))
    preview(model, ema, settings, out / "previews" / "final.mp4")
    print(f"saved {path}", flush=True)
    return path


def open_keep_gates(denoiser, bias: float) -> None:
    """Add `bias` to every MALT layer's keep-gate logit, so that each write keeps more of what the slots held.

    A write keeps `sigmoid(gate) * slots` and the demo model's gates stand near 0.45, so what a chunk wrote is
    down to about 2% five writes later, and the gradient that would teach a write to store a hidden object for
    the 8 writes until it comes back shrinks by the same factor: nothing learns to keep it. Opening the gate
    (as an LSTM's forget gate is started open) makes the memory long before training asks it to be."""
    if denoiser.cfg.memory != "malt":
        raise ValueError(f"keep_bias opens the keep gates of MALT memory slots; this model's memory is "
                         f"{denoiser.cfg.memory!r}: leave keep_bias at 0")
    with torch.no_grad():
        for block in denoiser.blocks:
            block.malt.update_gate.bias += bias


def switch_memory(initial: dict, config: ModelConfig, seed: int = 0,
                  **changes) -> tuple[dict, ModelConfig, frozenset[str]]:
    """A trained model's weights and config for the same model with its memory changed (`memory`, or
    `recall_chunks` added to MALT), and the names of the weights that start fresh: every weight the two share
    is kept, the new memory starts fresh from `seed`. Its read gates start at zero, so the result begins as the
    trained model without what was added, and fine-tuning teaches it the new memory."""
    config = config.replace(denoiser=replace(config.denoiser, **changes))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        fresh = LongTakeModel(config).state_dict()
    added = frozenset(name for name, value in fresh.items()
                      if name not in initial or initial[name].shape != value.shape)
    return {name: value if name in added else initial[name] for name, value in fresh.items()}, config, added


def average_weights(base: LongTakeModel, tuned: LongTakeModel, weight: float) -> dict[str, torch.Tensor]:
    """The weights `(1 - weight) * base + weight * tuned` of a model and a fine-tune of it: the fine-tune pulled
    back part of the way to where it started (WiSE-FT, Wortsman et al., *Robust fine-tuning of zero-shot
    models*), which can keep most of what the fine-tune gained and less of what it lost. Weights that are not
    floating point (none in LongTake models today) are the fine-tune's."""
    if not 0 < weight < 1:
        raise ValueError(f"the fine-tune's weight in the average must lie between 0 and 1 (0 is the model it "
                         f"started from, 1 the fine-tune itself), got {weight}")
    if config_fingerprint(base) != config_fingerprint(tuned):
        raise ValueError("the two models differ in shape or settings (their configs differ), so their weights "
                         "cannot be averaged: give the model the run was fine-tuned from as --init")
    start, end = base.state_dict(), tuned.state_dict()
    return {name: ((1 - weight) * start[name].float() + weight * value.float()).to(value.dtype)
            if value.is_floating_point() else value for name, value in end.items()}


def export(out: Path) -> Path:
    """The EMA weights of the latest saved training state as a LongTake checkpoint: a usable model from a
    run that is still going or was stopped early."""
    from safetensors import safe_open
    state_path = out / "denoiser_train_state.safetensors"
    if not state_path.exists():
        raise ValueError(f"{state_path}: no denoiser training state to export")
    with safe_open(str(state_path), "pt") as f:
        meta = json.loads(f.metadata()["progress"])
    config = ModelConfig.from_json(meta["config"])
    model = LongTakeModel(config)
    tensors = load_file(str(state_path))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(tensors[f"ema.{name}"])
    record = dict(config.record, denoiser=dict(config.record.get("denoiser", {}), steps=meta["step"],
                                               final_loss=round(meta["loss"], 4),
                                               final_object_error=rounded(meta.get("object_error")),
                                               seconds=round(meta["seconds"]),
                                               hardware=hardware(), exported_from_state=True))
    path = out / "model.safetensors"
    save_checkpoint(model.eval(), path, config=config.replace(record=record))
    return path


def smooth(previous: float | None, value: float) -> float:
    """The running average the log reports, over about the last 50 steps."""
    return value if previous is None else 0.98 * previous + 0.02 * value


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@torch.no_grad()
def text_gain(loss: WindowLoss, latents: torch.Tensor, source, settings: DenoiserTraining, device) -> float:
    """How much the prompt helps: loss with null prompts minus loss with the right ones, on a fixed batch
    of windows with no clean front chunk and every chunk at high noise (0.7 to 1), where only the text
    says what the scene is, as for the first chunk of a video. It should grow as training goes on; near
    zero means the model is ignoring its prompts."""
    rng = random.Random(12345)
    chunk = loss.model.config.denoiser.chunk_frames
    videos = [rng.randrange(latents.shape[0]) for _ in range(16)]
    window = latents[videos, :, :settings.window_chunks * chunk].float().to(device)
    levels = 0.7 + 0.3 * torch.rand(len(videos), settings.window_chunks, generator=torch.Generator().manual_seed(0))
    prefix = window[:, :, :0]
    results = []
    for prompts in ([source.prompts(v, 0.0)(0) for v in videos], [""] * len(videos)):
        torch.manual_seed(0)
        results.append(loss(prefix, window, levels, prompts, False, 0)[0].item())
    return results[1] - results[0]


def shipped_model(model: LongTakeModel, ema: EMA) -> LongTakeModel:
    """A copy of the model carrying the EMA weights."""
    import copy
    final = copy.deepcopy(model).cpu()
    ema.copy_to(final)  # copy_ moves the averages across devices
    return final.eval()


def preview(model: LongTakeModel, ema: EMA, settings: DenoiserTraining, path: Path) -> None:
    """A few seconds from the EMA weights through the real sampler, to watch training progress."""
    from ..samplers import LongVideo, SamplerSettings, render_mp4
    final = shipped_model(model, ema)
    video = LongVideo(final, settings.preview_prompt, seconds=4, fps=final.config.fps,
                      settings=SamplerSettings(window_chunks=settings.window_chunks, shift=settings.shift))
    render_mp4(video, path)
    print(f"preview: {path}", flush=True)
