"""The LongTake denoiser: a latent-video transformer over a window of chunks, with memory.

Shapes: latents `[B, C, T, H, W]` with `T = chunks * chunk_frames`; timesteps `[B, T]`, one per latent
frame, `t = 1` pure noise. The model predicts the velocity `v = eps - x0`, so that
`x_t = (1 - t) * x0 + t * eps` moves along `dx/dt = v` and an Euler step is `x += (t_next - t) * v`.

Every block modulates each latent frame's tokens with that frame's own adaLN-Zero shift/scale/gate,
so one model serves uniform, chunk-autoregressive and progressive noise layouts. Positions are
relative to the window: a learned spatial embedding and rotary embeddings over the frame index
inside the window; absolute time never enters, so a video can run as long as one likes.

Memory (`cfg.memory`), read inside every block and written only by `write`:
- `none`: the window alone.
- `malt`: per layer, a fixed set of slot vectors. Read: window tokens attend to the layer's slots
  through a gated cross-attention. Write: a lightly noised clean pass of the chunk leaving the
  window, after which each layer's slots attend to `[slots; chunk tokens]` and are updated through a
  learned gate. With `cfg.recall_chunks`, each layer also keeps its tokens of the last few written
  chunks (a chunk's frames averaged, oldest dropped first), read through a second gated attention.
- `lstm`: in `cfg.lstm_layers`, an LSTM per spatial position scans the window's frames starting from
  the committed state and feeds its output back through a gate. A write scans the leaving chunk and
  makes the result the new committed state.

All read gates start at zero, so an untrained memory leaves the model exactly as `none` would. A sampler
may scale what every read adds (`memory_strength`, and `recall_strength` for the recalled chunks; 1 is the
model as trained).
The memory state is a plain `dict[str, Tensor]` of fixed size: it never grows with video length.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import DenoiserConfig

State = dict[str, torch.Tensor]
KeysValues = tuple[torch.Tensor, torch.Tensor]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of `t` in [0, 1], any shape; computed in float32 whatever the model dtype."""
    angles = t.float()[..., None] * timestep_frequencies(dim, max_period, t.device)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


@functools.lru_cache(maxsize=4)
def timestep_frequencies(dim: int, max_period: float, device: torch.device) -> torch.Tensor:
    """The embedding's angular frequencies per unit of `t` (cached: every pass asks for them)."""
    half = dim // 2
    return 1000.0 * torch.exp(-math.log(max_period) * torch.arange(half, device=device, dtype=torch.float32) / half)


@functools.lru_cache(maxsize=16)
def rotary_tables(frames: int, tokens_per_frame: int, head_dim: int, device: torch.device,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables `[frames * tokens_per_frame, 1, 1, head_dim]` for rotary embedding of the frame index
    (the 1s broadcast over queries-and-keys and over heads). The sin table's first half is negated, so
    `rotate` needs no negation. Cached: a video asks for the same few windows thousands of times."""
    half = head_dim // 2
    freqs = 1.0 / (10000.0 ** (torch.arange(half, device=device, dtype=torch.float32) / half))
    index = torch.arange(frames, device=device, dtype=torch.float32).repeat_interleave(tokens_per_frame)
    angles = index[:, None] * freqs
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], -1)[:, None, None].to(dtype), torch.cat([-sin, sin], -1)[:, None, None].to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x `[..., N, 2, heads, head_dim]`: each pair (i, i + head_dim/2) turned by its frame's angle."""
    first, second = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat([second, first], dim=-1), sin)


@functools.lru_cache(maxsize=16)
def block_causal_bias(chunks: int, prefix_chunks: int, tokens_per_chunk: int, device: torch.device,
                      dtype: torch.dtype) -> torch.Tensor:
    """See `Denoiser.block_mask`; cached, and additive because attention would convert a boolean mask to
    one at every call."""
    chunk_of = torch.arange(prefix_chunks + chunks, device=device).repeat_interleave(tokens_per_chunk)
    allowed = chunk_of[None, :] <= chunk_of[prefix_chunks * tokens_per_chunk:, None]
    return torch.zeros(allowed.shape, device=device, dtype=dtype).masked_fill(~allowed, -math.inf)


def same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Equal tensors (or both None); the identity check first spares a device sync when they are one tensor."""
    return a is b or (a is not None and b is not None and a.shape == b.shape and torch.equal(a, b))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x `[B, T, P, D]` (P tokens per frame); shift/scale `[B, T, D]`, one per latent frame."""
    return torch.addcmul(shift[:, :, None], x, 1 + scale[:, :, None])


class HeadGain(nn.Module):
    """The learned gain, per head dimension, of each head's normalised query or key.

    Queries and keys are normalised to unit length per head: RMS normalisation up to a factor
    `sqrt(head_dim)` on each, which the attention's scale makes up (`attention_scale`) in fewer operations."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim))


def attention_scale(head_dim: int) -> float:
    """The logits' scale for unit-length queries and keys: RMS-normalised vectors' `1 / sqrt(head_dim)` times
    the `sqrt(head_dim)` that each of the two lacks."""
    return math.sqrt(head_dim)


class Attention(nn.Module):
    """Multi-head attention of queries on a context, with normalised queries and keys (keeps logits tame
    in long rollouts)."""

    def __init__(self, width: int, heads: int, context_width: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_width or width, 2 * width)
        self.q_norm = HeadGain(width // heads)
        self.k_norm = HeadGain(width // heads)
        self.out = nn.Linear(width, width)

    def forward(self, x, context, mask=None, context_keys_values=None):
        """x `[..., N, D]` queries, context `[..., M, Dc]`; mask broadcastable to `[..., heads, N, M]`.

        `context_keys_values`: the context's keys and values as this module returned them before, for a
        context that has not changed (`context` is then not read).
        Returns the output and the context's keys and values.
        """
        # Norms run while each token's heads still lie side by side in memory, as the projections wrote
        # them: on the head-major layout attention wants, every one of them would copy first. Only the
        # product of the query's and the key's gains reaches the logits, so the keys, made once for a
        # context that many queries read, carry both.
        q = F.normalize(self.q(x).unflatten(-1, (self.heads, -1)), dim=-1).transpose(-3, -2)  # [..., heads, N, head_dim]
        if context_keys_values is None:
            k, v = self.kv(context).unflatten(-1, (2, self.heads, -1)).unbind(-3)
            k = F.normalize(k, dim=-1) * (self.q_norm.weight * self.k_norm.weight)
            context_keys_values = k.transpose(-3, -2), v.transpose(-3, -2)
        k, v = context_keys_values
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attention_scale(q.shape[-1]))
        return self.out(y.transpose(-3, -2).flatten(-2)), context_keys_values


class SelfAttention(nn.Module):
    """The window's attention on itself: queries, keys and values from one projection, queries and keys
    normalised together and turned by rotary embeddings of their frame index."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm = HeadGain(width // heads)
        self.k_norm = HeadGain(width // heads)
        self.out = nn.Linear(width, width)

    def forward(self, x, mask, rotary, past=None):
        """x `[B, N, D]`; mask `[N, P + N]` (additive) or None; rotary: the cos/sin tables of the N tokens;
        past: keys and values of P earlier tokens that the queries also see.
        Returns the output and the tokens' own keys and values, `[B, heads, N, head_dim]` each."""
        projected = self.qkv(x).unflatten(-1, (3, self.heads, -1))  # [B, N, 3, heads, head_dim]
        # Each gain applies before the rotation, which turns queries and keys by their own frames' angles.
        gains = torch.stack([self.q_norm.weight, self.k_norm.weight])[:, None]
        queries_keys = rotate(F.normalize(projected[:, :, :2], dim=-1) * gains, *rotary)
        q, k, v = queries_keys[:, :, 0], queries_keys[:, :, 1], projected[:, :, 2]
        own = k.transpose(1, 2), v.transpose(1, 2)
        k, v = own
        if past is not None:
            k, v = torch.cat([past[0], k], dim=-2), torch.cat([past[1], v], dim=-2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, scale=attention_scale(q.shape[-1]))
        return self.out(y.transpose(1, 2).flatten(-2)), own


class MaltMemory(nn.Module):
    """One layer's memory: slots with a gated read by the window and a gated update from a leaving chunk and,
    with `recall_tokens`, the layer's tokens of the last few written chunks, read by a second gated attention."""

    def __init__(self, width: int, heads: int, recall_tokens: int = 0):
        super().__init__()
        self.read_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.slot_norm = nn.LayerNorm(width)
        self.read = Attention(width, heads)
        self.read_gate = nn.Parameter(torch.zeros(width))
        self.write_norm = nn.LayerNorm(width)
        self.write = Attention(width, heads)
        self.update_gate = nn.Linear(2 * width, width)
        self.recall = None
        if recall_tokens:
            # A slot must learn, through every write between, to keep what a chunk showed; a recalled chunk is
            # kept as it was, so the read alone has to learn to find it (which small models do in a few hundred
            # steps where the slots' read of the same hidden object never came).
            self.recall_norm = nn.LayerNorm(width)
            self.recall_age = nn.Parameter(torch.randn(recall_tokens, width) * 0.02)  # oldest first
            self.recall = Attention(width, heads)
            self.recall_gate = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor, memory, keys_values=None, strength: float = 1.0, recall_strength: float = 1.0):
        """The window tokens `x [B, N, D]` with what they take from the memory added through the gates (the
        slots' read scaled by `strength`, the recalled chunks' by `recall_strength`); `memory`: the slots
        `[B, S, D]` and the recalled tokens `[B, R, D]` (None without).
        Also returns the memory's keys and values (pass them back as `keys_values` while it stays the same)."""
        slots, recalled = memory
        slot_keys_values, recall_keys_values = keys_values or (None, None)
        queries = self.read_norm(x)
        slots = self.slot_norm(slots) if slot_keys_values is None else None
        read, slot_keys_values = self.read(queries, slots, context_keys_values=slot_keys_values)
        x = torch.addcmul(x, strength * torch.tanh(self.read_gate), read)
        if self.recall is not None:
            recalled = self.recall_norm(recalled) + self.recall_age if recall_keys_values is None else None
            read, recall_keys_values = self.recall(queries, recalled, context_keys_values=recall_keys_values)
            x = torch.addcmul(x, recall_strength * torch.tanh(self.recall_gate), read)
        return x, (slot_keys_values, recall_keys_values)

    def update(self, slots: torch.Tensor, chunk_tokens: torch.Tensor) -> torch.Tensor:
        context = self.write_norm(torch.cat([slots, chunk_tokens], dim=1))
        proposal = slots + self.write(self.write_norm(slots), context)[0]
        keep = torch.sigmoid(self.update_gate(torch.cat([slots, proposal], dim=-1)))
        return keep * slots + (1 - keep) * proposal


class LstmMemory(nn.Module):
    """An LSTM per spatial position over frames; its output re-enters the tokens through a gate."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.cell = nn.LSTMCell(width, hidden)
        self.out = nn.Linear(hidden, width)
        self.gate = nn.Parameter(torch.zeros(width))

    def scan(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """x `[B, T, P, D]`, state `[B, P, H]`: outputs `[B, T, P, H]` and the state after the last frame."""
        batch, frames, positions, _ = x.shape
        inputs = self.norm(x)
        h, c = h.reshape(batch * positions, -1), c.reshape(batch * positions, -1)
        outputs = []
        for f in range(frames):
            h, c = self.cell(inputs[:, f].reshape(batch * positions, -1), (h, c))
            outputs.append(h.view(batch, positions, -1))
        shape = (batch, positions, -1)
        return torch.stack(outputs, dim=1), h.view(shape), c.view(shape)

    def forward(self, x, h, c, strength: float = 1.0):
        outputs, h, c = self.scan(x, h, c)
        return strength * torch.tanh(self.gate) * self.out(outputs), h, c


class Block(nn.Module):
    """adaLN-Zero transformer block: window self-attention, memory read, text cross-attention, MLP."""

    def __init__(self, cfg: DenoiserConfig, lstm: bool):
        super().__init__()
        width = cfg.width
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.attn = SelfAttention(width, cfg.heads)
        self.malt = MaltMemory(width, cfg.heads, cfg.recall_chunks * cfg.tokens_per_frame) \
            if cfg.memory == "malt" else None
        self.lstm = LstmMemory(width, cfg.lstm_width) if lstm else None
        self.norm2 = nn.LayerNorm(width)
        self.cross = Attention(width, cfg.heads, context_width=cfg.text_width)
        # Text enters silently and grows only as it proves useful: an untrained text encoder's noise,
        # injected at full strength, teaches the model to flatten all prompts into one.
        nn.init.zeros_(self.cross.out.weight)
        nn.init.zeros_(self.cross.out.bias)
        self.norm3 = nn.LayerNorm(width, elementwise_affine=False)
        hidden = int(width * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        # Six vectors per latent frame: shift, scale, gate for attention and for the MLP.
        self.modulation = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x, cond, text, text_bias, mask, rotary, memory, past=None, reads=(None, None),
                memory_strength: float = 1.0, recall_strength: float = 1.0):
        """x `[B, T, P, D]`; cond `[B, T, D]`; text `[B, L, Dt]`, or `[B, N, L, Dt]` per chunk; memory:
        this layer's MALT slots and recalled tokens (see `MaltMemory.forward`), or `(h, c)` for an LSTM layer,
        or None; past: keys and values of earlier window tokens; reads: the keys and values of the MALT memory
        and of the text, where they are known already (None where not); memory_strength, recall_strength: the
        factors on what the memory read and the recalled chunks' read add.
        Returns x, the LSTM's end state, this layer's keys and values, and `reads` as used."""
        memory_keys_values, text_keys_values = reads
        batch, frames, positions, width = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond).chunk(6, dim=-1)

        h = modulate(self.norm1(x), shift1, scale1).reshape(batch, frames * positions, width)
        h, keys_values = self.attn(h, mask, rotary, past)
        x = torch.addcmul(x, gate1[:, :, None], h.view(batch, frames, positions, width))

        lstm_end = None
        if self.malt is not None:
            x, memory_keys_values = self.malt(x.reshape(batch, frames * positions, width), memory,
                                              memory_keys_values, memory_strength, recall_strength)
            x = x.view(batch, frames, positions, width)
        if self.lstm is not None:
            read, *lstm_end = self.lstm(x, *memory, memory_strength)
            x = x + read

        if text.dim() == 3:  # one prompt for the whole window: all tokens read it in one attention
            queries = self.norm2(x).reshape(batch, frames * positions, width)
        else:  # each chunk's tokens read that chunk's own prompt, so prompts can change from chunk to chunk
            queries = self.norm2(x).reshape(batch, text.shape[1], -1, width)
        text_mask = None if text_bias is None else text_bias[..., None, None, :].to(x.dtype)  # over heads, queries
        read, text_keys_values = self.cross(queries, text, mask=text_mask, context_keys_values=text_keys_values)
        x = x + read.view_as(x)

        h = self.mlp(modulate(self.norm3(x), shift2, scale2))
        return torch.addcmul(x, gate2[:, :, None], h), lstm_end, keys_values, (memory_keys_values, text_keys_values)


@dataclass(frozen=True)
class Prefix:
    """What the first chunks of a window give the rest of it: see `Denoiser.prefix`."""
    frames: int                                                  # latent frames it covers
    keys_values: list[KeysValues]                                # per layer, `[B, heads, tokens, head_dim]`
    lstm_ends: list[tuple[torch.Tensor, torch.Tensor]]           # per LSTM layer, its (h, c) after them
    layer_outputs: list[torch.Tensor]                            # per layer, `[B, frames, P, D]`: a write reads them
    # What stays fixed while the window steps, read once here and by every step after: per layer, the keys
    # and values of the MALT memory and of the prompt, with the memory and prompt they came from.
    reads: list[tuple[tuple[KeysValues | None, KeysValues | None] | None, KeysValues | None]]
    state: State
    text: tuple[torch.Tensor, torch.Tensor]
    strengths: tuple[float, float]                               # the memory_strength and recall_strength it read at


class Denoiser(nn.Module):
    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        self.cfg = cfg
        width = cfg.width
        patch_dim = cfg.latent_channels * cfg.patch ** 2
        self.patch_in = nn.Linear(patch_dim, width)
        self.spatial_position = nn.Parameter(torch.randn(cfg.tokens_per_frame, width) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.text_pool = nn.Linear(cfg.text_width, width)
        nn.init.zeros_(self.text_pool.weight)  # see Block: text starts silent
        nn.init.zeros_(self.text_pool.bias)
        lstm_layers = set(cfg.lstm_layers) if cfg.memory == "lstm" else set()
        self.blocks = nn.ModuleList(Block(cfg, i in lstm_layers) for i in range(cfg.depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.final_modulation = nn.Linear(width, 2 * width)
        self.patch_out = nn.Linear(width, patch_dim)
        for layer in (self.final_modulation, self.patch_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if cfg.memory == "malt":
            self.initial_slots = nn.Parameter(torch.randn(cfg.depth, cfg.memory_slots, width) * 0.02)

    # ----- memory state -----
    @property
    def lstm_layers(self) -> list[int]:
        return [i for i, block in enumerate(self.blocks) if block.lstm is not None]

    def initial_state(self, batch: int = 1) -> State:
        """The memory before anything was written: fixed shapes, float32, detached from training."""
        cfg, device = self.cfg, self.patch_in.weight.device
        if cfg.memory == "malt":
            state = {"malt.slots": self.initial_slots.detach().float()[None].repeat(batch, 1, 1, 1)}
            if cfg.recall_chunks:  # nothing written yet: zeros, told apart from chunks by their age embedding
                state["malt.recall"] = torch.zeros(batch, cfg.depth, cfg.recall_chunks * cfg.tokens_per_frame,
                                                   cfg.width, device=device)
            return state
        if cfg.memory == "lstm":
            shape = (batch, len(self.lstm_layers), cfg.tokens_per_frame, cfg.lstm_width)
            return {"lstm.h": torch.zeros(shape, device=device), "lstm.c": torch.zeros(shape, device=device)}
        return {}

    def _layer_memory(self, state: State, layer: int, dtype: torch.dtype):
        """This layer's part of the (float32) memory state, in the dtype the model computes in."""
        if self.cfg.memory == "malt":
            recalled = state["malt.recall"][:, layer].to(dtype) if self.cfg.recall_chunks else None
            return state["malt.slots"][:, layer].to(dtype), recalled
        if self.blocks[layer].lstm is not None:
            k = self.lstm_layers.index(layer)
            return state["lstm.h"][:, k].to(dtype), state["lstm.c"][:, k].to(dtype)
        return None

    # ----- forward -----
    def block_mask(self, chunks: int, device, dtype, prefix_chunks: int = 0) -> torch.Tensor | None:
        """Additive `[N, prefix + N]` token mask, 0 where attention is allowed (a chunk sees itself and
        earlier chunks, and every chunk of a prefix) and -inf elsewhere."""
        if not self.cfg.block_causal or chunks == 1:
            return None
        return block_causal_bias(chunks, prefix_chunks, self.cfg.chunk_frames * self.cfg.tokens_per_frame,
                                 device, dtype)

    def _run(self, x, t, text, text_bias, state, prefix: "Prefix | None" = None, memory_strength: float = 1.0,
             recall_strength: float = 1.0):
        """Shared body of `forward`, `prefix` and `write`: the velocity, each layer's outputs, the LSTM
        layers' end states, each layer's self-attention keys and values, and each layer's reads (the keys
        and values of its memory and of the text)."""
        cfg = self.cfg
        batch, _, frames, height, _ = x.shape
        if frames % cfg.chunk_frames:
            raise ValueError(f"the window has {frames} latent frames, not a multiple of the chunk's {cfg.chunk_frames}")
        if t.shape != (batch, frames):
            raise ValueError(f"timesteps have shape {tuple(t.shape)}, expected one per latent frame {(batch, frames)}")
        chunks = frames // cfg.chunk_frames
        if text.dim() == 4 and text.shape[1] != chunks:
            raise ValueError(f"conditioning has {text.shape[1]} chunks, the window {chunks}")
        if prefix is not None and prefix.keys_values[0][0].shape[0] != batch:
            raise ValueError("a prefix must be used with the batch it was made for")
        if prefix is not None and prefix.strengths != (memory_strength, recall_strength):
            raise ValueError("a prefix must be used with the memory and recall strengths it was made with")

        dtype = self.patch_in.weight.dtype  # inputs and memory arrive in float32; compute in the weights' dtype
        known = self._known_reads(prefix, state, text, text_bias)  # compared as the prefix got them, before the cast
        x, text = x.to(dtype), text.to(dtype)
        tokens = rearrange(x, "b c t (h p) (w q) -> b t (h w) (c p q)", p=cfg.patch, q=cfg.patch)
        h = self.patch_in(tokens) + self.spatial_position

        if text_bias is None:
            pooled = self.text_pool(text.mean(-2))
        else:
            weights = torch.softmax(text_bias.float(), dim=-1)[..., None].to(dtype)
            pooled = self.text_pool((weights * text).sum(-2))
        if text.dim() == 3:  # one prompt for the whole window
            pooled = pooled[:, None].expand(-1, chunks, -1)
        cond = self.time_mlp(timestep_embedding(t, 256).to(h.dtype)) + pooled.repeat_interleave(cfg.chunk_frames, dim=1)
        cond = F.silu(cond)

        before = 0 if prefix is None else prefix.frames
        mask = self.block_mask(chunks, x.device, dtype, before // cfg.chunk_frames)
        cos, sin = rotary_tables(before + frames, cfg.tokens_per_frame, cfg.width // cfg.heads, x.device, dtype)
        rotary = (cos[before * cfg.tokens_per_frame:], sin[before * cfg.tokens_per_frame:])
        layer_outputs, lstm_ends, keys_values, reads = [], [], [], []
        for i, block in enumerate(self.blocks):
            memory = self._layer_memory(state, i, h.dtype)
            if prefix is not None and block.lstm is not None:  # the scan goes on from where the prefix left it
                memory = prefix.lstm_ends[self.lstm_layers.index(i)]
            past = None if prefix is None else prefix.keys_values[i]
            h, lstm_end, layer_keys_values, layer_reads = block(h, cond, text, text_bias, mask, rotary, memory, past,
                                                                known[i], memory_strength, recall_strength)
            layer_outputs.append(h)
            keys_values.append(layer_keys_values)
            reads.append(layer_reads)
            if lstm_end is not None:
                lstm_ends.append(lstm_end)

        shift, scale = self.final_modulation(cond).chunk(2, dim=-1)
        out = self.patch_out(modulate(self.final_norm(h), shift, scale))
        velocity = rearrange(out, "b t (h w) (c p q) -> b c t (h p) (w q)",
                             h=height // cfg.patch, p=cfg.patch, q=cfg.patch)
        return velocity, layer_outputs, lstm_ends, keys_values, reads

    def _known_reads(self, prefix: "Prefix | None", state: State, text, text_bias) -> list[tuple]:
        """Per layer, the memory's and the prompt's keys and values that `prefix` read from this very memory
        and prompt (one prompt for the whole window), or None for those to compute afresh."""
        if prefix is None:
            return [(None, None)] * len(self.blocks)
        if prefix.state.keys() != state.keys() or not all(same(prefix.state[k], state[k]) for k in state):
            raise ValueError("a prefix must be used with the memory state it was made with")
        same_text = text.dim() == 3 and same(prefix.text[0], text) and same(prefix.text[1], text_bias)
        return [(memory_keys_values, text_keys_values if same_text else None)
                for memory_keys_values, text_keys_values in prefix.reads]

    def forward(self, x, t, text, text_bias, state: State, prefix: "Prefix | None" = None,
                memory_strength: float = 1.0, recall_strength: float = 1.0) -> torch.Tensor:
        """Velocity for the window `x [B, C, T, H, W]` at per-frame times `t [B, T]`.

        `text`/`text_bias`: `[B, L, Dt]`/`[B, L]` for one prompt, or `[B, N, L, Dt]`/`[B, N, L]` per chunk;
        `text_bias` None when every token is real in every row (no padding, no blend), which spares the
        attention its mask.
        `state`: the memory, as from `initial_state` or `write`; it is only read here.
        `prefix`: the window's first chunks, run once by `prefix`; `x` is then the rest of the window.
        `memory_strength`: the factor on what every layer's read of its MALT slots or LSTM state adds (1: as
        trained, 0: nothing); `recall_strength`: the same for the read of the recalled chunks (MALT with
        `recall_chunks`).
        The velocity is float32 whatever dtype the model computes in, so samplers step in float32.
        """
        return self._run(x, t, text, text_bias, state, prefix, memory_strength, recall_strength)[0].float()

    def prefix(self, x, t, text, text_bias, state: State, memory_strength: float = 1.0,
               recall_strength: float = 1.0) -> "Prefix":
        """The first chunks of a window, run on their own, for `forward` to reuse.

        Under the block-causal mask the first chunks of a window see only themselves, so what they give
        the chunks after them (each layer's keys and values, and the LSTM's state after them) does not
        depend on those chunks. A sampler that keeps clean chunks in front for several steps runs them
        once instead of at every step, and gets the same velocities. The steps also reuse the keys and
        values of the memory, which a prefix must share with them, and of the prompt, when it is one
        prompt for the whole window and the same as the prefix's.
        """
        if not self.cfg.block_causal:
            raise ValueError("only a block-causal model can reuse the front of its window")
        _, layer_outputs, lstm_ends, keys_values, reads = self._run(x, t, text, text_bias, state, None,
                                                                    memory_strength, recall_strength)
        if text.dim() == 4:  # a prompt per chunk is never reused
            reads = [(memory_keys_values, None) for memory_keys_values, _ in reads]
        return Prefix(x.shape[2], keys_values, lstm_ends, layer_outputs, reads, state, (text, text_bias),
                      (memory_strength, recall_strength))

    def write(self, state: State, chunk: torch.Tensor, text, text_bias, noise: torch.Tensor | None = None,
              seen: Prefix | None = None, memory_strength: float = 1.0, recall_strength: float = 1.0) -> State:
        """The memory after `chunk` (clean latents `[B, C, chunk_frames, H, W]`) has left the window.

        `text`/`text_bias` are the chunk's own conditioning; `noise` (like `chunk`) the write pass's noise.
        `seen`: the `prefix` this very pass already made (the chunk alone, noised to `write_noise` with
        `noise`, with this text and this memory state), whose first `B` rows are used instead of running
        it again; a sampler has it when the chunk stood at the front of the window just before leaving.
        `memory_strength`, `recall_strength`: as in `forward`, for the write pass's own read of the memory.
        """
        cfg = self.cfg
        if cfg.memory == "none":
            return state
        if chunk.shape[2] != cfg.chunk_frames:
            raise ValueError(f"a memory write takes one chunk of {cfg.chunk_frames} latent frames, got {chunk.shape[2]}")
        if seen is not None:
            if seen.strengths != (memory_strength, recall_strength):
                raise ValueError("a prefix must be used with the memory and recall strengths it was made with")
            rows = chunk.shape[0]
            layer_outputs = [h[:rows] for h in seen.layer_outputs]
            lstm_ends = [(h[:rows], c[:rows]) for h, c in seen.lstm_ends]
        else:
            # The same light noise as in training, so the write pass sees inputs like those it learned from;
            # the caller may pass it in so that a run is reproducible however it was split.
            noise = torch.randn_like(chunk) if noise is None else noise
            noisy = (1 - cfg.write_noise) * chunk + cfg.write_noise * noise
            t = torch.full(chunk.shape[:1] + chunk.shape[2:3], cfg.write_noise, device=chunk.device)
            _, layer_outputs, lstm_ends, _, _ = self._run(noisy, t, text, text_bias, state, None,
                                                          memory_strength, recall_strength)
        if cfg.memory == "malt":
            slots = state["malt.slots"]
            updated = [block.malt.update(slots[:, i].to(h.dtype), h.flatten(1, 2)).float()
                       for i, (block, h) in enumerate(zip(self.blocks, layer_outputs))]
            after = {"malt.slots": torch.stack(updated, dim=1)}
            if cfg.recall_chunks:  # the oldest chunk out, this one in: each layer's tokens, its frames averaged
                written = torch.stack([h.mean(dim=1) for h in layer_outputs], dim=1).float()  # [B, depth, P, D]
                after["malt.recall"] = torch.cat([state["malt.recall"][:, :, written.shape[2]:], written], dim=2)
            return after
        return {"lstm.h": torch.stack([h for h, _ in lstm_ends], 1).float(),
                "lstm.c": torch.stack([c for _, c in lstm_ends], 1).float()}
