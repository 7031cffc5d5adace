"""Does the memory hold what has left the window, and does the window read it? Two measures apart from sampling.

The return test of `bench quality` asks the whole model to bring a hidden object back in its color; when it
fails, the write (the slots never held the color, or lost it) and the read (the color is there and the window
does not draw from it) look the same. This asks the write alone. For many scenes of the pillar prompts, whose
prompts name no object color (so scenes of one prompt differ only in what the video shows), the world's own
chunks are written into memory one by one, as sampling writes chunks that leave the window, and the slots are
kept at a few writes before and after the chunk in which the object went entirely behind the pillar. A ridge
classifier, one against the rest per color, learns the object's color from the slots of three quarters of the
seeds and is scored on the rest: well above the commonest color's share means the slots hold the color.

The read is asked apart from sampling too (`read_gain`): the same scenes' world chunks written up to a window
whose clean front shows the pillar alone and whose noisy chunks, at a high noise level, hold the chunk in
which the object comes back. The denoiser's error on the latents of the returning object (those its own
pixels cover, from the world's render) is taken with the scene's own memory, with the memory of another scene
of the same prompt (same background and pillar, another object color and path), and with none. A model that
reads where and in which color the object comes back errs less with its own memory than with the others; one
that ignores its memory errs alike with all three.
"""
from __future__ import annotations

import argparse

import numpy as np

from ..training.world import render, scene_from_prompt
from .quality import PROMPTS, checks_for, first_long_hiding

# Writes relative to the one of the chunk in which the object hid; the object stays hidden about 6 chunks,
# so a later write would see it again.
OFFSETS = (-5, -3, -1, 0, 2, 4)
READ_LEVEL = 0.9  # the noisy chunks' level in the read measure: the object hardly shows through it
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


def pillar_prompts(prompts) -> list[str]:
    """The prompts with a pillar whose object color is not named: those both measures ask about."""
    chosen = [p for p in prompts if checks_for(p).occlusion is not None]
    if not chosen:
        raise ValueError("the memory measures need prompts with a pillar whose object color is not named")
    return chosen


def states_after(denoiser, latents, tokens, bias, counts) -> dict:
    """The memory after each of `counts` writes, the chunks of `latents [1, C, T, h, w]` written one by one from
    the first, as sampling writes the chunks that leave its window."""
    chunk = denoiser.cfg.chunk_frames
    state, states = denoiser.initial_state(1), {}
    for written in range(max(counts) + 1):
        if written:
            state = denoiser.write(state, latents[:, :, (written - 1) * chunk:written * chunk], tokens, bias)
        if written in counts:
            states[written] = state
    return states


def probe_memory(model, scenes_per_prompt: int = 100, prompts=PROMPTS, progress=print) -> dict:
    """Color read back from the slots at each of OFFSETS, over `scenes_per_prompt` seeds of each pillar prompt."""
    import torch
    from ..samplers import SamplerSettings
    from ..training.data import to_pixels
    if model.config.denoiser.memory != "malt":
        raise ValueError(f"the probe reads MALT memory slots; this model's memory is {model.config.denoiser.memory!r}")
    fpc = model.config.frames_per_chunk
    sampling = SamplerSettings()
    window = (sampling.clean_in_front() + sampling.window_chunks) * fpc  # as `bench quality` counts it
    slots = {offset: [] for offset in OFFSETS}
    labels, seeds = [], []
    for prompt in pillar_prompts(prompts):
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
                states = states_after(model.denoiser, latents, tokens, bias, {hid + o + 1 for o in OFFSETS})
            for offset in OFFSETS:
                slots[offset].append(states[hid + offset + 1]["malt.slots"][0].flatten().cpu().numpy())
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


def read_gain(model, scenes_per_prompt: int = 20, prompts=PROMPTS, progress=print) -> dict:
    """The denoiser's error on the returning object's latents, with the scene's own memory, another scene's and
    none, for the object coming back in each noisy chunk of the window but the last (see the module's
    docstring; in the last, the window ends with the chunk of the object's first frames back, which show a
    sliver of it, too little to count)."""
    import torch
    from ..samplers import SamplerSettings
    from ..training.data import to_pixels
    from ..training.train_denoiser import latent_mask
    from ..training.world import coming_back
    fpc, chunk = model.config.frames_per_chunk, model.config.denoiser.chunk_frames
    denoiser = model.denoiser
    noisy_chunks = SamplerSettings().window_chunks
    window_frames = (1 + noisy_chunks) * fpc
    slots = range(1, noisy_chunks)  # the noisy chunk in which the object comes back
    errors = {name: {slot: [0.0, 0] for slot in slots} for name in ("own", "another", "none")}
    scenes = 0
    for prompt in pillar_prompts(prompts):
        with torch.no_grad():
            tokens, bias = model.text([prompt])
        cases = []  # per scene: its memory before each slot's front, and each slot's window
        for seed in range(FIRST_SEED, FIRST_SEED + scenes_per_prompt):
            scene = scene_from_prompt(prompt, seed)
            hiding = first_long_hiding(scene, model.config.fps, window_frames)
            if hiding is None:
                continue
            back = hiding[1] // fpc
            fronts = {slot: back - slot for slot in slots}
            end = (back + noisy_chunks) * fpc  # the last window's end (the object back in its first chunk)
            if min(fronts.values()) * fpc < hiding[0] or end > round(60 * model.config.fps):
                continue  # a front that still shows the object, or a window past the minute
            torch.manual_seed(seed)
            with torch.no_grad():
                latents, _ = model.vae.encode(to_pixels(render(scene, 0, end)).to(model.device))
                written = states_after(denoiser, latents, tokens, bias, set(fronts.values()))
            memories = {slot: written[front] for slot, front in fronts.items()}
            windows = {slot: latents[:, :, front * chunk:(front + 1 + noisy_chunks) * chunk]
                       for slot, front in fronts.items()}
            returning = {slot: latent_mask(coming_back(scene, front * fpc, window_frames, front * fpc + fpc - 1),
                                           model.config.vae)[chunk:] for slot, front in fronts.items()}
            cases.append((memories, windows, returning))
        for index, (memories, windows, returning) in enumerate(cases if len(cases) > 1 else []):
            other = cases[index - 1][0]  # the scene before it (the last for the first): the same prompt
            for slot, window in windows.items():
                choices = {"own": memories[slot], "another": other[slot], "none": denoiser.initial_state(1)}
                memory = {key: torch.cat([m[key] for m in choices.values()]) for key in memories[slot]}
                rows = len(choices)
                x0 = window.expand(rows, -1, -1, -1, -1)
                t = torch.cat([torch.zeros(rows, chunk), torch.full((rows, noisy_chunks * chunk), READ_LEVEL)], 1)
                t = t.to(x0.device)
                generator = torch.Generator().manual_seed(index * 10 + slot)
                noise = torch.randn(window.shape, generator=generator).to(window.device).expand_as(x0)
                noisy = (1 - t[:, None, :, None, None]) * x0 + t[:, None, :, None, None] * noise
                with torch.no_grad():
                    velocity = denoiser(noisy, t, tokens.expand(rows, -1, -1), bias.expand(rows, -1), memory)
                error = (velocity - (noise - x0)).pow(2).mean(1)[:, chunk:].cpu()  # [rows, T, H, W], noisy chunks
                for row, name in enumerate(choices):
                    errors[name][slot][0] += float(error[row][returning[slot]].sum())
                    errors[name][slot][1] += int(returning[slot].sum())
            scenes += 1
        progress(f"memory read: {prompt}")
    if not scenes:
        raise ValueError("no pillar scene with a long hiding: give more scenes per prompt")
    return dict(scenes=scenes, level=READ_LEVEL, error={
        name: {slot: total / count if count else float("nan") for slot, (total, count) in per_slot.items()}
        for name, per_slot in errors.items()})


def table(result: dict) -> str:
    offsets = list(result["accuracy"])
    return "\n".join([
        f"Object color read back from the memory slots, {result['scenes']} pillar scenes ({result['held_out']} held "
        f"out; their commonest color is {result['commonest']:.0%} of them):", "",
        "| writes relative to hiding | " + " | ".join(f"{o:+d}" for o in offsets) + " |",
        "|---|" + "---|" * len(offsets),
        "| color read back | " + " | ".join(f"{result['accuracy'][o]:.0%}" for o in offsets) + " |"])


def read_table(result: dict) -> str:
    slots = list(result["error"]["own"])
    rows = {"own": "the scene's own", "another": "another scene's", "none": "none (never written)"}
    return "\n".join([
        f"Error on the returning object's latents, {result['scenes']} pillar scenes, the window's noisy chunks at "
        f"noise level {result['level']:g} and its front showing the pillar alone (lower is better):", "",
        "| memory | " + " | ".join(f"back in noisy chunk {s}" for s in slots) + " |",
        "|---|" + "---|" * len(slots)] + [
        f"| {label} | " + " | ".join(f"{result['error'][name][s]:.3f}" for s in slots) + " |"
        for name, label in rows.items()])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="the LongTake checkpoint (MALT memory) to probe")
    parser.add_argument("--scenes", type=int, default=100,
                        help="seeds per pillar prompt for the slot probe (default 100: about 520 scenes, a few "
                             "minutes on a CPU)")
    parser.add_argument("--read-scenes", type=int, default=20,
                        help="seeds per pillar prompt for the read measure (default 20: about a minute on a CPU)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def run_from_args(args: argparse.Namespace) -> int:
    from ..memory import load_checkpoint
    if args.scenes < 4:
        raise ValueError(f"--scenes must be at least 4, so that a quarter of the seeds can be held out; got {args.scenes}")
    if args.read_scenes < 2:
        raise ValueError(f"--read-scenes must be at least 2, so that a scene can read another's memory; got {args.read_scenes}")
    model = load_checkpoint(args.checkpoint, device=args.device).eval()
    if model.config.denoiser.memory == "malt":
        print(table(probe_memory(model, args.scenes)), end="\n\n")
    else:
        print(f"(the slot probe reads MALT slots; this model's memory is {model.config.denoiser.memory!r})\n")
    print(read_table(read_gain(model, args.read_scenes)))
    return 0
