"""Where latents meet: one model's sampled latents decoded by several decoders, measured side by side.

The VAE turns each latent into `time_factor` frames. Where a denoiser gets one latent's overall tint a
little off from the next one's, the decoder shows the change at the first frame of the new latent, and on a
still scene (a pillar with its object hidden, nothing moving) PySceneDetect's adaptive detector reads such a
jump as a cut: it cuts where a frame's content score (mean change of hue, saturation and value) is at least
15 and three times that of its two neighbours on each side. So a decoder can cut a video that its denoiser
made whole.

To judge a decoder apart from the denoiser, `run_seams` samples the benchmark prompts once with the model
(progressive, default settings, prompt `i` with seed `seed + i`, as `bench quality` does) and decodes the very
same latents with each decoder given, a decoder of the same latent space (a decoder-only fine-tune). Per
decoder it reports the videos with a cut, the near cuts (a frame scoring at least half the detector's 15 and
twice its neighbours' mean), the seam ratio (mean content score at the first frame of a latent over that of
the other frames: 1 is change spread evenly, above 1 is change in steps at the seams) and `bench quality`'s
clip measures (background, object colors: the share of clips, averaged over the videos; motion kept: the share
of videos), which a decoder can also move.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import numpy as np

from .quality import (FAST_PROMPTS, MOTION_KEPT, PROMPTS, checks_for, measure_video, mp4_frames, prompt_checks,
                      require_packages, share)

CUT_SCORE, CUT_RATIO, NEIGHBOURS = 15.0, 3.0, 2  # PySceneDetect's AdaptiveDetector defaults
NEAR_SCORE, NEAR_RATIO = CUT_SCORE / 2, CUT_RATIO * 2 / 3  # a near cut


def content_scores(frames: Iterable[np.ndarray]) -> np.ndarray:
    """The detector's content score of each RGB frame against the one before (0 for the first): mean absolute
    change of OpenCV's hue, saturation and value, weighted alike. One frame at a time, as `features` reads."""
    import cv2
    scores, previous = [], None
    for frame in frames:
        hsv = cv2.cvtColor(np.ascontiguousarray(frame[:, :, ::-1]), cv2.COLOR_BGR2HSV).astype(np.int16)
        scores.append(0.0 if previous is None else float(np.abs(hsv - previous).mean()))
        previous = hsv
    return np.array(scores)


def near_cuts(scores: np.ndarray) -> int:
    """Frames that score at least half the detector's minimum and twice their neighbours' mean (frames
    near either end against the neighbours they have)."""
    count = 0
    for i in range(1, len(scores)):
        around = np.concatenate([scores[max(1, i - NEIGHBOURS):i], scores[i + 1:i + 1 + NEIGHBOURS]])
        if len(around) and scores[i] >= NEAR_SCORE and scores[i] >= NEAR_RATIO * max(around.mean(), 1e-6):
            count += 1
    return count


def seam_ratio(scores: np.ndarray, step: int, first_seam: int) -> float:
    """Mean score at frames that open a latent (`first_seam`, then every `step`) over that at the others."""
    index = np.arange(1, len(scores))
    at_seam = (index - first_seam) % step == 0
    return float(scores[1:][at_seam].mean() / max(scores[1:][~at_seam].mean(), 1e-6))


def measure(mp4: Path, prompt: str, fps: float, step: int, first_seam: int) -> dict:
    """The video as the detector and `bench quality` read it: from the mp4."""
    # `bench quality`'s own measures; occlusion events need a sampler's window and are that benchmark's to count.
    measured = measure_video(mp4, replace(checks_for(prompt), occlusion=None), fps, window=0)
    scores = content_scores(mp4_frames(mp4))
    colors = [v for values in measured["object_colors"].values() for v in values]
    return dict(prompt=prompt, cuts=measured["scene_cuts"], near_cuts=near_cuts(scores),
                seam_ratio=seam_ratio(scores, step, first_seam),
                background=None if measured["background"] is None else share(measured["background"]),
                object_colors=share(colors) if colors else None, motion_ratio=measured["motion_ratio"])


def summary(videos: list[dict]) -> dict:
    def mean(key):
        values = [v[key] for v in videos if v[key] is not None]
        return float(np.mean(values)) if values else None
    return dict(cut_videos=sum(bool(v["cuts"]) for v in videos), videos=len(videos),
                near_cuts=sum(v["near_cuts"] for v in videos), seam_ratio=mean("seam_ratio"),
                background=mean("background"), object_colors=mean("object_colors"),
                motion_kept=float(np.mean([v["motion_ratio"] >= MOTION_KEPT for v in videos])))


def table(report: dict) -> str:
    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}%"
    lines = ["| decoder | videos cut | near cuts | seam ratio | background | object colors | motion kept |",
             "|---|---|---|---|---|---|---|"]
    for name, run in report["decoders"].items():
        s = run["summary"]
        lines.append(f"| {name} | {s['cut_videos']} of {s['videos']} | {s['near_cuts']} | {s['seam_ratio']:.2f} | "
                     f"{pct(s['background'])} | {pct(s['object_colors'])} | {pct(s['motion_kept'])} |")
    return "\n".join(lines)


def run_seams(checkpoint: str | Path, decoders: list[str | Path], out_dir: Path, seconds: float = 60,
              prompts: list[str] | None = None, seed: int = 0, device: str = "cpu", progress=print) -> dict:
    """Samples every prompt once with `checkpoint`, decodes the latents with its own decoder and each of
    `decoders` (checkpoints whose VAE shares its latent space), and writes the mp4s, seams.json and table.md."""
    import torch
    from ..memory import load_checkpoint
    from ..samplers import LongVideo, PromptSchedule, SamplerSettings
    from ..samplers.video import Mp4Writer, to_uint8_frames

    require_packages("seams", "scenedetect")
    prompts, _ = prompt_checks(prompts)
    model = load_checkpoint(checkpoint, device=device)
    vaes = {"own": model.vae}
    for path in decoders:
        other = load_checkpoint(path, device=device)
        same = (other.config.vae.latent_channels == model.config.vae.latent_channels
                and other.config.vae.time_factor == model.config.vae.time_factor
                and torch.allclose(other.vae.latent_mean, model.vae.latent_mean)
                and torch.allclose(other.vae.latent_std, model.vae.latent_std))
        if not same:
            raise ValueError(f"{path}: its VAE does not share {checkpoint}'s latent space (another encoder or "
                             f"latent statistics), so it cannot decode that model's latents; give decoders "
                             f"fine-tuned with `longtake train vae --decoder-only` from the same VAE")
        vaes[str(path)] = other.vae
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fps, step = model.config.fps, model.config.vae.time_factor
    report = dict(checkpoint=str(checkpoint), seconds=seconds, seed=seed, prompts=prompts,
                  decoders={name: dict(videos=[]) for name in vaes})
    for i, prompt in enumerate(prompts):
        started = time.monotonic()
        video = LongVideo(model, PromptSchedule.single(prompt), seconds, fps, SamplerSettings(seed=seed + i))
        with torch.no_grad():
            latents = torch.cat(list(video.latents()), dim=2)
        skip, frames = video.seam_frames, video.total_frames
        for d, (name, vae) in enumerate(vaes.items()):
            with torch.no_grad():
                pixels, _ = vae.decode(latents)
            made = to_uint8_frames(pixels[0, :, skip:skip + frames].clamp(-1, 1))
            path = out_dir / f"decoder{d}-{i:02d}.mp4"
            with Mp4Writer(path, fps) as writer:
                writer.write(made)
            report["decoders"][name]["videos"].append(measure(path, prompt, fps, step, (-skip) % step))
        progress(f"{i:02d} ({time.monotonic() - started:.1f} s): {prompt}")
    for run in report["decoders"].values():
        run["summary"] = summary(run["videos"])
    (out_dir / "seams.json").write_text(json.dumps(report, indent=1))
    (out_dir / "table.md").write_text(table(report) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="the model whose sampled latents every decoder decodes")
    parser.add_argument("--decoder", action="append", default=[],
                        help="a checkpoint whose decoder to compare with the model's own (repeat for more); "
                             "its VAE must share the model's latents, as a decoder-only fine-tune does")
    parser.add_argument("--out", default="seams", help="folder for the mp4s, seams.json and table.md")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fast", action="store_true", help=f"the first {FAST_PROMPTS} prompts for 2 s (a smoke test)")


def run_from_args(args: argparse.Namespace) -> int:
    prompts = list(PROMPTS[:FAST_PROMPTS]) if args.fast else None
    seconds = min(args.seconds, 2.0) if args.fast else args.seconds
    report = run_seams(args.checkpoint, args.decoder, Path(args.out), seconds, prompts, args.seed, args.device)
    print(table(report))
    return 0
