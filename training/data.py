"""Where training videos come from: the procedural demo world, or a folder of the user's own footage.

Both give `video(i, frames)`: frames uint8 `[T, H, W, 3]` of the i-th training video; `prompts(i)`: a
function of a seed giving that video's caption (varied wording for the demo world, the `.txt` beside the
file for footage); `reappearances(i, frames)`: frames where an object comes back from a full occlusion (what
memory is for); and `clip(seed, frames)`: a random short clip with its caption.
"""
from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from . import world


VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif"}


class DemoWorld:
    name = "demo-world"

    def __init__(self, seed: int, resolution: int = 64, drop: float = 0.25, pillars: bool = False):
        """`pillars`: every scene has a pillar that its objects pass behind (the windows that teach memory)."""
        if resolution != 64:
            raise ValueError(f"the demo world renders 64x64 frames; this model wants {resolution}x{resolution}")
        self.seed, self.drop, self.pillars = seed, drop, pillars

    def video(self, i: int, frames: int) -> np.ndarray:
        return world.render(self._scene(i), self._start(i), frames)

    def drifted_video(self, i: int, frames: int, amount: float = 1.0) -> np.ndarray:
        """`video(i, frames)` with its objects drawn the way a model's own video drifts, one drift per video;
        `amount` of that drift (`Drift.toward_truth`)."""
        drift = world.sample_drift(np.random.default_rng([self.seed, i])).toward_truth(amount)
        return world.render(self._scene(i), self._start(i), frames, drift)

    def _start(self, i: int) -> int:
        return random.Random(self.seed * 7919 + i).randrange(0, 24 * 600)

    def prompts(self, i: int, drop: float | None = None) -> Callable[[int], str]:
        scene = self._scene(i)
        return lambda seed: world.sample_prompt(scene, seed, self.drop if drop is None else drop)

    def reappearances(self, i: int, frames: int) -> list[int]:
        """Frames of `video(i, frames)` where an object comes out from behind the pillar after a full hiding."""
        covered = world.hidden(self._scene(i), self._start(i), frames)
        found = []
        for column in covered.T:
            edges = np.flatnonzero(column[:-1] & ~column[1:]) + 1  # hidden, then visible
            found += [int(f) for f in edges if column[max(0, f - world.MIN_HIDDEN_FRAMES):f].all()]
        return sorted(found)

    def coming_back(self, i: int, first: int, frames: int, hidden_at: int) -> np.ndarray:
        """bool `[frames, H, W]`: where frames `first ..` of `video(i, ...)` show an object that is entirely behind
        the pillar at frame `hidden_at` (`world.coming_back`)."""
        start = self._start(i)
        return world.coming_back(self._scene(i), start + first, frames, start + hidden_at)

    def _scene(self, i: int):
        return world.sample_scene(self.seed * 1_000_003 + i, occlusion=True if self.pillars else None)

    def clip(self, seed: int, frames: int) -> tuple[np.ndarray, str]:
        return world.sample_clip(self.seed * 1_000_003 + seed, frames, self.drop)


class VideoFolder:
    """Every video under `folder` with a caption in a `.txt` of the same name, decoded with PyAV,
    centre-cropped to a square and resized to `resolution`. Unreadable videos are skipped with a warning
    naming them; they never stop training."""

    name = "video-folder"

    def __init__(self, folder: str | Path, resolution: int, fps: float = 24.0):
        self.folder, self.resolution, self.fps = Path(folder), resolution, fps
        if not self.folder.is_dir():
            raise ValueError(f"{self.folder}: no such folder of training videos")
        self.videos: list[tuple[np.ndarray, str]] = []
        for path in sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES):
            caption_file = path.with_suffix(".txt")
            if not caption_file.exists():
                warnings.warn(f"LongTake training: skipping {path}: no caption file {caption_file.name} beside it")
                continue
            try:
                frames = self._decode(path)
            except Exception as error:  # a broken file must not end a long training run
                warnings.warn(f"LongTake training: skipping {path}: cannot decode it ({error})")
                continue
            if len(frames) < 8:
                warnings.warn(f"LongTake training: skipping {path}: only {len(frames)} frames")
                continue
            self.videos.append((frames, caption_file.read_text().strip()))
        if not self.videos:
            raise ValueError(f"{self.folder}: no usable videos (each needs a .txt caption of the same name)")

    def _decode(self, path: Path) -> np.ndarray:
        import av
        import torch
        import torch.nn.functional as F
        frames = []
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or self.fps)
            step = max(1.0, rate / self.fps)  # drop frames to reach the model's fps; never invent them
            next_keep = 0.0
            for n, frame in enumerate(container.decode(stream)):
                if n + 1e-6 < next_keep:
                    continue
                next_keep += step
                image = frame.to_ndarray(format="rgb24")
                h, w = image.shape[:2]
                side = min(h, w)
                top, left = (h - side) // 2, (w - side) // 2
                square = torch.from_numpy(image[top:top + side, left:left + side]).permute(2, 0, 1)[None].float()
                small = F.interpolate(square, size=(self.resolution,) * 2, mode="area", antialias=False)
                frames.append(small[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())
        return np.stack(frames)

    def _window(self, frames: np.ndarray, start: int, count: int) -> np.ndarray:
        # Short videos loop back and forth so any clip length can be cut from them.
        index = np.arange(start, start + count)
        period = 2 * (len(frames) - 1)
        index = index % period
        index = np.where(index < len(frames), index, period - index)
        return frames[index]

    def video(self, i: int, frames: int) -> np.ndarray:
        source, _ = self.videos[i % len(self.videos)]
        start = random.Random(i).randrange(0, max(1, len(source) - frames + 1))
        return self._window(source, start, frames)

    def prompts(self, i: int, drop: float | None = None) -> Callable[[int], str]:
        caption = self.videos[i % len(self.videos)][1]
        return lambda seed: caption

    def reappearances(self, i: int, frames: int) -> list[int]:
        return []  # unknown for footage: occlusion-focused windows come from the demo world only

    def clip(self, seed: int, frames: int) -> tuple[np.ndarray, str]:
        rng = random.Random(seed)
        source, caption = self.videos[rng.randrange(len(self.videos))]
        return self._window(source, rng.randrange(0, max(1, len(source) - frames + 1)), frames), caption

    def words(self) -> set[str]:
        from ..memory.text import words_of
        return {w for _, caption in self.videos for w in words_of(caption)}


def to_pixels(frames: np.ndarray):
    """uint8 `[T, H, W, 3]` (or a batch `[B, T, H, W, 3]`) to library pixels `[B, 3, T, H, W]` in [-1, 1]."""
    import torch
    x = torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1
    if x.dim() == 4:
        x = x[None]
    return x.permute(0, 4, 1, 2, 3).contiguous()
