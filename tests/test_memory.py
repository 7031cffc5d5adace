import functools

import pytest
import torch

from helpers import (MEMORIES, MEMORY_IDS, denoiser, denoiser_inputs, randomise, read_gates, shut_reads,
                     small_denoiser_config)
from longtake.memory.denoiser import Denoiser


def chunk_of(cfg, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, cfg.latent_channels, cfg.chunk_frames, cfg.latent_size, cfg.latent_size, generator=generator)


@torch.no_grad()
@pytest.mark.parametrize("mode, recall", MEMORIES, ids=MEMORY_IDS)
def test_state_size_is_fixed_however_many_writes(mode, recall):
    model = randomise(denoiser(mode, recall))
    _, _, text, bias = denoiser_inputs(model.cfg, chunks=1)
    state = model.initial_state(2)
    layouts = {}
    for writes in range(1, 201):
        state = model.write(state, chunk_of(model.cfg, writes), text, bias)
        if writes in (2, 200):
            layouts[writes] = {k: (tuple(v.shape), v.dtype, v.numel() * v.element_size()) for k, v in state.items()}
    assert layouts[2] == layouts[200]
    assert all(torch.isfinite(v).all() for v in state.values())


@torch.no_grad()
@pytest.mark.parametrize("mode, recall", MEMORIES, ids=MEMORY_IDS)
def test_untrained_memory_reads_nothing(mode, recall):
    """Zero-initialised read gates and the initial state: exactly the memoryless model."""
    plain = denoiser("none")
    with_memory = denoiser(mode, recall)
    shared = {k: v for k, v in plain.state_dict().items()}
    missing, unexpected = with_memory.load_state_dict(shared, strict=False)
    assert not unexpected and missing  # the memory's own weights stay as initialised
    x, t, text, bias = denoiser_inputs(plain.cfg, chunks=3)
    expected = plain(x, t, text, bias, plain.initial_state(2))
    got = with_memory(x, t, text, bias, with_memory.initial_state(2))
    assert (got - expected).abs().max() <= 1e-6
    assert (expected).abs().max() == 0  # zero-initialised output layer: make sure the comparison is real


@torch.no_grad()
@pytest.mark.parametrize("mode, recall", MEMORIES, ids=MEMORY_IDS)
def test_untrained_memory_reads_nothing_with_a_trained_backbone(mode, recall):
    plain = randomise(denoiser("none"))
    with_memory = denoiser(mode, recall)
    with_memory.load_state_dict(plain.state_dict(), strict=False)
    assert read_gates(with_memory) and all(torch.all(p == 0) for p in read_gates(with_memory))
    state = with_memory.initial_state(2)
    x, t, text, bias = denoiser_inputs(plain.cfg, chunks=3)
    for seed in range(3):  # even a written memory is unread while the read gates are shut
        state = with_memory.write(state, chunk_of(plain.cfg, seed), text[:, :], bias)
    expected = plain(x, t, text, bias, plain.initial_state(2))
    assert expected.abs().max() > 1e-2
    assert (with_memory(x, t, text, bias, state) - expected).abs().max() <= 1e-6


@torch.no_grad()
@pytest.mark.parametrize("mode, recall", MEMORIES, ids=MEMORY_IDS)
def test_output_depends_on_what_was_written(mode, recall):
    model = randomise(denoiser(mode, recall))
    x, t, text, bias = denoiser_inputs(model.cfg, chunks=2)

    def after_writes(seeds):
        state = model.initial_state(2)
        for seed in seeds:
            state = model.write(state, chunk_of(model.cfg, seed), text, bias, noise=chunk_of(model.cfg, 99))
        return model(x, t, text, bias, state)

    fresh = model(x, t, text, bias, model.initial_state(2))
    a, a_again, b = after_writes([1, 2, 3]), after_writes([1, 2, 3]), after_writes([4, 5, 6])
    assert torch.equal(a, a_again)
    assert (a - fresh).abs().max() > 1e-3
    assert (a - b).abs().max() > 1e-3
    # Order matters too: memory is a history, not a bag.
    assert (after_writes([3, 2, 1]) - a).abs().max() > 1e-4


@torch.no_grad()
def test_memoryless_write_keeps_the_empty_state():
    model = denoiser("none")
    _, _, text, bias = denoiser_inputs(model.cfg, chunks=1)
    assert model.write({}, chunk_of(model.cfg, 0), text, bias) == {}


@torch.no_grad()
@pytest.mark.parametrize("mode, recall", MEMORIES, ids=MEMORY_IDS)
def test_state_is_plain_tensors_that_safetensors_can_hold(tmp_path, mode, recall):
    from safetensors.torch import load_file, save_file
    model = randomise(denoiser(mode, recall))
    _, _, text, bias = denoiser_inputs(model.cfg, chunks=1)
    state = model.write(model.initial_state(2), chunk_of(model.cfg, 0), text, bias)
    save_file(state, tmp_path / "state.safetensors")
    loaded = load_file(tmp_path / "state.safetensors")
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


@torch.no_grad()
@pytest.mark.parametrize("mode, recall", MEMORIES, ids=MEMORY_IDS)
def test_memory_strength_scales_every_read_and_zero_reads_nothing(mode, recall):
    model = randomise(denoiser(mode, recall))
    shut = denoiser(mode, recall)
    shut.load_state_dict(model.state_dict())
    shut_reads(shut)
    x, t, text, bias = denoiser_inputs(model.cfg, chunks=2)
    noise = chunk_of(model.cfg, 99)

    def written(net, strength):
        state = net.initial_state(2)
        for seed in (1, 2, 3):
            state = net.write(state, chunk_of(model.cfg, seed), text, bias, noise=noise, memory_strength=strength,
                              recall_strength=strength)
        return state

    state = written(model, 1.0)
    full = model(x, t, text, bias, state)
    assert torch.equal(model(x, t, text, bias, state, memory_strength=1.0), full)
    # At 0 (both strengths) neither the window's passes nor the write passes read anything: the model with its
    # read gates shut.
    assert torch.allclose(model(x, t, text, bias, written(model, 0.0), memory_strength=0.0, recall_strength=0.0),
                          shut(x, t, text, bias, written(shut, 1.0)), atol=1e-6, rtol=0)
    half = model(x, t, text, bias, state, memory_strength=0.5)
    assert (half - full).abs().max() > 1e-3
    assert (half - model(x, t, text, bias, state, memory_strength=0.0, recall_strength=0.0)).abs().max() > 1e-3


@torch.no_grad()
def test_recall_strength_scales_the_recalled_chunks_read_alone():
    """The sampler can read the recalled chunks at another strength than the slots: at recall strength 0 the
    model is the one with its recall gates shut, whatever the slots give; at 0 for both it reads nothing."""
    mode, recall = "malt", MEMORIES[MEMORY_IDS.index("malt-recall")][1]
    model = randomise(denoiser(mode, recall))
    no_recall = denoiser(mode, recall)
    no_recall.load_state_dict(model.state_dict())
    for block in no_recall.blocks:
        block.malt.recall_gate.zero_()
    x, t, text, bias = denoiser_inputs(model.cfg, chunks=2)
    state = model.initial_state(2)
    for seed in (1, 2, 3):
        state = model.write(state, chunk_of(model.cfg, seed), text, bias, noise=chunk_of(model.cfg, 99))
    full = model(x, t, text, bias, state)
    assert torch.allclose(model(x, t, text, bias, state, recall_strength=0.0),
                          no_recall(x, t, text, bias, state), atol=1e-6, rtol=0)
    assert (model(x, t, text, bias, state, recall_strength=0.0) - full).abs().max() > 1e-3
    slots_half = model(x, t, text, bias, state, memory_strength=0.5)
    assert (slots_half - full).abs().max() > 1e-3
    assert (model(x, t, text, bias, state, memory_strength=0.5, recall_strength=0.5) - slots_half).abs().max() > 1e-3


@functools.cache  # the memoryless baseline serves every mode
def hidden_color_loss(mode: str, recall: int = 0, steps: int = 250, hidden_writes: int = 2) -> float:
    """Train a small denoiser from scratch on one task: a chunk of one random color is written, then chunks of
    a background that no longer show it, and a window of pure noise must come out in that color. Only memory
    can carry it; the mean loss of the last 25 steps."""
    torch.manual_seed(0)
    cfg = small_denoiser_config(memory=mode, width=48, depth=2, lstm_layers=(0, 1), recall_chunks=recall)
    model = Denoiser(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    batch, shape = 8, (cfg.latent_channels, cfg.chunk_frames, cfg.latent_size, cfg.latent_size)
    text = torch.zeros(batch, 1, cfg.text_width)
    losses = []
    for _ in range(steps):
        color = torch.randn(batch, cfg.latent_channels, 1, 1, 1)
        state = model.write(model.initial_state(batch), color + 0.1 * torch.randn(batch, *shape), text, None)
        background = 0.1 * torch.randn(batch, cfg.latent_channels, 1, 1, 1)
        for _ in range(hidden_writes):
            state = model.write(state, background + 0.1 * torch.randn(batch, *shape), text, None)
        noise = torch.randn(batch, *shape)
        velocity = model(noise, torch.ones(batch, cfg.chunk_frames), text, None, state)
        loss = (velocity - (noise - color)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses[-25:]) / 25


@pytest.mark.parametrize("mode, recall", MEMORIES, ids=MEMORY_IDS)
def test_memory_learns_to_carry_what_left_the_view(mode, recall):
    """The memory's write and read learn, end to end, to bring back what earlier chunks showed and the window
    does not: a model without memory can only guess the color (about the color's variance, 1)."""
    guessing = hidden_color_loss("none")
    assert guessing > 0.8
    assert hidden_color_loss(mode, recall) < 0.6 * guessing


def test_recall_carries_a_color_across_as_many_writes_as_a_hiding_lasts():
    """Six writes of background between the color and the window, as a demo-world object stays behind its
    pillar: the recalled chunks hold it as it was, and the read learns to find it."""
    guessing = hidden_color_loss("none", hidden_writes=6)
    assert hidden_color_loss("malt", recall=8, hidden_writes=6) < 0.6 * guessing


@torch.no_grad()
def test_recall_holds_the_last_chunks_written_and_nothing_older():
    """With the slots' read shut, the window reads only the recalled chunks: the last `recall_chunks` writes,
    in their order, and nothing of a chunk written before them (writing without reading the memory, so that
    an older chunk does not reach the later ones through their write passes)."""
    model = randomise(denoiser("malt", recall_chunks=2))
    for name, gate in model.named_parameters():
        if name.endswith("malt.read_gate"):
            gate.zero_()
    x, t, text, bias = denoiser_inputs(model.cfg, chunks=2)

    def after_writes(seeds):
        state = model.initial_state(2)
        for seed in seeds:
            state = model.write(state, chunk_of(model.cfg, seed), text, bias, noise=chunk_of(model.cfg, 99),
                                memory_strength=0.0, recall_strength=0.0)
        return state, model(x, t, text, bias, state)

    (state, a), (other_state, older_differs) = after_writes([1, 2, 3]), after_writes([4, 2, 3])
    assert torch.equal(state["malt.recall"], other_state["malt.recall"])
    assert not torch.equal(state["malt.slots"], other_state["malt.slots"])  # the slots still hold it
    assert torch.allclose(a, older_differs, atol=1e-6, rtol=0)
    assert (after_writes([1, 4, 3])[1] - a).abs().max() > 1e-3
    assert (after_writes([1, 3, 2])[1] - a).abs().max() > 1e-5  # which came last is known (a small age embedding)


def test_recall_is_refused_for_a_memory_without_slots():
    with pytest.raises(ValueError, match="recall_chunks"):
        small_denoiser_config(memory="lstm", recall_chunks=2)
    with pytest.raises(ValueError, match="recall_chunks"):
        small_denoiser_config(memory="malt", recall_chunks=-1)


def test_a_shallow_model_needs_lstm_layers_only_for_an_lstm_memory():
    """`longtake train --depth 3` makes a MALT model though the default LSTM layers (1, 3, 5) reach past it."""
    assert Denoiser(small_denoiser_config(memory="malt", depth=2, lstm_layers=(1, 3, 5))).cfg.depth == 2
    with pytest.raises(ValueError, match="lstm_layers"):
        small_denoiser_config(memory="lstm", depth=2, lstm_layers=(1, 3, 5))
    # Left unset, an LSTM goes into every other block however deep the model: (1, 3, 5) in six, (1,) in three.
    assert small_denoiser_config(memory="lstm", depth=6, lstm_layers=None).lstm_layers == (1, 3, 5)
    assert small_denoiser_config(memory="lstm", depth=3, lstm_layers=None).lstm_layers == (1,)
