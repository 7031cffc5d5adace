"""The speed benchmark's fast run end to end on a tiny random model, and the counts it reports."""
import dataclasses
import json

import pytest
import torch

from helpers import randomise, small_model_config
from longtake.bench import speed
from longtake.memory import LongTakeModel, load_checkpoint, save_checkpoint
from longtake.training.vocab import VOCAB


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    config = small_model_config("malt")
    config = config.replace(text=dataclasses.replace(config.text, vocab=VOCAB))
    path = tmp_path_factory.mktemp("speed") / "tiny.safetensors"
    save_checkpoint(randomise(LongTakeModel(config), scale=0.15).eval(), path)
    return path


def test_fast_run_writes_table_json_and_plot(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    parser = speed.argparse.ArgumentParser()
    speed.add_arguments(parser)
    assert speed.run_from_args(parser.parse_args([str(tiny), "--out", str(out), "--fast", "--threads", "1"])) == 0
    printed = capsys.readouterr().out
    assert (out / "table.md").read_text().strip() in printed
    assert (out / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "speed.json").read_text())
    assert [run["seconds"] for run in report["lengths"]] == [1.0, 2.0]
    assert [run["frames"] for run in report["lengths"]] == [24, 48]
    assert set(report["samplers"]) == {*speed.SAMPLERS, speed.UNCACHED, *(m + speed.UNGUIDED for m in speed.SAMPLERS)}
    # Without guidance each pass runs one row instead of two: about half the work.
    for mode in speed.SAMPLERS:
        assert report["samplers"][mode + speed.UNGUIDED]["flops"] < 0.6 * report["samplers"][mode]["flops"]
    # Reusing the front chunk saves model work and changes nothing else.
    assert report["samplers"][speed.UNCACHED]["flops"] > report["samplers"]["progressive"]["flops"]
    assert report["samplers"][speed.UNCACHED]["frames"] == report["samplers"]["progressive"]["frames"]
    for run in report["lengths"] + report["full_history"] + list(report["samplers"].values()):
        assert 0 < run["denoiser_s"] <= run["wall_s"] and run["flops"] > 0 and run["peak_rss_mb"] > 50
    # Each video in its own process is set against a peak measured right after it there.
    assert all(run["matmul_peak_flops"] > 0 for run in report["lengths"] + report["full_history"])
    assert report["matmul_peak_flops"] > 0
    steady = report["steady_pass"]
    # The full window: the front chunk reused, the noisy chunks behind it, conditional and unconditional.
    chunk_frames = load_checkpoint(tiny).config.denoiser.chunk_frames
    assert steady["shape"][0] == 2 and steady["shape"][2] == report["settings"]["window_chunks"] * chunk_frames
    assert 0.3 < steady["share"] <= 1 and steady["flops"] > 0 and steady["seconds"] > 0 and steady["peak_flops"] > 0
    assert "Steady-state pass" in printed


def test_sampler_passes_and_flops_match_the_window_arithmetic(tiny):
    """Progressive moves one chunk every S/K steps, RW and RN K chunks every S steps: the same window passes
    per chunk. Besides those: one memory write per chunk that leaves (the last stays as context), and one
    pass of the clean front chunk each time it changes, where RW re-noises it and cannot reuse it."""
    model = load_checkpoint(tiny)
    chunks, steps, k = 12, 8, 4
    seconds = chunks * model.config.frames_per_chunk / model.config.fps
    runs = {mode: speed.generate(str(tiny), seconds, "cpu", dict(mode=mode, steps=steps, window_chunks=k, overlap=1,
                                                               context_noise=0.0))
            for mode in speed.SAMPLERS}
    writes = chunks - 1
    # Progressive also fills and drains its window: K - 1 extra shifts; all but the first K have a front.
    shifts = chunks + k - 1
    assert runs["progressive"]["passes"] == shifts * steps // k + writes + (shifts - k)
    assert runs["rw"]["passes"] == chunks // k * steps + writes
    assert runs["rn"]["passes"] == chunks // k * steps + writes + (chunks // k - 1)
    assert runs["rn"]["flops"] < runs["rw"]["flops"]
    # Seen at the memory write's noise level, the front chunk's pass is its write: no write runs on its own.
    fused = speed.generate(str(tiny), seconds, "cpu", dict(steps=steps, window_chunks=k, context_noise=0.05))
    assert fused["passes"] == shifts * steps // k + (shifts - k)
    # Every write updates every layer's memory slots, whether or not it ran a pass of its own; that work is the
    # denoiser's too, timed and counted with its passes.
    depth = model.config.denoiser.depth
    assert all(run["memory_updates"] == writes * depth for run in (*runs.values(), fused))
    full = speed.generate(str(tiny), seconds, "cpu", dict(steps=steps, context_noise=0.0), full_history=True)
    # Every past chunk stays in the window: made once, reused, but attended to by every step.
    assert full["passes"] == chunks * steps + (chunks - 1)
    assert full["memory_updates"] == 0
    assert full["flops"] > runs["rn"]["flops"]
