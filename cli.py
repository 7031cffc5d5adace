"""The `longtake` command."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def cmd_info(args) -> int:
    from .memory import load_checkpoint
    model = load_checkpoint(args.checkpoint)
    config = json.loads(model.config.to_json())
    print(json.dumps(config, indent=2))
    counts = model.parameter_counts()
    print("\nparameters:")
    for part, count in counts.items():
        print(f"  {part:<9} {count:>12,}")
    print(f"  {'total':<9} {sum(counts.values()):>12,}")
    return 0


def cmd_init(args) -> int:
    import torch
    from .memory import DenoiserConfig, LongTakeModel, ModelConfig, TextConfig, save_checkpoint
    from .training.vocab import VOCAB
    torch.manual_seed(args.seed)
    config = ModelConfig(text=TextConfig(vocab=VOCAB), denoiser=DenoiserConfig(memory=args.memory),
                         record={"made_by": "longtake init", "trained_steps": 0, "seed": args.seed})
    save_checkpoint(LongTakeModel(config), args.out)
    print(f"wrote an untrained {args.memory} checkpoint to {args.out}")
    return 0


SAMPLER_FLAGS = ("sampler", "steps", "window_chunks", "overlap", "shift", "guidance", "guidance_parallel", "seed",
                 "context_noise", "memory_strength", "recall_strength")
DEMO_MODEL = Path(__file__).resolve().parent / "models" / "demo.safetensors"


class ProgressBar:
    """Steps, frames done, speed and time left on stderr: one line redrawn in a terminal, and a line at each
    tenth of the way where stderr goes to a file or a pipe (a log gets ten lines, not hundreds of redraws)."""

    def __init__(self, stream=None, width: int = 28):
        # sys.stderr as it is now, not as it was at import (a test harness or a host may have swapped it since)
        self.stream, self.width, self.started = stream or sys.stderr, width, time.monotonic()
        self.interactive = getattr(self.stream, "isatty", lambda: False)()
        self.drawn, self.tenths = 0.0, 0

    def __call__(self, p) -> None:
        now = time.monotonic()
        done = p.step / max(p.steps, 1)
        if self.interactive:
            if now - self.drawn < 0.2 and p.step < p.steps:  # a few redraws a second is plenty
                return
        elif int(10 * done) <= self.tenths and p.step > 0:
            return
        self.drawn, self.tenths = now, int(10 * done)
        elapsed = now - self.started
        left = elapsed / done - elapsed if done > 0 else 0.0
        bar = "#" * int(self.width * done) + "-" * (self.width - int(self.width * done))
        speed = p.frames / elapsed if elapsed > 0 else 0.0
        line = f"[{bar}] {p.frames}/{p.total_frames} frames  {speed:5.1f} frames/s  {_clock(left)} left"
        self.stream.write(f"\r{line} " if self.interactive else f"{line}\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.interactive:
            self.stream.write("\n")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def cmd_generate(args) -> int:
    import torch
    from .memory import load_checkpoint
    from .samplers import LongVideo, PromptSchedule, SamplerSettings, render_mp4
    from .samplers.video import read_frames

    if (args.prompt is None) == (args.schedule is None):
        raise UsageError("give a PROMPT or --schedule FILE (one of them)")
    schedule = (PromptSchedule.single(args.prompt) if args.prompt is not None
                else PromptSchedule.parse(_read_text(args.schedule)))
    given = [f"--{name.replace('_', '-')}" for name in SAMPLER_FLAGS if getattr(args, name) is not None]
    if args.resume and given:
        raise UsageError(f"--resume continues with the sampler settings saved in the state; leave out {' '.join(given)}")
    defaults = SamplerSettings()
    settings = SamplerSettings(
        mode=args.sampler or defaults.mode, steps=args.steps or defaults.steps,
        window_chunks=args.window_chunks or defaults.window_chunks,
        overlap=defaults.overlap if args.overlap is None else args.overlap,
        shift=args.shift or defaults.shift, guidance=defaults.guidance if args.guidance is None else args.guidance,
        guidance_parallel=defaults.guidance_parallel if args.guidance_parallel is None else args.guidance_parallel,
        seed=defaults.seed if args.seed is None else args.seed,
        context_noise=defaults.context_noise if args.context_noise is None else args.context_noise,
        memory_strength=defaults.memory_strength if args.memory_strength is None else args.memory_strength,
        recall_strength=defaults.recall_strength if args.recall_strength is None else args.recall_strength)
    settings.check()
    start = None
    if args.start:
        frames = read_frames(args.start)
        start = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1
    checkpoint = Path(args.checkpoint) if args.checkpoint else DEMO_MODEL
    if not args.checkpoint and not DEMO_MODEL.exists():
        raise UsageError("the bundled demo model is not in this copy of LongTake; pass --checkpoint FILE "
                         "(`longtake init FILE` makes an untrained one to try the pipeline)")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    model = load_checkpoint(checkpoint, device=args.device)
    if args.compile:
        began = time.monotonic()
        print("compiling the denoiser (about a minute the first time on a CPU, seconds once torch has cached it)")
        try:
            model.compile_denoiser()
        except RuntimeError as error:
            raise UsageError(f"{error}; leave out --compile") from None
        print(f"compiled in {time.monotonic() - began:.1f} s")
    bar = ProgressBar()
    video = LongVideo(model, schedule, args.seconds, args.fps, settings, start=start, resume=args.resume,
                      blend_chunks=args.blend_chunks, resumable=bool(args.save_state), progress=bar)
    started = time.monotonic()
    interrupted = False
    try:
        frames = render_mp4(video, args.out)
    except KeyboardInterrupt:
        interrupted = True
        from .samplers.video import probe
        frames = probe(args.out)[0] if Path(args.out).exists() else 0
    finally:
        bar.finish()
        if args.save_state:
            video.save_state(args.save_state)
    elapsed = time.monotonic() - started
    how = "interrupted after" if interrupted else "wrote"
    print(f"{how} {frames} frames ({frames / args.fps:.1f} s at {args.fps:g} fps) to {args.out} in {elapsed:.1f} s"
          + (f"; state saved to {args.save_state}" if args.save_state else ""))
    return 130 if interrupted else 0


def cmd_train(args) -> int:
    import dataclasses
    from .memory import DenoiserConfig, ModelConfig, TextConfig, load_checkpoint
    from .training.data import DemoWorld, VideoFolder
    from .training.train_denoiser import DenoiserTraining, switch_memory, train_denoiser
    from .training.train_vae import VAETraining, load_trained_vae, train_vae
    from .training.vocab import VOCAB

    out = Path(args.out)
    if args.average_weight is not None and args.stage != "average":
        raise ValueError(f"--average-weight weighs the average of a fine-tune and its start: give it to the "
                         f"average stage, not {args.stage}")
    if args.stage == "export":
        from .training.train_denoiser import export
        path = export(out)
        print(f"wrote {path} from the latest training state in {out}")
        return _ship(path) if args.ship else 0
    if args.stage == "average":
        return _average(args, out)
    if args.decoder_only and args.stage != "vae":
        raise ValueError(f"--decoder-only is for the vae stage (longtake train vae --init ... --decoder-only), "
                         f"not {args.stage}")
    for flag, value in (("--vae-steps", args.vae_steps), ("--denoiser-steps", args.denoiser_steps),
                        ("--batch", args.batch), ("--lr", args.lr),
                        ("--vae-lr", args.vae_lr), ("--cache-videos", args.cache_videos)):
        if value is not None and not value > 0:  # before the VAE stage, not an hour into it
            raise ValueError(f"{flag} must be positive, got {value}")
    denoiser_only = {"--object-weight": args.object_weight, "--remade-share": args.remade_share,
                     "--remade-levels": args.remade_levels, "--remade-steps": args.remade_steps,
                     "--remade-guidance": args.remade_guidance, "--remade-links": args.remade_links,
                     "--drifted-share": args.drifted_share, "--drift-easing": args.drift_easing,
                     "--grad-writes": args.grad_writes, "--occlusion-grad-writes": args.occlusion_grad_writes,
                     "--occlusion-share": args.occlusion_share, "--pillar-videos": args.pillar_videos,
                     "--keep-bias": args.keep_bias, "--recall-chunks": args.recall_chunks,
                     "--fresh-lr": args.fresh_lr,
                     "--return-weight": args.return_weight, "--recolor-returns": args.recolor_returns}
    given = [flag for flag, value in denoiser_only.items() if value is not None]
    if given and args.stage not in ("denoiser", "demo"):
        raise ValueError(f"{given[0]} sets how the denoiser is trained: give it to the denoiser or demo stage, "
                         f"not {args.stage}")
    for flag, value in (("--remade-share", args.remade_share), ("--drifted-share", args.drifted_share),
                        ("--occlusion-share", args.occlusion_share)):
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"{flag} is a share of windows: give a number from 0 to 1, got {value}")
    if args.drift_easing is not None and not args.drifted_share:
        raise ValueError("--drift-easing eases the drifted windows back to the truth: give it with --drifted-share")
    if args.drift_easing is not None and not 0 <= args.drift_easing <= DenoiserTraining.window_chunks:
        raise ValueError(f"--drift-easing counts noisy chunks of the window: give 0 to "
                         f"{DenoiserTraining.window_chunks}, got {args.drift_easing}")
    if args.pillar_videos is not None and not args.pillar_videos >= 0:
        raise ValueError(f"--pillar-videos is a number of videos, 0 or more, got {args.pillar_videos}")
    if args.pillar_videos and args.videos:
        raise ValueError("--pillar-videos draws more demo-world scenes, and footage has no scene to draw: leave it "
                         "out when training on --videos")
    if args.drifted_share and args.videos:
        raise ValueError("--drifted-share redraws demo-world scenes, and footage has no scene to redraw: "
                         "leave it out when training on --videos")
    if args.remade_levels is not None and not 0 < args.remade_levels[0] <= args.remade_levels[1] <= 1:
        raise ValueError(f"--remade-levels LOW HIGH are noise levels with 0 < LOW <= HIGH <= 1 (1 is pure noise), "
                         f"got {' '.join(map(str, args.remade_levels))}")
    if args.remade_steps is not None and not args.remade_steps >= 1:
        raise ValueError(f"--remade-steps must be at least 1, got {args.remade_steps}")
    for flag, value in (("--grad-writes", args.grad_writes), ("--occlusion-grad-writes", args.occlusion_grad_writes)):
        if value is not None and not value >= 1:
            raise ValueError(f"{flag} must be at least 1 (the memory learns to write only through them), got {value}")
    if args.remade_links is not None and not args.remade_links >= 1:
        raise ValueError(f"--remade-links must be at least 1 (the front chunk alone), got {args.remade_links}")
    if args.remade_guidance is not None and not args.remade_guidance >= 0:
        raise ValueError(f"--remade-guidance must be 0 or more (1 turns guidance off), got {args.remade_guidance}")
    for flag, value in (("--object-weight", args.object_weight), ("--return-weight", args.return_weight)):
        if value is not None and not 0 <= value < float("inf"):
            raise ValueError(f"{flag} must be 0 or more (0 weighs every latent pixel alike), got {value}")
    for flag, value in (("--tint-noise", args.tint_noise), ("--seam-weight", args.seam_weight)):
        if value is not None and not 0 <= value < float("inf"):
            raise ValueError(f"{flag} must be 0 or more (0 leaves it out), got {value}")
    for flag, value in (("--frame-delay", args.frame_delay), ("--tint-noise", args.tint_noise),
                        ("--seam-weight", args.seam_weight)):
        if value is not None and args.stage not in ("vae", "demo"):
            raise ValueError(f"{flag} sets how the VAE is trained: give it to the vae or demo stage, not "
                             f"{args.stage}")
    source = VideoFolder(args.videos, resolution=64) if args.videos else DemoWorld(seed=args.data_seed)
    base = load_checkpoint(args.init) if args.init else None
    # Done now, not hours into training: a run in between that was never shipped stays in the lineage.
    base_record = _with_own_stage(base.config.record) if base else None
    memory = args.memory or (base.config.denoiser.memory if base else "malt")
    if args.recall_chunks is not None:
        DenoiserConfig(memory=memory, recall_chunks=args.recall_chunks)  # its own check, before the VAE stage
    if args.fresh_lr is not None and not (args.fresh_lr > 0 and base):
        raise ValueError("--fresh-lr is the learning rate of the weights a fine-tune adds to its --init model: "
                         "give a positive rate, with --init")
    if args.keep_bias and memory != "malt":
        raise ValueError("--keep-bias opens the keep gates of MALT memory slots, and this model's memory is not "
                         "MALT: leave --keep-bias out, or train with --memory malt")
    if args.stage in ("vae", "demo"):
        heldout = source if args.videos else DemoWorld(seed=args.data_seed + 1)
        vae_settings = VAETraining(seed=args.data_seed, decoder_only=args.decoder_only)
        if args.vae_steps:
            vae_settings = dataclasses.replace(vae_settings, steps=args.vae_steps)
        if args.vae_lr:
            vae_settings = dataclasses.replace(vae_settings, lr=args.vae_lr)
        if args.tint_noise is not None:
            vae_settings = dataclasses.replace(vae_settings, tint_noise=args.tint_noise)
        if args.seam_weight is not None:
            vae_settings = dataclasses.replace(vae_settings, seam_weight=args.seam_weight)
        from .memory.config import VAEConfig
        vae_config = VAEConfig() if base is None else base.config.vae
        if args.frame_delay is not None:
            vae_config = dataclasses.replace(vae_config, frame_delay=args.frame_delay)
        initial = None if base is None else base.vae.state_dict()
        train_vae(source, heldout, vae_config, out, vae_settings, initial=initial)
    if args.stage == "vae" and args.decoder_only:
        if int(os.environ.get("RANK", "0")) != 0:  # under torchrun the first process writes the model
            return 0
        # The latents are unchanged, so the model's denoiser goes on working with the new decoder as it is.
        from .memory import save_checkpoint
        tuned, vae_config, vae_record = load_trained_vae(out)
        base.vae.load_state_dict(tuned.state_dict())
        record = dict(base_record, command=args.command_line, run=args.started, commit=args.commit,
                      decoder_fine_tuned=dict(vae_record, from_model=str(args.init), command=args.command_line))
        path = out / "model.safetensors"
        save_checkpoint(base, path, config=base.config.replace(vae=vae_config, record=record))
        print(f"wrote {path}: {args.init} with the fine-tuned decoder")
        return _ship(path) if args.ship else 0
    if args.stage == "vae":
        return 0

    initial, added = None, frozenset()
    if base is not None:
        # A VAE fine-tuned in this run folder replaces the checkpoint's own.
        initial, config = base.state_dict(), base.config
        record = dict(base_record, fine_tuned_from=str(args.init))
        changes = {field: value for field, value in (("memory", args.memory), ("recall_chunks", args.recall_chunks))
                   if value is not None and value != getattr(config.denoiser, field)}
        if changes:
            initial, config, added = switch_memory(initial, config, args.data_seed, **changes)
        if "memory" in changes:
            record["memory_switched_from"] = base.config.denoiser.memory
        if "recall_chunks" in changes:
            record["recall_chunks_from"] = base.config.denoiser.recall_chunks
        vae_state = base.vae.state_dict()
        if (out / "vae.safetensors").exists():
            tuned, _, record["vae"] = load_trained_vae(out)
            vae_state = tuned.state_dict()
    else:
        vae, vae_config, vae_record = load_trained_vae(out)
        vocab = VOCAB + tuple(sorted(source.words() - set(VOCAB))) if args.videos else VOCAB
        denoiser = DenoiserConfig(latent_channels=vae_config.latent_channels, memory=args.memory or "malt",
                                  width=args.width, depth=args.depth, heads=args.heads,
                                  recall_chunks=args.recall_chunks or 0)
        config = ModelConfig(vae=vae_config, text=TextConfig(vocab=vocab), denoiser=denoiser)
        vae_state, record = vae.state_dict(), {"vae": vae_record}
    settings = DenoiserTraining(seed=args.data_seed)
    changes = {k: v for k, v in (("steps", args.denoiser_steps), ("batch", args.batch), ("lr", args.lr),
                                 ("videos", args.cache_videos), ("object_weight", args.object_weight),
                                 ("remade_share", args.remade_share), ("remade_steps", args.remade_steps),
                                 ("remade_guidance", args.remade_guidance), ("remade_links", args.remade_links),
                                 ("remade_levels", args.remade_levels and tuple(args.remade_levels)),
                                 ("drifted_share", args.drifted_share), ("drift_easing", args.drift_easing),
                                 ("grad_writes", args.grad_writes),
                                 ("occlusion_grad_writes", args.occlusion_grad_writes),
                                 ("occlusion_share", args.occlusion_share), ("pillar_videos", args.pillar_videos),
                                 ("keep_bias", args.keep_bias), ("fresh_lr", args.fresh_lr),
                                 ("return_weight", args.return_weight), ("recolor_returns", args.recolor_returns))
               if v is not None}
    settings = dataclasses.replace(settings, **changes)
    record.update(command=args.command_line, run=args.started, commit=args.commit)
    path = train_denoiser(config, vae_state, source, out, settings, record, initial=initial, added=added)
    return _ship(path) if args.ship else 0


def _average(args, out: Path) -> int:
    """The fine-tune in `out` averaged with the model it started from (`--init`), written beside it as
    `averaged.safetensors`. Its record is the fine-tune's, with the fine-tune as a stage of the lineage (it
    is never shipped by itself) and the average as the run that wrote the file."""
    from .memory import load_checkpoint, save_checkpoint
    from .training.train_denoiser import average_weights
    tuned_path = out / "model.safetensors"
    if not args.init:
        raise ValueError("give --init, the model the run in --out was fine-tuned from: the average lies between the two")
    if not tuned_path.exists():
        raise ValueError(f"{tuned_path} not found: average a finished fine-tune, or write one from a run's latest "
                         f"state first (longtake train export --out {out})")
    weight = 0.5 if args.average_weight is None else args.average_weight
    started = time.monotonic()
    base, tuned = load_checkpoint(args.init), load_checkpoint(tuned_path)
    tuned.load_state_dict(average_weights(base, tuned, weight))
    record = dict(_with_own_stage(tuned.config.record), command=args.command_line, run=args.started,
                  commit=args.commit, averaged=dict(command=args.command_line, weight=weight, tuned=str(tuned_path),
                                                    base=str(args.init), seconds=round(time.monotonic() - started, 2)))
    path = out / "averaged.safetensors"
    save_checkpoint(tuned, path, config=tuned.config.replace(record=record))
    print(f"wrote {path}: {weight:g} of {tuned_path} and {1 - weight:g} of {args.init}")
    return _ship(path) if args.ship else 0


def _ship(path: Path) -> int:
    """Install a trained model as the bundled demo model, stored in float16 to keep the repository small.

    A model fine-tuned from one that carries a lineage (the stages that made it) gets its own stage added,
    so the file says how all of it was made, not only its last run."""
    import torch
    from .memory import load_checkpoint, save_checkpoint
    model = load_checkpoint(path)
    record = _with_own_stage(model.config.record)
    DEMO_MODEL.parent.mkdir(exist_ok=True)
    save_checkpoint(model, DEMO_MODEL, config=model.config.replace(record=record), dtype=torch.float16)
    print(f"shipped {DEMO_MODEL} ({DEMO_MODEL.stat().st_size / 1e6:.1f} MB, float16)")
    return 0


def _with_own_stage(record: dict) -> dict:
    """`record` with the run that wrote it as the last stage of its lineage (every run that made the model),
    added unless it is there already. Done when a model is shipped, and when a model is fine-tuned further,
    so that a run in between that was never shipped (a denoiser run, then its decoder tuned) is not lost.
    A model no training run wrote (`longtake init`) has no stage to add."""
    record = dict(record)
    if "command" not in record:
        return record
    lineage = record.get("lineage", [])
    if not lineage or not _same_run(lineage[-1], record):
        record["lineage"] = [*lineage, _stage(record)]
    return record


def _same_run(stage: dict, record: dict) -> bool:
    """Whether the lineage entry `stage` is the run that wrote `record`. A run is known by the time it
    started (the same command run again is another run); runs recorded before that was kept, by their
    command. (Not by the whole entry: its words and figures are worth mending by hand.)"""
    if "run" in stage or "run" in record:
        return stage.get("run") == record.get("run")
    return stage["command"] == record["command"]


def _commit() -> str:
    """The code's git commit, with "-dirty" where files differ from it, recorded in a trained model when its
    command starts (a resumed run records the commit of its last start). "unknown" for a copy of the
    package that is not its own git checkout, such as an install or a folder inside another repository."""
    import subprocess
    package = Path(__file__).resolve().parent
    try:
        def git(*arguments: str) -> str:
            return subprocess.run(["git", *arguments], cwd=package, capture_output=True, text=True,
                                  check=True).stdout.strip()
        if Path(git("rev-parse", "--show-toplevel")).resolve() != package:
            return "unknown"
        return git("describe", "--always", "--dirty", "--abbrev=7")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _stage(record: dict) -> dict:
    """The lineage entry of the run that wrote `record`: its command, the code's commit (the one it recorded
    when it trained; models trained before that was recorded take the present one), its time, and what it
    made (an average and a decoder fine-tune record their own command; any other run trained the denoiser,
    and with `train demo` the VAE before it)."""
    commit = record.get("commit") or _commit()
    decoder = record.get("decoder_fine_tuned", {})
    averaged = record.get("averaged", {})
    if averaged.get("command") == record["command"]:
        what = (f"weights averaged: {averaged['weight']:g} of {averaged['tuned']} and {1 - averaged['weight']:g} "
                f"of {averaged['base']}")
        seconds = averaged["seconds"]
    elif decoder.get("command") == record["command"]:
        what = (f"the VAE decoder alone, {decoder['steps']:,} steps from {decoder['from_model']}: "
                f"held-out PSNR {decoder['heldout_psnr_db']} dB")
        seconds = decoder["seconds"]
    else:
        denoiser = record["denoiser"]
        what = (f"the denoiser, {denoiser['steps']:,} steps from {record.get('fine_tuned_from', 'scratch')}: "
                f"final smoothed loss {denoiser['final_loss']}")
        seconds = denoiser["seconds"]
        vae = record.get("vae", {})
        if record["command"].split()[2:3] == ["demo"] and "seconds" in vae:
            what = f"the VAE, {vae['steps']:,} steps (held-out PSNR {vae['heldout_psnr_db']} dB), then {what}"
            seconds += vae["seconds"]
    run = {"run": record["run"]} if "run" in record else {}
    return dict(command=record["command"], **run, commit=commit, seconds=seconds, what=what)


def cmd_bench_sheet(args) -> int:
    from .bench.sheet import contact_sheet
    print(f"wrote {contact_sheet(args.video, args.out, every=args.every, columns=args.columns)}")
    return 0


def cmd_bench_speed(args) -> int:
    from .bench.speed import run_from_args
    return run_from_args(args)


def cmd_bench_memory(args) -> int:
    from .bench.memory import run_from_args
    return run_from_args(args)


def cmd_bench_seams(args) -> int:
    from .bench.seams import run_from_args
    return run_from_args(args)


def cmd_bench_quality(args) -> int:
    from .bench.quality import run_from_args
    return run_from_args(args)


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as error:
        raise UsageError(f"cannot read the prompt schedule {path}: {error.strerror}") from None


class UsageError(ValueError):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longtake", description="Minute-long text-to-video with memory.")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="print a checkpoint's config and parameter counts")
    info.add_argument("checkpoint")
    info.set_defaults(run=cmd_info)

    init = commands.add_parser("init", help="write an untrained checkpoint (a starting point for training or tests)")
    init.add_argument("out")
    init.add_argument("--memory", choices=("none", "malt", "lstm"), default="malt")
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(run=cmd_init)

    gen = commands.add_parser("generate", help="render a long video from a prompt or a prompt schedule")
    gen.add_argument("prompt", nargs="?", help='what to show, e.g. "a red ball bouncing on a black background"')
    gen.add_argument("--schedule", help="prompt schedule file: one `SECONDS: PROMPT` entry a line")
    gen.add_argument("--seconds", type=float, default=10.0, help="length of the video (default 10)")
    gen.add_argument("--fps", type=float, default=24.0, help="frames per second of the mp4 (default 24)")
    gen.add_argument("--out", default="longtake.mp4", help="mp4 to write (default longtake.mp4)")
    gen.add_argument("--checkpoint", help="a LongTake checkpoint (default: the bundled demo model)")
    gen.add_argument("--sampler", choices=("progressive", "rw", "rn"), help="default progressive")
    gen.add_argument("--steps", type=int, help="sampling steps per chunk (default 20)")
    gen.add_argument("--window-chunks", type=int, help="noisy chunks in the window (default 4)")
    gen.add_argument("--overlap", type=int, help="RW/RN: clean condition chunks (default 1)")
    gen.add_argument("--shift", type=float, help="time-grid shift (default 1)")
    gen.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 3)")
    gen.add_argument("--guidance-parallel", type=float,
                     help="share of guidance's push kept along the model's own estimate of the frame: 1 is "
                          "plain classifier-free guidance, 0 adaptive projected guidance (default 1)")
    gen.add_argument("--seed", type=int, help="random seed (default 0)")
    gen.add_argument("--context-noise", type=float, help="level clean context chunks are noised to (default 0.05)")
    gen.add_argument("--memory-strength", type=float,
                     help="factor on what the model reads from its memory slots (or LSTM state): 1 as trained, 0 "
                          "not at all (default 0.5); its last written chunks are read at --recall-strength")
    gen.add_argument("--recall-strength", type=float,
                     help="factor on what a model trained with --recall-chunks reads from its last written chunks: "
                          "1 as trained, 0 not at all (default 1)")
    gen.add_argument("--blend-chunks", type=int, default=2, help="chunks over which a prompt change fades in")
    gen.add_argument("--start", help="a video or image to continue from")
    gen.add_argument("--save-state", help="write the generation state here at the end (or on Ctrl-C)")
    gen.add_argument("--resume", help="continue from a state saved with --save-state")
    gen.add_argument("--device", default="cpu", help="torch device (default cpu)")
    gen.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    gen.add_argument("--compile", action="store_true",
                     help="compile the denoiser with torch.compile first: faster passes once every window shape "
                          "is compiled (about a minute the first time on a CPU, seconds later); on a small CPU "
                          "a whole video came out slower")
    gen.set_defaults(run=cmd_generate)

    train = commands.add_parser("train", help="train the VAE, the denoiser, or both (the demo model recipe)")
    train.add_argument("stage", choices=("vae", "denoiser", "demo", "export", "average"),
                       help="demo = vae then denoiser; export = a model from the latest saved state of a denoiser run; "
                            "average = the fine-tune in --out averaged with the model it started from (--init)")
    train.add_argument("--out", default="runs/demo", help="run folder: logs, resumable state, previews, model")
    train.add_argument("--videos", help="a folder of your own videos, each with a .txt caption beside it")
    train.add_argument("--init", help="fine-tune this LongTake checkpoint instead of starting fresh "
                       "(vae: its VAE; denoiser: its weights, with a VAE fine-tuned in --out if there is one)")
    train.add_argument("--memory", choices=("none", "malt", "lstm"),
                       help="memory of a new model (default malt); with --init, switch the model to this memory, "
                            "keeping every other weight")
    train.add_argument("--recall-chunks", type=int,
                       help="MALT also keeps the last N written chunks as they were, read by their own attention "
                            "(default 0 for a new model; with --init, adds or resizes them, keeping every other "
                            "weight)")
    train.add_argument("--width", type=int, default=128, help="denoiser width (default 128)")
    train.add_argument("--depth", type=int, default=6, help="denoiser blocks (default 6)")
    train.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    train.add_argument("--vae-steps", type=int, help="VAE training steps (default 3000)")
    train.add_argument("--vae-lr", type=float, help="peak VAE learning rate (default 1e-3; lower it to fine-tune)")
    train.add_argument("--frame-delay", type=int,
                       help="vae: frames the decoder renders late, so each latent's frames lie between it and "
                            "the one before and motion is smooth (default: the model's own, 0 for a new VAE)")
    train.add_argument("--tint-noise", type=float,
                       help="vae: the decoder also sees each latent's channels shifted as a whole by noise of up "
                            "to this share of their spread, as a denoiser gets each chunk's tint slightly wrong, so it "
                            "learns not to pass such a shift on as a jump between latents (default 0)")
    train.add_argument("--seam-weight", type=float,
                       help="vae: loss weight on the change of the reconstruction error where one latent's "
                            "frames meet the next one's, so a wrong tint is held across the seam rather than "
                            "jumping there (default 0)")
    train.add_argument("--decoder-only", action="store_true",
                       help="vae with --init: fine-tune the decoder alone; the latents stay the same, so the "
                            "result is the whole model with the new decoder (model.safetensors in --out)")
    train.add_argument("--denoiser-steps", type=int, help="denoiser training steps (default 3000)")
    train.add_argument("--batch", type=int, help="windows per step per process (default 16)")
    train.add_argument("--lr", type=float, help="peak denoiser learning rate (default 4e-4; lower it to fine-tune)")
    train.add_argument("--fresh-lr", type=float,
                       help="with --init: peak learning rate of the weights the fine-tune adds (a memory switched "
                            "or --recall-chunks added), which start from nothing (default: --lr)")
    train.add_argument("--cache-videos", type=int, help="videos encoded into the latent cache (default 600)")
    train.add_argument("--object-weight", type=float,
                       help="denoiser: extra loss weight on latent pixels far from the background, i.e. objects "
                            "and pillars (default 0: every pixel alike)")
    train.add_argument("--remade-share", type=float,
                       help="denoiser: share of windows whose clean front chunk the model makes itself from the "
                            "noised truth, as sampling shows it its own chunks (default 0.3)")
    train.add_argument("--remade-levels", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help="denoiser: the noise levels those front chunks are made from (default 0.05 0.4; "
                            "1 1 makes them from pure noise, as sampling does)")
    train.add_argument("--remade-steps", type=int,
                       help="denoiser: Euler steps that make such a front chunk (default 1)")
    train.add_argument("--remade-guidance", type=float,
                       help="denoiser: guidance scale while making such a front chunk (default 1: none; the "
                            "sampler's default is 3)")
    train.add_argument("--remade-links", type=int,
                       help="denoiser: chunks remade in a row, each after the one remade before it, ending with "
                            "the front chunk, so it is made after the model's own chunks (default 1: the front alone)")
    train.add_argument("--drifted-share", type=float,
                       help="denoiser, demo world only: share of windows with a clean front chunk whose memory "
                            "and front show the video drifted (objects resized, faded and blurred, the pillar "
                            "widened) while the target stays true, so the model learns to pull a drifting video "
                            "back (default 0)")
    train.add_argument("--drift-easing", type=int,
                       help="denoiser, with --drifted-share: the window's first this-many noisy chunks show the "
                            "drift easing back to the truth by equal steps, so the model learns to pull back "
                            "gradually rather than jump at the front (default 0: the truth right after the front)")
    train.add_argument("--grad-writes", type=int,
                       help="denoiser: the last this-many memory writes before a window that gradients flow "
                            "through (default 2); up to 14 teaches the memory to keep what it saw many writes "
                            "ago, as an object hidden behind the pillar needs, at that many times the memory's cost")
    train.add_argument("--occlusion-grad-writes", type=int,
                       help="denoiser: as --grad-writes, for the windows where an object comes back from behind "
                            "the pillar, whose write that saw it lies 8 or more writes back (default: --grad-writes)")
    train.add_argument("--occlusion-share", type=float,
                       help="denoiser: share of windows where an object comes back from behind the pillar, the "
                            "windows that teach the memory (default 0.25)")
    train.add_argument("--pillar-videos", type=int,
                       help="denoiser: draw those windows from this many more demo-world videos, each with a "
                            "pillar, encoded once beside the main cache (default 0: from the main cache's few "
                            "returns, which a model learns by heart instead of learning to read its memory)")
    train.add_argument("--keep-bias", type=float,
                       help="denoiser, MALT memory: added to every memory keep gate's logit before training, so "
                            "each write keeps more of what the slots held and the memory lasts longer (default 0)")
    train.add_argument("--return-weight", type=float,
                       help="denoiser: extra loss weight, in the windows where an object comes back from behind "
                            "the pillar, on the returning object's own latents, found from the world's render "
                            "(its place and color only memory knows; default 0)")
    train.add_argument("--recolor-returns", action="store_true", default=None,
                       help="denoiser: in the windows where an object comes back from behind the pillar, show it "
                            "in another object's color in the noisy input (its own stays the target), so that "
                            "its color has to come from memory")
    train.add_argument("--data-seed", type=int, default=0,
                       help="seed of the demo world's videos and of the training's draws (default 0; "
                            "the demo world's held-out VAE clips use the next seed)")
    train.add_argument("--average-weight", type=float,
                       help="average: the fine-tune's share of the averaged weights, the rest from --init (default "
                            "0.5)")
    train.add_argument("--ship", action="store_true", help="also write the result as the bundled demo model (float16)")
    train.set_defaults(run=cmd_train)

    bench = commands.add_parser("bench", help="benchmarks, run by hand")
    benches = bench.add_subparsers(dest="bench", required=True)
    from .bench.quality import add_arguments as add_quality_arguments
    quality = benches.add_parser("quality", help="long-horizon quality of the samplers: prompt, motion, cuts, memory")
    add_quality_arguments(quality)
    quality.set_defaults(run=cmd_bench_quality)
    from .bench.speed import add_arguments as add_speed_arguments
    speed = benches.add_parser("speed", help="wall time, peak memory and FLOPs against video length")
    add_speed_arguments(speed)
    speed.set_defaults(run=cmd_bench_speed)
    from .bench.memory import add_arguments as add_memory_arguments
    probe = benches.add_parser("memory", help="whether the memory slots hold a hidden object's color (the write) "
                                "and whether the window draws the object back from them (the read)")
    add_memory_arguments(probe)
    probe.set_defaults(run=cmd_bench_memory)
    from .bench.seams import add_arguments as add_seams_arguments
    seams = benches.add_parser("seams", help="one model's sampled latents through several decoders: cuts and "
                                             "jumps where latents meet, and the clip measures")
    add_seams_arguments(seams)
    seams.set_defaults(run=cmd_bench_seams)
    sheet = benches.add_parser("sheet", help="a contact sheet PNG: a frame every few seconds of a video")
    sheet.add_argument("video")
    sheet.add_argument("--out", default="sheet.png")
    sheet.add_argument("--every", type=float, default=5.0, help="seconds between frames (default 5)")
    sheet.add_argument("--columns", type=int, default=6)
    sheet.set_defaults(run=cmd_bench_sheet)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = "longtake " + " ".join(argv)  # recorded in the models that training writes
    if args.command == "train":  # the run as it starts: when, and with which code
        args.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        args.commit = _commit()
    try:
        return args.run(args)
    except (ValueError, OSError) as error:  # our own errors say what is wrong and how to fix it
        print(f"longtake: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
