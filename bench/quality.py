"""Long-horizon quality: does a minute of video keep its prompt, its motion, one scene, and its objects'
colors through occlusion? The progressive (PA-VDM) sampler against the RW and RN baselines, same model.

Every video is made by the real loop (`LongVideo` + `render_mp4`) and read back from its mp4 frame by
frame. Each frame is reduced at once to a few numbers (pixels nearest to each palette color, pixels close
to each, difference from the frame before), so only those numbers grow with the video's length. Every
measure is a small pure function of them, taken over 2-second clips:

- background: the named background color is the clip's dominant palette color;
- object colors: each named object color covers enough of the clip's pixels;
- motion: the mean frame difference of the last 10 s is at least half that of the first 10 s;
- scene cuts: PySceneDetect's AdaptiveDetector finds one scene in the whole mp4;
- memory through occlusion: an object that stays out of view longer than the denoiser's window comes
  back in the color it had, with memory and with memory off (progressive, same model and seed).

Two reference rows bound what a model can score: the demo world's own videos of the prompts, and those
videos encoded and decoded by the model's VAE (a perfect denoiser with this VAE).

Return from occlusion: progressive continues the world's own video of each occlusion prompt from where its
object has just gone behind the pillar, with memory and with memory off, on several seeds. The front chunk
shows the pillar alone and the prompt names no object color, so the object's color is in memory or nowhere:
many events where the minute-long videos give a few, and the memory's part in them alone.

Continuation: each sampler also continues the demo world's own first 2 s of every prompt that names an
object color for 10 s, and each named object's area (pixels near its color) is compared per clip with the
world's own next 10 s: below 1 the object fades, above 1 it swells. This asks only the denoiser, from a
true start, to keep an object it is shown, and takes a minute where the minute-long videos take many.

What a prompt leaves out is not checked: the demo world draws unnamed colors at random, so only the
prompt's own color words say what the video owes it.

    longtake bench quality CHECKPOINT [--out DIR] [--seconds 60] [--prompts FILE] [--fast]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..training.world import PALETTE, SPELLINGS, hidden, render, scene_from_prompt

SAMPLERS = ("progressive", "rw", "rn")
WORLD = "world"  # the row of the demo world's own videos
VAE = "vae"      # the row of those videos encoded and decoded by the model's VAE
CLIP_SECONDS = 2.0
COLOR_DISTANCE = 60.0  # RGB distance within which a pixel shows a palette color; the closest two are 71 apart
# Of a clip's pixels, as the issue sets it. The smallest object, a 10 px triangle behind a pillar, covers
# 60 px = 1.5% of a 64x64 frame.
PRESENT_SHARE = 0.01
MOTION_SECONDS = 10.0
MOTION_KEPT = 0.5  # the last seconds move at least this much relative to the first
VISIBLE_PIXELS = 16  # object pixels for the object to be in view: a whole 10 px object shows 60 or more
COLOR_SECONDS = 1.0  # how long before vanishing and after coming back the object's color is taken over
CRITERIA = {"background": 0.95, "object_colors": 0.90, "motion": 0.90, "single_scene": 0.90, "occlusion": 0.80}  # as the issue sets them
MEASURES = {  # name: (table heading, unit the criterion counts)
    "background": ("background", "clips"),
    "object_colors": ("object colors", "clips"),
    "motion": ("motion kept", "videos"),
    "single_scene": ("single scene", "videos"),
    "occlusion": ("color through occlusion", "events"),
}
# Extra seeds for the occlusion measure alone step by this much (by a multiple of it for more prompts), so that
# with prompt i at seed + i they never meet the table's own seeds of any of its prompts.
OCCLUSION_SEED_STRIDE = 100
START_SECONDS, CONTINUE_SECONDS = 2.0, 10.0  # continuation: the world's start, and how long to go on from it
RETURN_SECONDS = 4.0  # return from occlusion: how long the model has to bring the hidden object back
RETURN_HIDDEN_CHUNKS = 2  # ...cut this many chunks after the object went behind the pillar: the front shows none of it
KEPT_AREA = (0.5, 2.0)  # an object is kept when its area in the last clip lies within these times the world's
FAST_PROMPTS, FAST_SECONDS = 2, 4.0

# Varied canonical prompts. The first two are what --fast runs: one naming everything, one occlusion
# prompt, so the fast run reaches every measure. Pillar prompts name no object color (memory has to keep
# it) and pair background and pillar colors whose blend at the pillar's edges is nearest to one of the
# two, never to a third color that would pass for the object.
PROMPTS = (
    "a red ball bouncing on a black background",
    "a ball moving right behind a gray pillar on a black background",
    "a blue square moving left slowly on a white background",
    "a yellow triangle moving up quickly on a purple background",
    "a green ball and an orange square bouncing on a gray background",
    "a square moving left behind a white pillar on a gray background",
    "a cyan triangle moving down slowly on a black background",
    "a purple ball bouncing quickly on a yellow background",
    "a white square and a red triangle moving right on a blue background",
    "a triangle moving right slowly behind a black pillar on a gray background",
    "an orange ball moving up on a green background",
    "a red square bouncing slowly on a cyan background",
    "a ball moving left behind a gray pillar on a white background",
    "a blue ball and a yellow ball bouncing on a black background",
    "a green triangle moving down quickly on a white background",
    "a square moving right behind a gray pillar on a black background",
    "a white ball moving left quickly on a red background",
    "a purple square and a cyan triangle moving up on a gray background",
    "a ball moving left behind a blue pillar on a black background",
    "a yellow ball and a green square moving down slowly on a purple background",
)

COLORS = tuple(PALETTE)
RGB = np.array([PALETTE[c] for c in COLORS], np.float32)
_CANONICAL = {spelling: word for word, spellings in SPELLINGS.items() for spelling in spellings}
_WORD = re.compile(r"[a-z]+")  # the world and the text encoder split prompts the same way


# ----- what a prompt asks for -----
@dataclass(frozen=True)
class Checks:
    background: str | None             # the named background color
    object_colors: tuple[str, ...]     # named object colors, on prompts without a pillar
    occlusion: tuple[str, str] | None  # (background, pillar) colors when the occlusion measure applies


def checks_for(prompt: str) -> Checks:
    """What the video of `prompt` is checked for; a prompt the demo world cannot read raises ValueError."""
    scene = scene_from_prompt(prompt, seed=0)
    # The world draws an unnamed color from those the prompt does not name, so a scene color is named
    # exactly when its word is in the prompt.
    named = {_CANONICAL.get(w, w) for w in _WORD.findall(prompt.lower())} & set(PALETTE)
    background = scene.background if scene.background in named else None
    objects = tuple(sorted({o.color for o in scene.objects} & named))
    pillar = scene.pillar
    # A correct video may hide a pillar scene's object for a whole clip, so its color is not owed per clip.
    object_colors = objects if pillar is None else ()
    # One object only: a second one in view would hide the first one's vanishing.
    occlusion = None
    if pillar is not None and len(scene.objects) == 1 and not objects and background and pillar.color in named:
        occlusion = (background, pillar.color)
    return Checks(background, object_colors, occlusion)


def read_prompts(path: str | Path) -> list[str]:
    """One prompt a line; blank lines and `#` comments are skipped, as in prompt schedules."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"{path}: holds no prompts (one a line)")
    return prompts


# ----- frames to numbers -----
@dataclass
class Features:
    nearest: np.ndarray  # int64 [T, colors]: pixels whose nearest palette color is each
    near: np.ndarray     # int64 [T, colors]: pixels within COLOR_DISTANCE of each
    diff: np.ndarray     # float64 [T]: mean |frame - previous| over pixels and channels, 0..255; NaN at 0
    pixels: int          # per frame


def palette_counts(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest, near) counts per palette color of one uint8 `[H, W, 3]` frame."""
    distance = np.linalg.norm(frame.reshape(-1, 1, 3).astype(np.float32) - RGB, axis=2)
    return np.bincount(distance.argmin(1), minlength=len(COLORS)), (distance <= COLOR_DISTANCE).sum(0)


def features(frames: Iterable[np.ndarray]) -> Features:
    """Reduce frames one at a time, so a minute of video is never held."""
    nearest, near, diff = [], [], []
    previous = None
    for frame in frames:
        a, b = palette_counts(frame)
        nearest.append(a)
        near.append(b)
        current = frame.astype(np.int16)
        diff.append(math.nan if previous is None else float(np.abs(current - previous).mean()))
        previous = current
    if not diff:
        raise ValueError("no frames to measure")
    return Features(np.stack(nearest), np.stack(near), np.array(diff), int(frame.shape[0] * frame.shape[1]))


def mp4_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Frames of a video file as uint8 `[H, W, 3]`, decoded one at a time."""
    import av
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def clip_slices(frames: int, clip: int) -> list[slice]:
    """Consecutive clips of `clip` frames covering the video; the last may be shorter."""
    return [slice(start, min(start + clip, frames)) for start in range(0, frames, clip)]


# ----- the measures -----
def background_by_clip(f: Features, clips: list[slice], background: str) -> list[bool]:
    return [COLORS[int(f.nearest[c].sum(0).argmax())] == background for c in clips]


def colors_by_clip(f: Features, clips: list[slice], colors: Iterable[str]) -> dict[str, list[bool]]:
    return {color: [bool(f.near[c, COLORS.index(color)].sum() >= PRESENT_SHARE * f.pixels * (c.stop - c.start))
                    for c in clips] for color in colors}


def motion_by_clip(f: Features, clips: list[slice]) -> list[float]:
    # Only frame 0 has no difference, and run_quality asks for a whole first clip, so none is all NaN.
    return [float(np.nanmean(f.diff[c])) for c in clips]


def motion_ratio(diff: np.ndarray, window: int) -> float:
    """Mean frame difference over the last `window` frames over that of the first `window` frames."""
    first, last = np.nanmean(diff[:window]), np.nanmean(diff[-window:])
    # A video that does not move at the start fails like one whose motion dies: it shows no motion.
    return float(last / first) if first > 0 else 0.0


def scene_cuts(path: str | Path) -> list[int]:
    """Frames where PySceneDetect's AdaptiveDetector starts a new scene; none for a single shot."""
    from scenedetect import AdaptiveDetector, detect
    scenes = detect(str(path), AdaptiveDetector(), start_in_scene=True)
    return [start.frame_num for start, _ in scenes[1:]]


def hidden_runs(visible: np.ndarray) -> list[tuple[int, int]]:
    """(first hidden frame, first frame back) of each stretch out of view with the object seen on both sides."""
    starts = np.concatenate([[0], np.flatnonzero(visible[1:] != visible[:-1]) + 1])
    stops = np.append(starts[1:], len(visible))
    return [(int(a), int(b)) for a, b in zip(starts, stops) if not visible[a] and a > 0 and b < len(visible)]


def object_pixels(nearest: np.ndarray, background: str, pillar: str):
    """Per frame, the pixels nearest to each palette color that is neither the background's nor the pillar's
    (what can only be an object), and `dominant(first, stop)`: the most of those colors over those frames."""
    others = [i for i, c in enumerate(COLORS) if c not in (background, pillar)]
    counts = nearest[:, others]
    return counts, lambda first, stop: COLORS[others[int(counts[first:stop].sum(0).argmax())]]


def occlusion_events(nearest: np.ndarray, background: str, pillar: str, longer_than: int, span: int) -> list[dict]:
    """Each time the object is out of view for more than `longer_than` frames and comes back: its dominant
    color over the `span` frames before it vanished and after it came back.

    The object's pixels are those nearest to a palette color that is neither the background's nor the
    pillar's; it is in view when it has at least VISIBLE_PIXELS of them.
    """
    counts, dominant = object_pixels(nearest, background, pillar)
    events = []
    for start, stop in hidden_runs(counts.sum(1) >= VISIBLE_PIXELS):
        if stop - start > longer_than:
            before, after = dominant(max(0, start - span), start), dominant(stop, stop + span)
            events.append(dict(hidden_from=start, back_at=stop, before=before, after=after, same=before == after))
    return events


def measure_video(path: Path, checks: Checks, fps: float, window: int) -> dict:
    """All raw numbers of one video: per clip, per video and per occlusion event."""
    f = features(mp4_frames(path))
    frames = len(f.diff)
    clips = clip_slices(frames, round(CLIP_SECONDS * fps))
    return dict(
        mp4=path.name, frames=frames, checks=asdict(checks),
        background=background_by_clip(f, clips, checks.background) if checks.background else None,
        object_colors=colors_by_clip(f, clips, checks.object_colors),
        motion=motion_by_clip(f, clips),
        motion_ratio=motion_ratio(f.diff, min(round(MOTION_SECONDS * fps), frames // 2)),
        scene_cuts=scene_cuts(path),
        occlusion=(occlusion_events(f.nearest, *checks.occlusion, longer_than=window,
                                    span=round(COLOR_SECONDS * fps)) if checks.occlusion else None),
    )


# ----- summaries -----
def share(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def interval(groups: list[list[bool]], draws: int = 2000, seed: int = 0) -> list[float] | None:
    """The 95% interval of the pooled share of passes over `groups` (a video's clips or events, or a prompt's
    events over several seeds); None when nothing was counted.

    One group's items are far from independent (a video that loses its background loses it for the rest of the
    minute), so it is the groups that vary: the interval spans both the groups drawn again at random `draws`
    times (with replacement) and the Wilson interval of the share over as many independent trials as there are
    groups. The second keeps a few groups, or groups that all agree, from reading as a certainty."""
    groups = [g for g in groups if g]
    if not groups:
        return None
    kept = np.array([sum(g) for g in groups], dtype=np.float64)
    counted = np.array([len(g) for g in groups], dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(groups), size=(draws, len(groups)))
    shares = kept[picks].sum(axis=1) / counted[picks].sum(axis=1)
    low, high = wilson(kept.sum() / counted.sum() * len(groups), len(groups))
    return [min(low, float(np.quantile(shares, 0.025))), max(high, float(np.quantile(shares, 0.975)))]


def wilson(passed: float, trials: int, z: float = 1.96) -> list[float]:
    """The Wilson score interval of a share of `passed` in `trials`."""
    centre = (passed + z * z / 2) / (trials + z * z)
    half = z * math.sqrt(passed * (trials - passed) / trials + z * z / 4) / (trials + z * z)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def summarise(videos: list[dict]) -> dict:
    """Per measure: the share passing (None when nothing was checked), how many were counted, and the share's
    95% interval over the videos."""
    per_video = {
        "background": [v["background"] or [] for v in videos],
        "object_colors": [[ok for oks in v["object_colors"].values() for ok in oks] for v in videos],
        "motion": [[v["motion_ratio"] >= MOTION_KEPT] for v in videos],
        "single_scene": [[not v["scene_cuts"]] for v in videos],
        "occlusion": [[e["same"] for e in v["occlusion"] or []] for v in videos],
    }
    summary = {}
    for name, groups in per_video.items():
        values = [ok for group in groups for ok in group]
        summary[name] = dict(share=share(values), count=len(values), interval=interval(groups))
    summary["motion"]["median_ratio"] = float(np.median([v["motion_ratio"] for v in videos])) if videos else None
    return summary


def timelines(videos: list[dict], clip: int) -> dict[str, list[float | None]]:
    """Each measure per clip across the videos: what the plots draw (None where nothing was counted)."""
    clips = max(len(v["motion"]) for v in videos)

    def per_clip(pairs):  # (clip index, value) pairs -> mean per clip
        sums, counts = np.zeros(clips), np.zeros(clips)
        for k, value in pairs:
            sums[k] += value
            counts[k] += 1
        return [float(s / n) if n else None for s, n in zip(sums, counts)]

    return {
        "background": per_clip((k, ok) for v in videos for k, ok in enumerate(v["background"] or [])),
        "object_colors": per_clip((k, ok) for v in videos for oks in v["object_colors"].values()
                                  for k, ok in enumerate(oks)),
        "motion": per_clip((k, d) for v in videos for k, d in enumerate(v["motion"])),
        # Share of videos with a cut in the clip.
        "scene_cuts": per_clip((k, any(cut // clip == k for cut in v["scene_cuts"]))
                               for v in videos for k in range(len(v["motion"]))),
        # Share of events with the same color, by the clip in which the object came back.
        "occlusion": per_clip((e["back_at"] // clip, e["same"]) for v in videos for e in v["occlusion"] or []),
    }


def passes(name: str, share: float) -> str:
    return "PASS" if share >= CRITERIA[name] else "FAIL"


def with_interval(share: float, bounds: list[float] | None) -> str:
    return f"{share:.1%}" + (f" [{bounds[0] * 100:.0f}-{bounds[1]:.0%}]" if bounds else "")


INTERVAL_NOTE = ("In brackets, the 95% interval of each share over the videos (see `interval`): the spread the "
                 "choice of prompts and seeds alone leaves.")


def table(report: dict) -> str:
    """Markdown: one row per sampler (and memory off), each measure against its criterion."""
    headings = [f"{title} (>= {CRITERIA[name]:.0%} {unit})" for name, (title, unit) in MEASURES.items()]
    lines = ["| sampler | memory | " + " | ".join(headings) + " |", "|---|---|" + "---|" * len(MEASURES)]
    for key, run in report["runs"].items():
        cells = []
        for name in MEASURES:
            s = run["summary"][name]
            # Memory off runs the occlusion prompts only; the other measures would compare other prompts.
            if (run["memory"] or name == "occlusion") and s["share"] is not None:
                verdict = passes(name, s["share"])
                if name == "motion":
                    verdict += f" (median ratio {s['median_ratio']:.2f})"
                elif name == "occlusion":
                    verdict += f" ({s['count']} events)"
                cells.append(f"{with_interval(s['share'], s['interval'])} {verdict}")
            else:
                cells.append("n/a" if run["memory"] or name == "occlusion" else "-")
        memory = "-" if run["sampler"] in (WORLD, VAE) else "on" if run["memory"] else "off"
        lines.append(f"| {run['sampler']} | {memory} | " + " | ".join(cells) + " |")
    settings = report["settings"]
    lines.append(f"\n{len(report['prompts'])} prompts x {report['seconds']:g} s, seeds from {report['seed']}; "
                 + ", ".join(f"{k} {v}" for k, v in settings.items()) + f". {INTERVAL_NOTE}")
    more_seeds = occlusion_seeds_table(report)
    if more_seeds:
        lines += ["", more_seeds]
    for extra in (return_table(report), continuation_table(report)):
        if extra:
            lines += ["", extra]
    return "\n".join(lines)


def occlusion_seeds_table(report: dict) -> str:
    """Markdown: color through occlusion pooled over the table's seed and the extra ones, per row."""
    pooled = {key: run["occlusion_seeds"] for key, run in report["runs"].items() if "occlusion_seeds" in run}
    if not pooled:
        return ""
    seeds = ", ".join(map(str, next(iter(pooled.values()))["seeds"]))
    lines = [f"Color through occlusion on the occlusion prompts with seeds {seeds} (prompt i at seed + i; the first "
             "is the table's own):", "", f"| sampler | memory | color through occlusion (>= {CRITERIA['occlusion']:.0%} "
             "events) |", "|---|---|---|"]
    for key, result in pooled.items():
        run = report["runs"][key]
        if result["share"] is None:
            cell = "n/a (no events)"
        else:
            cell = (f"{with_interval(result['share'], result['interval'])} {passes('occlusion', result['share'])} "
                    f"({result['kept']} of {result['count']} events)")
        lines.append(f"| {run['sampler']} | {'on' if run['memory'] else 'off'} | {cell} |")
    return "\n".join(lines)


def plot(report: dict, out_dir: Path) -> None:
    """One PNG per measure against time, one line per sampler (and memory off)."""
    from matplotlib.figure import Figure  # renders through Agg without touching pyplot's global backend
    labels = {"background": "share of clips with the named background",
              "object_colors": "share of named object colors present",
              "motion": "mean frame difference (0-255)",
              "scene_cuts": "share of videos with a cut in the clip",
              "occlusion": "share of returns in the same color"}
    for name, label in labels.items():
        figure = Figure(figsize=(7, 3.5))
        axes = figure.subplots()
        for key, run in report["runs"].items():
            if not run["memory"] and name != "occlusion":  # it ran the occlusion prompts only, as in the table
                continue
            values = [math.nan if v is None else v for v in run["timelines"][name]]
            if not all(math.isnan(v) for v in values):
                axes.plot([CLIP_SECONDS * (k + 0.5) for k in range(len(values))], values, marker="o", label=key)
        axes.set(xlabel="seconds (middle of each 2 s clip)", ylabel=label, title=name.replace("_", " "))
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
        figure.tight_layout()
        figure.savefig(out_dir / f"{name}.png", dpi=100)


def area_ratios(made: Features, truth: Features, clips: list[slice], color: str) -> list[float | None]:
    """Per clip, the pixels near `color` in the made video over those in the true one (None where the true
    one has none)."""
    k = COLORS.index(color)
    return [float(made.near[c, k].sum() / truth.near[c, k].sum()) if truth.near[c, k].sum() else None
            for c in clips]


def summarise_continuation(objects: list[dict]) -> dict:
    """Median area ratio per clip over the named objects, and the share kept to the end."""
    if not objects:
        return dict(median_by_clip=[], kept=None, count=0)
    ratios = np.array([[math.nan if r is None else r for r in o["area_ratio"]] for o in objects], dtype=float)
    last = ratios[:, -1]
    last = last[~np.isnan(last)]
    return dict(median_by_clip=[None if np.isnan(col).all() else float(np.nanmedian(col)) for col in ratios.T],
                kept=float(np.mean((last >= KEPT_AREA[0]) & (last <= KEPT_AREA[1]))) if len(last) else None,
                count=len(last))


def continuation_table(report: dict) -> str:
    runs = report.get("continuation") or {}
    if not runs:
        return ""
    clips = max(len(r["summary"]["median_by_clip"]) for r in runs.values())
    spans = [f"{CLIP_SECONDS * k:g}-{CLIP_SECONDS * (k + 1):g} s" for k in range(clips)]
    lines = [f"Continuing the demo world's own first {START_SECONDS:g} s: each named object's area against the "
             "world's own continuation (median over objects; 1 = as in the world, below fades, above swells), and "
             f"the share kept to the end ({KEPT_AREA[0]:g}-{KEPT_AREA[1]:g}x in the last clip):", "",
             "| sampler | " + " | ".join(spans) + " | kept |", "|---|" + "---|" * (clips + 1)]
    for mode, run in runs.items():
        s = run["summary"]
        cells = ["-" if v is None else f"{v:.2f}" for v in s["median_by_clip"]]
        kept = "n/a" if s["kept"] is None else f"{s['kept']:.0%} of {s['count']}"
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {kept} |")
    first = next(iter(runs.values()))["objects"]
    lines.append(f"\n{len({o['prompt'] for o in first})} prompts x {CLIP_SECONDS * clips:g} s after "
                 f"{START_SECONDS:g} s of the world, {len(first)} named objects; the vae row is the world's own "
                 "video through the model's VAE")
    return "\n".join(lines)


def continue_world(model, prompts: list[str], checks: list[Checks], base, samplers, seed: int, seconds: float,
                   out_dir: Path, device: str, progress: Callable[[str], None]) -> dict:
    """Each sampler continues the world's own start of every prompt that names object colors; the areas
    against the world's own continuation, both read back from mp4s. A `vae` row runs the world's whole
    video through the model's VAE: what a perfect denoiser would score."""
    import torch
    from ..samplers import LongVideo, PromptSchedule, render_mp4
    from ..samplers.video import Mp4Writer, to_uint8_frames
    from ..training.data import to_pixels
    fps = model.config.fps
    start_frames, frames = round(START_SECONDS * fps), round(seconds * fps)
    clips = clip_slices(frames, round(CLIP_SECONDS * fps))
    chosen = [(i, prompt, check) for i, (prompt, check) in enumerate(zip(prompts, checks)) if check.object_colors]
    scenes, truths = {}, {}
    for i, prompt, _ in chosen:
        scenes[i] = scene_from_prompt(prompt, seed + i)
        truth = out_dir / f"continue-world-{i:02d}.mp4"
        with Mp4Writer(truth, fps) as writer:
            writer.write(render(scenes[i], start_frames, frames))
        truths[i] = features(mp4_frames(truth))

    def measure(name: str, make: Callable[[int, str, Path], None]) -> dict | None:
        objects = []
        for i, prompt, check in chosen:
            path = out_dir / f"continue-{name}-{i:02d}.mp4"
            with torch.no_grad():
                make(i, prompt, path)
            made = features(mp4_frames(path))
            objects += [dict(prompt=prompt, seed=seed + i, color=color,
                             area_ratio=area_ratios(made, truths[i], clips, color)) for color in check.object_colors]
        progress(f"continuation, {name}: {len(objects)} objects")
        return dict(summary=summarise_continuation(objects), objects=objects) if objects else None

    def sampled(mode):
        def make(i, prompt, path):
            start = to_pixels(render(scenes[i], 0, start_frames))[0].to(device)
            render_mp4(LongVideo(model, PromptSchedule.single(prompt), seconds, fps,
                                 replace(base, mode=mode, seed=seed + i), start=start), path)
        return make

    def through_vae(i, prompt, path):
        latents, _ = model.vae.encode(to_pixels(render(scenes[i], 0, start_frames + frames)).to(device))
        with Mp4Writer(path, fps) as writer:
            writer.write(to_uint8_frames(model.vae.decode(latents)[0][0])[start_frames:])

    runs = {mode: measure(mode, sampled(mode)) for mode in samplers}
    runs[VAE] = measure(VAE, through_vae)
    return {name: run for name, run in runs.items() if run is not None}


def return_cut(scene, fps: float, window: int, frames_per_chunk: int) -> tuple[int, int] | None:
    """(cut, the world's return) for a pillar scene: the frame where the world's video is cut, a few chunks after
    its one object went entirely behind the pillar, on a hiding longer than the window, after at least
    COLOR_SECONDS in view; None when the first minute has no such hiding."""
    hiding = first_long_hiding(scene, fps, window)
    return None if hiding is None else (hiding[0] + RETURN_HIDDEN_CHUNKS * frames_per_chunk, hiding[1])


def first_long_hiding(scene, fps: float, window: int) -> tuple[int, int] | None:
    """(first hidden frame, first frame back) of the first time in the first minute that a pillar scene's one
    object goes entirely behind the pillar for `window` frames or more, after at least COLOR_SECONDS in view."""
    first = round(COLOR_SECONDS * fps)
    hidden_at = hidden(scene, 0, round(60 * fps))[:, 0]
    return next(((start, stop) for start, stop in hidden_runs(~hidden_at)
                 if start >= first and stop - start >= window), None)


def returned(nearest: np.ndarray, background: str, pillar: str, span: int) -> tuple[int | None, str | None]:
    """(first frame in view, its dominant color over the `span` frames from there) of a video that starts with
    its object hidden, as `occlusion_events` reads an object; (None, None) when it never shows."""
    counts, dominant = object_pixels(nearest, background, pillar)
    shown = np.flatnonzero(counts.sum(1) >= VISIBLE_PIXELS)
    if not len(shown):
        return None, None
    back = int(shown[0])
    return back, dominant(back, back + span)


def return_from_occlusion(model, prompts: list[str], checks: list[Checks], base, seed: int, starts: int,
                          seconds: float, window: int, out_dir: Path, device: str,
                          progress: Callable[[str], None]) -> dict:
    """For each occlusion prompt and `starts` seeds (`seed + i + OCCLUSION_SEED_STRIDE k`; k = 0 is the scene of
    the prompt's minute-long video), the world's own video up to `return_cut`, continued by progressive for
    `seconds` with memory and with memory off; whether the object comes back, and in its true color. `window`:
    the frames progressive sees at once, which the hiding at the cut must outlast."""
    import torch
    from ..samplers import LongVideo, PromptSchedule, render_mp4
    from ..training.data import to_pixels
    fps, fpc = model.config.fps, model.config.frames_per_chunk
    runs = {True: [], False: []}
    for i, (prompt, check) in enumerate(zip(prompts, checks)):
        if check.occlusion is None:
            continue
        for k in range(starts):
            scene_seed = seed + i + OCCLUSION_SEED_STRIDE * k
            scene = scene_from_prompt(prompt, scene_seed)
            found = return_cut(scene, fps, window, fpc)
            if found is None:
                continue
            cut, world_back = found
            start = to_pixels(render(scene, 0, cut))[0].to(device)
            for memory in runs:
                path = out_dir / f"return-{'memory' if memory else 'memory-off'}-{i:02d}-seed{scene_seed}.mp4"
                settings = replace(base, mode="progressive", seed=scene_seed)
                with torch.no_grad():
                    render_mp4(LongVideo(model, PromptSchedule.single(prompt), seconds, fps, settings, start=start,
                                         use_memory=memory), path)
                back, color = returned(features(mp4_frames(path)).nearest, *check.occlusion,
                                       span=round(COLOR_SECONDS * fps))
                truth = scene.objects[0].color
                runs[memory].append(dict(prompt=prompt, seed=scene_seed, mp4=path.name, cut=cut,
                                         world_back=world_back - cut, color=truth, back_at=back, after=color,
                                         same=color == truth))
        progress(f"return from occlusion: {prompt}")
    result = {}
    for memory, events in runs.items():
        back = [e for e in events if e["back_at"] is not None]
        per_prompt = {}
        for e in back:
            per_prompt.setdefault(e["prompt"], []).append(e["same"])
        result["on" if memory else "off"] = dict(
            starts=len(events), back=len(back), kept=sum(e["same"] for e in back),
            share=share([e["same"] for e in back]), interval=interval(list(per_prompt.values())), events=events)
    return result


def return_table(report: dict) -> str:
    runs = report.get("return_from_occlusion") or {}
    if not runs or not any(r["starts"] for r in runs.values()):
        return ""
    lines = [f"Return from occlusion: progressive continues the world's own video of each occlusion prompt from "
             f"{RETURN_HIDDEN_CHUNKS} chunks after its object went behind the pillar, for {report['return_seconds']:g} "
             "s; the prompt names no object color, so only memory holds it:", "",
             f"| memory | back in its color (>= {CRITERIA['occlusion']:.0%} of returns) | returns | starts |",
             "|---|---|---|---|"]
    for memory, run in runs.items():
        cell = "n/a (no returns)" if run["share"] is None else (
            f"{with_interval(run['share'], run['interval'])} {passes('occlusion', run['share'])} "
            f"({run['kept']} of {run['back']})")
        lines.append(f"| {memory} | {cell} | {run['back']} | {run['starts']} |")
    return "\n".join(lines)


# ----- the run -----
def require_packages(benchmark: str, *names: str) -> None:
    """Says which of the bench extra's packages are missing before an hour of generation, not after it."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"the {benchmark} benchmark needs {' and '.join(missing)}: "
                         f"pip install \"comfyui-longtake[bench]\"")


def prompt_checks(prompts: list[str] | None) -> tuple[list[str], list[Checks]]:
    """The prompts to measure (the built-in ones for None) and their checks; a prompt the world cannot read
    fails here, before any work."""
    prompts = list(PROMPTS if prompts is None else prompts)
    if not prompts:
        raise ValueError("give at least one prompt")
    return prompts, [checks_for(p) for p in prompts]


def run_quality(checkpoint: str | Path, out_dir: Path, seconds: float = 60, prompts: list[str] | None = None,
                samplers=SAMPLERS, steps: int | None = None, seed: int = 0, guidance: float | None = None,
                memory_strength: float | None = None, occlusion_seeds: int = 0, return_starts: int = 10,
                progress: Callable[[str], None] = print,
                device: str = "cpu", guidance_parallel: float | None = None,
                recall_strength: float | None = None) -> dict:
    """Generate every prompt with every sampler (and progressive with memory off on occlusion prompts),
    measure, and write the mp4s, quality.json, table.md and one PNG per measure into `out_dir`.

    Prompt `i` uses seed `seed + i` with every sampler, so the samplers differ only in how they sample.
    `occlusion_seeds`: that many more seeds (`seed + 100 k`; a larger multiple of 100 past 100 prompts) for
    the occlusion prompts, every row, counted for the occlusion measure alone: a seed's few events say little.
    `return_starts`: seeds per occlusion prompt for the return from occlusion (`return_from_occlusion`).
    """
    import torch
    from ..memory import load_checkpoint
    from ..samplers import LongVideo, PromptSchedule, SamplerSettings, render_mp4
    from ..samplers.video import Mp4Writer, to_uint8_frames
    from ..training.data import to_pixels

    require_packages("quality", "matplotlib", "scenedetect")
    prompts, checks = prompt_checks(prompts)
    if seconds < CLIP_SECONDS:
        raise ValueError(f"seconds must be at least one {CLIP_SECONDS:g} s clip, got {seconds:g}")
    if not samplers:
        raise ValueError(f"give at least one sampler of {', '.join(SAMPLERS)}")
    if occlusion_seeds < 0:
        raise ValueError(f"occlusion seeds must be 0 or more, got {occlusion_seeds}")
    if return_starts < 0:
        raise ValueError(f"return starts must be 0 or more, got {return_starts}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = {"steps": steps, "guidance": guidance, "memory_strength": memory_strength,
                 "guidance_parallel": guidance_parallel, "recall_strength": recall_strength}
    base = SamplerSettings(**{k: v for k, v in overrides.items() if v is not None})
    for mode in samplers:  # an unknown mode, or steps the progressive window cannot divide: before any video
        replace(base, mode=mode).check()
    model = load_checkpoint(checkpoint, device=device)
    fps = model.config.fps
    runs = [(mode, True) for mode in samplers]
    if "progressive" in samplers and any(c.occlusion for c in checks):
        runs.append(("progressive", False))
    constants = dict(clip_seconds=CLIP_SECONDS, color_distance=COLOR_DISTANCE, present_share=PRESENT_SHARE,
                     motion_seconds=MOTION_SECONDS, motion_kept=MOTION_KEPT, visible_pixels=VISIBLE_PIXELS,
                     color_seconds=COLOR_SECONDS)
    # Mode and seed vary per run and per video and are recorded there.
    shared = {k: v for k, v in asdict(base).items() if k not in ("mode", "seed")}
    report = dict(checkpoint=str(checkpoint), seconds=seconds, fps=fps, seed=seed, settings=shared,
                  prompts=prompts, criteria=CRITERIA, constants=constants, runs={})

    def made(mode: str, memory: bool, video_seed: int, prompt: str, path: Path) -> int:
        """Renders one video; returns the frames the denoiser sees at once, beyond which an object hidden can
        only come back through memory."""
        settings = replace(base, mode=mode, seed=video_seed)
        started = time.monotonic()
        with torch.no_grad():
            render_mp4(LongVideo(model, PromptSchedule.single(prompt), seconds, fps, settings, use_memory=memory), path)
        progress(f"{path.stem} ({time.monotonic() - started:.1f} s): {prompt}")
        return (settings.clean_in_front() + settings.window_chunks) * model.config.frames_per_chunk

    for mode, memory in runs:
        key = mode if memory else f"{mode}-memory-off"
        videos = []
        for i, (prompt, check) in enumerate(zip(prompts, checks)):
            if not memory and check.occlusion is None:
                continue
            path = out_dir / f"{key}-{i:02d}.mp4"
            window = made(mode, memory, seed + i, prompt, path)
            videos.append(dict(prompt=prompt, seed=seed + i, window_frames=window,
                               **measure_video(path, check, fps, window)))
        report["runs"][key] = dict(sampler=mode, memory=memory, summary=summarise(videos),
                                   timelines=timelines(videos, round(CLIP_SECONDS * fps)), videos=videos)
        if occlusion_seeds and any(c.occlusion is not None for c in checks):
            events = [e for v in videos for e in v["occlusion"] or []]
            per_prompt = {v["prompt"]: [e["same"] for e in v["occlusion"] or []] for v in videos}  # over the seeds
            stride = OCCLUSION_SEED_STRIDE * math.ceil(len(prompts) / OCCLUSION_SEED_STRIDE)
            extra = [seed + stride * k for k in range(1, occlusion_seeds + 1)]
            for first in extra:
                for i, (prompt, check) in enumerate(zip(prompts, checks)):
                    if check.occlusion is not None:
                        path = out_dir / f"{key}-seed{first}-{i:02d}.mp4"
                        window = made(mode, memory, first + i, prompt, path)
                        found = occlusion_events(features(mp4_frames(path)).nearest, *check.occlusion,
                                                 longer_than=window, span=round(COLOR_SECONDS * fps))
                        events += [dict(event, seed=first + i, mp4=path.name) for event in found]
                        per_prompt.setdefault(prompt, []).extend(event["same"] for event in found)
            report["runs"][key]["occlusion_seeds"] = dict(
                seeds=[seed, *extra], kept=sum(e["same"] for e in events), count=len(events),
                share=share([e["same"] for e in events]), interval=interval(list(per_prompt.values())), events=events)
    # The same measures on the demo world's own videos of the prompts (what a perfect model would score),
    # and on those videos through the model's VAE (what a perfect denoiser would score with this VAE).
    window = replace(base, mode="progressive").clean_in_front() + base.window_chunks
    window *= model.config.frames_per_chunk
    frames = round(seconds * fps)
    step = fps * model.config.vae.time_factor  # whole seconds and whole latents, so any length goes through
    videos = {WORLD: [], VAE: []}
    for i, (prompt, check) in enumerate(zip(prompts, checks)):
        scene = scene_from_prompt(prompt, seed + i)
        paths = {key: out_dir / f"{key}-{i:02d}.mp4" for key in videos}
        encoder = decoder = None
        with Mp4Writer(paths[WORLD], fps) as world, Mp4Writer(paths[VAE], fps) as through_vae, torch.no_grad():
            for start in range(0, frames, step):
                clip = render(scene, start, step)
                world.write(clip[:frames - start])
                latents, encoder = model.vae.encode(to_pixels(clip).to(device), encoder)
                decoded, decoder = model.vae.decode(latents, decoder)
                through_vae.write(to_uint8_frames(decoded[0])[:frames - start])
        for key, path in paths.items():
            videos[key].append(dict(prompt=prompt, seed=seed + i, window_frames=window,
                                    **measure_video(path, check, fps, window)))
    for key, measured in videos.items():
        report["runs"][key] = dict(sampler=key, memory=True, summary=summarise(measured),
                                   timelines=timelines(measured, round(CLIP_SECONDS * fps)), videos=measured)
    report["continuation"] = continue_world(model, prompts, checks, base, samplers, seed,
                                            min(CONTINUE_SECONDS, seconds), out_dir, device, progress)
    report["return_seconds"] = min(RETURN_SECONDS, seconds)
    report["return_from_occlusion"] = return_from_occlusion(model, prompts, checks, base, seed, return_starts,
                                                            report["return_seconds"], window, out_dir, device,
                                                            progress)
    (out_dir / "quality.json").write_text(json.dumps(report, indent=1))
    (out_dir / "table.md").write_text(table(report) + "\n")
    plot(report, out_dir)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="the LongTake checkpoint to measure")
    parser.add_argument("--out", default="quality", help="folder for mp4s, quality.json, table.md, PNGs (default quality)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each video (default 60)")
    parser.add_argument("--prompts", help="a file of prompts, one a line (default: 20 built-in prompts)")
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS),
                        help="samplers to compare (default: all three)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the sampler's default)")
    parser.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i (default 0)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the sampler's default)")
    parser.add_argument("--guidance-parallel", type=float,
                        help="share of guidance's push kept along the model's own estimate, 1 for plain "
                             "classifier-free guidance (default: the sampler's default)")
    parser.add_argument("--memory-strength", type=float,
                        help="factor on what the model reads from its memory slots (default: the sampler's default)")
    parser.add_argument("--recall-strength", type=float,
                        help="factor on what a model trained with recalled chunks reads from them (default: the "
                             "sampler's default)")
    parser.add_argument("--occlusion-seeds", type=int, default=0,
                        help="this many more seeds (seed + 100, + 200, ...) for the occlusion prompts, every row, "
                             "pooled for color through occlusion alone, whose events are few per seed (default 0)")
    parser.add_argument("--return-starts", type=int, default=10,
                        help="seeds per occlusion prompt for the return from occlusion: the world's own video "
                             "continued from just after its object went behind the pillar (default 10)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    parser.add_argument("--fast", action="store_true",
                        help=f"a smoke run: the first {FAST_PROMPTS} prompts, {FAST_SECONDS:g} s each (overrides "
                             "--seconds), one return start")


def run_from_args(args: argparse.Namespace) -> int:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = read_prompts(args.prompts) if args.prompts else list(PROMPTS)
    seconds, return_starts = args.seconds, args.return_starts
    if args.fast:
        prompts, seconds, return_starts = prompts[:FAST_PROMPTS], FAST_SECONDS, min(return_starts, 1)
    out = Path(args.out)
    report = run_quality(args.checkpoint, out, seconds, prompts, tuple(args.samplers), args.steps, args.seed,
                         args.guidance, args.memory_strength, args.occlusion_seeds, return_starts,
                         device=args.device, guidance_parallel=args.guidance_parallel,
                         recall_strength=args.recall_strength)
    print(table(report))
    print(f"\nraw numbers in {out / 'quality.json'}; plots and mp4s in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="longtake bench quality", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    import sys
    sys.exit(main())
