"""The quality benchmark: each measure on the demo world's own frames, whose answers are known, read back
from an mp4 as the benchmark reads generated videos; and the fast run end to end on a tiny random model."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from helpers import randomise, small_model_config
from longtake.bench import quality as q
from longtake.memory import LongTakeModel, save_checkpoint
from longtake.samplers.video import Mp4Writer
from longtake.training.vocab import VOCAB
from longtake.training.world import FPS, PALETTE, hidden, render, scene_from_prompt

CLIP = 2 * FPS
OCCLUSION = "a ball moving right behind a gray pillar on a black background"
WINDOW = 40  # the default model's window: (1 + 4 chunks) * 8 frames


def to_mp4(frames, path):
    with Mp4Writer(path, FPS) as writer:
        writer.write(frames)
    return path


def measured(frames, tmp_path):
    return q.features(q.mp4_frames(to_mp4(frames, tmp_path / "video.mp4")))


def test_only_what_the_prompt_names_is_checked():
    assert q.checks_for("a ball bouncing") == q.Checks(None, (), None)
    assert q.checks_for("a grey box and a red ball bouncing on a black backdrop") == \
        q.Checks("black", ("gray", "red"), None)
    # Naming the object's color leaves nothing for memory to keep, and the pillar may hide it a whole clip.
    assert q.checks_for("a red ball moving left behind a gray pillar on a black background") == \
        q.Checks("black", (), None)
    assert q.checks_for(OCCLUSION) == q.Checks("black", (), ("black", "gray"))
    with pytest.raises(ValueError, match="dragon"):
        q.checks_for("a dragon bouncing")


def test_every_built_in_prompt_is_readable_and_several_test_memory():
    checks = [q.checks_for(p) for p in q.PROMPTS]
    assert len(q.PROMPTS) == 20 and sum(c.occlusion is not None for c in checks) >= 4
    assert checks[q.FAST_PROMPTS - 1].occlusion is not None  # the fast run reaches the occlusion measure


def test_background_and_object_colors_of_the_world_pass_and_absent_ones_fail(tmp_path):
    prompt = "a red ball and a blue square bouncing on a white background"
    f = measured(render(scene_from_prompt(prompt, seed=3), 0, 2 * CLIP), tmp_path)
    clips = q.clip_slices(len(f.diff), CLIP)
    assert q.background_by_clip(f, clips, "white") == [True, True]
    assert q.background_by_clip(f, clips, "black") == [False, False]
    assert q.colors_by_clip(f, clips, ["red", "blue", "green"]) == \
        {"red": [True, True], "blue": [True, True], "green": [False, False]}


def test_continuation_areas_are_one_for_the_world_and_zero_for_a_faded_object(tmp_path):
    scene = scene_from_prompt("a red ball bouncing on a black background", seed=0)
    frames = render(scene, 0, 3 * CLIP)
    faded = frames.copy()
    faded[2 * CLIP:] = PALETTE["black"]  # the ball gone in the last clip
    swollen = frames.copy()
    swollen[2 * CLIP:, 8:40, 8:40] = PALETTE["red"]
    truth = measured(frames, tmp_path)
    clips = q.clip_slices(len(truth.diff), CLIP)
    same = q.area_ratios(truth, truth, clips, "red")
    gone = q.area_ratios(measured(faded, tmp_path), truth, clips, "red")
    grown = q.area_ratios(measured(swollen, tmp_path), truth, clips, "red")
    assert same == [1.0, 1.0, 1.0] and gone[-1] == 0 and grown[-1] > 2
    summary = q.summarise_continuation([dict(area_ratio=same), dict(area_ratio=gone), dict(area_ratio=grown)])
    assert summary["kept"] == pytest.approx(1 / 3) and summary["count"] == 3 and summary["median_by_clip"][-1] == 1


def test_interval_spreads_with_the_videos_not_with_their_clips():
    # 80% of the clips: four videos of 20 lose all their 30 clips. More clips per video do not narrow the
    # interval, as they rise and fall together; more videos do.
    whole_videos = [[True] * 30] * 16 + [[False] * 30] * 4
    low, high = q.interval(whole_videos)
    assert low < 0.65 and high > 0.9  # one video more or less moves the share by 5 points
    assert q.interval([[True]] * 16 + [[False]] * 4) == pytest.approx([low, high], abs=0.03)
    more_low, more_high = q.interval([[True] * 30] * 64 + [[False] * 30] * 16)
    assert low < more_low < 0.8 < more_high < high
    assert q.interval(whole_videos) == [low, high] and q.interval([[], []]) is None
    # Videos that all agree, however many clips each, are not a certainty: twenty that all pass rule out no
    # more than about 16 points, and one that passes 29 clips of 30 rules out almost nothing.
    assert q.interval([[True] * 30] * 20) == pytest.approx([0.839, 1.0], abs=1e-3)
    assert q.interval([[False]] * 20) == pytest.approx([0.0, 0.161], abs=1e-3)
    assert q.interval([[True] * 29 + [False]])[0] < 0.3
    # One failing video of 20 does not read as safer than none.
    assert q.interval([[True] * 30] * 19 + [[False] * 30])[0] < 0.839
    summary = q.summarise([dict(background=v, object_colors={}, motion_ratio=1.0, scene_cuts=[], occlusion=None)
                           for v in whole_videos])
    assert summary["background"]["share"] == pytest.approx(0.8) and summary["background"]["interval"] == [low, high]
    assert summary["occlusion"]["interval"] is None
    assert q.with_interval(0.815, [0.6812, 0.9413]) == "81.5% [68-94%]"


def test_clips_cover_the_video():
    assert q.clip_slices(100, 48) == [slice(0, 48), slice(48, 96), slice(96, 100)]


def test_steady_motion_keeps_a_ratio_near_one_and_frozen_frames_fail(tmp_path):
    frames = render(scene_from_prompt("a red square moving right quickly on a black background", seed=0), 0, 8 * FPS)
    half = 4 * FPS
    assert q.motion_ratio(measured(frames, tmp_path).diff, half) == pytest.approx(1, abs=0.15)
    frames[half:] = frames[half]
    assert q.motion_ratio(measured(frames, tmp_path).diff, half) < q.MOTION_KEPT / 5


def test_one_shot_has_no_cut_and_two_scenes_back_to_back_have_one(tmp_path):
    one = render(scene_from_prompt("a red ball bouncing on a black background", seed=0), 0, 2 * CLIP)
    other = render(scene_from_prompt("a blue square moving left on a white background", seed=0), 0, CLIP)
    assert q.scene_cuts(to_mp4(one, tmp_path / "one.mp4")) == []
    cuts = q.scene_cuts(to_mp4(np.concatenate([one[:CLIP], other]), tmp_path / "cut.mp4"))
    assert len(cuts) == 1 and abs(cuts[0] - CLIP) <= 1


def pass_behind_the_pillar():
    """The world's frames from a second before the ball goes fully behind the pillar to a second after it
    shows again, with the frame numbers where it is fully hidden within them."""
    scene = scene_from_prompt(OCCLUSION, seed=0)
    covered = hidden(scene, 0, 20 * FPS)[:, 0]
    start, stop = next((a, b) for a, b in q.hidden_runs(~covered) if a >= FPS)
    assert stop - start > WINDOW  # the world's promise, which the measure relies on
    return scene, render(scene, start - FPS, stop - start + 2 * FPS), FPS, FPS + stop - start


def test_an_object_back_from_behind_the_pillar_in_its_color_is_a_match(tmp_path):
    scene, frames, hidden_from, back_at = pass_behind_the_pillar()
    nearest = measured(frames, tmp_path).nearest
    (event,) = q.occlusion_events(nearest, "black", "gray", longer_than=WINDOW, span=FPS)
    # Slivers at the pillar's edge are too small to count as in view, so the event spans the true one, by
    # the few frames a slow object takes to show VISIBLE_PIXELS.
    assert hidden_from - FPS // 2 <= event["hidden_from"] <= hidden_from
    assert back_at <= event["back_at"] <= back_at + FPS // 2
    color = scene.objects[0].color
    assert (event["before"], event["after"], event["same"]) == (color, color, True)
    assert q.occlusion_events(nearest, "black", "gray", longer_than=len(frames), span=FPS) == []


def test_a_color_change_across_the_occlusion_is_a_mismatch(tmp_path):
    scene, frames, _, back_at = pass_behind_the_pillar()
    color = scene.objects[0].color
    new = "green" if color != "green" else "red"
    after = frames[back_at - 4:]  # from a few frames before it shows: the change happens while hidden
    after[(after == PALETTE[color]).all(-1)] = PALETTE[new]
    (event,) = q.occlusion_events(measured(frames, tmp_path).nearest, "black", "gray", longer_than=WINDOW, span=FPS)
    assert (event["before"], event["after"], event["same"]) == (color, new, False)


def test_return_cut_falls_where_only_memory_holds_the_object():
    scene = scene_from_prompt(OCCLUSION, seed=0)
    cut, back = q.return_cut(scene, FPS, WINDOW, frames_per_chunk=8)
    covered = hidden(scene, 0, back + 1)[:, 0]
    went = cut - q.RETURN_HIDDEN_CHUNKS * 8
    assert not covered[:FPS].any() and covered[went:back].all() and not covered[back]  # seen, then hidden to `back`
    assert not covered[went - 1] and back - went >= WINDOW  # it had just gone, for longer than the window
    # A scene whose object never hides for that long has no cut.
    assert q.return_cut(scene, FPS, window=10 * FPS, frames_per_chunk=8) is None


def test_the_world_continued_from_the_cut_brings_its_object_back_in_its_color(tmp_path):
    scene = scene_from_prompt(OCCLUSION, seed=0)
    cut, back = q.return_cut(scene, FPS, WINDOW, frames_per_chunk=8)
    frames = render(scene, cut, 3 * FPS)
    color = scene.objects[0].color
    came_back, seen = q.returned(measured(frames, tmp_path).nearest, "black", "gray", span=FPS)
    assert back - cut <= came_back <= back - cut + FPS // 2 and seen == color
    recolored = frames.copy()
    new = "green" if color != "green" else "red"
    recolored[(recolored == PALETTE[color]).all(-1)] = PALETTE[new]
    assert q.returned(measured(recolored, tmp_path).nearest, "black", "gray", span=FPS)[1] == new
    lost = frames.copy()
    lost[(lost == PALETTE[color]).all(-1)] = PALETTE["black"]  # the object painted over: it never comes back
    assert q.returned(measured(lost, tmp_path).nearest, "black", "gray", span=FPS) == (None, None)


def test_fast_run_end_to_end_writes_table_json_plots_and_videos(tmp_path, capsys):
    torch.manual_seed(0)
    config = small_model_config("malt")
    config = config.replace(text=dataclasses.replace(config.text, vocab=VOCAB))  # knows the prompts' words
    save_checkpoint(randomise(LongTakeModel(config), scale=0.15).eval(), tmp_path / "tiny.safetensors")
    out = tmp_path / "out"
    assert q.main([str(tmp_path / "tiny.safetensors"), "--out", str(out), "--fast", "--guidance", "5",
                   "--occlusion-seeds", "1"]) == 0

    printed = capsys.readouterr().out
    main_table, continuation = printed.split("Continuing the demo world")
    main_table, returns = main_table.split("Return from occlusion:")
    main_table, more_seeds = main_table.split("Color through occlusion on the occlusion prompts with seeds 0, 100")
    rows = [line for line in main_table.splitlines() if line.startswith("| ") and "sampler" not in line]
    assert [row.split(" | ")[:2] for row in rows] == [["| progressive", "on"], ["| rw", "on"], ["| rn", "on"],
                                                       ["| progressive", "off"], ["| world", "-"], ["| vae", "-"]]
    # The first fast prompt names its ball's color: each sampler continued the world's start of it.
    assert [line.split(" | ")[0] for line in continuation.splitlines() if line.startswith("| ")][1:] == \
        ["| progressive", "| rw", "| rn", "| vae"]
    assert all(("PASS" in cell or "FAIL" in cell) for row in rows[:3] for cell in row.split(" | ")[2:6])
    assert (out / "table.md").read_text().strip() in printed
    assert "2 prompts x 4 s, seeds from 0; steps 20" in printed and "guidance 5" in printed  # what made the rows

    report = json.loads((out / "quality.json").read_text())
    assert report["prompts"] == list(q.PROMPTS[:q.FAST_PROMPTS]) and report["seconds"] == q.FAST_SECONDS
    assert report["settings"]["guidance"] == 5
    assert set(report["runs"]) == {"progressive", "rw", "rn", "progressive-memory-off", "world", "vae"}
    # The world's own videos pass what they can be checked on: the measures read them right.
    world = report["runs"]["world"]["summary"]
    assert world["background"]["share"] == world["object_colors"]["share"] == world["single_scene"]["share"] == 1
    for key, run in report["runs"].items():
        assert len(run["videos"]) == (1 if key == "progressive-memory-off" else 2)
        for video in run["videos"]:
            assert video["frames"] == 96 and len(video["motion"]) == 2 and video["window_frames"] == WINDOW
            assert (out / video["mp4"]).is_file()
    for name in ("background", "object_colors", "motion", "scene_cuts", "occlusion"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The occlusion prompt again at seed 100 + 1 in every sampled row, its events pooled with the table's own.
    assert [row.split(" | ")[:2] for row in more_seeds.splitlines() if row.startswith("| ") and "sampler" not in row] \
        == [["| progressive", "on"], ["| rw", "on"], ["| rn", "on"], ["| progressive", "off"]]
    for key in ("progressive", "rw", "rn", "progressive-memory-off"):
        pooled, own = report["runs"][key]["occlusion_seeds"], report["runs"][key]["videos"][-1]["occlusion"]
        assert pooled["seeds"] == [0, 100] and (out / f"{key}-seed100-01.mp4").is_file()
        assert pooled["events"][:len(own)] == own and pooled["count"] == len(pooled["events"])
        assert pooled["kept"] == sum(e["same"] for e in pooled["events"])
    assert "occlusion_seeds" not in report["runs"]["world"]
    # The occlusion prompt's world continued from behind the pillar once (--fast), with memory and without.
    assert [row.split(" | ")[0] for row in returns.splitlines() if row.startswith("| ")][1:] == ["| on", "| off"]
    for memory in ("on", "off"):
        run = report["return_from_occlusion"][memory]
        (event,) = run["events"]
        assert run["starts"] == 1 and event["seed"] == 1
        assert event["color"] == scene_from_prompt(OCCLUSION, 1).objects[0].color
        came_back = event["back_at"] is not None
        assert run["back"] == came_back and run["kept"] == (came_back and event["same"])
        assert (out / event["mp4"]).is_file()
    for mode in ("progressive", "rw", "rn", "vae"):
        (red,) = report["continuation"][mode]["objects"]
        assert red["color"] == "red" and len(red["area_ratio"]) == 2  # 4 s: two clips
        assert (out / f"continue-{mode}-00.mp4").is_file()


def test_a_negative_count_of_occlusion_seeds_or_return_starts_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="occlusion seeds must be 0 or more, got -1"):
        q.run_quality(tmp_path / "not-loaded.safetensors", tmp_path / "out", occlusion_seeds=-1)
    with pytest.raises(ValueError, match="return starts must be 0 or more, got -2"):
        q.run_quality(tmp_path / "not-loaded.safetensors", tmp_path / "out", return_starts=-2)
    assert not (tmp_path / "out").exists()


def test_memory_probe_reads_a_color_that_is_there_and_not_one_that_is_not():
    from longtake.bench.memory import held_out_accuracy
    rng = np.random.default_rng(0)
    colors = np.array(["red", "blue", "green", "cyan"])
    labels = colors[rng.integers(0, 4, 200)]
    held_out = np.arange(200) % 4 == 0
    one_hot = (labels[:, None] == colors[None]).astype(np.float64)
    # As in the slots, the color spread over many values, each also carrying much else.
    holding = one_hot @ rng.standard_normal((4, 300)) + 2 * rng.standard_normal((200, 300))
    assert held_out_accuracy(holding, labels, held_out) > 0.9
    assert held_out_accuracy(rng.standard_normal((200, 300)), labels, held_out) < 0.5


def test_memory_probe_runs_on_a_model_and_prints_a_share_per_write(tmp_path, capsys):
    from longtake.cli import main as cli
    config = small_model_config().replace(text=dataclasses.replace(small_model_config().text, vocab=VOCAB))
    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(randomise(LongTakeModel(config)), path)
    assert cli(["bench", "memory", str(path), "--scenes", "4", "--read-scenes", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| color read back |" in printed and printed.count("%") >= 7
    assert "| the scene's own |" in printed and "| none (never written) |" in printed
    assert cli(["bench", "memory", str(path), "--scenes", "2"]) == 2
    assert "at least 4" in capsys.readouterr().err
    assert cli(["bench", "memory", str(path), "--read-scenes", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_memory_read_measure_tells_a_model_that_reads_its_memory_from_one_that_does_not(monkeypatch):
    from longtake.bench.memory import read_gain
    config = small_model_config().replace(text=dataclasses.replace(small_model_config().text, vocab=VOCAB))
    torch.manual_seed(0)
    model = randomise(LongTakeModel(config)).eval()
    channels = config.denoiser.latent_channels
    # A random VAE's latents show no objects; averaged pixels (blown up, so that an object stands out of the
    # background as in a trained VAE's latents) show the pillar and the object where they are.
    pooled = lambda pixels: (3 * torch.nn.functional.avg_pool3d(pixels, (4, 8, 8))).repeat(1, 3, 1, 1, 1)[:, :channels]
    monkeypatch.setattr(model.vae, "encode", lambda pixels: (pooled(pixels), None))
    measure = lambda: read_gain(model, scenes_per_prompt=2, progress=lambda message: None)
    reading = measure()
    slots = list(reading["error"]["own"])
    errors = [reading["error"][name][slot] for name in ("own", "another", "none") for slot in slots]
    assert reading["scenes"] >= 2 and slots and all(np.isfinite(errors))
    assert any(abs(reading["error"]["own"][s] - reading["error"]["none"][s]) > 1e-4 for s in slots)
    with torch.no_grad():
        for block in model.denoiser.blocks:
            block.malt.read_gate.zero_()  # the memory is written as before and never read
    ignoring = measure()
    for slot in slots:
        assert ignoring["error"]["own"][slot] == pytest.approx(ignoring["error"]["none"][slot], rel=1e-4)
        assert ignoring["error"]["another"][slot] == pytest.approx(ignoring["error"]["none"][slot], rel=1e-4)
