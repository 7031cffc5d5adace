"""`longtake bench speed`: how long a video takes and how much memory it needs, against its length.

Each video length is generated exactly as `longtake generate` makes it (sampling, streaming decode, mp4
encode) in a fresh process of its own, so the peak resident memory it reports is that length's alone.
Inside, the denoiser is metered: its passes (window steps, reused fronts, memory writes) and the updates of
its memory slots that follow each write are timed and counted by input shape, and the FLOPs of each
shape are counted once afterwards with torch's FLOP counter, so metering does not slow the run.

Besides the lengths: the three samplers at equal steps and overlap (model calls, FLOPs and wall time per
output frame), with guidance as `generate` runs them and again without it; a full-history baseline, every
past chunk in the window and no memory, whose cost grows with the length; and the denoiser's achieved
FLOP/s against a matrix multiply measured in the same run, both over whole videos and for the pass a long
video makes most, timed on its own beside the matrix multiply.
`--compile` times everything with the denoiser compiled, as `longtake generate --compile` runs it.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

LENGTHS = (10.0, 60.0, 240.0)
FULL_HISTORY_LENGTHS = (2.0, 4.0, 8.0)
SAMPLER_SECONDS = 10.0
SAMPLERS = ("progressive", "rw", "rn")
FAST = dict(lengths=(1.0, 2.0), full_history=(1.0, 2.0), sampler_seconds=1.0)
PROMPT = "a red ball bouncing on a black background"
FULL_HISTORY = 10 ** 6  # RN with this many condition chunks keeps every past chunk in the window
UNCACHED = "progressive, front run every step"
UNGUIDED = ", no guidance"  # the samplers again at guidance 1: one row a pass, so no unconditional front


def _sync(device) -> None:
    import torch
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """Attention FLOPs from the shapes: QK^T and the weighted sum of V, 2 per multiply-add."""
    batch = math.prod(query[:-2])
    return 2 * batch * query[-2] * key[-2] * (query[-1] + value[-1])


class DenoiserMeter:
    """Times every denoiser pass (sampling and memory writes) and counts them by input shape, and times the
    memory slots' update after each write, whose work lies outside the write's pass."""

    def __init__(self, model, device):
        self.denoiser, self.device = model.denoiser, device
        self.original = model.denoiser._run
        self.calls: Counter = Counter()
        self.examples: dict = {}
        self.seconds = 0.0
        model.denoiser._run = self._timed
        self.updates: Counter = Counter()  # by (layer, slots shape, chunk tokens shape)
        self.update_examples: dict = {}
        for layer, block in enumerate(model.denoiser.blocks):
            if block.malt is not None:
                block.malt.update = self._timed_update(layer, block.malt.update)

    def _timed(self, x, t, text, text_bias, state, prefix=None, memory_strength=1.0, recall_strength=1.0):
        _sync(self.device)
        started = time.perf_counter()
        result = self.original(x, t, text, text_bias, state, prefix, memory_strength, recall_strength)
        _sync(self.device)
        self.seconds += time.perf_counter() - started
        key = (tuple(x.shape), tuple(text.shape), None if prefix is None else prefix.frames)
        if key not in self.examples:
            # Text, memory and a prefix are never changed in place once made, so they are kept as they are:
            # a pass timed again then finds the very tensors its prefix was made with, as the sampler's do,
            # instead of comparing copies element by element.
            self.examples[key] = (x.clone(), t.clone(), text, text_bias, state, prefix, memory_strength,
                                  recall_strength)
        self.calls[key] += 1
        return result

    def _timed_update(self, layer: int, update):
        def timed(slots, chunk_tokens):
            _sync(self.device)
            started = time.perf_counter()
            result = update(slots, chunk_tokens)
            _sync(self.device)
            self.seconds += time.perf_counter() - started
            key = (layer, tuple(slots.shape), tuple(chunk_tokens.shape))
            if key not in self.update_examples:
                self.update_examples[key] = (update, slots.clone(), chunk_tokens.clone())
            self.updates[key] += 1
            return result
        return timed

    def pass_flops(self, key) -> int:
        """Model FLOPs of one pass, or one layer's memory update, of the shape `key`."""
        import torch
        from torch.utils.flop_counter import FlopCounterMode
        # The CPU's fused attention has no formula of its own in torch's counter.
        custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
        # Eagerly: compiled kernels would run past the counter, which sees only torch's own operations.
        eager = torch.compiler.set_stance("force_eager") if hasattr(torch.compiler, "set_stance") else nullcontext()
        with torch.no_grad(), eager, FlopCounterMode(display=False, custom_mapping=custom) as counter:
            if key in self.update_examples:
                update, *inputs = self.update_examples[key]
                update(*inputs)
            else:
                self.original(*self.examples[key])
        return counter.get_total_flops()

    def flops(self) -> int:
        """Model FLOPs of all the passes and memory updates counted so far."""
        return sum(self.pass_flops(key) * calls for key, calls in (self.calls + self.updates).items())

    @property
    def passes(self) -> int:
        return sum(self.calls.values())


def matmul_peak(device, dtype, size: int = 1024, seconds: float = 1.0) -> float:
    """FLOP/s of square matrix multiplies, the best this device does in `dtype`."""
    import torch
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        runs += 1
    _sync(device)
    return 2 * size ** 3 * runs / (time.perf_counter() - started)


def best_matmul_peak(device, dtype, seconds: float, tries: int = 3) -> float:
    """The best of `tries` measures of `matmul_peak`: on a shared machine a single one can land on a slow spell."""
    return max(matmul_peak(device, dtype, seconds=seconds) for _ in range(tries))


def load(checkpoint: str, device: str, compile: bool):
    """The model, compiled if asked, and the seconds compiling took (0 without)."""
    from ..memory import load_checkpoint
    model = load_checkpoint(checkpoint, device=device)
    started = time.perf_counter()
    if compile:
        import torch._dynamo
        torch._dynamo.reset()  # one process times several models: each starts from no compiled code
        model.compile_denoiser()
    return model, time.perf_counter() - started if compile else 0.0


def generate(checkpoint: str, seconds: float, device: str, settings: dict, full_history: bool = False,
             reuse_front: bool = True, compile: bool = False) -> dict:
    """One video as `longtake generate` makes it, metered; what it cost, as a dict.

    `reuse_front=False` runs the clean front chunks again at every step, to show what reusing them buys.
    `compile`: as `generate --compile`; its check compile at load is timed on its own (`compile_s`), while the
    other window shapes compile (or load from torch's cache) during the run, inside the wall time.
    """
    import torch
    from ..samplers import LongVideo, PromptSchedule, SamplerSettings, render_mp4

    model, compile_s = load(checkpoint, device, compile)
    sampler = SamplerSettings(**settings)
    if full_history:
        sampler = replace(sampler, mode="rn", window_chunks=1, overlap=FULL_HISTORY)
    meter = DenoiserMeter(model, device)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        video = LongVideo(model, PromptSchedule.single(PROMPT), seconds, model.config.fps, sampler,
                          use_memory=not full_history)
        video.conditioner.reuse_front = reuse_front
        started = time.perf_counter()
        frames = render_mp4(video, Path(folder) / "video.mp4")
        _sync(device)
        wall = time.perf_counter() - started
    result = dict(seconds=seconds, frames=frames, wall_s=wall, denoiser_s=meter.seconds, passes=meter.passes,
                  memory_updates=sum(meter.updates.values()),
                  flops=meter.flops(), peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  compile_s=compile_s)
    if torch.device(device).type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return result


def steady_pass(checkpoint: str, device: str, settings: dict, compile: bool = False, repeats: int = 7,
                passes: int = 50) -> dict:
    """The pass a long video makes most (the window full), timed on its own: best of `repeats` runs of
    `passes` passes, with the matrix-multiply peak measured best of 3 right after it.

    Both are best-of and minutes apart at most, so the fraction of peak does not move with the machine's speed,
    which on a shared CPU wanders more from one minute to the next than most changes to the model would.
    """
    import torch
    from ..samplers import LongVideo, PromptSchedule, SamplerSettings

    model, _ = load(checkpoint, device, compile)
    meter = DenoiserMeter(model, device)
    with torch.no_grad():
        seconds = 3 * settings["window_chunks"] * model.config.frames_per_chunk / model.config.fps
        for _ in LongVideo(model, PromptSchedule.single(PROMPT), seconds, model.config.fps,
                           SamplerSettings(**settings)).latents():
            pass
        key, count = meter.calls.most_common(1)[0]
        share = count / meter.passes
        example = meter.examples[key]
        flops = meter.pass_flops(key)
        best = math.inf
        for _ in range(repeats + 1):  # the first round warms up
            _sync(device)
            started = time.perf_counter()
            for _ in range(passes):
                meter.original(*example)
            _sync(device)
            best = min(best, (time.perf_counter() - started) / passes)
    peak = best_matmul_peak(device, torch.float32, seconds=0.5)
    return dict(shape=list(key[0]), share=share, flops=flops, seconds=best, peak_flops=peak)


def in_fresh_process(checkpoint: str, seconds: float, device: str, threads: int | None, settings: dict,
                     full_history: bool = False, compile: bool = False) -> dict:
    command = [sys.executable, "-m", "longtake.bench.speed", "--child", json.dumps(dict(
        checkpoint=checkpoint, seconds=seconds, device=device, threads=threads, settings=settings,
        full_history=full_history, compile=compile))]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the {seconds:g} s run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_speed(checkpoint: str | Path, out_dir: Path, lengths=LENGTHS, full_history=FULL_HISTORY_LENGTHS,
              sampler_seconds: float = SAMPLER_SECONDS, device: str = "cpu", threads: int | None = None,
              compile: bool = False, progress=print) -> dict:
    """Every measure; writes speed.json, table.md and speed.png into `out_dir` and returns the report."""
    import torch
    from ..memory import read_config
    from ..memory.model import LongTakeModel

    checkpoint = str(checkpoint)
    read_config(checkpoint)  # a file that is not a checkpoint fails here, before any run
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    settings = dict(steps=20, window_chunks=4, overlap=1)
    report = dict(checkpoint=checkpoint, device=device, machine=_machine(device), settings=settings,
                  threads=threads or torch.get_num_threads(), compile=compile, lengths=[], samplers={},
                  full_history=[])
    dtype = torch.float32  # checkpoints load in float32 whatever precision they are stored in
    report["matmul_peak_flops"] = best_matmul_peak(device, dtype, seconds=0.3)
    progress(f"matrix multiply peak: {report['matmul_peak_flops'] / 1e9:.1f} GFLOP/s ({dtype})")
    for seconds in lengths:
        run = in_fresh_process(checkpoint, seconds, device, threads, settings, compile=compile)
        report["lengths"].append(run)
        progress(f"{seconds:g} s: {run['wall_s']:.1f} s wall, {run['peak_rss_mb']:.0f} MB peak")
    report["steady_pass"] = steady_pass(checkpoint, device, settings, compile)
    progress(f"steady pass: {1000 * report['steady_pass']['seconds']:.2f} ms")
    for mode in SAMPLERS:
        run = generate(checkpoint, sampler_seconds, device, dict(settings, mode=mode), compile=compile)
        report["samplers"][mode] = run
        progress(f"{mode}: {run['passes'] / run['frames']:.3f} model passes per frame")
    report["samplers"][UNCACHED] = generate(checkpoint, sampler_seconds, device, settings, reuse_front=False,
                                            compile=compile)
    for mode in SAMPLERS:
        report["samplers"][mode + UNGUIDED] = generate(checkpoint, sampler_seconds, device,
                                                       dict(settings, mode=mode, guidance=1.0), compile=compile)
    for seconds in full_history:
        run = in_fresh_process(checkpoint, seconds, device, threads, settings, full_history=True, compile=compile)
        report["full_history"].append(run)
        progress(f"full history {seconds:g} s: {run['wall_s']:.1f} s wall, {run['peak_rss_mb']:.0f} MB peak")
    (out_dir / "speed.json").write_text(json.dumps(report, indent=1))
    (out_dir / "table.md").write_text(table(report) + "\n")
    plot(report, out_dir / "speed.png")
    return report


def _machine(device: str) -> str:
    import os
    import platform
    import torch
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def table(report: dict) -> str:
    peak = report["matmul_peak_flops"]
    compiled = report.get("compile")
    lines = [f"Device: {report['device']} ({report['machine']}), {report['threads']} threads; "
             f"matrix multiply peak {peak / 1e9:.1f} GFLOP/s at the start (each video's fraction of peak is against "
             f"the best of 3 taken right after it, in its own process); denoiser "
             + ("compiled (torch.compile; the check compile at load is not in the wall times, the other window "
                "shapes compile during the run)." if compiled else "not compiled."), "",
             "| video | frames | wall | frames/s | s per frame | peak RSS | in denoiser | denoiser FLOP/s | of peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in report["lengths"] + report["full_history"]:
        name = f"{run['seconds']:g} s" + (" full history" if run in report["full_history"] else "")
        rss = f"{run['peak_rss_mb']:.0f} MB" + (f" (GPU {run['peak_gpu_mb']:.0f} MB)" if "peak_gpu_mb" in run else "")
        achieved, own_peak = run["flops"] / run["denoiser_s"], run["matmul_peak_flops"]
        lines.append(f"| {name} | {run['frames']} | {run['wall_s']:.1f} s | {run['frames'] / run['wall_s']:.1f} | "
                     f"{1000 * run['wall_s'] / run['frames']:.1f} ms | {rss} | {run['denoiser_s'] / run['wall_s']:.0%} | "
                     f"{achieved / 1e9:.1f} G | {achieved / own_peak:.0%} of {own_peak / 1e9:.0f} G |")
    runs = report["lengths"]
    if len(runs) > 1:
        first, last = runs[0], runs[-1]
        middle = runs[-2]
        lines += ["", f"Peak memory, {last['seconds']:g} s against {first['seconds']:g} s: "
                      f"{last['peak_rss_mb'] / first['peak_rss_mb'] - 1:+.1%}. Time per frame, {last['seconds']:g} s "
                      f"against {middle['seconds']:g} s: "
                      f"{(last['wall_s'] / last['frames']) / (middle['wall_s'] / middle['frames']) - 1:+.1%}."]
    steady = report.get("steady_pass")
    if steady:
        achieved = steady["flops"] / steady["seconds"]
        lines += ["", f"Steady-state pass (the full window: {steady['share']:.0%} of the passes of the short video it "
                      f"was taken from, more in longer ones; input "
                      f"{'x'.join(map(str, steady['shape']))}): {steady['flops'] / 1e6:.0f} MFLOP in "
                      f"{1000 * steady['seconds']:.2f} ms, {achieved / 1e9:.1f} GFLOP/s, "
                      f"{achieved / steady['peak_flops']:.0%} of the matrix multiply's {steady['peak_flops'] / 1e9:.1f} "
                      f"GFLOP/s (both best of several, measured together)."]
    if compiled and report["lengths"]:
        lines += ["", "Compile at load: " + ", ".join(f"{r['compile_s']:.1f} s" for r in report["lengths"])
                  + " (each length in a fresh process; torch caches compiled kernels on disk)."]
    s = report["settings"]
    lines += ["", f"Samplers at {s['steps']} steps, {s['window_chunks']} chunks a window, overlap {s['overlap']}:", "",
              "| sampler | model passes per frame | model GFLOPs per frame | wall per frame |", "|---|---|---|---|"]
    for mode, run in report["samplers"].items():
        lines.append(f"| {mode} | {run['passes'] / run['frames']:.3f} | {run['flops'] / run['frames'] / 1e9:.3f} | "
                     f"{1000 * run['wall_s'] / run['frames']:.1f} ms |")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    from matplotlib.figure import Figure  # Agg, without touching pyplot's global backend
    figure = Figure(figsize=(10, 3.8))
    time_axes, memory_axes = figure.subplots(1, 2)
    for name, runs in (("LongTake (window + memory)", report["lengths"]),
                       ("full history (no window, no memory)", report["full_history"])):
        if not runs:
            continue
        seconds = [r["seconds"] for r in runs]
        time_axes.plot(seconds, [1000 * r["wall_s"] / r["frames"] for r in runs], marker="o", label=name)
        memory_axes.plot(seconds, [r["peak_rss_mb"] for r in runs], marker="o", label=name)
    time_axes.set(xscale="log", xlabel="video length (s)", ylabel="wall time per frame (ms)", title="time")
    memory_axes.set(xscale="log", xlabel="video length (s)", ylabel="peak resident memory (MB)", title="memory")
    time_axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", help="the LongTake checkpoint to time (default: the demo model)")
    parser.add_argument("--out", default="speed", help="folder for speed.json, table.md, speed.png (default speed)")
    parser.add_argument("--lengths", type=float, nargs="+", default=list(LENGTHS),
                        help="video lengths in seconds (default 10 60 240)")
    parser.add_argument("--full-history", type=float, nargs="*", default=list(FULL_HISTORY_LENGTHS),
                        help="lengths for the full-history baseline (default 2 4 8; none to skip)")
    parser.add_argument("--sampler-seconds", type=float, default=SAMPLER_SECONDS,
                        help="length of each sampler's video in the comparison (default 10)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    parser.add_argument("--fast", action="store_true", help="a smoke run with 1-2 s videos (overrides the lengths)")
    parser.add_argument("--compile", action="store_true",
                        help="time the denoiser compiled with torch.compile, as `generate --compile` runs it")


def run_from_args(args: argparse.Namespace) -> int:
    from ..cli import DEMO_MODEL
    checkpoint = args.checkpoint or DEMO_MODEL
    lengths = dict(lengths=args.lengths, full_history=args.full_history, sampler_seconds=args.sampler_seconds)
    if args.fast:
        lengths = FAST
    if any(not s > 0 for s in [*lengths["lengths"], *lengths["full_history"], lengths["sampler_seconds"]]):
        raise ValueError("every length must be positive")
    report = run_speed(checkpoint, Path(args.out), device=args.device, threads=args.threads, compile=args.compile,
                       **lengths)
    print(table(report))
    print(f"\nraw numbers in {Path(args.out) / 'speed.json'}; plot in {Path(args.out) / 'speed.png'}")
    return 0


def _child(spec: str) -> None:
    import torch
    job = json.loads(spec)
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    run = generate(job["checkpoint"], job["seconds"], job["device"], job["settings"], job["full_history"],
                   compile=job["compile"])
    # The machine's speed wanders from minute to minute, so each video is set against a peak measured right
    # after it, in its own process, rather than against one measured minutes before.
    run["matmul_peak_flops"] = best_matmul_peak(job["device"], torch.float32, seconds=0.3)
    print(json.dumps(run))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2])
    else:
        parser = argparse.ArgumentParser(prog="longtake bench speed", description=__doc__.split("\n\n")[0])
        add_arguments(parser)
        sys.exit(run_from_args(parser.parse_args()))
