import pytest
import torch

from helpers import text_encoder
from longtake.memory.text import blend


@torch.no_grad()
def test_unknown_words_are_ignored_with_a_warning_naming_them():
    encoder = text_encoder()
    with pytest.warns(UserWarning, match="purple.*zebra|zebra.*purple"):
        ids = encoder.token_ids("a zebra ball on a purple background")
    assert ids == encoder.token_ids("a ball on a background")


@torch.no_grad()
def test_empty_prompt_is_the_null_prompt():
    encoder = text_encoder()
    tokens, bias = encoder(["", "a red ball"])
    assert tokens.shape == (2, 4, 32)
    assert torch.equal(bias[0], torch.tensor([0.0, -float("inf"), -float("inf"), -float("inf")]))
    assert torch.equal(bias[1], torch.zeros(4))
    alone, _ = encoder([""])
    torch.testing.assert_close(alone[0, 0], tokens[0, 0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_padding_does_not_change_a_prompts_tokens():
    encoder = text_encoder()
    alone, _ = encoder(["a red ball"])
    batched, _ = encoder(["a red ball", "a blue square bouncing on a white background"])
    torch.testing.assert_close(batched[0, :4], alone[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_case_and_punctuation_do_not_matter():
    encoder = text_encoder()
    assert encoder.token_ids("A red, BALL!") == encoder.token_ids("a red ball")


@torch.no_grad()
def test_blend_endpoints_are_the_prompts_themselves():
    encoder = text_encoder()
    red, blue = encoder(["a red ball"]), encoder(["a blue square"])
    tokens, bias = blend(red, blue, 0.0)
    assert tokens.shape[1] == red[0].shape[1] + blue[0].shape[1]
    assert torch.isinf(bias[0, red[1].shape[1]:]).all() and (bias[0, :red[1].shape[1]] == 0).all()
    _, bias = blend(red, blue, 1.0)
    assert torch.isinf(bias[0, :red[1].shape[1]]).all() and (bias[0, red[1].shape[1]:] == 0).all()
    with pytest.raises(ValueError, match="blend weight"):
        blend(red, blue, 1.5)
