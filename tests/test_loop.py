"""The long-video loop end to end on a small random model: frames, mp4s, resume, cancel, memory."""
import gc
from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import randomise, shut_reads, small_model_config
from longtake.memory import LongTakeModel, save_checkpoint
from longtake.samplers import LongVideo, PromptSchedule, SamplerSettings, ScheduleError, render_mp4
from longtake.samplers.video import Mp4Writer, probe

FAST = dict(steps=4, window_chunks=2)


def fresh_model():
    torch.manual_seed(0)
    return randomise(LongTakeModel(small_model_config("malt")), scale=0.15).eval()


@pytest.fixture(scope="module")
def model():
    return fresh_model()


def all_frames(video):
    return torch.cat(list(video.frames()), dim=1)


@pytest.mark.parametrize("mode", ["progressive", "rw", "rn"])
def test_mp4_has_exactly_seconds_times_fps_frames(model, tmp_path, mode):
    path = tmp_path / f"{mode}.mp4"
    video = LongVideo(model, "a red ball", seconds=1.5, fps=12, settings=SamplerSettings(mode=mode, **FAST))
    assert render_mp4(video, path) == 18
    frames, fps = probe(path)
    assert frames == 18 and fps == 12
    assert video.steps_done == video.total_steps


def test_progressive_step_count_is_computed(model):
    video = LongVideo(model, "a red ball", seconds=2, fps=24, settings=SamplerSettings(steps=6, window_chunks=3))
    all_frames(video)
    chunks = 6  # 48 frames / 8 per chunk
    assert video.steps_done == video.total_steps == 2 * (chunks + 3 - 1)


@pytest.mark.parametrize("mode,context_noise", [("progressive", 0.0), ("rw", 0.0), ("rn", 0.0), ("progressive", 0.1)])
def test_resumed_run_continues_with_exactly_the_same_frames(model, tmp_path, mode, context_noise):
    settings = SamplerSettings(mode=mode, steps=4, window_chunks=2, guidance=2.0, seed=7, context_noise=context_noise)
    whole = all_frames(LongVideo(model, "a red ball", seconds=2, fps=12, settings=settings))
    first = LongVideo(model, "a red ball", seconds=1, fps=12, settings=settings, resumable=True)
    head = all_frames(first)
    first.save_state(tmp_path / "state.safetensors")
    rest = all_frames(LongVideo(model, "a red ball", seconds=1, fps=12, resume=tmp_path / "state.safetensors"))
    assert head.shape[1] == rest.shape[1] == 12
    assert torch.equal(torch.cat([head, rest], dim=1), whole)


def test_a_state_saved_before_memory_strength_and_guidance_parallel_resumes_as_it_was_made(model, tmp_path):
    """And one saved before recall_strength reads its recalled chunks at the memory's strength, as it did."""
    import json
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from longtake.samplers.loop import load_state
    video = LongVideo(model, "a red ball", seconds=1, fps=12, settings=SamplerSettings(**FAST, guidance_parallel=0.5),
                      resumable=True)
    all_frames(video)
    video.save_state(tmp_path / "state.safetensors")
    with safe_open(str(tmp_path / "state.safetensors"), "pt") as f:
        metadata = f.metadata()
    generation = json.loads(metadata["generation"])
    assert generation["settings"].pop("memory_strength") == 0.5
    assert generation["settings"].pop("guidance_parallel") == 0.5
    assert generation["settings"].pop("recall_strength") == 1.0
    save_file(load_file(str(tmp_path / "state.safetensors")), str(tmp_path / "older.safetensors"),
              metadata=dict(metadata, generation=json.dumps(generation)))
    older = load_state(tmp_path / "older.safetensors", model).settings
    assert older.memory_strength == 1.0 and older.guidance_parallel == 1.0  # what made them
    generation["settings"]["memory_strength"] = 0.25
    save_file(load_file(str(tmp_path / "state.safetensors")), str(tmp_path / "older.safetensors"),
              metadata=dict(metadata, generation=json.dumps(generation)))
    assert load_state(tmp_path / "older.safetensors", model).settings.recall_strength == 0.25


def test_drained_end_matches_the_resumable_end(model):
    settings = SamplerSettings(steps=4, window_chunks=2)
    drained = all_frames(LongVideo(model, "a blue square", seconds=1, fps=24, settings=settings))
    kept_full = all_frames(LongVideo(model, "a blue square", seconds=1, fps=24, settings=settings, resumable=True))
    # Equal up to float summation order (the windows differ in size), which a random model may amplify in
    # a few pixels; a real difference in what the chunks saw would show everywhere.
    difference = (drained - kept_full).abs()
    assert difference.mean() <= 1e-5 and difference.max() <= 0.05


def test_cancel_leaves_a_playable_mp4_with_what_was_made(model, tmp_path):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 9

    video = LongVideo(model, "a red ball", seconds=4, fps=24, settings=SamplerSettings(**FAST), cancel=cancel)
    written = render_mp4(video, tmp_path / "cancelled.mp4")
    assert video.cancelled
    assert 0 < written < 96
    assert probe(tmp_path / "cancelled.mp4")[0] == written
    # The state saved after a cancel resumes: the frames continue where the file stops.
    video.save_state(tmp_path / "state.safetensors")
    assert video.boundary.frames_done == written


def test_ctrl_c_still_closes_the_mp4(model, tmp_path):
    def progress(p):
        if p.step == 9:
            raise KeyboardInterrupt

    video = LongVideo(model, "a red ball", seconds=4, fps=24, settings=SamplerSettings(**FAST), progress=progress)
    with pytest.raises(KeyboardInterrupt):
        render_mp4(video, tmp_path / "interrupted.mp4")
    frames, fps = probe(tmp_path / "interrupted.mp4")
    assert frames == video.boundary.frames_done > 0 and fps == 24


def live_tensor_bytes() -> int:
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if type(obj) is torch.Tensor:  # exact type: parameters (a subclass) are the model, not the run
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def peak_live_bytes(model, seconds):
    peak = [0]

    def progress(p):
        if p.step % 5 == 0:
            peak[0] = max(peak[0], live_tensor_bytes())

    video = LongVideo(model, "a red ball", seconds=seconds, fps=24, settings=SamplerSettings(**FAST), progress=progress)
    for _ in video.frames():
        pass  # frames go wherever the caller sends them; the loop keeps none
    return peak[0]


def test_live_memory_does_not_grow_with_length(model):
    short, long = peak_live_bytes(model, 4 * 8 / 24), peak_live_bytes(model, 40 * 8 / 24)
    assert long <= short * 1.05, (short, long)


def test_start_frames_become_the_front_chunk_and_earlier_ones_go_to_memory(model):
    writes = []
    original = model.denoiser.write

    def counting_write(*args, **kwargs):
        writes.append(1)
        return original(*args, **kwargs)

    start = torch.rand(3, 20, 48, 48) * 2 - 1  # 20 frames, wrong size: padded to 3 chunks, resized to 64
    steps_at_first_write = []
    video = LongVideo(model, "a red ball", seconds=1, fps=24, settings=SamplerSettings(**FAST), start=start,
                      progress=lambda p: steps_at_first_write.append(len(writes)))
    model.denoiser.write = counting_write
    try:
        frames = all_frames(video)
    finally:
        model.denoiser.write = original
    assert frames.shape == (3, 24, 64, 64)
    assert steps_at_first_write[0] == 2  # two of the three start chunks were written before the first step
    assert video.boundary.window.clean[0].index == 2  # 24 frames = 3 chunks, the last is the front


def test_a_delayed_decoder_does_not_show_the_start_frames_again(model, tmp_path):
    """A decoder with frame_delay d would open a continuation with the start video's last d frames; they
    are dropped, so the continuation is the undelayed one moved on by d frames, and as long as asked, also
    when it was stopped before its first chunk and resumed from the saved state."""
    import dataclasses
    config = model.config.replace(vae=dataclasses.replace(model.config.vae, frame_delay=2))
    delayed = LongTakeModel(config).eval()
    delayed.load_state_dict(model.state_dict())
    start = torch.rand(3, 16, 64, 64) * 2 - 1
    plain = all_frames(LongVideo(model, "a red ball", seconds=1.5, fps=24, settings=SamplerSettings(**FAST),
                                 start=start))
    moved = all_frames(LongVideo(delayed, "a red ball", seconds=1, fps=24, settings=SamplerSettings(**FAST),
                                 start=start))
    assert moved.shape[1] == 24
    assert torch.equal(moved, plain[:, 2:26])
    stopped = LongVideo(delayed, "a red ball", seconds=1, fps=24, settings=SamplerSettings(**FAST), start=start,
                        cancel=lambda: True)
    assert list(stopped.frames()) == [] and stopped.cancelled
    stopped.save_state(tmp_path / "state.safetensors")
    resumed = all_frames(LongVideo(delayed, "a red ball", seconds=1, fps=24, resume=tmp_path / "state.safetensors"))
    assert torch.equal(resumed, moved)


def test_guidance_is_one_batched_forward(model):
    batches = []
    hook = model.denoiser.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    try:
        for guidance in (3.0, 1.0):
            batches.clear()
            video = LongVideo(model, "a red ball", seconds=8 / 24, fps=24,
                              settings=SamplerSettings(guidance=guidance, **FAST))
            all_frames(video)
            assert len(batches) == video.total_steps
            assert set(batches) == ({2} if guidance != 1 else {1})
    finally:
        hook.remove()


def test_guidance_parallel_takes_out_the_push_along_the_models_own_estimate():
    """At share 0 the guided clean estimate differs from the conditional one only across it, frame by frame:
    guidance changes what is drawn, not how strongly; at share 1 it is plain classifier-free guidance."""
    from longtake.samplers.loop import guide
    torch.manual_seed(0)
    velocity, x, t = torch.randn(4, 3, 5, 6, 6), torch.randn(4, 3, 5, 6, 6), torch.rand(4, 5)
    x[2:], t[2:] = x[:2], t[:2]  # both halves of the guided batch see the same input, as in sampling
    conditional, unconditional = velocity.chunk(2)
    plain = unconditional + 3.0 * (conditional - unconditional)
    assert torch.equal(guide(velocity, 3.0), plain)
    assert torch.allclose(guide(velocity, 3.0, 1.0, x, t), plain)
    assert torch.allclose(guide(velocity, 1.0, 0.0, x, t), conditional)
    level = t[:2, None, :, None, None]
    estimate = x[:2] - level * conditional
    change = (x[:2] - level * guide(velocity, 3.0, 0.0, x, t)) - estimate  # of the clean estimate
    along = (change * estimate).sum(dim=(1, 3, 4))
    assert along.abs().max() < 1e-4 * change.norm()
    assert change.norm() > 0.5 * (x[:2] - level * plain - estimate).norm()  # the rest of the push is kept
    halfway = (x[:2] - level * guide(velocity, 3.0, 0.5, x, t) - estimate) * estimate
    assert (halfway.sum(dim=(1, 3, 4)) - 0.5 * ((x[:2] - level * plain - estimate) * estimate).sum(dim=(1, 3, 4))
            ).abs().max() < 1e-3


def test_prompt_schedule_changes_the_video(model):
    settings = SamplerSettings(**FAST)
    fixed = all_frames(LongVideo(model, "a red ball", seconds=2, fps=24, settings=settings))
    scheduled = all_frames(LongVideo(model, "0: a red ball\n1: a blue square", seconds=2, fps=24, settings=settings))
    # The first second is the same video. Not to the bit: windows that already hold a chunk of the new
    # prompt read the text chunk by chunk instead of once for the window, which rounds differently (this
    # random model decodes that to differences under 0.01; a prompt leaking backwards would show as ~1).
    assert torch.allclose(fixed[:, :24], scheduled[:, :24], atol=0.015)
    assert (fixed[:, 24:] - scheduled[:, 24:]).abs().max() > 0.5


@pytest.mark.parametrize("kwargs,message", [
    (dict(settings=SamplerSettings(steps=7, window_chunks=4)), "divisible by window chunks"),
    (dict(seconds=0), "seconds must be positive"),
    (dict(seconds=-3), "seconds must be positive"),
    (dict(fps=0), "fps must be positive"),
    (dict(prompts="0: a red ball\nten: a blue ball"), "line 2"),
    (dict(settings=SamplerSettings(mode="bogus")), "not one of progressive, rw, rn"),
    (dict(settings=SamplerSettings(memory_strength=-0.5)), "memory strength must lie in"),
])
def test_bad_settings_fail_before_any_work(model, kwargs, message):
    calls = []
    hook = model.denoiser.register_forward_hook(lambda *a: calls.append(1))
    args = dict(prompts="a red ball", seconds=1, fps=24)
    args.update(kwargs)
    try:
        with pytest.raises(ValueError, match=message):
            LongVideo(model, args.pop("prompts"), args.pop("seconds"), args.pop("fps"), **args)
    finally:
        hook.remove()
    assert not calls


def test_schedule_parsing():
    schedule = PromptSchedule.parse("# story\n0: a red ball\n\n20.5: a blue ball moving left\n")
    assert schedule.entries == ((0.0, "a red ball"), (20.5, "a blue ball moving left"))
    assert PromptSchedule.parse("a red ball").entries == ((0.0, "a red ball"),)
    with pytest.raises(ScheduleError, match="line 3"):
        PromptSchedule.parse("0: a\n5: b\n3: c")
    with pytest.raises(ScheduleError, match="line 1: the first entry must be at 0"):
        PromptSchedule.parse("4: a\n8: b")


def test_schedule_blends_linearly_over_chunks():
    schedule = PromptSchedule.parse("0: a\n1: b")
    weights = [schedule.weights(c, 1 / 3, 2) for c in range(2, 7)]
    assert weights == [[("a", 1.0)], [("a", pytest.approx(2 / 3)), ("b", pytest.approx(1 / 3))],
                       [("a", pytest.approx(1 / 3)), ("b", pytest.approx(2 / 3))], [("b", 1.0)], [("b", 1.0)]]


def test_mp4_writer_pads_odd_sizes(tmp_path):
    with Mp4Writer(tmp_path / "odd.mp4", fps=10) as writer:
        writer.write(np.zeros((5, 33, 35, 3), np.uint8))
    assert probe(tmp_path / "odd.mp4") == (5, 10)


def test_cli_generate_resume_and_errors(model, tmp_path, capsys):
    from longtake.cli import main
    checkpoint = tmp_path / "model.safetensors"
    save_checkpoint(model, checkpoint)
    common = ["--checkpoint", str(checkpoint), "--steps", "4", "--window-chunks", "2", "--fps", "12"]
    assert main(["generate", "a red ball", "--seconds", "1", "--out", str(tmp_path / "a.mp4"), "--memory-strength",
                 "0.7", "--save-state", str(tmp_path / "s.safetensors"), *common]) == 0
    assert probe(tmp_path / "a.mp4") == (12, 12)
    from longtake.samplers.loop import load_state
    assert load_state(tmp_path / "s.safetensors", model).settings.memory_strength == 0.7
    assert main(["generate", "a red ball", "--seconds", "1", "--out", str(tmp_path / "b.mp4"),
                 "--checkpoint", str(checkpoint), "--fps", "12", "--resume", str(tmp_path / "s.safetensors")]) == 0
    assert probe(tmp_path / "b.mp4")[0] == 12
    capsys.readouterr()
    assert main(["generate", "a red ball", "--out", str(tmp_path / "c.mp4"), "--start", str(tmp_path / "nope.mp4"),
                 *common]) == 2
    assert "nope.mp4: no such file" in capsys.readouterr().err
    assert not (tmp_path / "c.mp4").exists()
    schedule = tmp_path / "story.txt"
    schedule.write_text("0: a red ball\nlater: a blue ball\n")
    assert main(["generate", "--schedule", str(schedule), "--out", str(tmp_path / "d.mp4"), *common]) == 2
    assert "line 2" in capsys.readouterr().err
    assert not (tmp_path / "d.mp4").exists()


def test_contact_sheet_of_a_rendered_video(tmp_path):
    from longtake.bench.sheet import contact_sheet
    from longtake.training import world
    scene = world.scene_from_prompt("a red ball bouncing on a black background", seed=0)
    with Mp4Writer(tmp_path / "v.mp4", fps=24) as writer:
        writer.write(world.render(scene, 0, 24 * 6))
    sheet = contact_sheet(tmp_path / "v.mp4", tmp_path / "sheet.png", every=2, columns=3)
    import matplotlib.image
    image = matplotlib.image.imread(sheet)
    assert image.shape[0] >= 128 and image.shape[1] >= 3 * 128  # frames at 0, 2 and 4 s, enlarged twice


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_samples_close_to_float32(model, dtype):
    settings = SamplerSettings(**FAST)
    reference = all_frames(LongVideo(model, "a red ball", seconds=1, fps=12, settings=settings))
    import copy
    half = copy.deepcopy(model).to(dtype)
    frames = all_frames(LongVideo(half, "a red ball", seconds=1, fps=12, settings=settings))
    assert frames.dtype == torch.float32 and frames.shape == reference.shape
    assert (frames - reference).abs().mean() < 0.1


def test_context_noise_shows_the_model_its_clean_chunks_noised(model, monkeypatch):
    seen = []
    run = model.denoiser._run  # every pass: the window, its reused front, memory writes
    monkeypatch.setattr(model.denoiser, "_run", lambda x, t, *rest, **options: seen.append(t.clone()) or run(x, t, *rest, **options))
    settings = SamplerSettings(**FAST, context_noise=0.1)
    noised = all_frames(LongVideo(model, "a red ball", seconds=1, fps=12, settings=settings))
    assert all(bool((t > 0).all()) for t in seen)  # no frame reaches the model at t = 0
    assert any(bool(torch.isclose(t, torch.tensor(0.1)).any()) for t in seen)
    plain = all_frames(LongVideo(model, "a red ball", seconds=1, fps=12, settings=SamplerSettings(**FAST)))
    assert not torch.equal(noised, plain)


@pytest.mark.parametrize("memory", ["malt", "lstm"])
# 0.05 is the model's write noise: the front chunk's pass then also serves as its memory write.
@pytest.mark.parametrize("mode, context_noise", [("progressive", 0.0), ("progressive", 0.1), ("progressive", 0.05),
                                                 ("rn", 0.0), ("rn", 0.05)])
def test_reusing_the_clean_front_chunks_changes_no_frame(memory, mode, context_noise, monkeypatch):
    from longtake.samplers.loop import Conditioner
    torch.manual_seed(0)
    model = randomise(LongTakeModel(small_model_config(memory)), scale=0.15).eval().double()
    assert model.config.denoiser.write_noise == 0.05
    settings = SamplerSettings(mode=mode, steps=4, window_chunks=2, overlap=2, context_noise=context_noise)
    # A prompt change: windows read one prompt, then a prompt per chunk while it blends in, then one again.
    prompts = "0: a red ball\n1: a blue square"
    reused = all_frames(LongVideo(model, prompts, seconds=2, fps=12, settings=settings))
    monkeypatch.setattr(Conditioner, "reuse_front", False)
    recomputed = all_frames(LongVideo(model, prompts, seconds=2, fps=12, settings=settings))
    assert (reused - recomputed).abs().max() <= 1e-5


def test_the_null_prompt_fills_the_prompts_length_without_a_mask_and_changes_no_velocity(monkeypatch):
    """Guidance's null prompt is one token, and one token read L times reads as itself alone: it fills the
    prompt's length without padding, so a window of one prompt runs with no attention mask. Every pass gives
    the velocity it gave with the null prompt padded and masked (to the float32 the velocity comes in)."""
    from longtake.samplers import loop
    torch.manual_seed(0)
    model = randomise(LongTakeModel(small_model_config("malt")), scale=0.15).eval().double()
    cfg = model.config.denoiser
    # One prompt, then a prompt per chunk while the second blends in (a bias then), then one prompt again.
    prompts = "0: a red ball bouncing\n1: a blue square"
    x = torch.randn(1, cfg.latent_channels, 3 * cfg.chunk_frames, cfg.latent_size, cfg.latent_size)
    t = torch.tensor([0.0, 0.5, 0.9]).repeat_interleave(cfg.chunk_frames)[None]  # a clean front, two noisy chunks

    def padded(self, conditionings):  # as it was: the null prompt's token, then padding the mask hides
        tokens, bias = loop.stack(conditionings)
        null_tokens, null_bias = loop.stack([self.null] * len(conditionings), length=tokens.shape[2])
        return torch.cat([tokens, null_tokens]), torch.cat([bias, null_bias])

    def velocities(indexes):
        biases = []
        hook = model.denoiser.register_forward_hook(lambda m, args, out: biases.append(args[3]))
        try:
            video = LongVideo(model, prompts, seconds=4, fps=12, settings=SamplerSettings(steps=4, window_chunks=2))
            return video.conditioner.denoise(x, t, indexes), biases
        finally:
            hook.remove()

    masks = set()
    for indexes in ([0, 1, 2], [1, 2, 3], [4, 5, 6]):
        unmasked, biases = velocities(indexes)
        masks.add(biases[0] is None)
        with monkeypatch.context() as patch:
            patch.setattr(loop.Conditioner, "_guided_text_per_chunk", padded)
            patch.setattr(loop.Conditioner, "_unblended", lambda self, conditioning: False)  # always masked
            masked, biases = velocities(indexes)
        assert biases[0] is not None
        assert (unmasked - masked).abs().max() <= 1e-6 * masked.abs().max()
    assert masks == {True, False}  # windows of one prompt ran without a mask, blending ones with it


@pytest.mark.parametrize("mode, context_noise", [("progressive", 0.0), ("progressive", 0.05), ("rn", 0.0)])
def test_memory_strength_zero_makes_the_frames_of_the_model_with_its_reads_shut(model, mode, context_noise):
    """Every pass a video makes, the writes among them, reads the memory at the sampler's strength (0.05 is
    the write noise: the front chunk's pass then serves as its write)."""
    shut = fresh_model()
    shut_reads(shut.denoiser)
    settings = SamplerSettings(mode=mode, steps=4, window_chunks=2, context_noise=context_noise)
    unread = all_frames(LongVideo(model, "a red ball", seconds=2, fps=12,
                                  settings=replace(settings, memory_strength=0.0)))
    assert (unread - all_frames(LongVideo(shut, "a red ball", seconds=2, fps=12, settings=settings))).abs().max() <= 1e-5
    assert (unread - all_frames(LongVideo(model, "a red ball", seconds=2, fps=12, settings=settings))).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("context_noise", [0.0, 0.05])
def test_recall_strength_zero_makes_the_frames_of_the_model_with_its_recall_shut(context_noise):
    """A model that recalls its last chunks reads them at the sampler's recall strength in every pass, the
    writes among them, apart from the memory strength, which stays on the slots."""
    def recalling():
        torch.manual_seed(0)
        config = small_model_config("malt")
        config = config.replace(denoiser=replace(config.denoiser, recall_chunks=2))
        return randomise(LongTakeModel(config), scale=0.15).eval()

    model, shut = recalling(), recalling()
    for block in shut.denoiser.blocks:
        block.malt.recall_gate.zero_()
    settings = SamplerSettings(steps=4, window_chunks=2, context_noise=context_noise, memory_strength=0.7)
    unread = all_frames(LongVideo(model, "a red ball", seconds=2, fps=12,
                                  settings=replace(settings, recall_strength=0.0)))
    assert (unread - all_frames(LongVideo(shut, "a red ball", seconds=2, fps=12, settings=settings))).abs().max() <= 1e-5
    assert (unread - all_frames(LongVideo(model, "a red ball", seconds=2, fps=12, settings=settings))).abs().max() > 1e-3


@pytest.fixture()
def no_compiled_code_left():
    """Compiled code and dynamo's counters stay with the test that made them."""
    import torch._dynamo
    yield
    torch._dynamo.reset()


def test_compiled_denoiser_makes_the_same_frames(no_compiled_code_left):
    from torch._dynamo.utils import counters
    model = fresh_model()
    settings = SamplerSettings(steps=4, window_chunks=2, guidance=2.0)
    plain = all_frames(LongVideo(model, "a red ball", seconds=1, fps=12, settings=settings))
    graphs = counters["stats"]["unique_graphs"]
    # torch's graph capture with the eager kernels: what compiling changes in our code, without the minute of
    # C++ code generation that the default backend takes on a CPU.
    model.compile_denoiser(backend="aot_eager")
    compiled = all_frames(LongVideo(model, "a red ball", seconds=1, fps=12, settings=settings))
    assert counters["stats"]["unique_graphs"] > graphs
    assert torch.equal(plain, compiled)


def test_a_compiler_that_fails_says_so_at_load_and_the_model_still_works(no_compiled_code_left):
    def broken(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    model = fresh_model()
    settings = SamplerSettings(steps=4, window_chunks=2)
    plain = all_frames(LongVideo(model, "a red ball", seconds=0.5, fps=12, settings=settings))
    with pytest.raises(RuntimeError, match=r"torch.compile does not work here \(RuntimeError: no C\+\+ compiler found\)"):
        model.compile_denoiser(backend=broken)
    assert torch.equal(all_frames(LongVideo(model, "a red ball", seconds=0.5, fps=12, settings=settings)), plain)


def test_cli_compile_flag_compiles_first_and_a_failure_is_a_clean_error(model, tmp_path, capsys, monkeypatch):
    from longtake.cli import main
    checkpoint = tmp_path / "model.safetensors"
    save_checkpoint(model, checkpoint)
    common = ["a red ball", "--seconds", "0.5", "--checkpoint", str(checkpoint), "--steps", "4", "--window-chunks", "2",
              "--fps", "12", "--compile"]
    compiled = []
    monkeypatch.setattr(LongTakeModel, "compile_denoiser", lambda self: compiled.append(self))
    assert main(["generate", *common, "--out", str(tmp_path / "a.mp4")]) == 0
    assert len(compiled) == 1 and "compiled in" in capsys.readouterr().out

    def broken(self):
        raise RuntimeError("torch.compile does not work here (no C++ compiler)")

    monkeypatch.setattr(LongTakeModel, "compile_denoiser", broken)
    assert main(["generate", *common, "--out", str(tmp_path / "b.mp4")]) == 2
    assert "no C++ compiler); leave out --compile" in capsys.readouterr().err
    assert not (tmp_path / "b.mp4").exists()


def test_progress_is_ten_lines_in_a_log_and_one_redrawn_line_in_a_terminal():
    import io
    from types import SimpleNamespace
    from longtake.cli import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    steps = [SimpleNamespace(step=s, steps=200, frames=8 * (s // 10), total_frames=160) for s in range(201)]
    log, terminal = io.StringIO(), Terminal()
    for stream in (log, terminal):
        bar = ProgressBar(stream)
        for p in steps:
            bar(p)
        bar.finish()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 10 <= len(lines) <= 11  # the start, then each tenth
    assert lines[-1].startswith("[" + "#" * 28 + "]") and "160/160 frames" in lines[-1]
    drawn = terminal.getvalue()
    assert drawn.count("\n") == 1 and drawn.endswith("\n") and drawn.count("\r") >= 2  # redrawn in place
    assert "160/160 frames" in drawn.rsplit("\r", 1)[-1]
