"""Causal video VAE: shapes, streaming equals whole-video processing, a fixed-size cache, causality."""
import pytest
import torch

from memory.config import VAEConfig
from memory.vae import CausalVideoVAE

CHUNK_LATENT = 2                 # latent frames per chunk
CHUNK_FRAMES = CHUNK_LATENT * 4  # video frames per chunk
SIZE = 64


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    model = CausalVideoVAE(VAEConfig()).eval()
    with torch.no_grad():
        # Default init leaves GroupNorm at identity and outputs small; perturbing every weight makes
        # each layer matter, so a wrong cache or a leak across frames shows up in the outputs.
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.latent_mean.normal_()
        model.latent_std.uniform_(0.5, 2.0)
    return model


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def pixels(chunks: int, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, chunks * CHUNK_FRAMES, SIZE, SIZE) * 2 - 1


def latents(chunks: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 8, chunks * CHUNK_LATENT, SIZE // 8, SIZE // 8)


def stream(step, x: torch.Tensor, frames_per_chunk: int):
    """Runs `step` chunk by chunk, passing the cache on; returns the joined output and every cache."""
    outputs, caches, cache = [], [], None
    for start in range(0, x.shape[2], frames_per_chunk):
        out, cache = step(x[:, :, start:start + frames_per_chunk], cache)
        outputs.append(out)
        caches.append(cache)
    return torch.cat(outputs, dim=2), caches


@pytest.fixture(scope="module")
def decoded(vae):
    torch.manual_seed(1)
    z = latents(10)
    with torch.no_grad():
        whole, _ = vae.decode(z)
        chunked, caches = stream(vae.decode, z, CHUNK_LATENT)
    return whole, chunked, caches


@pytest.fixture(scope="module")
def encoded(vae):
    torch.manual_seed(2)
    x = pixels(10)
    with torch.no_grad():
        whole, _ = vae.encode(x)
        chunked, caches = stream(vae.encode, x, CHUNK_FRAMES)
    return whole, chunked, caches


@pytest.mark.parametrize("chunks", [1, 2, 10])
def test_shapes(vae, chunks):
    torch.manual_seed(chunks)
    z, _ = vae.encode(pixels(chunks))
    assert z.shape == (2, 8, chunks * CHUNK_LATENT, 8, 8)
    x, _ = vae.decode(latents(chunks))
    assert x.shape == (2, 3, chunks * CHUNK_FRAMES, SIZE, SIZE)


def test_chunked_decode_equals_whole(decoded):
    whole, chunked, _ = decoded
    assert whole.std() > 0.1, "outputs too flat for the comparison to mean anything"
    assert (chunked - whole).abs().max() <= 1e-4


def test_chunked_encode_equals_whole(encoded):
    whole, chunked, _ = encoded
    assert whole.std() > 0.1, "outputs too flat for the comparison to mean anything"
    assert (chunked - whole).abs().max() <= 1e-4


@pytest.mark.parametrize("result", ["decoded", "encoded"])
def test_cache_size_does_not_grow(result, request):
    caches = request.getfixturevalue(result)[2]
    after_2, after_10 = caches[1], caches[9]
    assert after_2, "a causal model with temporal kernel 3 must keep some past frames"
    assert {k: v.shape for k, v in after_2.items()} == {k: v.shape for k, v in after_10.items()}
    size = lambda cache: sum(v.numel() * v.element_size() for v in cache.values())
    assert size(after_2) == size(after_10)


def test_decoded_frames_depend_only_on_past_latents(vae):
    torch.manual_seed(3)
    z = latents(3, batch=1)
    k = 3
    changed = z.clone()
    changed[:, :, k] += torch.randn_like(changed[:, :, k])
    before, _ = vae.decode(z)
    after, _ = vae.decode(changed)
    diff = (after - before).abs().amax(dim=(0, 1, 3, 4))
    assert diff[:4 * k].max() <= 1e-6
    assert (diff[4 * k:] > 1e-3).all()


def test_latents_depend_only_on_past_frames(vae):
    torch.manual_seed(4)
    x = pixels(2, batch=1)
    frame = 9
    changed = x.clone()
    changed[:, :, frame] = torch.rand_like(changed[:, :, frame]) * 2 - 1
    before, _ = vae.encode(x)
    after, _ = vae.encode(changed)
    diff = (after - before).abs().amax(dim=(0, 1, 3, 4))
    assert diff[:frame // 4].max() <= 1e-6
    assert (diff[frame // 4:] > 1e-3).all()


def test_a_still_latent_video_decodes_still_from_its_first_latent(vae):
    """The decoder's past at the start is its first latent's frames repeated, so a video that opens on a
    still scene opens still: no flicker while the causal convolutions fill up (with a zero past the first
    eleven latents of this one differed)."""
    still = latents(1, batch=1)[:, :, :1].expand(-1, -1, 6, -1, -1)
    frames, _ = vae.decode(still)
    steady = frames[:, :, -vae.cfg.time_factor:]  # one latent's frames, all past inputs the same
    assert torch.allclose(frames, steady.repeat(1, 1, 6, 1, 1), atol=1e-5)


def test_encode_is_normalised_mean(vae):
    torch.manual_seed(5)
    x = pixels(1)
    z, _ = vae.encode(x)
    mean, logvar = vae.moments(x)
    assert logvar.shape == mean.shape == z.shape
    expected = (mean - vae.latent_mean.view(1, -1, 1, 1, 1)) / vae.latent_std.view(1, -1, 1, 1, 1)
    assert torch.allclose(z, expected, atol=1e-5)
    assert {"latent_mean", "latent_std"} <= set(vae.state_dict())


def test_bad_inputs_are_refused_with_a_reason(vae):
    with pytest.raises(ValueError, match="6 frames.*multiple of time_factor 4"):
        vae.encode(torch.zeros(1, 3, 6, SIZE, SIZE))
    with pytest.raises(ValueError, match="60x64.*multiples of space_factor 8"):
        vae.encode(torch.zeros(1, 3, 8, 60, 64))
    with pytest.raises(ValueError, match=r"latents must be \[B, 8, T, h, w\]"):
        vae.decode(torch.zeros(1, 4, 2, 8, 8))
    _, encode_cache = vae.encode(torch.zeros(1, 3, 8, SIZE, SIZE))
    with pytest.raises(ValueError, match="cache has no entry"):
        vae.decode(torch.zeros(1, 8, 2, 8, 8), encode_cache)
    with pytest.raises(ValueError, match="batch size and resolution"):
        vae.encode(torch.zeros(2, 3, 8, SIZE, SIZE), encode_cache)


def test_unsupported_settings_are_refused():
    with pytest.raises(ValueError, match="time_factor must be a power of two"):
        CausalVideoVAE(VAEConfig(time_factor=3))
    with pytest.raises(ValueError, match="space_factor must be a power of two >= 2"):
        CausalVideoVAE(VAEConfig(space_factor=1))
    for delay in (-1, 5):
        with pytest.raises(ValueError, match="frame_delay must be between 0 and time_factor 4"):
            CausalVideoVAE(VAEConfig(frame_delay=delay))
