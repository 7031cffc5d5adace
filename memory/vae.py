"""The LongTake causal video VAE: `time_factor` frames x `space_factor`^2 pixels become one latent vector.

With the default config, pixels `[B, 3, T, H, W]` in [-1, 1] become latents `[B, 8, T/4, H/8, W/8]`:
a 64x64 video at 24 fps turns into 8x8 latent frames at 6 per second, 96x fewer numbers.

Compression happens in two places. Space is reduced first, by per-frame 2D convolutions with stride-2
downsampling: these layers run at high resolution, where temporal convolutions would be expensive.
Time is reduced only at latent resolution, by folding each pair of consecutive frames into channels;
causal 3D convolutions around those folds mix information across frames. The decoder mirrors this:
causal 3D convolutions and depth-to-time unfolds at latent resolution, then per-frame 2D upsampling
by pixel shuffle. Its last convolution runs at half resolution and makes each 2x2 block of output
pixels: on CPU, any layer at full resolution would cost more than the rest of the decoder.

Everything is causal: latent frame `i` depends only on video frames up to `time_factor * (i + 1) - 1`,
and decoded frame `f` only on latent frames up to `f // time_factor` (it shows video frame
`f - frame_delay`, see VAEConfig). A causal convolution of temporal kernel `k` looks `k - 1` frames into
the past; at the start of a video that past is zeros in the encoder and the first frame repeated in the
decoder, and later it is the tail of the previous call's input, kept in a cache. `encode` and `decode`
take and return that cache as a plain `dict[str, Tensor]` (one entry per causal convolution, named after
it) so that a video can be processed chunk by chunk with the same result as all at once. The cache holds
a fixed number of frames per convolution, so its size does not depend on how long the video is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import VAEConfig

Cache = dict[str, torch.Tensor]


def _halvings(name: str, factor: int, at_least: int) -> int:
    """How many x2 stages make up `factor`: the architecture has no other way to compress."""
    if factor < at_least or factor & (factor - 1):
        raise ValueError(f"VAE {name} must be a power of two >= {at_least} (the model stacks x2 stages), "
                         f"got {factor}")
    return factor.bit_length() - 1


class CausalCache:
    """Past input frames of every causal convolution: read from the previous call, kept for the next.

    At the start of a video there is no past. The encoder takes zeros, as its latents always have. The
    decoder takes its first latent's frames repeated: a video then starts as if its first moment had
    lasted (a still opening decodes still), where zeros made the first few latents decode unlike the rest
    and the opening second flicker.
    """

    def __init__(self, previous: Cache | None, repeat_start: bool = False):
        self.previous, self.repeat_start = previous, repeat_start
        self.next: Cache = {}

    def past(self, key: str, x: torch.Tensor, frames: int, period: int = 1) -> torch.Tensor:
        """`period`: frames per latent at the convolution's frame rate; a still start repeats that many."""
        expected = (x.shape[0], x.shape[1], frames, *x.shape[3:])
        if self.previous is None:
            if not self.repeat_start:
                return x.new_zeros(expected)
            return x[:, :, :period].repeat(1, 1, -(-frames // period), 1, 1)[:, :, -frames:]
        if key not in self.previous:
            raise ValueError(f"VAE cache has no entry {key!r}: pass the cache returned by the same method "
                             "(encode or decode) of the same model, or None at the start of a video")
        past = self.previous[key]
        if tuple(past.shape) != expected:
            raise ValueError(f"VAE cache entry {key!r} has shape {tuple(past.shape)} but this input needs "
                             f"{expected}: batch size and resolution must stay the same through a video")
        return past.to(x)

    def keep(self, key: str, frames: torch.Tensor) -> None:
        # A contiguous copy: safetensors needs one, and a view would pin this call's whole input in memory.
        self.next[key] = frames.clone(memory_format=torch.contiguous_format)


class CausalConv3d(nn.Module):
    """Kernel (k, 3, 3) over the current frame and the k - 1 before it, that past taken from the cache.

    It runs as a 2D convolution over the k frames stacked in channels, oldest first: on CPU, PyTorch's
    Conv3d is about 3x slower for these small, short inputs.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_t: int):
        super().__init__()
        self.kernel_t = kernel_t
        self.conv = nn.Conv2d(kernel_t * in_channels, out_channels, 3, padding=1)
        self.cache_key = ""  # set by CausalVideoVAE to this module's name, which is unique
        self.period = 1      # frames per latent at this convolution's frame rate (set by the decoder)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        context = self.kernel_t - 1
        if context:
            x = torch.cat([cache.past(self.cache_key, x, context, self.period), x], dim=2)
            cache.keep(self.cache_key, x[:, :, -context:])
        windows = rearrange(x.unfold(2, self.kernel_t, 1), "b c t h w k -> (b t) (k c) h w")
        return rearrange(self.conv(windows), "(b t) c h w -> b c t h w", b=x.shape[0])


class ResBlock2d(nn.Module):
    """Per-frame residual block; frames arrive with time folded into batch.

    No normalisation anywhere in this VAE: the demo world's frames are mostly flat colour, whose features
    have near-zero variance, and a group norm divides by it. The branch starts at zero instead, so every
    block begins as the identity and training stays stable.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class CausalResBlock(nn.Module):
    """Residual block of two causal 3D convolutions; starts as the identity (see ResBlock2d)."""

    def __init__(self, channels: int, kernel_t: int):
        super().__init__()
        self.conv1 = CausalConv3d(channels, channels, kernel_t)
        self.conv2 = CausalConv3d(channels, channels, kernel_t)
        nn.init.zeros_(self.conv2.conv.weight)
        nn.init.zeros_(self.conv2.conv.bias)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x), cache)), cache)


class TimeFold(nn.Module):
    """Halves the frame rate by stacking frames 2i and 2i+1 into channels: output i never sees frame 2i+2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairs = rearrange(x, "b c (t two) h w -> (b t) (c two) h w", two=2)
        return rearrange(self.conv(pairs), "(b t) c h w -> b c t h w", b=x.shape[0])


class TimeUnfold(nn.Module):
    """Doubles the frame rate: a causal convolution makes two frames' worth of channels for each frame."""

    def __init__(self, channels: int, kernel_t: int):
        super().__init__()
        self.conv = CausalConv3d(channels, 2 * channels, kernel_t)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return rearrange(self.conv(x, cache), "b (c two) t h w -> b c (t two) h w", two=2)


class Upsample2d(nn.Module):
    """x2 by pixel shuffle: the convolution runs at the low resolution, which is cheaper on CPU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4 * out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


def _widths(cfg: VAEConfig, levels: int) -> list[int]:
    """Channels at each spatial level, full resolution first."""
    return [min(cfg.base_channels * 2 ** level, cfg.max_channels) for level in range(levels + 1)]


class Encoder(nn.Module):
    """Pixels to (mean, logvar): per-frame 2D downsampling, then causal time folding at latent resolution."""

    def __init__(self, cfg: VAEConfig, space_halvings: int, time_halvings: int):
        super().__init__()
        widths = _widths(cfg, space_halvings)
        self.stem = nn.Conv2d(cfg.image_channels, widths[0], 3, padding=1)
        self.spatial = nn.Sequential(*(
            layer for level in range(space_halvings) for layer in (
                ResBlock2d(widths[level]),
                nn.Conv2d(widths[level], widths[level + 1], 3, stride=2, padding=1),
            )))
        width, kernel_t = widths[-1], cfg.temporal_kernel
        self.folds = nn.ModuleList(TimeFold(width) for _ in range(time_halvings))
        self.blocks = nn.ModuleList(CausalResBlock(width, kernel_t) for _ in range(time_halvings))
        self.out = CausalConv3d(width, 2 * cfg.latent_channels, kernel_t)
        # A linear path from each latent's block of pixels (its own frames only, so still causal) to the
        # latent: colours reach the latent from the first step, the deep path learns the shapes.
        self.pool = (cfg.time_factor, cfg.space_factor, cfg.space_factor)
        self.shortcut = nn.Conv3d(cfg.image_channels, 2 * cfg.latent_channels, 1)

    def forward(self, pixels: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        frames = rearrange(pixels, "b c t h w -> (b t) c h w")
        x = self.spatial(self.stem(frames))
        x = rearrange(x, "(b t) c h w -> b c t h w", b=pixels.shape[0])
        for fold, block in zip(self.folds, self.blocks):
            x = block(fold(x), cache)
        return self.out(F.silu(x), cache) + self.shortcut(F.avg_pool3d(pixels, self.pool))


class Decoder(nn.Module):
    """Latents to pixels: causal time unfolding at latent resolution, then per-frame 2D upsampling."""

    def __init__(self, cfg: VAEConfig, space_halvings: int, time_halvings: int):
        super().__init__()
        widths = _widths(cfg, space_halvings)
        width, kernel_t = widths[-1], cfg.temporal_kernel
        self.stem = CausalConv3d(cfg.latent_channels, width, kernel_t)
        self.blocks = nn.ModuleList(CausalResBlock(width, kernel_t) for _ in range(time_halvings))
        self.unfolds = nn.ModuleList(TimeUnfold(width, kernel_t) for _ in range(time_halvings))
        for level, (block, unfold) in enumerate(zip(self.blocks, self.unfolds)):
            for conv in (block.conv1, block.conv2, unfold.conv):
                conv.period = 2 ** level
        # Nothing runs at full resolution (see the module docstring): `out` makes 2x2 pixel blocks.
        self.spatial = nn.Sequential(*(
            layer for level in reversed(range(1, space_halvings)) for layer in (
                Upsample2d(widths[level + 1], widths[level]),
                ResBlock2d(widths[level]),
            )))
        self.out = Upsample2d(widths[1], cfg.image_channels)
        # The mirror of the encoder's shortcut: each latent paints its block of pixels with a flat colour.
        self.scale = (cfg.time_factor, cfg.space_factor, cfg.space_factor)
        self.shortcut = nn.Conv3d(cfg.latent_channels, cfg.image_channels, 1)

    def forward(self, latents: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.stem(latents, cache)
        for block, unfold in zip(self.blocks, self.unfolds):
            x = unfold(block(x, cache), cache)
        frames = self.spatial(rearrange(x, "b c t h w -> (b t) c h w"))
        frames = self.out(F.silu(frames))
        coarse = F.interpolate(self.shortcut(latents), scale_factor=self.scale, mode="nearest")
        return rearrange(frames, "(b t) c h w -> b c t h w", b=latents.shape[0]) + coarse


class CausalVideoVAE(nn.Module):
    """Causal video VAE with streaming encode and decode; see the module docstring."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        # The decoder's last layer works at half resolution, so there must be at least one spatial stage.
        space_halvings = _halvings("space_factor", cfg.space_factor, at_least=2)
        time_halvings = _halvings("time_factor", cfg.time_factor, at_least=1)
        if cfg.temporal_kernel < 1:
            raise ValueError(f"VAE temporal_kernel must be at least 1, got {cfg.temporal_kernel}")
        if not 0 <= cfg.frame_delay <= cfg.time_factor:
            raise ValueError(f"VAE frame_delay must be between 0 and time_factor {cfg.time_factor} frames (a "
                             f"latent's frames lie between it and the one before), got {cfg.frame_delay}")
        self.cfg = cfg
        self.encoder = Encoder(cfg, space_halvings, time_halvings)
        self.decoder = Decoder(cfg, space_halvings, time_halvings)
        # Per-channel statistics of the latents, set by training from data; saved with the weights.
        # Start with small posterior noise: at std 1 it would drown the untrained encoder's means.
        with torch.no_grad():
            self.encoder.out.conv.bias[cfg.latent_channels:] = -6.0
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))
        for name, module in self.named_modules():
            if isinstance(module, CausalConv3d):
                module.cache_key = name

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        cfg = self.cfg
        if pixels.ndim != 5 or pixels.shape[1] != cfg.image_channels:
            raise ValueError(f"VAE pixels must be [B, {cfg.image_channels}, T, H, W], "
                             f"got {tuple(pixels.shape)}")
        frames, height, width = pixels.shape[2:]
        if frames == 0 or frames % cfg.time_factor:
            raise ValueError(f"VAE input has {frames} frames; the frame count must be a positive multiple "
                             f"of time_factor {cfg.time_factor}")
        if height % cfg.space_factor or width % cfg.space_factor:
            raise ValueError(f"VAE input is {height}x{width} pixels; height and width must be multiples "
                             f"of space_factor {cfg.space_factor}")

    def _encode(self, pixels: torch.Tensor, cache: Cache | None) -> tuple[torch.Tensor, torch.Tensor, Cache]:
        self._check_pixels(pixels)
        state = CausalCache(cache)
        mean, logvar = self.encoder(pixels.to(self.latent_mean.dtype), state).float().chunk(2, dim=1)
        return mean, logvar, state.next

    def _per_channel(self, buffer: torch.Tensor) -> torch.Tensor:
        return buffer.view(1, -1, 1, 1, 1)

    def encode(self, pixels: torch.Tensor, cache: Cache | None = None) -> tuple[torch.Tensor, Cache]:
        """Normalised latent means of `pixels` (float32 whatever the weights' dtype); `cache=None` starts a
        video, pass the returned cache on."""
        mean, _, cache = self._encode(pixels, cache)
        return (mean - self._per_channel(self.latent_mean.float())) / self._per_channel(self.latent_std.float()), cache

    def moments(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-normalised (mean, logvar) of a whole clip from its start, for training."""
        mean, logvar, _ = self._encode(pixels, None)
        # Keeps exp(logvar) finite while the encoder is still untrained.
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, latents: torch.Tensor, cache: Cache | None = None) -> tuple[torch.Tensor, Cache]:
        """Pixels `[B, 3, time_factor * T, space_factor * h, space_factor * w]`, float32, not clamped to [-1, 1].

        `latents` are normalised, as `encode` returns them; the cache works as in `encode`.
        """
        channels = self.cfg.latent_channels
        if latents.ndim != 5 or latents.shape[1] != channels or latents.shape[2] == 0:
            raise ValueError(f"VAE latents must be [B, {channels}, T, h, w] with T >= 1, "
                             f"got {tuple(latents.shape)}")
        state = CausalCache(cache, repeat_start=True)
        latents = latents.to(self.latent_mean.dtype) * self._per_channel(self.latent_std) \
            + self._per_channel(self.latent_mean)
        return self.decoder(latents, state).float(), state.next
