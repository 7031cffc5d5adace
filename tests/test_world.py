"""The demo world: determinism, exact pixels, prompts the text encoder knows, and pillar occlusion."""
import time
from dataclasses import replace

import numpy as np
import pytest

from longtake.training.vocab import COLORS, VOCAB
from longtake.training.world import (FPS, MIN_HIDDEN_FRAMES, PALETTE, SIZE, SPEEDS, Drift, Scene, SceneObject,
                                     describe, hidden, positions, render, sample_clip, sample_prompt, sample_scene,
                                     scene_from_prompt)

MINUTE = 60 * FPS


def words_of(scene):
    """What a prompt can say about a scene, with the objects in a fixed order."""
    return (scene.background, sorted((o.shape, o.color) for o in scene.objects), scene.motion, scene.speed,
            scene.pillar.color if scene.pillar else None)


def color_codes(video):
    """One integer per pixel, so colors can be counted with np.unique."""
    flat = video.reshape(-1, 3).astype(np.int64)
    return flat[:, 0] << 16 | flat[:, 1] << 8 | flat[:, 2]


def code(color):
    return color[0] << 16 | color[1] << 8 | color[2]


def runs(flags):
    """(start, end) of each run of True, ends exclusive."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def test_palette_is_the_specified_one():
    assert PALETTE == {
        "black": (16, 16, 16), "white": (240, 240, 240), "gray": (128, 128, 128), "red": (220, 40, 40),
        "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40), "orange": (245, 140, 30),
        "purple": (140, 60, 190), "cyan": (40, 200, 210)}
    assert tuple(PALETTE) == COLORS


def test_same_seed_same_world():
    for seed in range(20):
        scene = sample_scene(seed)
        assert sample_scene(seed) == scene
        assert np.array_equal(render(scene, 500, 8), render(sample_scene(seed), 500, 8))
        assert sample_prompt(scene, seed) == sample_prompt(scene, seed)
        assert scene_from_prompt("a red ball", seed) == scene_from_prompt("a red ball", seed)
        frames, prompt = sample_clip(seed, 8)
        again, same_prompt = sample_clip(seed, 8)
        assert np.array_equal(frames, again) and prompt == same_prompt
    assert len({describe(sample_scene(seed)) for seed in range(20)}) > 15
    assert len({sample_prompt(sample_scene(0), seed) for seed in range(20)}) > 10


def test_pixels_are_palette_colors_and_background_dominates():
    for seed in range(40):
        scene = sample_scene(seed)
        video = render(scene, 37 * seed, 48)
        assert video.shape == (48, SIZE, SIZE, 3) and video.dtype == np.uint8
        allowed = {scene.background} | {o.color for o in scene.objects}
        if scene.pillar:
            allowed.add(scene.pillar.color)
        codes = color_codes(video).reshape(48, -1)
        assert set(np.unique(codes)) <= {code(PALETTE[c]) for c in allowed}, describe(scene)
        background = code(PALETTE[scene.background])
        for frame in codes:
            values, counts = np.unique(frame, return_counts=True)
            assert (counts[values != background] < counts[values == background]).all(), describe(scene)


def test_object_and_pillar_colors_differ_from_the_background():
    for seed in range(300):
        scene = sample_scene(seed)
        colors = {o.color for o in scene.objects}
        assert scene.background not in colors
        if scene.pillar:
            assert scene.pillar.color not in colors | {scene.background}
    with pytest.raises(ValueError, match="background"):
        scene_from_prompt("a red ball on a red background", 0)
    with pytest.raises(ValueError, match="pillar"):
        scene_from_prompt("a red ball moving left behind a red pillar", 0)


def test_any_window_equals_the_same_frames_of_a_longer_render():
    for seed in range(10):
        scene = sample_scene(seed)
        for start in (0, 999, 100_000):
            video = render(scene, start, 12)
            for k in range(12):
                assert np.array_equal(video[k], render(scene, start + k, 1)[0])
    assert render(sample_scene(0), 5, 0).shape == (0, SIZE, SIZE, 3)


def test_motion_matches_its_words():
    for seed in range(200):
        scene = sample_scene(seed)
        corners = positions(scene, 0, MINUTE)
        for i, obj in enumerate(scene.objects):
            x, y = corners[:, i, 0], corners[:, i, 1]
            assert 0 <= x.min() and x.max() <= SIZE - obj.size and 0 <= y.min() and y.max() <= SIZE - obj.size
            low, high = SPEEDS[scene.speed]
            assert low <= np.hypot(obj.vx, obj.vy) <= high + 1e-9
            assert np.abs(np.diff(x)).max() <= np.ceil(high) + 1 and np.abs(np.diff(y)).max() <= np.ceil(high) + 1
            # A step of up to 2.5 px may turn back 1 px short of an edge, never further.
            reaches = {"x": x.min() <= 1 and x.max() >= SIZE - obj.size - 1,
                       "y": y.min() <= 1 and y.max() >= SIZE - obj.size - 1}
            if scene.motion in ("left", "right"):
                assert np.ptp(y) == 0 and reaches["x"]
            elif scene.motion in ("up", "down"):
                assert np.ptp(x) == 0 and reaches["y"]
            else:  # diagonal, reflected off all four edges
                assert reaches["x"] and reaches["y"]
            if scene.motion != "bouncing":  # image rows grow downwards
                assert {"left": -obj.vx, "right": obj.vx, "up": -obj.vy, "down": obj.vy}[scene.motion] > 0
                axis = 0 if scene.motion in ("left", "right") else 1
                if 11 <= corners[0, i, axis] <= SIZE - obj.size - 11:  # no bounce within 4 frames
                    step = corners[4, i, axis] - corners[0, i, axis]
                    assert (step if scene.motion in ("right", "down") else -step) > 0
        # Even "slowly" visibly moves: at least 0.4 px per frame over one second, bounces included.
        travel = np.abs(np.diff(corners[:FPS + 1].astype(float), axis=0)).sum(axis=(0, 2))
        assert (travel >= 0.4 * FPS - 2).all()


def test_every_prompt_word_is_in_the_vocabulary():
    vocab = set(VOCAB)
    for seed in range(300):
        scene = sample_scene(seed)
        for prompt in (sample_prompt(scene, seed, drop=(0.0, 0.25, 0.5)[seed % 3]), describe(scene)):
            words = prompt.split()
            assert set(words) <= vocab, (prompt, set(words) - vocab)
        assert set(sample_clip(seed, 1)[1].split()) <= vocab


def test_the_canonical_prompt_round_trips():
    for seed in range(200):
        scene = sample_scene(seed)
        parsed = scene_from_prompt(describe(scene), seed + 1)
        assert [(o.shape, o.color) for o in parsed.objects] == [(o.shape, o.color) for o in scene.objects]
        assert words_of(parsed) == words_of(scene)
        assert describe(parsed) == describe(scene)


def test_varied_prompts_parse_to_what_they_say():
    for seed in range(300):
        scene = sample_scene(seed)
        full = sample_prompt(scene, seed, drop=0.0)
        assert words_of(scene_from_prompt(full, seed)) == words_of(scene), full
        partial = sample_prompt(scene, seed, drop=0.6)
        parsed = scene_from_prompt(partial, seed)
        assert sorted(o.shape for o in parsed.objects) == sorted(o.shape for o in scene.objects), partial
        assert parsed.motion == scene.motion and (parsed.pillar is None) == (scene.pillar is None), partial
        named = set(partial.replace("grey", "gray").split())
        for word, value in ((scene.speed, parsed.speed), (scene.background, parsed.background)):
            if word in named:
                assert value == word, partial
    attributes = set(COLORS) | {"grey", "slowly", "quickly", "slow", "fast"}
    for seed in range(100):
        assert not set(sample_prompt(sample_scene(seed), seed, drop=1.0).split()) & attributes


def test_example_prompts():
    scene = scene_from_prompt("a red ball bouncing on a black background", 0)
    assert words_of(scene)[:3] == ("black", [("ball", "red")], "bouncing") and scene.pillar is None
    scene = scene_from_prompt("a blue square and a yellow triangle moving left on a white background", 1)
    assert [(o.shape, o.color) for o in scene.objects] == [("square", "blue"), ("triangle", "yellow")]
    assert scene.motion == "left" and scene.background == "white"
    scene = scene_from_prompt("Grey backdrop with a fast circle, passing up.", 2)
    assert scene.background == "gray" and scene.speed == "quickly" and scene.motion == "up"
    assert scene.objects[0].shape == "ball" and scene.objects[0].color != "gray"
    scene = scene_from_prompt("a red ball moving right behind a gray pillar on a black background", 3)
    assert scene.pillar.color == "gray" and scene.speed == "slowly" and scene.motion == "right"
    assert hidden(scene, 0, MINUTE)[:, 0].any()
    assert scene_from_prompt("a ball", 4).motion in ("bouncing", "left", "right", "up", "down")
    assert scene_from_prompt("a box moving", 5).motion in ("left", "right", "up", "down")


@pytest.mark.parametrize("prompt, word", [
    ("a red zebra bouncing on a black background", "zebra"),
    ("a ball red bouncing", "red"),
    ("a ball, a box and a triangle", "triangle"),
    ("a ball bouncing left", "left"),
    ("a slow ball moving quickly", "quickly"),
])
def test_words_that_cannot_be_placed_are_named(prompt, word):
    with pytest.raises(ValueError, match=f"'{word}'"):
        scene_from_prompt(prompt, 0)


def test_a_prompt_without_an_object_is_refused():
    with pytest.raises(ValueError, match="no object"):
        scene_from_prompt("bouncing on a black background", 0)


def test_pillar_hides_each_passing_object_for_two_seconds():
    scenes = [sample_scene(seed, occlusion=True) for seed in range(200)]
    scenes.append(scene_from_prompt("a red ball and a blue box moving left behind a pillar", 0))
    for scene in scenes:
        covered = hidden(scene, 0, MINUTE)
        for i in range(len(scene.objects)):
            passes = [(a, b) for a, b in runs(covered[:, i]) if a > 0 and b < MINUTE]
            assert len(passes) >= 4, describe(scene)
            assert min(b - a for a, b in passes) >= MIN_HIDDEN_FRAMES, (describe(scene), passes)


def test_hidden_objects_leave_no_pixel_and_come_back_unchanged():
    for seed in range(8):
        scene = sample_scene(seed, occlusion=True)
        covered = hidden(scene, 0, MINUTE)
        video = render(scene, 0, MINUTE)
        for i, obj in enumerate(scene.objects):
            # Paint the object in a color the scene does not use, so its pixels can be told apart.
            used = {scene.background, scene.pillar.color} | {o.color for o in scene.objects}
            ghost_color = next(c for c in PALETTE if c not in used)
            objects = list(scene.objects)
            objects[i] = replace(obj, color=ghost_color)
            ghost = render(replace(scene, objects=tuple(objects)), 0, MINUTE)
            shows = (ghost == PALETTE[ghost_color]).all(axis=-1)
            area = shows.sum(axis=(1, 2))
            assert np.array_equal(area == 0, covered[:, i])
            a, b = next((a, b) for a, b in runs(covered[:, i]) if a >= 120 and b <= MINUTE - 120)
            # Fully in view shortly before and after the pass, in its own color and shape.
            for window in (range(a - 120, a), range(b, b + 120)):
                frame = next(f for f in window if area[f] == area.max())
                assert (video[frame][shows[frame]] == PALETTE[obj.color]).all()


def test_pillar_scenes_are_about_thirty_percent():
    share = np.mean([sample_scene(seed).pillar is not None for seed in range(1000)])
    assert 0.25 < share < 0.35
    assert all(sample_scene(seed, occlusion=False).pillar is None for seed in range(50))
    assert all(not hidden(sample_scene(seed, occlusion=False), 0, 100).any() for seed in range(10))


def test_a_minute_renders_quickly():
    scene = sample_scene(7, occlusion=True)
    for start in (0, 100_000):
        began = time.perf_counter()
        video = render(scene, start, MINUTE)
        print(f"render of {MINUTE} frames from frame {start}: {time.perf_counter() - began:.3f} s")
        assert video.shape == (MINUTE, SIZE, SIZE, 3)
    began = time.perf_counter()
    frames, prompt = sample_clip(3, MINUTE)
    print(f"sample_clip of {MINUTE} frames: {time.perf_counter() - began:.3f} s ({prompt!r})")


def test_drift_redraws_the_objects_resized_faded_and_blurred_in_place():
    scene = Scene("white", (SceneObject("square", "blue", 16, x=24.0, y=24.0, vx=0.0, vy=0.0),), "right", "slowly")
    start = 40
    true = render(scene, start, 1)[0]
    assert np.array_equal(render(scene, start, 1, Drift())[0], true)
    blue, white = np.array(PALETTE["blue"]), np.array(PALETTE["white"])

    def object_pixels(frame, color):
        return np.argwhere((frame == color).all(axis=-1))

    true_pixels = object_pixels(true, blue)
    for scale in (0.5, 1.5):
        drawn = object_pixels(render(scene, start, 1, Drift(scale=scale))[0], blue)
        side = max(2, round(scene.objects[0].size * scale))
        assert len(drawn) == side * side
        assert np.abs(drawn.mean(axis=0) - true_pixels.mean(axis=0)).max() <= 1  # about the same centre
    faded = render(scene, start, 1, Drift(fade=0.25))[0]
    assert np.array_equal(object_pixels(faded, np.round(0.25 * blue + 0.75 * white)), true_pixels)
    # Blur softens the edges, more with a larger sigma, and leaves the square's middle (7 px from them) alone.
    changed = [(render(scene, start, 1, Drift(blur=sigma))[0] != true).any(axis=-1) for sigma in (0.7, 1.5)]
    middle = np.zeros((SIZE, SIZE), bool)
    middle[28:36, 28:36] = True
    assert 0 < changed[0].sum() < changed[1].sum() and not (changed[1] & middle).any()
    assert np.array_equal(changed[1], changed[1][::-1, ::-1])  # symmetric about the centred square
    # A swollen object at a corner is cut off by the frame, not wrapped round to the far edges.
    corner = Scene("white", (SceneObject("square", "blue", 16, x=0.0, y=0.0, vx=0.0, vy=0.0),), "right", "slowly")
    drawn = object_pixels(render(corner, 0, 1, Drift(scale=2))[0], blue)
    assert len(drawn) == 24 * 24 and drawn.max() == 23  # 32 px about the corner square's centre, 8 px off frame


def test_drift_widens_the_pillar_about_its_centre():
    scene = sample_scene(1, occlusion=True)
    pillar = PALETTE[scene.pillar.color]

    def columns(frame):
        return np.flatnonzero((frame == pillar).all(axis=-1).all(axis=0))

    true, wide = columns(render(scene, 0, 1)[0]), columns(render(scene, 0, 1, Drift(pillar_scale=1.2))[0])
    assert len(wide) == round(1.2 * len(true)) and abs(wide.mean() - true.mean()) <= 1


def test_drift_eases_back_to_the_world_as_it_is():
    drift = Drift(scale=4.0, fade=0.4, blur=1.5, pillar_scale=1.44)
    assert drift.toward_truth(1) == drift and drift.toward_truth(0) == Drift()
    half = drift.toward_truth(0.5)
    assert (half.scale, half.fade, half.blur, half.pillar_scale) == pytest.approx((2.0, 0.7, 0.75, 1.2))
    scene = sample_scene(1, occlusion=True)
    assert np.array_equal(render(scene, 0, 2, drift.toward_truth(0)), render(scene, 0, 2))
