"""Both training stages end to end on tiny settings: they run, log, resume exactly, and ship a model."""
import copy
import json

import numpy as np
import pytest
import torch

from helpers import denoiser_inputs, randomise, small_model_config
from longtake.memory import TextConfig, load_checkpoint
from longtake.memory.vae import CausalVideoVAE
from longtake.training.data import DemoWorld, VideoFolder, to_pixels
import longtake.training.train_denoiser as train_denoiser_module
from longtake.training.train_denoiser import (DenoiserTraining, WindowLoss, export, foreground_distance,
                                              load_latents, noise_layout, occlusion_windows, open_keep_gates,
                                              switch_memory, train_denoiser)
from longtake.training.train_vae import ReconstructionLoss, VAETraining, load_trained_vae, seam_jump, train_vae
from longtake.training.vocab import VOCAB

TINY_VAE = dict(batch=2, frames=8, past_latents=2, heldout_clips=1, log_every=1, save_every=2, warmup=1)
TINY_DENOISER = dict(batch=2, videos=3, video_chunks=12, max_prefix=3, log_every=1, save_every=2, preview_every=0,
                     warmup=1, remade_share=0.5, remade_steps=2, remade_guidance=3.0, remade_links=2,
                     object_weight=2.0)


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    world = DemoWorld(seed=0)
    result = train_vae(world, world, small_model_config().vae, out, VAETraining(steps=3, **TINY_VAE))
    return out, result


def test_vae_stage_reports_psnr_and_sets_latent_statistics(trained_vae):
    out, result = trained_vae
    vae, config, record = load_trained_vae(out)
    assert record["heldout_psnr_db"] == result["heldout_psnr_db"] > 0
    assert not torch.equal(vae.latent_std, torch.ones_like(vae.latent_std))
    lines = [json.loads(line) for line in (out / "vae_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2]


def fixed_posterior(latents: int, batch: int = 1):
    """A fresh VAE whose encoder always gives the latent means of a demo clip `latents` latents long, with no
    posterior noise, and that clip (`batch` copies, with the frames the decoder renders late)."""
    torch.manual_seed(0)
    config = small_model_config().vae
    video, _ = DemoWorld(seed=0).clip(5, latents * config.time_factor + config.frame_delay)
    clips = to_pixels(video[None]).expand(batch, -1, -1, -1, -1)
    vae = CausalVideoVAE(config).eval()
    with torch.no_grad():
        mean, _ = vae.moments(clips[:, :, config.frame_delay:])
    vae.moments = lambda pixels: (mean, torch.full_like(mean, -80.0))
    return vae, clips, mean


def test_decoder_loss_after_a_decoded_past_is_the_loss_on_that_stretch_of_the_whole_clip():
    """The decoder trains on what follows a decoded past; the loss must be on the frames those latents show."""
    vae, clips, mean = fixed_posterior(6)
    config, objective = vae.cfg, ReconstructionLoss(vae, VAETraining(decoder_noise=0.0))
    with torch.no_grad():
        whole, _ = vae.decode(mean)
        for past in (0, 2, 5):
            _, parts = objective(clips, past)
            wanted = clips[:, :, :clips.shape[2] - config.frame_delay][:, :, past * config.time_factor:]
            tail = whole[:, :, past * config.time_factor:]
            assert parts["mse"] == pytest.approx((tail - wanted).pow(2).mean().item(), rel=1e-4)


def test_seam_loss_charges_an_error_that_jumps_where_latents_meet_and_only_there():
    """A tint held over the frames costs nothing extra; the same tint switched on at a latent boundary does,
    and a change inside a latent's frames is the plain loss's to judge."""
    held = torch.full((1, 3, 12, 4, 4), 0.2)
    at_seam = held.clone()
    at_seam[:, :, :4] = 0.0  # right for the first latent's frames, off by 0.2 from the second latent on
    frames = torch.arange(12.0)
    inside = (frames - frames // 4).view(1, 1, 12, 1, 1).expand(1, 3, 12, 4, 4)  # 0 1 2 3 3 4 5 6 6 7 8 9
    assert seam_jump(held, 4).item() == 0.0
    assert seam_jump(inside, 4).item() == 0.0  # a change at every frame pair but the two seams
    assert seam_jump(at_seam, 4).item() == pytest.approx(0.2 / 2)  # one of the two seams jumps by 0.2
    assert seam_jump(at_seam[:, :, :4], 4).item() == 0.0  # one latent's frames have no seam

    (vae, clips, _), losses = fixed_posterior(4), {}
    for weight in (0.0, 2.0):
        objective = ReconstructionLoss(vae, VAETraining(decoder_noise=0.0, seam_weight=weight))
        with torch.no_grad():
            losses[weight], parts = objective(clips)
    assert parts["seam"] > 0
    assert (losses[2.0] - losses[0.0]).item() == pytest.approx(2.0 * parts["seam"], rel=1e-4)


def test_tint_noise_shifts_each_latent_as_a_whole():
    """Tint noise moves each latent's channels as a whole, the same shift at every place (as a denoiser
    gets a chunk's overall tint wrong), a different one per clip, channel and latent; without it the decoder
    sees the latents as encoded."""
    vae, clips, mean = fixed_posterior(4, batch=8)
    seen = []
    vae.decode = lambda latents, cache=None: (seen.append(latents) or clips[:, :, vae.cfg.frame_delay:], None)
    for tint in (0.0, 0.1):
        with torch.no_grad():
            ReconstructionLoss(vae, VAETraining(decoder_noise=0.0, tint_noise=tint))(clips)
    untinted, tinted = (latents - mean for latents in seen)
    assert untinted.abs().max() == 0
    assert torch.allclose(tinted, tinted[..., :1, :1].expand_as(tinted), atol=1e-6)  # whole latents
    per_latent = tinted[..., 0, 0]
    assert (per_latent.abs() > 0).all() and per_latent.std(dim=2).min() > 0  # each latent its own


def denoise(out, steps, vae_dir):
    vae, vae_config, record = load_trained_vae(vae_dir)
    config = small_model_config().replace(vae=vae_config, text=TextConfig(vocab=VOCAB, width=32, depth=1, heads=2))
    return train_denoiser(config, vae.state_dict(), DemoWorld(seed=0), out, DenoiserTraining(steps=steps, **TINY_DENOISER),
                          {"vae": record})


def test_denoiser_stage_ships_a_loadable_model_and_resumes_exactly(trained_vae, tmp_path):
    vae_dir, _ = trained_vae
    whole = load_checkpoint(denoise(tmp_path / "whole", 4, vae_dir))
    assert whole.config.record["denoiser"]["steps"] == 4
    assert "final_loss" in whole.config.record["denoiser"] and "vae" in whole.config.record
    # A run stopped after 2 steps (its state saved) and started again reaches the same weights.
    denoise(tmp_path / "split", 2, vae_dir)
    (tmp_path / "split" / "model.safetensors").unlink()
    # A usable model can be taken from the saved state of a run at any time.
    early = load_checkpoint(export(tmp_path / "split"))
    assert early.config.record["denoiser"]["steps"] == 2
    resumed = load_checkpoint(denoise(tmp_path / "split", 4, vae_dir))
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "denoiser_log.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]


def test_progressive_layout_is_the_stage_table_with_a_random_shift():
    import random
    settings = DenoiserTraining(progressive_share=1.0, independent_share=0.0)
    levels = noise_layout(settings, 64, 4, True, random.Random(0))
    front = levels[:, 0]  # the front chunk: clean, or lightly noised to hide the sampler's own errors
    assert torch.all((front >= 0) & (front <= settings.context_noise))
    assert 0.2 < (front == 0).float().mean() < 0.8
    gaps = levels[:, 2:] - levels[:, 1:-1]
    assert torch.allclose(gaps, torch.full_like(gaps, 0.25), atol=1e-5)  # K = 4 slots, 1/K apart
    assert levels[:, 1].min() >= 0 and levels[:, 1].max() <= 0.25 and levels[:, -1].max() <= 1


def test_video_folder_skips_bad_files_with_a_warning(tmp_path):
    import numpy as np
    from longtake.samplers.video import Mp4Writer
    with Mp4Writer(tmp_path / "good.mp4", fps=24) as writer:
        writer.write(np.full((12, 48, 80, 3), 200, np.uint8))
    (tmp_path / "good.txt").write_text("a white background")
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    (tmp_path / "broken.txt").write_text("a red ball")
    (tmp_path / "uncaptioned.mp4").write_bytes((tmp_path / "good.mp4").read_bytes())
    with pytest.warns(UserWarning) as caught:
        folder = VideoFolder(tmp_path, resolution=64)
    messages = " ".join(str(w.message) for w in caught)
    assert "broken.mp4" in messages and "uncaptioned.mp4" in messages
    assert len(folder.videos) == 1
    frames, caption = folder.clip(0, 30)
    assert frames.shape == (30, 64, 64, 3) and caption == "a white background"
    assert abs(int(frames[5, 30, 30, 0]) - 200) <= 3


@pytest.fixture(scope="module")
def trained_model(trained_vae, tmp_path_factory):
    return load_checkpoint(denoise(tmp_path_factory.mktemp("base"), 2, trained_vae[0]))


def test_fine_tuning_starts_from_the_given_weights(trained_model, tmp_path):
    base = trained_model
    world = DemoWorld(seed=0)
    # At learning rate 0 a fine-tune must hand back exactly what it started from.
    train_vae(world, world, base.config.vae, tmp_path / "tuned", VAETraining(steps=1, **dict(TINY_VAE, warmup=1), lr=0.0),
              initial=base.vae.state_dict())
    vae = load_trained_vae(tmp_path / "tuned")[0]
    for name, value in base.vae.state_dict().items():
        assert torch.allclose(value, vae.state_dict()[name]), name
    tuned = load_checkpoint(train_denoiser(base.config, vae.state_dict(), world, tmp_path / "tuned",
                                           DenoiserTraining(steps=1, **TINY_DENOISER, lr=0.0), {},
                                           initial=base.state_dict()))
    for name, value in base.state_dict().items():
        assert torch.allclose(value, tuned.state_dict()[name]), name


def test_fine_tuning_with_a_keep_bias_starts_from_a_memory_that_keeps_more(trained_model, tmp_path):
    """At learning rate 0 only the opened keep gates differ, and a write then changes the slots far less."""
    base = trained_model
    tuned = load_checkpoint(train_denoiser(base.config, base.vae.state_dict(), DemoWorld(seed=0), tmp_path / "kept",
                                           DenoiserTraining(steps=1, **TINY_DENOISER, lr=0.0, keep_bias=4.0), {},
                                           initial=base.state_dict()))
    changed = [name for name, value in base.state_dict().items()
               if not torch.allclose(value, tuned.state_dict()[name])]
    assert changed and all(name.endswith("malt.update_gate.bias") for name in changed)
    for name in changed:
        assert torch.allclose(tuned.state_dict()[name], base.state_dict()[name] + 4.0)

    def change_of_a_write(denoiser):
        x, _, text, bias = denoiser_inputs(denoiser.cfg, chunks=1)
        state = denoiser.initial_state(2)
        torch.manual_seed(0)
        return (denoiser.write(state, x, text, bias)["malt.slots"] - state["malt.slots"]).norm()

    randomised = randomise(copy.deepcopy(base.denoiser))
    before = change_of_a_write(randomised)
    open_keep_gates(randomised, 4.0)
    assert change_of_a_write(randomised) < 0.2 * before


def test_recall_added_to_a_trained_model_starts_as_that_model_and_trains_at_its_own_rate(trained_model, tmp_path):
    """`--recall-chunks` on a fine-tune: the recall's weights are new and their read gates shut, so the model
    starts out giving the trained model's velocities; with the run's rate at 0 and `fresh_lr` above it, only
    the new weights move."""
    base = trained_model
    initial, config, added = switch_memory(base.state_dict(), base.config, recall_chunks=3)
    assert added and all(".malt.recall" in name for name in added)
    assert {name for name in initial if name not in added} == set(base.state_dict())
    tuned_start = type(base)(config)
    tuned_start.load_state_dict(initial)
    x, t, text, bias = denoiser_inputs(config.denoiser, chunks=2)
    with torch.no_grad():
        before = base.denoiser(x, t, text, bias, base.denoiser.initial_state(2))
        after = tuned_start.denoiser(x, t, text, bias, tuned_start.denoiser.initial_state(2))
    assert torch.allclose(before, after, atol=1e-6, rtol=0)

    tuned = load_checkpoint(train_denoiser(config, base.vae.state_dict(), DemoWorld(seed=0), tmp_path / "recall",
                                           DenoiserTraining(steps=2, **TINY_DENOISER, lr=0.0, fresh_lr=1e-2), {},
                                           initial=initial, added=added))
    assert tuned.config.denoiser.recall_chunks == 3
    moved = {name for name, value in tuned.state_dict().items() if not torch.equal(value, initial[name])}
    assert moved and moved <= added


def test_keep_bias_is_refused_for_a_memory_without_keep_gates(trained_model, tmp_path):
    initial, config, _ = switch_memory(trained_model.state_dict(), trained_model.config, memory="lstm")
    with pytest.raises(ValueError, match="keep_bias"):
        train_denoiser(config, trained_model.vae.state_dict(), DemoWorld(seed=0), tmp_path / "lstm",
                       DenoiserTraining(steps=1, **TINY_DENOISER, keep_bias=2.0), {}, initial=initial)


def test_occlusion_windows_backprop_through_their_own_number_of_writes(trained_vae, tmp_path, monkeypatch):
    """Windows where an object comes back from behind the pillar (at share 1, every window with a front chunk)
    backprop through `occlusion_grad_writes` writes, however few `grad_writes` says."""
    seen, forward = [], WindowLoss.forward

    def spy(self, prefix, window, levels, prompts, has_front, grad_writes, *rest, **options):
        seen.append((has_front, prefix.shape[2], grad_writes))
        return forward(self, prefix, window, levels, prompts, has_front, grad_writes, *rest, **options)

    monkeypatch.setattr(WindowLoss, "forward", spy)
    monkeypatch.setattr(train_denoiser_module, "text_gain", lambda *args: 0.0)  # its own windows, no training
    vae, vae_config, record = load_trained_vae(trained_vae[0])
    config = small_model_config().replace(vae=vae_config, text=TextConfig(vocab=VOCAB, width=32, depth=1, heads=2))
    # The fourth video of this world shows an object coming back from behind its pillar.
    settings = DenoiserTraining(steps=8, **dict(TINY_DENOISER, videos=4, occlusion_share=1.0, grad_writes=1,
                                                occlusion_grad_writes=3))
    train_denoiser(config, vae.state_dict(), DemoWorld(seed=0), tmp_path, settings, {"vae": record})
    chunk = config.denoiser.chunk_frames
    fronted = [(prefix, writes) for has_front, prefix, writes in seen if has_front]
    assert fronted and all(prefix == 3 * chunk and writes == 3 for prefix, writes in fronted)
    assert all(writes == 1 for has_front, _, writes in seen if not has_front)


def test_pillar_videos_give_occlusion_windows_where_the_main_cache_has_no_return(trained_vae, tmp_path, monkeypatch):
    """The windows that teach memory come from a cache of pillar scenes, prompts and all, when one is asked
    for: here the main cache's three videos show no return, and every window with a front still shows one."""
    seen, forward = [], WindowLoss.forward

    def spy(self, prefix, window, levels, prompts, has_front, *rest, **options):
        seen.append((has_front, prefix.shape[2], prompts))
        coming_back = rest[5]  # after grad_writes, remade, object_weight, remade_steps, remade_guidance
        if has_front:  # the returning object's latents, the window's shape, there after the front alone
            chunk = self.model.config.denoiser.chunk_frames
            assert coming_back.shape == window.shape[:1] + window.shape[2:]
            assert not coming_back[:, :chunk].any() and coming_back[:, chunk:].flatten(1).any(1).all()
        return forward(self, prefix, window, levels, prompts, has_front, *rest, **options)

    monkeypatch.setattr(WindowLoss, "forward", spy)
    monkeypatch.setattr(train_denoiser_module, "text_gain", lambda *args: 0.0)
    vae, vae_config, record = load_trained_vae(trained_vae[0])
    config = small_model_config().replace(vae=vae_config, text=TextConfig(vocab=VOCAB, width=32, depth=1, heads=2))
    settings = DenoiserTraining(steps=8, **dict(TINY_DENOISER, occlusion_share=1.0, pillar_videos=2, text_dropout=0.0,
                                                return_weight=5.0, recolor_returns=True))
    assert not any(DemoWorld(seed=0).reappearances(i, 96) for i in range(settings.videos))
    train_denoiser(config, vae.state_dict(), DemoWorld(seed=0), tmp_path, settings, {"vae": record})
    pillar_latents, reappear = load_latents(tmp_path / "pillar_latents.safetensors")
    assert pillar_latents.shape[0] == 2 and all(reappear)
    fronted = [(prefix, prompts) for has_front, prefix, prompts in seen if has_front]
    chunk = config.denoiser.chunk_frames
    assert fronted and all(prefix == 3 * chunk for prefix, _ in fronted)
    assert all(any(word in prompt.split() for word in ("pillar", "bar")) for _, prompts in fronted for prompt in prompts)


def test_occlusion_windows_hold_the_return_after_a_hidden_front_and_never_a_clip_cut_short():
    """Every window that teaches memory has the object come back in one of its noisy chunks, after at least
    8 writes and a front chunk; a return too early in its video for that past, or too late for the window, is
    left out (clamping the clip into the video would lose the return)."""
    settings = DenoiserTraining(video_chunks=24, window_chunks=4, max_prefix=10)
    placements = occlusion_windows([[3], [12, 22], []], settings)
    assert sorted(placements) == [8, 9, 10]
    # Video 1's return at chunk 12 in noisy chunk 1-4 (clip from chunk 3 down to 0); at chunk 22 only in noisy
    # chunk 3 or 4, or the clip would run past the video's 24 chunks.
    assert placements[8] == [(1, 3), (1, 2), (1, 1), (1, 0), (1, 11), (1, 10)]
    assert placements[10] == [(1, 1), (1, 0), (1, 9), (1, 8)]
    assert occlusion_windows([[3]], settings) == {}


def test_a_trained_model_switches_to_another_memory_keeping_its_other_weights(trained_model, tmp_path):
    base = trained_model
    assert base.config.denoiser.memory == "malt"
    initial, config, _ = switch_memory(base.state_dict(), base.config, memory="lstm")
    tuned = load_checkpoint(train_denoiser(config, base.vae.state_dict(), DemoWorld(seed=0), tmp_path / "lstm",
                                           DenoiserTraining(steps=1, **TINY_DENOISER, lr=0.0), {}, initial=initial))
    assert tuned.config.denoiser.memory == "lstm" and tuned.denoiser.lstm_layers
    weights = tuned.state_dict()
    assert not any(".malt." in name or "initial_slots" in name for name in weights)
    shared = [name for name in base.state_dict() if name in weights]
    assert len(shared) > 0.8 * len(weights)
    for name in shared:
        assert torch.equal(base.state_dict()[name], weights[name]), name


def test_decoder_only_fine_tune_keeps_the_latents_and_hands_back_the_whole_model(trained_model, tmp_path, capsys,
                                                                                 monkeypatch):
    from longtake import cli as cli_module
    from longtake.cli import main as cli
    from longtake.memory import save_checkpoint
    # The base is a denoiser run that was never shipped, fine-tuned from one that was.
    shipped = dict(command="longtake train denoiser --out runs/a", commit="abc1234", seconds=10, what="the first run")
    base_record = dict(command="longtake train denoiser --out runs/b --init a.safetensors", commit="def5678",
                       fine_tuned_from="a.safetensors", lineage=[shipped],
                       denoiser=dict(steps=30, final_loss=0.1, seconds=20))
    save_checkpoint(trained_model, tmp_path / "base.safetensors", config=trained_model.config.replace(record=base_record))
    out = tmp_path / "decoder"
    assert cli(["train", "vae", "--decoder-only", "--out", str(out), "--vae-steps", "2"]) == 2
    assert "give --init" in capsys.readouterr().err
    assert cli(["train", "vae", "--init", str(tmp_path / "base.safetensors"), "--decoder-only", "--out", str(out),
                "--vae-steps", "2", "--frame-delay", "2", "--vae-lr", "3e-4"]) == 0
    tuned = load_checkpoint(out / "model.safetensors")
    assert tuned.config.vae.frame_delay == 2 and trained_model.config.vae.frame_delay == 0
    before, after = trained_model.state_dict(), tuned.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    # Only the decoder learned: the encoder, the latent statistics and the denoiser are what they were,
    # so the denoiser's latents mean the same to the new decoder.
    assert changed and all(name.startswith("vae.decoder.") for name in changed)
    record = tuned.config.record["decoder_fine_tuned"]
    assert record["settings"]["lr"] == 3e-4
    assert record["settings"]["decoder_only"] and record["heldout_psnr_db"] > 0 and record["heldout_step_ratio"] > 0
    assert "--decoder-only" in tuned.config.record["command"]  # the record names the command that made the file
    # Shipped, the file lists both runs after the shipped one: the denoiser run and then its decoder.
    monkeypatch.setattr(cli_module, "DEMO_MODEL", tmp_path / "models" / "demo.safetensors")
    assert cli_module._ship(out / "model.safetensors") == 0
    lineage = load_checkpoint(cli_module.DEMO_MODEL).config.record["lineage"]
    assert [stage["command"] for stage in lineage] == [shipped["command"], base_record["command"],
                                                      tuned.config.record["command"]]
    assert lineage[1]["commit"] == "def5678" and "30 steps from a.safetensors" in lineage[1]["what"]
    assert "the VAE decoder alone, 2 steps" in lineage[2]["what"]
    assert lineage[2]["commit"] == cli_module._commit() != "def5678"  # the code that ran, not the base's
    assert lineage[2]["run"] == tuned.config.record["run"] and "run" not in lineage[1]


def test_denoiser_fine_tune_of_a_model_never_shipped_keeps_its_run(trained_model, tmp_path, monkeypatch):
    from longtake import cli as cli_module
    from longtake.memory import save_checkpoint
    from longtake.training import train_denoiser as stage
    shipped = dict(command="longtake train denoiser --out runs/a", commit="abc1234", seconds=10, what="the first run")
    base_record = dict(command="longtake train vae --out runs/b --init a.safetensors --decoder-only", commit="def5678",
                       lineage=[shipped], decoder_fine_tuned=dict(
                           command="longtake train vae --out runs/b --init a.safetensors --decoder-only", steps=5,
                           from_model="a.safetensors", heldout_psnr_db=27.0, seconds=30),
                       denoiser=dict(steps=30, final_loss=0.1, seconds=20))
    save_checkpoint(trained_model, tmp_path / "base.safetensors", config=trained_model.config.replace(record=base_record))
    seen = {}
    monkeypatch.setattr(stage, "train_denoiser", lambda config, vae_state, source, out, settings, record, **given:
                        seen.update(record=record) or out / "model.safetensors")
    assert cli_module.main(["train", "denoiser", "--init", str(tmp_path / "base.safetensors"),
                            "--out", str(tmp_path / "run")]) == 0
    record = seen["record"]
    assert [s["command"] for s in record["lineage"]] == [shipped["command"], base_record["command"]]
    assert "the VAE decoder alone, 5 steps" in record["lineage"][1]["what"] and record["lineage"][1]["seconds"] == 30
    assert record["command"].startswith("longtake train denoiser") and record["commit"] == cli_module._commit()


def test_heldout_step_ratio_is_one_for_a_faithful_decoder_and_high_for_a_stepped_one(trained_vae):
    from longtake.training import train_vae as stage
    vae = load_trained_vae(trained_vae[0])[0]
    world = DemoWorld(seed=0)
    # A "VAE" that hands the clip back: latents are the pixels themselves, stepped or not on the way out.
    vae.encode = lambda pixels, cache=None: (pixels, None)
    vae.decode = lambda latents, cache=None: (latents, None)
    assert stage.heldout_measures(vae, world, clips=2)["step_ratio"] == pytest.approx(1.0, abs=0.01)
    step = vae.cfg.time_factor
    vae.decode = lambda latents, cache=None: (latents[:, :, ::step].repeat_interleave(step, dim=2), None)
    assert stage.heldout_measures(vae, world, clips=2)["step_ratio"] > 2


def test_remade_front_is_the_one_step_estimate_from_the_noised_truth(monkeypatch):
    from longtake.memory import LongTakeModel
    model = LongTakeModel(small_model_config())
    front = torch.randn(3, model.config.denoiser.latent_channels, model.config.denoiser.chunk_frames, 8, 8)
    levels = torch.tensor([0.0, 0.1, 0.4])
    tokens, bias = model.text(["a red ball"] * 3)
    memory = model.denoiser.initial_state(3)
    loss = WindowLoss(model)
    # A model that knows the truth predicts v = (x_t - x0) / t, and its one-step estimate is the truth itself.
    oracle = lambda noisy, t, *rest: (noisy - front) / t[:, None, :, None, None]
    monkeypatch.setattr(model.denoiser, "forward", oracle)
    assert torch.allclose(loss.remade_front(None, front, levels, tokens, bias, memory), front, atol=1e-5)
    # A model that predicts nothing leaves the noised truth: changed by about the level, the level-0 row untouched.
    monkeypatch.setattr(model.denoiser, "forward", lambda noisy, *rest: torch.zeros_like(noisy))
    remade = loss.remade_front(None, front, levels, tokens, bias, memory)
    assert torch.equal(remade[0], front[0])
    change = (remade - front).pow(2).mean(dim=(1, 2, 3, 4)).sqrt()
    assert 0.05 < change[1] < change[2] < 1.0


def test_remade_front_from_pure_noise_is_sampled_after_the_chunk_before_it_with_guidance(monkeypatch):
    """As sampling makes a chunk: in several Euler steps, the clean chunk before it in front of the window, the
    conditional and null prompts in one batch, and the guided velocity moving it."""
    from longtake.memory import LongTakeModel
    model = LongTakeModel(small_model_config())
    shape = (2, model.config.denoiser.latent_channels, model.config.denoiser.chunk_frames, 8, 8)
    before, front, elsewhere = torch.randn(shape), torch.randn(shape), torch.randn(shape)
    memory = model.denoiser.initial_state(2)
    frames, calls = shape[2], []

    def guided_oracle(window, t, tokens, bias, state):
        """Conditional rows know the truth; null-prompt rows head for `elsewhere`."""
        calls.append(t)
        assert window.shape[0] == tokens.shape[0] == 4 and all(v.shape[0] == 4 for v in state.values())
        assert torch.equal(window[:, :, :frames], torch.cat([before, before])) and (t[:, :frames] == 0).all()
        x, level = window[:, :, frames:], t[:, frames:, None, None].unsqueeze(1)
        target = torch.cat([front, elsewhere])
        return torch.cat([torch.zeros_like(x), (x - target) / level], dim=2)

    monkeypatch.setattr(model.denoiser, "forward", guided_oracle)
    tokens, bias = model.text(["a red ball"] * 2)
    remade = WindowLoss(model).remade_front(before, front, torch.ones(2), tokens, bias, memory, steps=4, guidance=3.0)
    assert len(calls) == 4 and torch.allclose(calls[0][:, frames:], torch.ones(4, frames))
    # Guided, the velocity aims at 3 * front - 2 * elsewhere, and Euler steps on a straight path land there.
    assert torch.allclose(remade, 3 * front - 2 * elsewhere, atol=1e-4)


def test_remade_links_make_the_front_after_the_models_own_chunks(monkeypatch):
    """A chain of remade chunks: each made from its own truth after the chunk made before it (the first after the
    true chunk before the chain), reading the memory as it stood then, and the last one the window's front."""
    from longtake.memory import LongTakeModel
    model = LongTakeModel(small_model_config())
    channels, chunk = model.config.denoiser.latent_channels, model.config.denoiser.chunk_frames
    clip = torch.randn(2, channels, 5 * chunk, 8, 8)  # 3 prefix chunks, the front, one noisy chunk
    prefix, window = clip[:, :, :3 * chunk], clip[:, :, 3 * chunk:]
    piece = lambda i: clip[:, :, i * chunk:(i + 1) * chunk]
    monkeypatch.setattr(model.denoiser, "initial_state", lambda batch: {"writes": torch.zeros(())})
    monkeypatch.setattr(model.denoiser, "write", lambda memory, *rest: {"writes": memory["writes"] + 1})
    calls = []

    def remake(before, truth, levels, tokens, bias, memory, steps, guidance):
        calls.append((before, truth, levels, int(memory["writes"])))
        return truth + 100 * len(calls)  # marks which link made it

    seen = {}

    def denoiser(noisy, t, tokens, bias, memory):
        seen.update(window=noisy, writes=int(memory["writes"]))
        return noisy

    monkeypatch.setattr(WindowLoss, "remade_front", lambda self, *args: remake(*args))
    monkeypatch.setattr(model.denoiser, "forward", denoiser)
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)  # the noisy chunk stays readable
    levels = torch.tensor([[0.0, 0.5]] * 2)  # a clean front: the denoiser sees it as made
    objective = WindowLoss(model)
    objective(prefix, window, levels, [""] * 2, True, 0, remade=torch.tensor([[0.3, 0.4, 0.5]] * 2))
    assert [(round(c[2][0].item(), 4), c[3]) for c in calls] == [(0.3, 0), (0.4, 1), (0.5, 2)]
    assert torch.equal(calls[0][0], piece(0)) and torch.equal(calls[0][1], piece(1))
    assert torch.equal(calls[1][0], piece(1) + 100) and torch.equal(calls[1][1], piece(2))
    assert torch.equal(calls[2][0], piece(2) + 200) and torch.equal(calls[2][1], piece(3))
    assert torch.equal(seen["window"][:, :, :chunk], piece(3) + 300)
    assert torch.equal(seen["window"][:, :, chunk:], 0.5 * piece(4)) and seen["writes"] == 3  # the true memory
    # One link is the front alone, after the true chunk before it, as without chains.
    calls.clear()
    objective(prefix, window, levels, [""] * 2, True, 0, remade=torch.tensor([[0.5]] * 2))
    assert len(calls) == 1 and torch.equal(calls[0][0], piece(2)) and calls[0][3] == 2
    # A chain longer than the prefix starts at the video's start, with nothing before it, on its last columns.
    calls.clear()
    objective(prefix[:, :, :chunk], window, levels, [""] * 2, True, 0, remade=torch.tensor([[0.3, 0.4, 0.5]] * 2))
    assert [(round(c[2][0].item(), 4), c[3]) for c in calls] == [(0.4, 0), (0.5, 0)] and calls[0][0] is None
    assert torch.equal(calls[1][0], piece(0) + 100)


def test_drifted_rows_show_the_past_drawn_drifted_and_the_drift_easing_back_to_the_truth(trained_vae, tmp_path,
                                                                                       monkeypatch):
    """In a drifted row the chunks written into memory and the front are the drifted video's, the next two
    chunks show two thirds and then one third of that drift, and the rest of the window is true. Other rows
    are true throughout."""
    from longtake.training.train_denoiser import drifted_cache, load_latents
    seen, forward = [], WindowLoss.forward

    def spy(self, prefix, window, levels, prompts, has_front, *rest, **options):
        if has_front:
            seen.append((prefix.clone(), window.clone()))
        return forward(self, prefix, window, levels, prompts, has_front, *rest, **options)

    monkeypatch.setattr(WindowLoss, "forward", spy)
    monkeypatch.setattr(train_denoiser_module, "RENDER_BLOCK", 2)  # three videos drawn in two blocks
    vae, vae_config, record = load_trained_vae(trained_vae[0])
    config = small_model_config().replace(vae=vae_config, text=TextConfig(vocab=VOCAB, width=32, depth=1, heads=2))
    settings = DenoiserTraining(steps=8, **dict(TINY_DENOISER, drifted_share=0.5, drift_easing=2))
    train_denoiser(config, vae.state_dict(), DemoWorld(seed=0), tmp_path, settings, {"vae": record})
    truth, _ = load_latents(tmp_path / "latents.safetensors")
    drifted, eased = (load_latents(drifted_cache(tmp_path, amount))[0] for amount in (1, 1 / 3))
    assert not torch.equal(eased, drifted) and not torch.equal(eased, truth)
    # Every core draws a block of videos: the cache still holds video i in row i, drifted or not, across blocks.
    frames = settings.video_chunks * config.frames_per_chunk
    world = DemoWorld(seed=0)
    with torch.no_grad():
        for cache, draw in ((truth, world.video), (drifted, world.drifted_video)):
            encoded = vae.encode(to_pixels(np.stack([draw(i, frames) for i in (1, 2)])))[0].half()
            assert torch.allclose(cache[1:3].float(), encoded.float(), atol=2e-2)
    chunk = config.denoiser.chunk_frames
    assert seen, "no window with a front chunk in eight steps"
    shown = []
    for prefix, window in seen:
        past_frames = prefix.shape[2] + chunk
        for row in range(window.shape[0]):
            after = window[row, :, 3 * chunk:]  # after the front and the two easing chunks
            places = [(v, t) for v in range(truth.shape[0])
                      for t in range(past_frames + 2 * chunk, truth.shape[2] - after.shape[1] + 1, chunk)
                      if torch.equal(truth[v, :, t:t + after.shape[1]].float(), after)]
            assert places, "the window no longer ends in the truth"
            v, t = places[0]
            start = t - 2 * chunk - past_frames
            past = torch.cat([prefix[row], window[row, :, :chunk]], dim=1)
            last_eased = window[row, :, 2 * chunk:3 * chunk]
            as_drifted = torch.equal(past, drifted[v, :, start:start + past_frames].float())
            if as_drifted:
                assert torch.equal(last_eased, eased[v, :, t - chunk:t].float()), "the drift does not ease back"
            else:
                assert torch.equal(past, truth[v, :, start:start + past_frames].float())
                assert torch.equal(last_eased, truth[v, :, t - chunk:t].float())
            shown.append(as_drifted)
    assert any(shown) and not all(shown), f"a share of 0.5 drifted {sum(shown)} of {len(shown)} rows"


def test_the_latent_cache_is_the_same_drawn_on_every_core_or_in_this_process_alone(trained_vae, tmp_path,
                                                                                   monkeypatch):
    """Where processes cannot fork (Windows) the videos are drawn one by one, into the same cache."""
    from longtake.memory import LongTakeModel
    from longtake.training.train_denoiser import cache_latents, load_latents
    vae, vae_config, _ = load_trained_vae(trained_vae[0])
    model = LongTakeModel(small_model_config().replace(vae=vae_config))
    model.vae.load_state_dict(vae.state_dict())
    settings = DenoiserTraining(**dict(TINY_DENOISER, videos=3))
    monkeypatch.setattr(train_denoiser_module, "RENDER_BLOCK", 2)
    cache_latents(model, DemoWorld(seed=0), settings, tmp_path / "forked.safetensors", drift=0.5)
    monkeypatch.setattr(train_denoiser_module.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    cache_latents(model, DemoWorld(seed=0), settings, tmp_path / "alone.safetensors", drift=0.5)
    (forked, reappear), (alone, same) = (load_latents(tmp_path / name) for name in ("forked.safetensors",
                                                                                 "alone.safetensors"))
    assert forked.shape[0] == 3 and torch.equal(forked, alone) and reappear == same


def test_object_weight_makes_errors_on_objects_cost_more(monkeypatch):
    from longtake.memory import LongTakeModel
    model = LongTakeModel(small_model_config())
    channels, chunk = model.config.denoiser.latent_channels, model.config.denoiser.chunk_frames
    window = torch.zeros(2, channels, 3 * chunk, 8, 8)
    window[:, :, :, 2:4, 5:7] = 1.5  # an object: 4 of 64 latent pixels, far from the flat background
    distance = foreground_distance(window)
    background = torch.ones_like(distance, dtype=torch.bool)
    background[:, :, 2:4, 5:7] = False
    assert (distance[:, :, 2:4, 5:7] > 2).all() and (distance[background] == 0).all()
    # A model exact everywhere but on the object, by the same amount at every step.
    target = {}
    monkeypatch.setattr(torch, "randn_like", lambda x: target.setdefault("noise", torch.zeros_like(x)))
    wrong = torch.zeros_like(window)
    wrong[:, :, :, 2:4, 5:7] = 1.0
    monkeypatch.setattr(model.denoiser, "forward", lambda noisy, *rest: -window + wrong)
    objective = WindowLoss(model)
    levels = torch.full((2, 3), 0.5)
    plain, object_error = objective(window[:, :, :0], window, levels, [""] * 2, True, 0)
    weighted, same_error = objective(window[:, :, :0], window, levels, [""] * 2, True, 0, object_weight=4.0)
    assert plain == pytest.approx(4 / 64) and object_error == same_error == pytest.approx(1.0)
    assert weighted == pytest.approx(5 * 4 / (5 * 4 + 60))  # the object's 4 pixels count 5 times
    # A window with nothing on its background has no object error to report, and still a loss.
    flat = torch.zeros_like(window)
    loss, no_error = objective(flat[:, :, :0], flat, levels, [""] * 2, True, 0, object_weight=4.0)
    assert torch.isnan(no_error) and torch.isfinite(loss)


def test_train_refuses_bad_denoiser_flags_before_any_work(tmp_path, capsys):
    from longtake.cli import main as cli
    for args, message in ((["demo", "--batch", "0"], "--batch must be positive"),
                          (["vae", "--vae-lr", "0"], "--vae-lr must be positive"),
                          (["denoiser", "--object-weight", "-1"], "--object-weight must be 0 or more"),
                          (["denoiser", "--return-weight", "-2"], "--return-weight must be 0 or more"),
                          (["vae", "--object-weight", "2"], "give it to the denoiser or demo stage"),
                          (["denoiser", "--remade-levels", "0.5", "0.2"], "0 < LOW <= HIGH <= 1"),
                          (["denoiser", "--remade-share", "2"], "give a number from 0 to 1"),
                          (["denoiser", "--remade-steps", "0"], "--remade-steps must be at least 1"),
                          (["denoiser", "--remade-links", "0"], "--remade-links must be at least 1"),
                          (["denoiser", "--grad-writes", "0"], "--grad-writes must be at least 1"),
                          (["denoiser", "--occlusion-grad-writes", "0"], "--occlusion-grad-writes must be at least 1"),
                          (["denoiser", "--occlusion-share", "-0.1"], "give a number from 0 to 1"),
                          (["vae", "--keep-bias", "2"], "give it to the denoiser or demo stage"),
                          (["demo", "--memory", "lstm", "--keep-bias", "2"], "MALT"),
                          (["vae", "--grad-writes", "4"], "give it to the denoiser or demo stage"),
                          (["vae", "--remade-steps", "8"], "give it to the denoiser or demo stage"),
                          (["denoiser", "--drifted-share", "1.5"], "give a number from 0 to 1"),
                          (["denoiser", "--drifted-share", "0.3", "--videos", str(tmp_path)], "footage"),
                          (["denoiser", "--drift-easing", "2"], "with --drifted-share"),
                          (["denoiser", "--pillar-videos", "-1"], "0 or more"),
                          (["denoiser", "--pillar-videos", "100", "--videos", str(tmp_path)], "footage"),
                          (["vae", "--pillar-videos", "100"], "give it to the denoiser or demo stage"),
                          (["denoiser", "--drifted-share", "0.5", "--drift-easing", "5"], "0 to 4"),
                          (["vae", "--tint-noise", "-0.1"], "--tint-noise must be 0 or more"),
                          (["vae", "--seam-weight", "-1"], "--seam-weight must be 0 or more"),
                          (["denoiser", "--seam-weight", "1"], "give it to the vae or demo stage"),
                          (["denoiser", "--tint-noise", "0.1"], "give it to the vae or demo stage"),
                          (["denoiser", "--frame-delay", "2"], "give it to the vae or demo stage")):
        assert cli(["train", *args, "--out", str(tmp_path / "run")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_shipping_a_fine_tune_adds_its_stage_to_the_lineage_once(tmp_path, monkeypatch):
    from longtake import cli
    from longtake.memory import LongTakeModel, save_checkpoint
    earlier = dict(command="longtake train denoiser --out runs/a", commit="abc1234", seconds=10, what="the first run")
    record = dict(command="longtake train denoiser --out runs/b --init a.safetensors", fine_tuned_from="a.safetensors",
                  lineage=[earlier], denoiser=dict(steps=30, final_loss=0.1, seconds=20))
    model = LongTakeModel(small_model_config())
    save_checkpoint(model, tmp_path / "tuned.safetensors", config=model.config.replace(record=record))
    monkeypatch.setattr(cli, "DEMO_MODEL", tmp_path / "models" / "demo.safetensors")
    assert cli._ship(tmp_path / "tuned.safetensors") == 0
    lineage = load_checkpoint(cli.DEMO_MODEL).config.record["lineage"]
    assert lineage[0] == earlier and len(lineage) == 2
    assert lineage[1]["command"] == record["command"] and lineage[1]["seconds"] == 20
    assert "30 steps from a.safetensors" in lineage[1]["what"] and lineage[1]["commit"]
    # The shipped file shipped again is left as it is.
    assert cli._ship(cli.DEMO_MODEL) == 0
    assert load_checkpoint(cli.DEMO_MODEL).config.record["lineage"] == lineage
    # The same command run again is a run of its own: another stage.
    again = dict(record, lineage=lineage, run="2026-12-07T06:00:00Z", denoiser=dict(steps=30, final_loss=0.09, seconds=25))
    save_checkpoint(model, tmp_path / "again.safetensors", config=model.config.replace(record=again))
    assert cli._ship(tmp_path / "again.safetensors") == 0
    assert [s["seconds"] for s in load_checkpoint(cli.DEMO_MODEL).config.record["lineage"]] == [10, 20, 25]
    lineage = load_checkpoint(cli.DEMO_MODEL).config.record["lineage"]
    lineage[-1]["seconds"] = 40  # a stage mended by hand is still its run
    shipped = load_checkpoint(cli.DEMO_MODEL)
    save_checkpoint(shipped, cli.DEMO_MODEL, config=shipped.config.replace(record=dict(shipped.config.record, lineage=lineage)))
    assert cli._ship(cli.DEMO_MODEL) == 0
    assert load_checkpoint(cli.DEMO_MODEL).config.record["lineage"] == lineage
    # A model from scratch starts its lineage with its own run.
    scratch = dict(command="longtake train demo --out runs/c", denoiser=dict(steps=40, final_loss=0.2, seconds=30),
                   vae=dict(steps=50, heldout_psnr_db=25.0, seconds=15))
    save_checkpoint(model, tmp_path / "scratch.safetensors", config=model.config.replace(record=scratch))
    assert cli._ship(tmp_path / "scratch.safetensors") == 0
    (stage,) = load_checkpoint(cli.DEMO_MODEL).config.record["lineage"]
    assert stage["seconds"] == 45 and stage["what"].startswith("the VAE, 50 steps (held-out PSNR 25.0 dB), then the denoiser")


def test_average_of_a_fine_tune_and_its_start_lies_between_them_and_joins_the_lineage(tmp_path, monkeypatch, capsys):
    from longtake import cli
    from longtake.memory import LongTakeModel, save_checkpoint
    earlier = dict(command="longtake train denoiser --out runs/a", commit="abc1234", seconds=10, what="the first run")
    base = randomise(LongTakeModel(small_model_config()), seed=0)
    save_checkpoint(base, tmp_path / "base.safetensors", config=base.config.replace(record=dict(earlier, lineage=[earlier])))
    out = tmp_path / "tuned"
    assert cli.main(["train", "average", "--out", str(out), "--init", str(tmp_path / "base.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err  # nothing fine-tuned in --out yet
    tuned_record = dict(command=f"longtake train denoiser --out {out} --init base.safetensors", commit="def5678",
                        run="2026-12-07T08:00:00Z", fine_tuned_from="base.safetensors", lineage=[earlier],
                        denoiser=dict(steps=30, final_loss=0.1, seconds=20))
    tuned = randomise(LongTakeModel(small_model_config()), seed=1)
    save_checkpoint(tuned, out / "model.safetensors", config=tuned.config.replace(record=tuned_record))
    for args, message in ((["--average-weight", "1.5"], "between 0 and 1"), ([], "give --init")):
        init = [] if message == "give --init" else ["--init", str(tmp_path / "base.safetensors")]
        assert cli.main(["train", "average", "--out", str(out), *init, *args]) == 2
        assert message in capsys.readouterr().err
    assert cli.main(["train", "denoiser", "--out", str(out), "--average-weight", "0.5"]) == 2
    assert "give it to the average stage" in capsys.readouterr().err
    other = LongTakeModel(small_model_config().replace(fps=12))  # another model, not this one's start
    save_checkpoint(other, tmp_path / "other.safetensors")
    assert cli.main(["train", "average", "--out", str(out), "--init", str(tmp_path / "other.safetensors")]) == 2
    assert "configs differ" in capsys.readouterr().err

    assert cli.main(["train", "average", "--out", str(out), "--init", str(tmp_path / "base.safetensors"),
                     "--average-weight", "0.25"]) == 0
    averaged = load_checkpoint(out / "averaged.safetensors")
    start, end = base.state_dict(), tuned.state_dict()
    for name, value in averaged.state_dict().items():
        torch.testing.assert_close(value, 0.75 * start[name] + 0.25 * end[name], msg=name)
    # Shipped, the lineage names the fine-tune (never shipped by itself) and then the average.
    monkeypatch.setattr(cli, "DEMO_MODEL", tmp_path / "models" / "demo.safetensors")
    assert cli._ship(out / "averaged.safetensors") == 0
    lineage = load_checkpoint(cli.DEMO_MODEL).config.record["lineage"]
    assert [stage["command"] for stage in lineage[:2]] == [earlier["command"], tuned_record["command"]]
    assert lineage[2]["command"].startswith("longtake train average") and lineage[2]["seconds"] > 0
    assert lineage[2]["what"].startswith(f"weights averaged: 0.25 of {out / 'model.safetensors'} and 0.75 of ")


def test_return_weight_makes_errors_on_the_returning_object_cost_more(monkeypatch):
    """In an occlusion window only the returning object's latents carry the return weight, not the pillar nor
    a second object that stayed in view, and a model that leaves the returning object hidden pays for it."""
    from longtake.memory import LongTakeModel
    model = LongTakeModel(small_model_config())
    channels, chunk = model.config.denoiser.latent_channels, model.config.denoiser.chunk_frames
    window = torch.zeros(2, channels, 3 * chunk, 8, 8)
    window[:, :, :, :, 3] = 2.5                  # the pillar: a column in every frame, the front's too
    window[:, :, chunk:, 2:4, 5:7] = 2.5         # the object, back in view after the front: 4 latent pixels
    window[:, :, :, 6, 0] = 2.5                  # a second object, in view all along
    coming_back = torch.zeros(2, 3 * chunk, 8, 8, dtype=torch.bool)
    coming_back[:, :, 2:4, 5:7] = True           # the front's too: it is context, never in the loss
    monkeypatch.setattr(torch, "randn_like", lambda x: torch.zeros_like(x))
    hidden = window.clone()
    hidden[:, :, chunk:, 2:4, 5:7] = 0           # a model that draws all but the returning object
    monkeypatch.setattr(model.denoiser, "forward", lambda noisy, *rest: -hidden)
    objective = WindowLoss(model)
    levels = torch.full((2, 3), 0.5)
    plain, _ = objective(window[:, :, :0], window, levels, [""] * 2, True, 0)
    weighted, _ = objective(window[:, :, :0], window, levels, [""] * 2, True, 0, coming_back=coming_back,
                            return_weight=9.0)
    error = 2.5 ** 2
    assert plain == pytest.approx(4 * error / 64)
    assert weighted == pytest.approx(10 * 4 * error / (10 * 4 + 60))  # pillar and second object count once
    with pytest.raises(ValueError, match="coming_back"):
        objective(window[:, :, :0], window, levels, [""] * 2, True, 0, return_weight=9.0)


def test_coming_back_marks_the_latents_of_the_object_out_from_behind_the_pillar():
    """The mask the return weight rests on: in a demo-world occlusion window it holds the returning object
    once it is out (a few latents a frame, none of the pillar's columns while the object is behind it), and
    nothing in a window where no object is hidden at the front's last frame."""
    from longtake.memory.config import VAEConfig
    from longtake.training.train_denoiser import latent_mask
    source = DemoWorld(seed=3, pillars=True)
    fpc = 8
    video, back = next((i, back) for i in range(40) for back in [source.reappearances(i, 24 * fpc)]
                       if back and back[0] >= 2 * fpc)
    first = back[0] // fpc * fpc - 2 * fpc   # the front two chunks before the return chunk
    vae = VAEConfig(time_factor=4, space_factor=8)
    mask = latent_mask(source.coming_back(video, first, 5 * fpc, first + fpc - 1), vae)
    assert mask.shape == (10, 8, 8)
    per_frame = mask.flatten(1).sum(1)
    assert per_frame[:4].sum() == 0               # hidden through the front and the chunk after it
    assert 1 <= per_frame[-1] <= 6                # out: a 10 px object covers a few latents
    visible = latent_mask(source.coming_back(video, back[0] + 2 * fpc, 5 * fpc, back[0] + 2 * fpc), vae)
    assert not visible.any()                      # none hidden at that front: nothing is coming back


def test_recolored_returns_show_another_rows_object_color_and_keep_their_own_as_the_target(monkeypatch):
    """With `recolor_returns` the model sees each returning object in the color of another row's, at its own
    place; the pillar, the front and the target stay the truth, so only memory can tell the color back."""
    from longtake.memory import LongTakeModel
    model = LongTakeModel(small_model_config())
    channels, chunk = model.config.denoiser.latent_channels, model.config.denoiser.chunk_frames
    window = torch.zeros(2, channels, 3 * chunk, 8, 8)
    window[:, :, :, :, 3] = 2.5                  # the pillar, the front's too
    window[0, 0, chunk:, 2:4, 5:7] = 3.0         # row 0's object, back after the front, in one color...
    window[1, 1, chunk:, 5:7, 0:2] = 3.0         # ...and row 1's elsewhere, in another
    monkeypatch.setattr(torch, "randn_like", lambda x: torch.zeros_like(x))
    seen = {}

    def denoiser(noisy, *rest):
        seen["noisy"] = noisy
        return -window                           # the truth: no loss, whatever the input showed

    monkeypatch.setattr(model.denoiser, "forward", denoiser)
    levels = torch.full((2, 3), 0.5)
    coming_back = window[:, :2].amax(1) == 3.0
    loss, _ = WindowLoss(model)(window[:, :, :0], window, levels, [""] * 2, True, 0, coming_back=coming_back,
                                recolor_returns=True)
    assert loss == 0
    shown = seen["noisy"] / 0.5
    assert torch.equal(shown[0, :2, chunk:, 2:4, 5:7].flatten(1).unique(dim=1), torch.tensor([[0.0], [3.0]]))
    assert torch.equal(shown[1, :2, chunk:, 5:7, 0:2].flatten(1).unique(dim=1), torch.tensor([[3.0], [0.0]]))
    outside = torch.ones_like(window, dtype=torch.bool)
    outside[0, :, chunk:, 2:4, 5:7] = outside[1, :, chunk:, 5:7, 0:2] = False
    assert torch.equal(shown[outside], window[outside])  # the front, the pillar, the background
