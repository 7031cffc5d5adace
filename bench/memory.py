"""Does the memory hold what has left the window? A probe of the MALT slots, apart from the read.

The return test of `bench quality` asks the whole model to bring a hidden object back in its color; when it
fails, the write (the slots never held the color, or lost it) and the read (the color is there and the window
does not draw from it) look the same. This asks the write alone. For many scenes of the pillar prompts, whose
prompts name no object color (so scenes of one prompt differ only in what the video shows), the world's own
chunks are written into memory one by one, as sampling writes chunks that leave the window, and the slots are
kept at a few writes before and after the chunk in which the object went entirely behind the pillar. A ridge
classifier, one against the rest per color, learns the object's color from the slots of three quarters of the
seeds and is scored on the rest: well above the commonest color's share means the slots hold the color.
"""
from __future__ import annotations

import argparse

import numpy as np

from ..training.world import render, scene_from_prompt
from .quality import PROMPTS, checks_for, first_long_hiding

# Writes relative to the one of the chunk in which the object hid; the object stays hidden about 6 chunks,
# so a later write would see it again.
OFFSETS = (-5, -3, -1, 0, 2, 4)
RIDGE = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
FIRST_SEED = 1000  # away from the seeds `bench quality` renders its videos with


def held_out_accuracy(features: np.ndarray, labels: np.ndarray, held_out: np.ndarray) -> float:
    """The share of `held_out` rows whose label a ridge classifier trained on the other rows gets right, at the
    best of a few regularisations (picked on the held-out rows: a little optimistic, alike for every model)."""
    train = ~held_out
    x = features - features[train].mean(0)
    x = x / (x[train].std(0) + 1e-6)
    classes = np.unique(labels[train])
    targets = np.stack([labels[train] == c for c in classes], 1) * 2.0 - 1
    prior = targets.mean(0)  # the intercept: strong regularisation shrinks toward each color's share, not to 0
    gram = x[train] @ x[train].T  # dual form: far fewer scenes than slot values
    best = 0.0
    for strength in RIDGE:
        weights = x[train].T @ np.linalg.solve(gram + strength * np.eye(len(gram)), targets - prior)
        guessed = classes[(x[held_out] @ weights + prior).argmax(1)]
        best = max(best, float((guessed == labels[held_out]).mean()))
    return best


def probe_memory(model, scenes_per_prompt: int = 100, prompts=PROMPTS, progress=print) -> dict:
    """Color read back from the slots at each of OFFSETS, over `scenes_per_prompt` seeds of each pillar prompt."""
    import torch
    from ..samplers import SamplerSettings
    from ..training.data import to_pixels
    if model.config.denoiser.memory != "malt":
        raise ValueError(f"the probe reads MALT memory slots; this model's memory is {model.config.denoiser.memory!r}")
    fpc, chunk = model.config.frames_per_chunk, model.config.denoiser.chunk_frames
    denoiser = model.denoiser
    sampling = SamplerSettings()
    window = (sampling.clean_in_front() + sampling.window_chunks) * fpc  # as `bench quality` counts it
    slots = {offset: [] for offset in OFFSETS}
    labels, seeds = [], []
    pillar_prompts = [p for p in prompts if checks_for(p).occlusion is not None]
    if not pillar_prompts:
        raise ValueError("the probe needs prompts with a pillar whose object color is not named")
    for prompt in pillar_prompts:
        with torch.no_grad():
            tokens, bias = model.text([prompt])
        for seed in range(FIRST_SEED, FIRST_SEED + scenes_per_prompt):
            scene = scene_from_prompt(prompt, seed)
            hiding = first_long_hiding(scene, model.config.fps, window)  # the hidings the return test asks about
            if hiding is None or hiding[0] // fpc < -min(OFFSETS):
                continue  # no hiding in the first minute, or too early to see the writes before it
            hid = hiding[0] // fpc
            last = hid + max(OFFSETS)
            if hiding[1] < (last + 1) * fpc:
                continue  # back in view by the last write probed: its slots would have seen it again
            torch.manual_seed(seed)  # the writes' light noise: a model probed twice reads the same
            with torch.no_grad():
                latents, _ = model.vae.encode(to_pixels(render(scene, 0, (last + 1) * fpc)).to(model.device))
                state = denoiser.initial_state(1)
                for i in range(last + 1):
                    state = denoiser.write(state, latents[:, :, i * chunk:(i + 1) * chunk], tokens, bias)
                    if i - hid in slots:
                        slots[i - hid].append(state["malt.slots"][0].flatten().cpu().numpy())
            labels.append(scene.objects[0].color)
            seeds.append(seed)
        progress(f"memory probe: {prompt}")
    labels, seeds = np.array(labels), np.array(seeds)
    held_out = seeds % 4 == 0
    if not held_out.any() or held_out.all():
        raise ValueError("too few scenes to hold some out: give more scenes per prompt")
    commonest = max(float((labels[held_out] == c).mean()) for c in np.unique(labels))
    return dict(scenes=len(labels), held_out=int(held_out.sum()), commonest=commonest,
                accuracy={offset: held_out_accuracy(np.stack(slots[offset]), labels, held_out) for offset in OFFSETS})


def table(result: dict) -> str:
    offsets = list(result["accuracy"])
    return "\n".join([
        f"Object color read back from the memory slots, {result['scenes']} pillar scenes ({result['held_out']} held "
        f"out; their commonest color is {result['commonest']:.0%} of them):", "",
        "| writes relative to hiding | " + " | ".join(f"{o:+d}" for o in offsets) + " |",
        "|---|" + "---|" * len(offsets),
        "| color read back | " + " | ".join(f"{result['accuracy'][o]:.0%}" for o in offsets) + " |"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="the LongTake checkpoint (MALT memory) to probe")
    parser.add_argument("--scenes", type=int, default=100,
                        help="seeds per pillar prompt (default 100: about 520 scenes, a few minutes on a CPU)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def run_from_args(args: argparse.Namespace) -> int:
    from ..memory import load_checkpoint
    if args.scenes < 4:
        raise ValueError(f"--scenes must be at least 4, so that a quarter of the seeds can be held out; got {args.scenes}")
    model = load_checkpoint(args.checkpoint, device=args.device).eval()
    print(table(probe_memory(model, args.scenes)))
    return 0
