"""Word-level text encoder for the demo world.

A prompt becomes a learned start token followed by one token per known word, run through a small
transformer. The start token is always present, so the empty prompt (the null prompt used for
classifier-free guidance) is a valid one-token sequence and attention never sees an all-masked row.

Conditioning travels as `(tokens [B, L, D], bias [B, L])`: `bias` is added to attention logits, 0 for a
real token and -inf for padding. Blending two prompts concatenates their tokens and adds log-weights
to the bias (see `blend`), so one mechanism serves padding, single prompts and prompt transitions.
"""
from __future__ import annotations

import math
import re
import warnings

import torch
from torch import nn

from .config import TextConfig

WORD = re.compile(r"[a-z]+")


def words_of(prompt: str) -> list[str]:
    return WORD.findall(prompt.lower())


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        if not cfg.vocab:
            raise ValueError("the text encoder needs a vocabulary (TextConfig.vocab is empty)")
        self.cfg = cfg
        self.index = {word: i + 1 for i, word in enumerate(cfg.vocab)}  # 0 is the start token
        self.embed = nn.Embedding(len(cfg.vocab) + 1, cfg.width)
        self.position = nn.Parameter(torch.zeros(cfg.max_words + 1, cfg.width))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.width, cfg.heads, dim_feedforward=4 * cfg.width, dropout=0.0,
            activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)

    def token_ids(self, prompt: str) -> list[int]:
        """Start token plus the ids of known words; unknown words are dropped with a warning."""
        words = words_of(prompt)
        unknown = sorted({w for w in words if w not in self.index})
        if unknown:
            warnings.warn(f"LongTake: the text encoder does not know these words and ignores them: "
                          f"{', '.join(unknown)}", stacklevel=3)
        ids = [0] + [self.index[w] for w in words if w in self.index]
        return ids[: self.cfg.max_words + 1]

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prompts into padded per-token embeddings and an additive attention bias."""
        device = self.embed.weight.device
        ids = [self.token_ids(p) for p in prompts]
        length = max(len(i) for i in ids)
        padded = torch.zeros(len(ids), length, dtype=torch.long, device=device)
        bias = torch.full((len(ids), length), -math.inf, device=device)
        for row, seq in enumerate(ids):
            padded[row, : len(seq)] = torch.tensor(seq, device=device)
            bias[row, : len(seq)] = 0.0
        x = self.embed(padded) + self.position[:length]
        x = self.blocks(x, src_key_padding_mask=bias.isinf())
        return self.norm(x), bias


def blend(first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor],
          weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditioning that is `1 - weight` of `first` and `weight` of `second`.

    Tokens are concatenated and each prompt's attention logits are offset by the log of its weight,
    so attention mass splits between the prompts in that ratio; weight 0 or 1 gives exactly one prompt.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"blend weight {weight} must lie in [0, 1]")
    tokens = torch.cat([first[0], second[0]], dim=-2)
    bias = torch.cat([first[1] + _log(1.0 - weight), second[1] + _log(weight)], dim=-1)
    return tokens, bias


def _log(w: float) -> float:
    return math.log(w) if w > 0 else -math.inf
