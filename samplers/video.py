"""Video files through PyAV: an mp4 writer that streams frames in as they come, and a frame reader."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch


def to_uint8_frames(pixels: torch.Tensor) -> np.ndarray:
    """Library pixels `[3, T, H, W]` in [-1, 1] to `[T, H, W, 3]` uint8."""
    frames = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()


class Mp4Writer:
    """H.264 / yuv420p mp4 at a given fps, written frame by frame so nothing is held in memory.

    Sizes are padded to even numbers (yuv420p needs them) by repeating the last row or column.
    `close` flushes the encoder and finishes the file; a file closed after an interruption plays.
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 18):
        import av
        from av.video.reformatter import VideoReformatter
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.path), mode="w")
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(crf)}
        # One reformatter for the whole file: it keeps its conversion context, which each frame's own
        # `reformat` would build again (4x the cost of the conversion itself).
        self.to_yuv = VideoReformatter()
        self.frames_written = 0
        self._open = True

    def write(self, frames: np.ndarray) -> None:
        """frames `[T, H, W, 3]` uint8."""
        import av
        height, width = frames.shape[1:3]
        frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        if self.frames_written == 0:
            self.stream.height, self.stream.width = frames.shape[1:3]
        for frame in frames:
            # Converted here rather than left to the encoder: with PyAV 18's own conversion the same frames
            # encoded differently from one file to the next in one process. Not enough on its own: inside
            # the full test suite two files of the same frames still differed, cause not yet found.
            picture = self.to_yuv.reformat(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"),
                                           format="yuv420p")
            for packet in self.stream.encode(picture):
                self.container.mux(packet)
            self.frames_written += 1

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        if self.frames_written:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_frames(path: str | Path, limit: int | None = None) -> np.ndarray:
    """Frames `[T, H, W, 3]` uint8 of a video or an image (the last `limit` frames if given)."""
    import av
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file (give a video or an image to start from)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: has no video stream")
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.FFmpegError as error:
        raise ValueError(f"{path}: cannot be read as a video or an image ({error})") from None
    if not frames:
        raise ValueError(f"{path}: holds no frames")
    frames = frames[-limit:] if limit else frames
    return np.stack(frames)


def probe(path: str | Path) -> tuple[int, Fraction]:
    """(frame count, average fps) of a video file, counted by decoding."""
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream)), stream.average_rate
