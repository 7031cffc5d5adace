"""The long-video loop: what the CLI, the nodes, training previews and benchmarks all run.

`LongVideo` ties a model, a prompt schedule and sampler settings to one of the window samplers,
writes each chunk into memory as it leaves the window, decodes finished chunks with the streaming VAE
and hands out frames as they come. Nothing grows with the video's length: the window, the memory and
the decoder's cache have fixed sizes, and frames leave as soon as they are decoded.

After every finished chunk it records a boundary: the window, the memory, the decoder cache and any
decoded frames not handed out yet. `save_state` writes the last boundary to one safetensors file, and a
`LongVideo` built with `resume=` continues from it to exactly the frames the uninterrupted run makes.
Noise is drawn from generators seeded by (seed, chunk index, purpose), so it does not depend on how a
run was split.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..memory.model import LongTakeModel
from ..memory.text import blend
from .prompts import PromptSchedule
from .schedule import check_progressive, time_grid
from .window import Chunk, Window, progressive, replacement

MODES = ("progressive", "rw", "rn")
STATE_FORMAT = "2"
MAX_MEMORY_STRENGTH = 2.0
RECENT_CHUNKS = 6   # finished chunks kept as latents: they span the causal decoder's whole receptive field
NOISE, WRITE, RENOISE = 0, 1, 2


@dataclass(frozen=True)
class SamplerSettings:
    mode: str = "progressive"     # progressive | rw | rn
    steps: int = 20               # S: sampling steps every chunk goes through
    window_chunks: int = 4        # K: noisy chunks in the window (progressive) or per block (RW/RN)
    overlap: int = 1              # RW/RN: clean condition chunks in front of each block
    shift: float = 1.0            # time-grid warp; > 1 spends more steps at high noise
    guidance: float = 3.0         # classifier-free guidance scale on the text; 1 turns it off
    # The share of guidance's push kept along the model's own clean estimate, frame by frame (1: plain
    # classifier-free guidance; 0: adaptive projected guidance). That part makes what the model would draw
    # anyway stronger rather than closer to the prompt. At 0 the demo model's two-object scenes on gray hold
    # their background for most of the minute instead of swelling over it in their first seconds, but other
    # videos lose theirs later, and over the benchmark's minute it held less (docs/demo_model.md).
    guidance_parallel: float = 1.0
    seed: int = 0
    # Clean context chunks are seen noised to this level: it hides their small errors from the model, and at
    # the memory write's own level (0.05 in every LongTake model so far) their pass is also their write.
    context_noise: float = 0.05
    # The factor on what the denoiser reads from its memory. The demo model, trained with its memory holding
    # true video, leans on it harder than on the window when the memory holds its own output, and lets its
    # objects fade; read at half strength they stay (the README's quality table gives the figures).
    memory_strength: float = 0.5
    # The same for the read of the last written chunks, kept as they were (a model trained with
    # `recall_chunks`; others have no such read). At full strength such a model brought a hidden object back in
    # its color in half its returns, at half strength in a fifth (docs/demo_model.md, runs/own).
    recall_strength: float = 1.0

    def check(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"sampler mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.steps < 1 or self.window_chunks < 1:
            raise ValueError(f"steps ({self.steps}) and window chunks ({self.window_chunks}) must be at least 1")
        if self.mode == "progressive":
            check_progressive(self.steps, self.window_chunks)
        elif self.overlap < 0:
            raise ValueError(f"overlap must be 0 or more chunks, got {self.overlap}")
        if not self.shift > 0:
            raise ValueError(f"shift must be positive, got {self.shift}")
        if not self.guidance >= 0:
            raise ValueError(f"guidance must be 0 or more, got {self.guidance}")
        if not 0 <= self.guidance_parallel <= 1:
            raise ValueError(f"guidance parallel is a share of guidance's push: give 0 to 1 (1 is plain "
                             f"classifier-free guidance), got {self.guidance_parallel}")
        if not 0 <= self.context_noise < 1:
            raise ValueError(f"context noise must lie in [0, 1), got {self.context_noise}")
        for name, value in (("memory strength", self.memory_strength), ("recall strength", self.recall_strength)):
            if not 0 <= value <= MAX_MEMORY_STRENGTH:
                raise ValueError(f"{name} must lie in [0, {MAX_MEMORY_STRENGTH:g}] (1 reads the memory as "
                                 f"trained, 0 not at all), got {value}")

    def clean_in_front(self) -> int:
        return 1 if self.mode == "progressive" else self.overlap


@dataclass(frozen=True)
class Progress:
    step: int
    steps: int
    frames: int
    total_frames: int


class Cancelled(Exception):
    """Raised inside the loop when the cancel check says so; `LongVideo.frames` ends quietly on it."""


def seeded_noise(seed: int, index: int, purpose: int, shape, step: int = 0) -> torch.Tensor:
    key = f"{seed}/{index}/{purpose}/{step}".encode()
    generator = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)
    return torch.randn(shape, generator=generator)


def config_fingerprint(model: LongTakeModel) -> str:
    config = json.loads(model.config.to_json())
    config.pop("record", None)
    if config["vae"].get("frame_delay") == 0:  # added later: left at its default, states saved before it load
        del config["vae"]["frame_delay"]
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


class Conditioner:
    """The model as the samplers see it: per-chunk prompts, guidance in one batched forward, memory.

    Clean chunks at the front of the window (t = 0) see only themselves under the block-causal mask and
    stay as they are until a chunk leaves, so they are run once (`Denoiser.prefix`) and reused by every
    step until the memory changes; their velocity is never used and is returned as zeros.
    """
    reuse_front = True  # off only to measure what reusing buys and to test that it changes nothing

    def __init__(self, model: LongTakeModel, schedule: PromptSchedule, settings: SamplerSettings,
                 seconds_per_chunk: float, blend_chunks: int, first_index: int, memory: dict, writes: bool = True):
        self.model, self.schedule, self.settings = model, schedule, settings
        self.seconds_per_chunk, self.blend_chunks, self.first_index = seconds_per_chunk, blend_chunks, first_index
        self.memory, self.writes = memory, writes
        self._prompts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.null = self._encode("")
        self._front: tuple[tuple[int, ...], object] | None = None  # (chunk indexes, their Prefix)
        self._text = self._memory = None  # (what it was made from, the guided batch's tensors)

    def _encode(self, prompt: str):
        if prompt not in self._prompts:
            with torch.no_grad():
                self._prompts[prompt] = self.model.text([prompt])
        return self._prompts[prompt]

    def conditioning(self, index: int):
        """Text tokens `[1, L, D]` and bias `[1, L]` for chunk `index` of the video."""
        weights = self.schedule.weights(index - self.first_index, self.seconds_per_chunk, self.blend_chunks)
        parts = [self._encode(prompt) for prompt, _ in weights]
        if len(parts) == 1:
            return parts[0]
        return blend(parts[0], parts[1], weights[1][1])

    def denoise(self, x: torch.Tensor, t: torch.Tensor, indexes: list[int]) -> torch.Tensor:
        frames = x.shape[2] // len(indexes)
        clean = [bool((t[:, i * frames:(i + 1) * frames] == 0).all()) for i in range(len(indexes))]
        front = next((i for i, c in enumerate(clean) if not c), len(clean))  # leading clean chunks
        level = self.settings.context_noise
        if level > 0:  # the model sees clean chunks lightly noised; the window keeps them clean
            x, t = x.clone(), t.clone()
            for position, index in enumerate(indexes):
                if clean[position]:
                    span = slice(position * frames, (position + 1) * frames)
                    # The memory write's own noise: at the write's level the front chunk's pass is the write's.
                    noise = seeded_noise(self.settings.seed, index, WRITE, x[:, :, span].shape).to(x)
                    x[:, :, span] = (1 - level) * x[:, :, span] + level * noise
                    t[:, span] = level
        conditionings = [self.conditioning(i) for i in indexes]
        shared = all(c is conditionings[0] for c in conditionings)  # one prompt: read once for the whole window
        tokens, bias = self._guided_text(conditionings[0]) if shared else self._guided_text_per_chunk(conditionings)
        memory = self.memory
        if self.settings.guidance != 1:  # conditional and unconditional in one batch
            x, t = torch.cat([x, x]), torch.cat([t, t])
            memory = self._guided_memory()
        denoiser, strengths = self.model.denoiser, (self.settings.memory_strength, self.settings.recall_strength)
        if not (self.reuse_front and front and front < len(indexes) and denoiser.cfg.block_causal):
            velocity = denoiser(x, t, tokens, bias, memory, None, *strengths)
        else:
            split = front * frames
            key = tuple(indexes[:front])
            if self._front is None or self._front[0] != key:
                text = (tokens, bias) if shared else (tokens[:, :front], bias[:, :front])
                self._front = key, denoiser.prefix(x[:, :, :split], t[:, :split], *text, memory, *strengths)
            text = (tokens, bias) if shared else (tokens[:, front:], bias[:, front:])
            rest = denoiser(x[:, :, split:], t[:, split:], *text, memory, self._front[1], *strengths)
            velocity = torch.cat([rest.new_zeros(rest.shape[:2] + (split,) + rest.shape[3:]), rest], dim=2)
        if self.settings.guidance == 1:
            return velocity
        return guide(velocity, self.settings.guidance, self.settings.guidance_parallel, x, t)

    # The guided batch's text and memory are made once and kept while they stay the same, so that each step
    # hands the denoiser the very tensors its prefix was made with (it reuses their keys and values then).
    def _guided_text(self, conditioning):
        """One prompt's tokens `[B, L, D]` and bias `[B, L]`, with the null prompt as the second half under
        guidance; the bias is None when every row's is 0 (no padding, no blend: the attention needs no mask)."""
        if self._text is None or self._text[0] is not conditioning:
            tokens, bias = self._guided_text_per_chunk([conditioning])
            unmasked = self._unblended(conditioning) and (self.settings.guidance == 1 or self.null[0].shape[1] == 1)
            self._text = conditioning, (tokens[:, 0], None if unmasked else bias[:, 0])
        return self._text[1]

    def _unblended(self, conditioning) -> bool:
        """A prompt as the text encoder gave it, alone: every token real, its bias all 0 (decided without
        reading the tensor, which would wait for the device)."""
        return any(conditioning is encoded for encoded in self._prompts.values())

    def _guided_text_per_chunk(self, conditionings):
        tokens, bias = stack(conditionings)
        if self.settings.guidance == 1:
            return tokens, bias
        count, length = len(conditionings), tokens.shape[2]
        null_tokens, null_bias = self.null
        if null_tokens.shape[1] == 1:
            # A single token read L times reads as itself alone (the same key and value everywhere), so the
            # null prompt fills the prompt's length without padding.
            null_tokens = null_tokens[:, None].expand(-1, count, length, -1)
            null_bias = null_bias[:, None].expand(-1, count, length)
        else:
            null_tokens, null_bias = stack([self.null] * count, length=length)
        return torch.cat([tokens, null_tokens]), torch.cat([bias, null_bias])

    def _guided_memory(self):
        if self._memory is None or self._memory[0] is not self.memory:
            self._memory = self.memory, {k: torch.cat([v, v]) for k, v in self.memory.items()}
        return self._memory[1]

    def leave(self, chunk: Chunk) -> None:
        front, self._front = self._front, None  # the memory it was made with is about to change
        if not self.writes:
            return
        # A chunk leaving right after it stood alone at the front, seen at the write's own noise level, was
        # already run exactly as its write runs it.
        seen = front is not None and front[0] == (chunk.index,) \
            and self.settings.context_noise == self.model.denoiser.cfg.write_noise
        noise = seeded_noise(self.settings.seed, chunk.index, WRITE, chunk.latents.shape)
        conditioning = self.conditioning(chunk.index)
        tokens, bias = conditioning[0], None if self._unblended(conditioning) else conditioning[1]
        self.memory = self.model.denoiser.write(self.memory, chunk.latents, tokens, bias,
                                                noise=noise.to(chunk.latents.device, chunk.latents.dtype),
                                                seen=front[1] if seen else None,
                                                memory_strength=self.settings.memory_strength,
                                                recall_strength=self.settings.recall_strength)


def guide(velocity: torch.Tensor, scale: float, parallel: float = 1.0, x: torch.Tensor | None = None,
          t: torch.Tensor | None = None) -> torch.Tensor:
    """Classifier-free guidance from one batched forward: the conditional rows first, the null-prompt rows
    after them. With `parallel` below 1, the push is split, in each frame of each row, into its part along the
    conditional clean estimate `x - t * velocity` of the noisy input `x` `[2B, C, T, H, W]` at levels `t`
    `[2B, T]`, and the rest, and the part along is kept at that share (adaptive projected guidance, Sadat et
    al. 2024; in velocity the push is the clean estimates' difference over -t, so its split is theirs)."""
    conditional, unconditional = velocity.chunk(2)
    push = conditional - unconditional
    if parallel == 1:
        return unconditional + scale * push
    frame = (1, 3, 4)  # channels and space
    estimate = (x.chunk(2)[0] - t.chunk(2)[0][:, None, :, None, None] * conditional).float()
    direction = estimate / estimate.square().sum(frame, keepdim=True).sqrt().clamp_min(1e-12)
    along = (push.float() * direction).sum(frame, keepdim=True) * direction
    return conditional + (scale - 1) * (push - (1 - parallel) * along.to(push.dtype))


def stack(conditionings, length: int | None = None):
    """Per-chunk conditionings `[1, L_i, D]` padded to one length: `[1, N, L, D]` and `[1, N, L]`."""
    length = max(length or 0, max(c[0].shape[1] for c in conditionings))
    tokens = torch.stack([F.pad(c[0], (0, 0, 0, length - c[0].shape[1])) for c in conditionings], dim=1)
    bias = torch.stack([F.pad(c[1], (0, length - c[1].shape[1]), value=-math.inf) for c in conditionings], dim=1)
    return tokens, bias


@dataclass
class Boundary:
    """Everything needed to continue after the last finished chunk."""
    window: Window
    memory: dict
    decoder: dict | None
    pending: torch.Tensor | None     # decoded frames `[3, n, H, W]` not handed out yet
    chunks_done: int                 # chunks finished since the very start (all runs)
    frames_done: int                 # frames handed out since the very start (all runs)
    recent: torch.Tensor | None = None  # latents of the last RECENT_CHUNKS finished chunks, oldest first
    skip: int = 0                    # decoded frames still to drop: they show the start video again


@dataclass
class GenerationState:
    """Where a video stands after a finished chunk: resume it with `LongVideo(resume=state)`, in the
    same process (the nodes chain segments this way) or from the file `save` writes."""
    settings: SamplerSettings
    boundary: Boundary
    model: str                       # fingerprint of the model that made it

    def save(self, path: str | Path) -> None:
        save_state(path, self)


class LongVideo:
    """One long video: iterate `frames()` for pixel chunks `[3, n, H, W]` in [-1, 1], in order.

    Every check happens in the constructor, before any work. `progress(Progress)` and `cancel() -> bool`
    are called on every sampler step; on cancel, `frames()` stops after what was made and
    `cancelled` is set. `resumable=True` keeps the window full to the end (no drain), so that a state
    saved at the end continues exactly; states saved after a cancel or an interruption always do.
    `use_memory=False` never writes memory (the window alone), for comparisons.
    `resume` is a `GenerationState` or a file saved from one.

    `latents()` is the other way to run it: finished chunks as latents, undecoded (the ComfyUI nodes
    decode in a node of their own). It makes whole chunks, so the last may run past `seconds`.
    """

    def __init__(self, model: LongTakeModel, prompts: PromptSchedule | str, seconds: float, fps: float,
                 settings: SamplerSettings = SamplerSettings(), *, start: torch.Tensor | None = None,
                 resume: GenerationState | str | Path | None = None, blend_chunks: int = 2, resumable: bool = False,
                 use_memory: bool = True,
                 progress: Callable[[Progress], None] | None = None, cancel: Callable[[], bool] | None = None):
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if start is not None and resume is not None:
            raise ValueError("give start frames or a state to resume, not both")
        if blend_chunks < 0:
            raise ValueError(f"blend chunks must be 0 or more, got {blend_chunks}")
        self.schedule = prompts if isinstance(prompts, PromptSchedule) else PromptSchedule.parse(prompts)
        self.model = model
        self.fps, self.total_frames = fps, round(seconds * fps)
        if self.total_frames < 1:
            raise ValueError(f"{seconds} s at {fps} fps is less than one frame")
        self.resumable, self.progress, self.cancel = resumable, progress, cancel
        self.cancelled = False
        self.frames_per_chunk = model.config.frames_per_chunk
        self.latent_chunk_shape = (1, model.config.denoiser.latent_channels, model.config.denoiser.chunk_frames,
                                   model.config.denoiser.latent_size, model.config.denoiser.latent_size)
        if resume is not None:
            if isinstance(resume, GenerationState):
                if resume.model != config_fingerprint(model):
                    raise ValueError("this generation state was made by a different model than the one loaded; "
                                     "continue it with the checkpoint that made it")
                state = resume
            else:
                state = load_state(resume, model)  # checks the file's model itself, naming the file
            settings, boundary = state.settings, state.boundary
        else:
            boundary = Boundary(Window(), model.denoiser.initial_state(1), None, None, 0, 0)
        settings.check()
        self.settings = settings
        self.levels = time_grid(settings.steps, settings.shift)
        self.start_frames_done = boundary.frames_done
        self.conditioner = Conditioner(model, self.schedule, settings, self.frames_per_chunk / fps, blend_chunks,
                                       first_index=boundary.window.next_index - len(boundary.window.noisy)
                                       - len(boundary.window.ready), memory=boundary.memory, writes=use_memory)
        self.boundary = boundary
        self.context = boundary.recent  # latents just before this run's first chunk, for the decoder
        self.start = None if start is None else self._check_start(start)
        # A decoder with a frame delay shows the start video's last frames again before the new ones.
        self.seam_frames = boundary.skip if start is None else model.config.vae.frame_delay
        pending = 0 if boundary.pending is None else boundary.pending.shape[1]
        wanted = self.total_frames - pending + self.seam_frames
        self.new_chunks = max(0, math.ceil(wanted / self.frames_per_chunk))
        self.total_steps = self._count_steps()
        self.steps_done = 0

    # ----- checks and counts -----
    def _check_start(self, pixels: torch.Tensor) -> torch.Tensor:
        """Start frames `[3, T, H, W]` in [-1, 1], resized to the model's resolution."""
        if pixels.dim() != 4 or pixels.shape[0] != 3:
            raise ValueError(f"start frames must be [3, T, H, W], got shape {tuple(pixels.shape)}")
        size = self.model.config.resolution
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(pixels.permute(1, 0, 2, 3).float(), size=(size, size), mode="area").permute(1, 0, 2, 3)
        return pixels.clamp(-1, 1)

    def _count_steps(self) -> int:
        s, window = self.settings, self.boundary.window
        if s.mode == "progressive":
            in_flight = len(window.noisy)
            cycles = self.new_chunks + s.window_chunks - 1 - in_flight if self.new_chunks else 0
            return max(0, cycles) * (s.steps // s.window_chunks)
        blocks = math.ceil(max(0, self.new_chunks - len(window.ready)) / s.window_chunks)
        return blocks * s.steps

    # ----- the run -----
    def frames(self) -> Iterator[torch.Tensor]:
        try:
            yield from self._frames()
        except Cancelled:
            self.cancelled = True

    def latents(self) -> Iterator[torch.Tensor]:
        """Each finished chunk's latents `[1, C, chunk_frames, h, w]`, enough for the video's frames after
        the `seam_frames` a decoder drops first; frames a resumed state had decoded but not handed out are
        not repeated."""
        chunks = math.ceil((self.total_frames + self.seam_frames) / self.frames_per_chunk)
        try:
            if chunks == 0:
                return
            window = copy_window(self.boundary.window)
            with torch.no_grad():
                if self.start is not None:
                    self._begin_from(self.start, window)
                for finished, chunk in enumerate(self._sampler(window, chunks), 1):
                    self._mark(window=window, decoder=None, chunks=1, frames=self.frames_per_chunk,
                               latents=chunk.latents)
                    yield chunk.latents
                    if finished == chunks:
                        break
        except Cancelled:
            self.cancelled = True

    def _frames(self) -> Iterator[torch.Tensor]:
        model, boundary = self.model, self.boundary
        remaining = self.total_frames
        if boundary.pending is not None:
            out = boundary.pending[:, :remaining]
            remaining -= out.shape[1]
            self._mark(pending=boundary.pending[:, out.shape[1]:], frames=out.shape[1])
            yield out
        if remaining <= 0:
            return
        window, decoder = copy_window(boundary.window), boundary.decoder
        with torch.no_grad():
            if self.start is not None:
                decoder = self._begin_from(self.start, window)
            elif decoder is None and boundary.recent is not None:
                _, decoder = model.vae.decode(boundary.recent)  # a state from `latents()`: restart the decoder
            sampler = self._sampler(window, self.new_chunks)
            for finished, chunk in enumerate(sampler, 1):
                pixels, decoder = model.vae.decode(chunk.latents, decoder)
                pixels = pixels[0, :, self.boundary.skip:].clamp(-1, 1)
                out, rest = pixels[:, :remaining], pixels[:, remaining:]
                remaining -= out.shape[1]
                self._mark(window=window, decoder=decoder, pending=rest if rest.shape[1] else None,
                           chunks=1, frames=out.shape[1], latents=chunk.latents)
                yield out
                if finished == self.new_chunks:
                    break

    def _begin_from(self, pixels: torch.Tensor, window: Window) -> dict:
        """Encode start frames: the last chunks become the clean front, earlier ones go to memory."""
        model, fpc = self.model, self.frames_per_chunk
        pad = (-pixels.shape[1]) % fpc
        pixels = torch.cat([pixels[:, :1].expand(-1, pad, -1, -1), pixels], dim=1)[None].to(model.device)
        encoder = decoder = None
        chunks = []
        count = pixels.shape[2] // fpc
        for i in range(count):
            piece = pixels[:, :, i * fpc:(i + 1) * fpc]
            latents, encoder = model.vae.encode(piece, encoder)
            _, decoder = model.vae.decode(latents, decoder)  # primes the decoder so the seam is smooth
            chunks.append(Chunk(i - count, latents, self.settings.steps))
        keep = self.settings.clean_in_front()
        split = max(0, len(chunks) - keep)
        for chunk in chunks[:split]:
            self.conditioner.leave(chunk)
        window.clean = chunks[split:]
        self.context = torch.cat([c.latents for c in chunks[-RECENT_CHUNKS:]], dim=2)
        self._mark(window=window, decoder=decoder, recent=self.context, skip=self.seam_frames)
        return decoder

    def _sampler(self, window: Window, new_chunks: int):
        s, c = self.settings, self.conditioner
        shape, device = self.latent_chunk_shape, self.model.device
        total = None if self.resumable else window.next_index + new_chunks - len(window.noisy) - len(window.ready)

        def noise_for(index):
            return seeded_noise(s.seed, index, NOISE, shape).to(device)

        if s.mode == "progressive":
            return progressive(window, c.denoise, c.leave, noise_for, self.levels, s.window_chunks, total, self._step)
        return replacement(window, c.denoise, c.leave, noise_for, self.levels, s.window_chunks, total,
                           overlap=s.overlap, renoise=s.mode == "rw",
                           renoise_for=lambda index, step: seeded_noise(s.seed, index, RENOISE, shape, step).to(device),
                           on_step=self._step)

    def _step(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled
        self.steps_done += 1
        if self.progress is not None:
            frames = self.boundary.frames_done - self.start_frames_done
            self.progress(Progress(self.steps_done, self.total_steps, frames, self.total_frames))

    def _mark(self, window=None, decoder=None, pending=None, chunks=0, frames=0, latents=None, recent=None,
              skip=0) -> None:
        """A new boundary; `skip`: decoded frames the next chunk drops (the seam after start frames)."""
        b = self.boundary
        if latents is not None:
            recent = latents if b.recent is None else torch.cat([b.recent, latents], dim=2)
            recent = recent[:, :, -RECENT_CHUNKS * latents.shape[2]:]
        # A finished chunk brings the decoder cache that decoded it, or None from `latents()`, which decodes nothing.
        self.boundary = Boundary(copy_window(window) if window is not None else b.window, self.conditioner.memory,
                                 decoder if decoder is not None or chunks else b.decoder, pending,
                                 b.chunks_done + chunks, b.frames_done + frames,
                                 recent if recent is not None else b.recent, skip)

    # ----- state -----
    def state(self) -> GenerationState:
        """The last boundary: `LongVideo(resume=...)` continues from exactly there."""
        return GenerationState(self.settings, self.boundary, config_fingerprint(self.model))

    def save_state(self, path: str | Path) -> None:
        self.state().save(path)


def copy_window(window: Window) -> Window:
    return Window([copy.copy(c) for c in window.clean], [copy.copy(c) for c in window.noisy],
                  [copy.copy(c) for c in window.ready], window.next_index)


def save_state(path, state: GenerationState) -> None:
    boundary, settings = state.boundary, state.settings
    tensors, layout = {}, {}
    for part in ("clean", "noisy", "ready"):
        chunks = getattr(boundary.window, part)
        layout[part] = [[c.index, c.steps] for c in chunks]
        tensors.update({f"window.{part}.{i}": c.latents for i, c in enumerate(chunks)})
    tensors.update({f"memory.{k}": v for k, v in boundary.memory.items()})
    tensors.update({f"decoder.{k}": v for k, v in (boundary.decoder or {}).items()})
    for name in ("pending", "recent"):
        if getattr(boundary, name) is not None:
            tensors[name] = getattr(boundary, name)
    meta = dict(layout=layout, next_index=boundary.window.next_index, chunks_done=boundary.chunks_done,
                frames_done=boundary.frames_done, skip=boundary.skip, settings=asdict(settings), model=state.model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path),
              metadata={"longtake_state": STATE_FORMAT, "generation": json.dumps(meta)})


def load_state(path, model: LongTakeModel) -> GenerationState:
    from ..memory.checkpoint import CheckpointError, read_header
    header = read_header(path)
    metadata = header.get("__metadata__") or {}
    if metadata.get("longtake_state") != STATE_FORMAT:
        found = metadata.get("longtake_state")
        raise CheckpointError(path, f"is a generation state of an older LongTake (format {found}, this one reads "
                                    f"{STATE_FORMAT}); make it again" if found else
                                    "is not a LongTake generation state (save one with --save-state or the "
                                    "Memory State node)")
    meta = json.loads(metadata["generation"])
    if meta["model"] != config_fingerprint(model):
        raise CheckpointError(path, "was saved from a different model than the one loaded; resume it with the "
                                    "checkpoint that made it")
    tensors = {k: v.to(model.device) for k, v in load_file(str(path)).items()}

    def chunks(part):
        return [Chunk(index, tensors[f"window.{part}.{i}"], steps) for i, (index, steps) in enumerate(meta["layout"][part])]

    window = Window(chunks("clean"), chunks("noisy"), chunks("ready"), meta["next_index"])
    memory = {k[len("memory."):]: v for k, v in tensors.items() if k.startswith("memory.")}
    decoder = {k[len("decoder."):]: v for k, v in tensors.items() if k.startswith("decoder.")} or None
    boundary = Boundary(window, memory, decoder, tensors.get("pending"), meta["chunks_done"], meta["frames_done"],
                        tensors.get("recent"), meta.get("skip", 0))
    # States saved before a setting existed ran as it was then: memory read at full strength, plain guidance,
    # and the recalled chunks read at the memory's strength.
    settings = {"memory_strength": 1.0, "guidance_parallel": 1.0, **meta["settings"]}
    settings.setdefault("recall_strength", settings["memory_strength"])
    return GenerationState(SamplerSettings(**settings), boundary, meta["model"])


def render_mp4(video: LongVideo, path: str | Path, crf: int = 18) -> int:
    """Stream `video` into an mp4 while it is generated; returns the frames written.

    The file is finished properly whatever ends the run (the last frame, a cancel, an error, Ctrl-C),
    so it always plays and holds every frame made so far.
    """
    from .video import Mp4Writer, to_uint8_frames
    with Mp4Writer(path, video.fps, crf=crf) as writer:
        for pixels in video.frames():
            writer.write(to_uint8_frames(pixels))
    return writer.frames_written
