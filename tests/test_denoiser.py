import pytest
import torch

from helpers import MEMORIES, MEMORY_IDS, denoiser, denoiser_inputs, randomise


@pytest.fixture
def model():
    return randomise(denoiser("none"))


@torch.no_grad()
def test_output_has_the_shape_of_the_window(model):
    x, t, text, bias = denoiser_inputs(model.cfg, chunks=3)
    out = model(x, t, text, bias, model.initial_state(2))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


@torch.no_grad()
def test_changing_one_frames_timestep_changes_that_frame(model):
    x, t, text, bias = denoiser_inputs(model.cfg, chunks=3)
    state = model.initial_state(2)
    before = model(x, t, text, bias, state)
    k = 3
    t2 = t.clone()
    t2[:, k] = (t2[:, k] + 0.37) % 1.0
    after = model(x, t2, text, bias, state)
    assert (after[:, :, k] - before[:, :, k]).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("perturb", ["latents", "timestep"])
def test_block_causal_mask_hides_later_chunks(model, perturb):
    cfg = model.cfg
    x, t, text, bias = denoiser_inputs(cfg, chunks=4)
    state = model.initial_state(2)
    before = model(x, t, text, bias, state)
    k = 2
    frames = slice(k * cfg.chunk_frames, (k + 1) * cfg.chunk_frames)
    x2, t2 = x.clone(), t.clone()
    if perturb == "latents":
        x2[:, :, frames] += torch.randn_like(x2[:, :, frames])
    else:
        t2[:, frames] = (t2[:, frames] + 0.5) % 1.0
    after = model(x2, t2, text, bias, state)
    earlier = slice(0, k * cfg.chunk_frames)
    assert (after[:, :, earlier] - before[:, :, earlier]).abs().max() <= 1e-6
    assert (after[:, :, frames] - before[:, :, frames]).abs().max() > 1e-3


@torch.no_grad()
def test_bidirectional_attention_lets_earlier_chunks_see_later_ones():
    model = randomise(denoiser("none", block_causal=False))
    x, t, text, bias = denoiser_inputs(model.cfg, chunks=3)
    state = model.initial_state(2)
    before = model(x, t, text, bias, state)
    x2 = x.clone()
    x2[:, :, -2:] += 1.0
    after = model(x2, t, text, bias, state)
    assert (after[:, :, :2] - before[:, :, :2]).abs().max() > 1e-4


@torch.no_grad()
def test_position_is_relative_to_the_window(model):
    """The same chunks give the same output wherever the window sits in the video: nothing absolute enters."""
    x, t, text, bias = denoiser_inputs(model.cfg, chunks=2)
    state = model.initial_state(2)
    assert torch.equal(model(x, t, text, bias, state), model(x.clone(), t.clone(), text, bias, state))


@torch.no_grad()
def test_each_chunk_reads_its_own_prompt(model):
    cfg = model.cfg
    x, t, text, bias = denoiser_inputs(cfg, chunks=2)
    state = model.initial_state(2)
    per_chunk = text[:, None].repeat(1, 2, 1, 1)
    per_chunk_bias = bias[:, None].repeat(1, 2, 1)
    same = model(x, t, per_chunk, per_chunk_bias, state)
    torch.testing.assert_close(same, model(x, t, text, bias, state), atol=1e-5, rtol=1e-5)
    per_chunk[:, 1] = torch.randn_like(per_chunk[:, 1])
    changed = model(x, t, per_chunk, per_chunk_bias, state)
    first, second = slice(0, cfg.chunk_frames), slice(cfg.chunk_frames, None)
    assert (changed[:, :, first] - same[:, :, first]).abs().max() <= 1e-6
    assert (changed[:, :, second] - same[:, :, second]).abs().max() > 1e-3


@torch.no_grad()
def test_no_text_bias_reads_every_token_as_a_zero_bias_does():
    model = randomise(denoiser("malt"))
    x, t, text, _ = denoiser_inputs(model.cfg, chunks=2)
    state = model.initial_state(2)
    for text_input in (text, text[:, None].repeat(1, 2, 1, 1)):  # one prompt, and a prompt per chunk
        zeros = torch.zeros(text_input.shape[:-1])
        torch.testing.assert_close(model(x, t, text_input, None, state), model(x, t, text_input, zeros, state),
                                   atol=1e-5, rtol=1e-5)
    # ...and the padding a bias hides is read without one.
    padded = torch.cat([text, torch.randn_like(text[:, :2])], dim=1)
    hidden = torch.cat([torch.zeros(2, text.shape[1]), torch.full((2, 2), float("-inf"))], dim=1)
    assert (model(x, t, padded, None, state) - model(x, t, padded, hidden, state)).abs().max() > 1e-3


def test_bad_window_shapes_are_named(model):
    x, t, text, bias = denoiser_inputs(model.cfg, chunks=2)
    with pytest.raises(ValueError, match="multiple of the chunk"):
        model(x[:, :, :3], t[:, :3], text, bias, {})
    with pytest.raises(ValueError, match="one per latent frame"):
        model(x, t[:, :2], text, bias, {})


@pytest.mark.parametrize("memory, recall", [("none", 0)] + MEMORIES, ids=["none"] + MEMORY_IDS)
@torch.no_grad()
def test_a_prefix_run_once_gives_the_rest_of_the_window_the_same_velocity(memory, recall):
    """The sampler runs the clean front chunks once and reuses them; in float64 the reuse is exact."""
    model = randomise(denoiser(memory, recall)).double()
    x, t, text, bias = (v.double() for v in denoiser_inputs(model.cfg, chunks=4))
    state = model.write(model.initial_state(2), x[:, :, :model.cfg.chunk_frames], text, bias)
    split = 2 * model.cfg.chunk_frames  # two clean chunks in front
    t[:, :split] = 0
    whole = model(x, t, text, bias, state)
    prefix = model.prefix(x[:, :, :split], t[:, :split], text, bias, state)
    rest = model(x[:, :, split:], t[:, split:], text, bias, state, prefix)
    assert rest.shape == whole[:, :, split:].shape
    assert torch.allclose(rest, whole[:, :, split:], atol=1e-10, rtol=0)
    # A prompt that changes after the front: the prefix's text keys and values must not be reused for it.
    other = torch.randn_like(text)
    per_chunk = torch.stack([text, text, other, other], dim=1), torch.stack([bias] * 4, dim=1)
    whole = model(x, t, *per_chunk, state)
    rest = model(x[:, :, split:], t[:, split:], other, bias, state, prefix)
    assert torch.allclose(rest, whole[:, :, split:], atol=1e-10, rtol=0)


@torch.no_grad()
def test_a_prefix_is_refused_with_another_memory_state_or_strength():
    model = randomise(denoiser("malt"))
    x, t, text, bias = denoiser_inputs(model.cfg, chunks=2)
    state = model.initial_state(2)
    split = model.cfg.chunk_frames
    prefix = model.prefix(x[:, :, :split], t[:, :split], text, bias, state)
    written = {name: value + 1 for name, value in state.items()}
    with pytest.raises(ValueError, match="memory state it was made with"):
        model(x[:, :, split:], t[:, split:], text, bias, written, prefix)
    with pytest.raises(ValueError, match="strengths it was made with"):
        model(x[:, :, split:], t[:, split:], text, bias, state, prefix, memory_strength=0.5)
    with pytest.raises(ValueError, match="strengths it was made with"):
        model(x[:, :, split:], t[:, split:], text, bias, state, prefix, recall_strength=0.5)
    with pytest.raises(ValueError, match="strengths it was made with"):
        model.write(state, x[:, :, :split], text, bias, seen=prefix, memory_strength=0.5)
    with pytest.raises(ValueError, match="strengths it was made with"):
        model.write(state, x[:, :, :split], text, bias, seen=prefix, recall_strength=0.5)


def textbook_attention(q, k, v, q_gain, k_gain, mask=None, turn=None):
    """Attention with RMS-normalised queries and keys written out the plain way: `[B, N, heads, head_dim]`
    in, `[B, N, heads * head_dim]` out; `turn` applies rotary embedding to queries and keys."""
    def rms(x, gain):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)) * gain
    q, k = rms(q, q_gain), rms(k, k_gain)
    if turn is not None:
        q, k = turn(q), turn(k)
    logits = torch.einsum("bnhd,bmhd->bhnm", q, k) / q.shape[-1] ** 0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, -torch.inf)
    return torch.einsum("bhnm,bmhd->bnhd", logits.softmax(-1), v).flatten(-2)


@torch.no_grad()
def test_attention_layers_compute_textbook_attention_with_rms_normalised_queries_and_keys():
    from longtake.memory.denoiser import Attention, SelfAttention, rotary_tables, rotate
    torch.manual_seed(0)
    width, heads, tokens, frames = 64, 4, 6, 3
    cross = randomise(Attention(width, heads, context_width=32)).double()
    x, context = torch.randn(2, tokens * frames, width).double(), torch.randn(2, 5, 32).double()
    q = cross.q(x).unflatten(-1, (heads, -1))
    k, v = cross.kv(context).unflatten(-1, (2, heads, -1)).unbind(-3)
    expected = cross.out(textbook_attention(q, k, v, cross.q_norm.weight, cross.k_norm.weight))
    assert torch.allclose(cross(x, context)[0], expected, atol=1e-10)

    window = randomise(SelfAttention(width, heads)).double()
    cos, sin = rotary_tables(frames, tokens, width // heads, torch.device("cpu"), torch.float64)
    q, k, v = window.qkv(x).unflatten(-1, (3, heads, -1)).unbind(-3)
    frame_of = torch.arange(frames).repeat_interleave(tokens)
    mask = frame_of[None, :] <= frame_of[:, None]
    bias = torch.zeros(mask.shape, dtype=torch.float64).masked_fill(~mask, -torch.inf)
    turn = lambda y: rotate(y[:, :, None], cos, sin)[:, :, 0]  # noqa: E731 (rotate takes queries and keys stacked)
    expected = window.out(textbook_attention(q, k, v, window.q_norm.weight, window.k_norm.weight, mask, turn))
    assert torch.allclose(window(x, bias, (cos, sin))[0], expected, atol=1e-10)
