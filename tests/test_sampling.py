"""The window samplers, driven by an instrumented stand-in for the model."""
import pytest
import torch

from longtake.samplers import stage_table, time_grid, warp
from longtake.samplers.schedule import euler_step
from longtake.samplers.window import Window, progressive, replacement

SHAPE = (1, 2, 2, 2, 2)  # one chunk: batch, channels, 2 latent frames, 2x2


class Recorder:
    """Stands in for the model: records every window it is shown and every chunk that leaves."""

    def __init__(self):
        self.calls, self.left = [], []

    def denoise(self, x, t, indexes):
        frames = SHAPE[2]
        self.calls.append({"indexes": list(indexes), "t": t[0, ::frames].tolist(),
                           "x": [x[:, :, i * frames:(i + 1) * frames].clone() for i in range(len(indexes))]})
        return torch.sin(x) + 0.1 * t[:, None, :, None, None]  # any deterministic field

    def leave(self, chunk):
        self.left.append((chunk.index, len(self.calls)))


def noise_for(index):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(index + 1000))


def run_progressive(steps=8, k=4, chunks=6, shift=1.0, window=None):
    recorder = Recorder()
    levels = time_grid(steps, shift)
    out = list(progressive(window or Window(), recorder.denoise, recorder.leave, noise_for, levels, k, chunks))
    return recorder, out, levels


def test_time_grid_and_shift():
    grid = time_grid(4)
    assert grid.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    shifted = time_grid(4, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and (shifted[1:-1] > grid[1:-1]).all()
    assert torch.allclose(warp(torch.tensor(0.5, dtype=torch.float64), 3.0), torch.tensor(0.75, dtype=torch.float64))


def test_euler_moves_each_frame_by_its_own_step():
    x = torch.zeros(1, 1, 3, 1, 1)
    v = torch.ones_like(x)
    t = torch.tensor([[1.0, 0.5, 0.0]])
    moved = euler_step(x, v, t, torch.tensor([[0.75, 0.5, 0.0]]))
    assert moved.flatten().tolist() == [-0.25, 0.0, 0.0]


@pytest.mark.parametrize("steps,k,chunks", [(8, 4, 6), (20, 4, 9), (6, 3, 2), (4, 1, 3)])
def test_each_chunk_walks_the_levels_of_an_ordinary_sample(steps, k, chunks):
    recorder, out, levels = run_progressive(steps, k, chunks, shift=2.0)
    assert [c.index for c in out] == list(range(chunks))
    for index in range(chunks):
        seen = [call["t"][call["indexes"].index(index)] for call in recorder.calls
                if index in call["indexes"] and call["t"][call["indexes"].index(index)] > 0]
        assert seen == pytest.approx([float(v) for v in levels[:-1]], abs=1e-6)
    assert len(recorder.calls) == (steps // k) * (chunks + k - 1)


def test_window_never_holds_more_than_one_clean_and_k_noisy_chunks():
    recorder, _, _ = run_progressive(20, 4, 12)
    sizes = [len(call["indexes"]) for call in recorder.calls]
    assert max(sizes) == 5
    for call in recorder.calls:
        clean = [i for i, t in zip(call["indexes"], call["t"]) if t == 0]
        assert len(clean) <= 1 and (not clean or call["t"][0] == 0)
        assert call["indexes"] == sorted(call["indexes"])


def test_steady_state_matches_the_stage_table():
    steps, k = 8, 4
    recorder, _, _ = run_progressive(steps, k, 8)
    table = stage_table(steps, k)
    m = steps // k
    first_full = m * (k - 1) + m  # after the first chunk left the window, the window is full
    for stage in range(m):
        call = recorder.calls[first_full + stage]
        assert call["t"][1:] == pytest.approx(table[stage].tolist())


def test_clean_front_chunk_is_never_modified():
    recorder, out, _ = run_progressive(8, 4, 6)
    emitted = {c.index: c.latents for c in out}
    for call in recorder.calls:
        for index, t, x in zip(call["indexes"], call["t"], call["x"]):
            if t == 0:
                assert torch.equal(x, emitted[index])


def test_memory_writes_happen_exactly_when_chunks_leave_the_window():
    recorder, out, _ = run_progressive(8, 4, 7)
    left = [index for index, _ in recorder.left]
    assert left == list(range(6))  # every chunk but the last front chunk, in order, once
    for index, calls_before in recorder.left:
        assert all(index in call["indexes"] for call in recorder.calls[calls_before - 1:calls_before])
        assert all(index not in call["indexes"] for call in recorder.calls[calls_before:])


def test_undrained_window_gives_the_same_chunks_under_a_block_causal_model():
    """With `total_chunks=None` the window stays full; chunk g only depends on chunks up to g, so the
    drained and the undrained runs agree: the recorder's field is per-frame, i.e. block-causal."""
    _, drained, _ = run_progressive(8, 4, 5)
    recorder = Recorder()
    generator = progressive(Window(), recorder.denoise, recorder.leave, noise_for, time_grid(8), 4, None)
    undrained = [next(generator) for _ in range(5)]
    for a, b in zip(drained, undrained):
        assert torch.equal(a.latents, b.latents)


@pytest.mark.parametrize("renoise", [False, True])
def test_replacement_condition_handling(renoise):
    steps, k, overlap, chunks = 4, 2, 1, 5
    recorder, levels = Recorder(), time_grid(steps)
    renoise_noise = {}

    def renoise_for(index, step):
        renoise_noise[(index, step)] = torch.randn(SHAPE, generator=torch.Generator().manual_seed(10 * index + step))
        return renoise_noise[(index, step)]

    out = list(replacement(Window(), recorder.denoise, recorder.leave, noise_for, levels, k, chunks, overlap,
                           renoise, renoise_for))
    emitted = {c.index: c.latents for c in out}
    assert [c.index for c in out] == list(range(chunks))
    assert len(recorder.calls) == steps * 3  # blocks of 2, 2, 1
    for n, call in enumerate(recorder.calls):
        step = n % steps
        block_start = (n // steps) * k
        noisy_t = [t for i, t in zip(call["indexes"], call["t"]) if i >= block_start]
        assert noisy_t == pytest.approx([float(levels[step])] * len(noisy_t))
        condition = [(i, t, x) for i, t, x in zip(call["indexes"], call["t"], call["x"]) if i < block_start]
        assert len(condition) == (0 if n < steps else overlap)
        for index, t, x in condition:
            if renoise:  # RW: the condition is re-noised to the block's current t at every step
                assert t == pytest.approx(float(levels[step]))
                expected = (1 - levels[step].item()) * emitted[index] + levels[step].item() * renoise_noise[(index, step)]
                assert torch.allclose(x, expected, atol=1e-6)
            else:  # RN: the condition is written back clean at every step
                assert t == 0 and torch.equal(x, emitted[index])
    # Chunks leave when they drop out of the condition, in order, once.
    assert [index for index, _ in recorder.left] == [0, 1, 2, 3]


def test_progressive_costs_no_more_chunk_evaluations_than_replacement():
    """Model FLOPs scale with the chunks in each call. At equal steps and overlap 1 both show the model
    1 + K chunks for every S/K steps of output in the steady state; progressive's cheaper fill and its
    drain (which keeps the clean front chunk) nearly cancel, within a few chunk evaluations per video."""
    steps, k, chunks = 8, 4, 40
    progressive_work = sum(len(call["indexes"]) for call in run_progressive(steps, k, chunks)[0].calls)
    recorder = Recorder()
    list(replacement(Window(), recorder.denoise, recorder.leave, noise_for, time_grid(steps), k, chunks, 1, False))
    replacement_work = sum(len(call["indexes"]) for call in recorder.calls)
    assert progressive_work <= replacement_work + (k - 1) * (steps // k)
    assert progressive_work / chunks == pytest.approx((1 + k) * steps / k, rel=0.1)


def test_steps_not_divisible_by_window_chunks_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible by window chunks.*try steps = 8"):
        stage_table(7, 4)


@pytest.mark.parametrize("sampler", ["progressive", "rw", "rn"])
def test_an_oracle_velocity_lands_every_chunk_on_its_target(sampler):
    """With the exact flow velocity (x_t - x0) / t, Euler reaches x0 from any start: the samplers must
    deliver each chunk's own target, whatever the shift and layout."""
    targets = {i: torch.randn(SHAPE, generator=torch.Generator().manual_seed(500 + i)) for i in range(7)}
    frames = SHAPE[2]

    def oracle(x, t, indexes):
        x0 = torch.cat([targets[i] for i in indexes], dim=2)
        return (x - x0) / t.clamp_min(1e-8)[:, None, :, None, None]

    levels = time_grid(8, shift=3.0)
    if sampler == "progressive":
        out = list(progressive(Window(), oracle, lambda c: None, noise_for, levels, 4, 7))
    else:
        out = list(replacement(Window(), oracle, lambda c: None, noise_for, levels, 4, 7, 1, sampler == "rw",
                               lambda index, step: noise_for(index + 100 * step)))
    for chunk in out:
        torch.testing.assert_close(chunk.latents, targets[chunk.index], atol=1e-5, rtol=1e-5)
    assert frames == 2
