"""The five LongTake nodes: thin adapters from ComfyUI's inputs to `memory/` and `samplers/`.

Node ids, input names and widget order are public once a workflow is shipped: add inputs at the end,
never rename or reorder. Types passed between our nodes:
- `LONGTAKE_MODEL`: a `LoadedModel` (the model, where it runs, ComfyUI's handle on it);
- `LONGTAKE_SAMPLER`: `SamplerSettings`;
- `LONGTAKE_MEMORY`: a `MemoryInput` (where a video stands, and where to save where it ends);
- `LATENT`: `{"samples": [1, C, T, h, w], "longtake": {...}}`, the latents of whole chunks, with the frame
  count, the fps and the latents just before them (so a continuation decodes without a seam).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import comfy

BUNDLED = "demo (bundled)"
CATEGORY = "LongTake"
MAX_SEED = 0xFFFFFFFFFFFFFFFF
# SamplerSettings' default and samplers.loop.MAX_MEMORY_STRENGTH (a test holds them equal), without importing torch
MEMORY_STRENGTH, MAX_MEMORY_STRENGTH = 0.5, 2.0
GUIDANCE_PARALLEL = RECALL_STRENGTH = 1.0  # SamplerSettings' defaults too (the same test)


@dataclass
class LoadedModel:
    model: object             # LongTakeModel
    device: object            # torch.device it samples on
    patcher: object = None    # ComfyUI ModelPatcher, when inside ComfyUI
    compile: bool = False     # compile the denoiser the first time it is needed

    def ready(self):
        """The model on its device, after ComfyUI has made room for it."""
        comfy.load_onto_device(self.patcher)
        if self.model.device != self.device:
            self.model.to(self.device)
        if self.compile:  # on its device, so that the check pass tries the compiler that will be used
            self.compile = False
            try:
                self.model.compile_denoiser()
            except RuntimeError as error:
                raise RuntimeError(f"{error}; set compile to false in Load Long Video Model") from None
        return self.model


@dataclass
class MemoryInput:
    state: object = None      # samplers.loop.GenerationState, or None for a fresh memory
    save_as: str = ""         # state name in the output folder's longtake_states/, or "" for no file


def _out_of_range(cls, **values) -> str | None:
    """ComfyUI skips its own min/max checks for inputs a VALIDATE_INPUTS takes, so those check here."""
    spec = {**cls.INPUT_TYPES()["required"], **cls.INPUT_TYPES().get("optional", {})}
    for name, value in values.items():
        options = spec[name][1]
        if not options["min"] <= value <= options["max"]:
            return f"{name} is {value}; it must lie between {options['min']} and {options['max']}"
    return None


def _bundled_path() -> Path:
    from ..cli import DEMO_MODEL
    return DEMO_MODEL


class LongTakeLoadModel:
    DESCRIPTION = ("Loads a LongTake long-video model: the bundled demo model, or a checkpoint you put in "
                   "ComfyUI's models/longtake/ folder.")
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("LONGTAKE_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model, for Memory State, Segment Loop and Decode Chunks.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "checkpoint": ([BUNDLED] + comfy.model_files(), {
                "tooltip": "Which model: the bundled demo (64x64, trained on simple shapes and colours), or a "
                           ".safetensors file from models/longtake/."}),
            "device": (["auto", "cpu"], {
                "default": "auto",
                "tooltip": "auto: ComfyUI's GPU when there is one (moved off again when memory is needed); "
                           "cpu: always the CPU."}),
            "dtype": (["float32", "float16", "bfloat16"], {
                "default": "float32",
                "tooltip": "Precision of the weights while sampling. float16/bfloat16 halve memory on a GPU; "
                           "on a CPU float32 is usually fastest."}),
        }, "optional": {  # optional, so that API workflows written before it still run
            "compile": ("BOOLEAN", {
                "default": False,
                "tooltip": "Compile the denoiser with torch.compile when it first runs: faster passes once each "
                           "window shape is compiled (about a minute the first time, seconds later: torch caches "
                           "it); on a 2-core CPU a whole video came out slower. Needs a C++ compiler on a CPU, Triton "
                           "on a GPU."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, checkpoint):
        if checkpoint == BUNDLED:
            return True if _bundled_path().exists() else (
                f"the bundled demo model is missing ({_bundled_path()}); reinstall LongTake")
        try:
            from ..memory.checkpoint import read_config
            read_config(comfy.model_path(checkpoint))
        except Exception as error:  # show the artist why, not a traceback
            return str(error)
        return True

    def load(self, checkpoint, device, dtype, compile=False):
        import torch
        from ..memory.checkpoint import load_checkpoint
        path = _bundled_path() if checkpoint == BUNDLED else comfy.model_path(checkpoint)
        model = load_checkpoint(path).to(getattr(torch, dtype)).eval()
        load_device, offload_device = comfy.devices(device)
        return (LoadedModel(model, load_device, comfy.managed(model, load_device, offload_device), compile),)


class LongTakeMemoryState:
    DESCRIPTION = ("Where a video starts: a fresh memory, or the saved end of an earlier run to continue it. "
                   "Name a state in save_as to save where this run ends, so a later run can continue.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LONGTAKE_MEMORY",)
    RETURN_NAMES = ("memory",)
    OUTPUT_TOOLTIPS = ("The memory for Segment Loop.",)
    FUNCTION = "memory"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("LONGTAKE_MODEL", {"tooltip": "The model the state belongs to."}),
            "start_from": (["fresh"] + comfy.state_files(), {
                "default": "fresh",
                "tooltip": "fresh: a new video. Otherwise a state saved by an earlier run (in the output "
                           "folder's longtake_states/): the video continues exactly where that run ended, with "
                           "that run's sampler settings."}),
            "save_as": ("STRING", {
                "default": "",
                "tooltip": "Name to save where this run ends (output/longtake_states/<name>.safetensors), also "
                           "when it is cancelled; it replaces an older state of that name. Empty: do not save."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, start_from, save_as):
        try:
            if save_as.strip():
                comfy.state_path(save_as.strip())
            if start_from != "fresh" and not comfy.state_path(start_from).exists():
                return f"saved state {start_from!r} is not in output/{comfy.STATE_FOLDER}/ any more"
        except ValueError as error:
            return str(error)
        return True

    def memory(self, model, start_from, save_as):
        from ..samplers.loop import load_state
        state = None
        if start_from != "fresh":
            state = load_state(comfy.state_path(start_from), model.model)
        return (MemoryInput(state, save_as.strip()),)


class LongTakeProgressiveSampler:
    DESCRIPTION = ("How the video is sampled. progressive (PA-VDM): every chunk in the window at its own noise "
                   "level, so chunks finish one by one. rw / rn: blocks of chunks at one level, for comparison.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LONGTAKE_SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("Sampler settings for Segment Loop.",)
    FUNCTION = "settings"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mode": (["progressive", "rw", "rn"], {
                "default": "progressive",
                "tooltip": "progressive: smooth, no cuts. rw: blocks re-noising their context (tends to go "
                           "still). rn: blocks with clean context (tends to cut)."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 200, "step": 1,
                              "tooltip": "Denoising steps every chunk goes through. For progressive, a multiple "
                                         "of window_chunks."}),
            "window_chunks": ("INT", {"default": 4, "min": 1, "max": 16, "step": 1,
                                      "tooltip": "Noisy chunks in the window (8 frames each)."}),
            "overlap": ("INT", {"default": 1, "min": 0, "max": 8, "step": 1,
                                "tooltip": "rw/rn only: clean chunks each block is conditioned on."}),
            "shift": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.05,
                                "tooltip": "Time-grid shift: above 1 spends more steps at high noise."}),
            "guidance": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 20.0, "step": 0.1,
                                   "tooltip": "How strongly the prompt steers (classifier-free guidance); 1 is off."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                             "tooltip": "Random seed: the same seed and settings give the same video."}),
        }, "optional": {  # optional, so that API workflows written before it still run
            "memory_strength": ("FLOAT", {
                "default": MEMORY_STRENGTH, "min": 0.0, "max": MAX_MEMORY_STRENGTH, "step": 0.05,
                "tooltip": "How much the model reads from its memory of what left the view: 1 as trained, 0 not "
                           "at all. The demo model keeps its objects best at 0.5. (A model that also keeps its "
                           "last few chunks as they were reads them at recall_strength.)"}),
            "guidance_parallel": ("FLOAT", {
                "default": GUIDANCE_PARALLEL, "min": 0.0, "max": 1.0, "step": 0.05,
                "tooltip": "How much of guidance's push may make what the model draws anyway stronger: 1 is "
                           "plain classifier-free guidance; lower keeps objects from swelling in the first "
                           "seconds of two-object scenes, and over a minute can lose the background elsewhere."}),
            "recall_strength": ("FLOAT", {
                "default": RECALL_STRENGTH, "min": 0.0, "max": MAX_MEMORY_STRENGTH, "step": 0.05,
                "tooltip": "How much a model trained to recall its last few chunks reads from them (a model "
                           "without that read ignores it): 1 as trained, 0 not at all. It is how such a model "
                           "brings an object that went behind something back in its own color."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, mode, steps, window_chunks, overlap, shift, guidance, seed,
                        memory_strength=MEMORY_STRENGTH, guidance_parallel=GUIDANCE_PARALLEL,
                        recall_strength=RECALL_STRENGTH):
        problem = _out_of_range(cls, steps=steps, window_chunks=window_chunks, overlap=overlap, shift=shift,
                                guidance=guidance, seed=seed, memory_strength=memory_strength,
                                guidance_parallel=guidance_parallel, recall_strength=recall_strength)
        if problem:
            return problem
        try:
            cls._settings(mode, steps, window_chunks, overlap, shift, guidance, seed, memory_strength,
                          guidance_parallel, recall_strength).check()
        except ValueError as error:
            return str(error)
        return True

    def settings(self, mode, steps, window_chunks, overlap, shift, guidance, seed, memory_strength=MEMORY_STRENGTH,
                 guidance_parallel=GUIDANCE_PARALLEL, recall_strength=RECALL_STRENGTH):
        settings = self._settings(mode, steps, window_chunks, overlap, shift, guidance, seed, memory_strength,
                                  guidance_parallel, recall_strength)
        settings.check()
        return (settings,)

    @staticmethod
    def _settings(mode, steps, window_chunks, overlap, shift, guidance, seed, memory_strength, guidance_parallel,
                  recall_strength):
        from ..samplers.loop import SamplerSettings
        return SamplerSettings(mode=mode, steps=steps, window_chunks=window_chunks, overlap=overlap, shift=shift,
                               guidance=guidance, seed=seed, memory_strength=memory_strength,
                               guidance_parallel=guidance_parallel, recall_strength=recall_strength)


class LongTakeSegmentLoop:
    DESCRIPTION = ("Makes the video: chunk after chunk, following the prompt schedule, with memory of what "
                   "left the view. Cancel stops within a step and keeps what was made (it is decoded and saved).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT", "LONGTAKE_MEMORY")
    RETURN_NAMES = ("latents", "memory")
    OUTPUT_TOOLTIPS = ("The video's latents, for Decode Chunks.",
                       "Where the video ends: feed it to another Segment Loop to continue in the same graph.")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("LONGTAKE_MODEL", {"tooltip": "From Load Long Video Model."}),
            "sampler": ("LONGTAKE_SAMPLER", {"tooltip": "From Progressive Sampler. A continued state keeps the "
                                                        "settings it was made with."}),
            "memory": ("LONGTAKE_MEMORY", {"tooltip": "From Memory State, or the memory of an earlier Segment Loop."}),
            "prompts": ("STRING", {
                "multiline": True, "default": "a red ball bouncing on a black background",
                "tooltip": "One prompt, or a schedule with one 'SECONDS: prompt' line per change, e.g.\n"
                           "0: a red ball bouncing on a black background\n20: a blue square moving left on a "
                           "white background"}),
            "seconds": ("FLOAT", {"default": 60.0, "min": 0.5, "max": 3600.0, "step": 0.5,
                                  "tooltip": "Length of this segment in seconds."}),
            "fps": ("FLOAT", {"default": 24.0, "min": 1.0, "max": 60.0, "step": 1.0,
                              "tooltip": "Frames per second (the demo model was trained at 24)."}),
        }, "optional": {
            "start_frames": ("IMAGE", {"tooltip": "Frames to continue from (any size: centre-cropped and resized "
                                                  "to the model's). Leave empty to start from the prompt."}),
            "blend_seconds": ("FLOAT", {"default": 0.67, "min": 0.0, "max": 10.0, "step": 0.01,
                                        "tooltip": "How long a prompt change takes to fade in."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, prompts, seconds, fps):
        from ..samplers.prompts import PromptSchedule, ScheduleError
        try:
            PromptSchedule.parse(prompts)
        except ScheduleError as error:
            return f"prompt schedule: {error}"
        problem = _out_of_range(cls, seconds=seconds, fps=fps)
        if problem:
            return problem
        if round(seconds * fps) < 1:
            return f"{seconds} s at {fps} fps is less than one frame"
        return True

    def run(self, model, sampler, memory, prompts, seconds, fps, start_frames=None, blend_seconds=0.67):
        import torch
        from ..samplers.loop import LongVideo
        net = model.ready()
        if start_frames is not None and memory.state is not None:
            raise ValueError("Segment Loop got both start frames and a saved state to continue: use one "
                             "(disconnect start_frames, or set Memory State to fresh)")
        start = None if start_frames is None else _start_pixels(start_frames, net.config.resolution)
        blend_chunks = round(blend_seconds * fps / net.config.frames_per_chunk)
        progress = comfy.Progress(1)
        preview = Preview(net)
        video = LongVideo(net, prompts, seconds, fps, sampler, start=start, resume=memory.state,
                          blend_chunks=blend_chunks, resumable=True,
                          progress=lambda p: progress.update(p.step, preview.image()),
                          cancel=comfy.interrupted)
        progress.total = video.total_steps
        chunks = []
        try:
            for latents in video.latents():
                chunks.append(latents.float().cpu())
                preview.add(latents)
        finally:
            if memory.save_as:  # also after a cancel or an error: the state continues what was made
                video.save_state(comfy.state_path(memory.save_as))
        if video.cancelled:
            comfy.clear_interrupt()
        context = None if video.context is None else video.context.float().cpu()
        made = len(chunks) * net.config.frames_per_chunk - video.seam_frames
        frames = max(0, min(made, round(seconds * fps)))
        samples = torch.cat(chunks, dim=2) if chunks else torch.zeros(1, net.config.denoiser.latent_channels, 0,
                                                                      net.config.denoiser.latent_size,
                                                                      net.config.denoiser.latent_size)
        latent = {"samples": samples, "longtake": {"frames": frames, "fps": fps, "context": context,
                                                   "skip": video.seam_frames}}
        return (latent, MemoryInput(video.state(), ""))


class LongTakeDecodeChunks:
    DESCRIPTION = ("Turns LongTake latents into frames, a chunk at a time. With save_mp4 on, the frames stream "
                   "straight into an mp4 in the output folder and are never all in memory at once.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "VIDEO")
    RETURN_NAMES = ("images", "video")
    OUTPUT_TOOLTIPS = ("All frames (with save_mp4 on: only the last frame, e.g. to continue from it).",
                       "The video, for core Save Video or Preview.")
    OUTPUT_NODE = True
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("LONGTAKE_MODEL", {"tooltip": "The model that made the latents (its VAE decodes them)."}),
            "latents": ("LATENT", {"tooltip": "From Segment Loop."}),
            "save_mp4": ("BOOLEAN", {"default": True,
                                     "tooltip": "Stream the frames into an mp4 in the output folder."}),
            "filename_prefix": ("STRING", {"default": "LongTake/video",
                                           "tooltip": "Where the mp4 goes, inside the output folder."}),
            "crf": ("INT", {"default": 18, "min": 0, "max": 51, "step": 1,
                            "tooltip": "H.264 quality: lower is better and larger; 18 looks lossless."}),
        }}

    def decode(self, model, latents, save_mp4, filename_prefix, crf):
        import torch
        from ..samplers.video import Mp4Writer, to_uint8_frames
        info = latents.get("longtake")
        if info is None:
            raise ValueError("Decode Chunks takes the latents of a LongTake Segment Loop, not another model's")
        net = model.ready()
        samples, fps, frames = latents["samples"], info["fps"], info["frames"]
        per_chunk = net.config.denoiser.chunk_frames
        device, dtype = net.device, next(net.vae.parameters()).dtype
        cache = None
        with torch.no_grad():
            if info["context"] is not None:
                _, cache = net.vae.decode(info["context"].to(device, dtype), cache)

            def pieces():
                nonlocal cache
                left, skip = frames, info.get("skip", 0)  # frames that show the start video again
                for first in range(0, samples.shape[2], per_chunk):
                    if left <= 0:
                        return
                    pixels, cache = net.vae.decode(samples[:, :, first:first + per_chunk].to(device, dtype), cache)
                    pixels, skip = pixels[0, :, skip:skip + left].float().clamp(-1, 1).cpu(), 0
                    left -= pixels.shape[1]
                    yield pixels.permute(1, 2, 3, 0).add(1).div(2)  # [n, H, W, 3] in [0, 1]

            if not save_mp4:
                images = torch.cat(list(pieces()))
                return (images, comfy.video_from_images(images, fps))
            path, file, subfolder = comfy.next_video_path(filename_prefix)
            last = None
            with Mp4Writer(path, fps, crf=crf) as writer:
                for images in pieces():
                    writer.write(to_uint8_frames(images.permute(3, 0, 1, 2) * 2 - 1))
                    last = images[-1:]
        size = net.config.resolution
        last = last if last is not None else torch.zeros(1, size, size, 3)
        return {"ui": {"images": [{"filename": file, "subfolder": subfolder, "type": "output"}], "animated": (True,)},
                "result": (last, comfy.video_from_file(path, fps, writer.frames_written))}


class Preview:
    """The newest frame for the progress bar, decoded with a running decoder cache of its own."""

    def __init__(self, model):
        self.model, self.cache, self.latest = model, None, None

    def add(self, latents) -> None:
        if not comfy.inside_comfyui():
            return
        pixels, self.cache = self.model.vae.decode(latents, self.cache)
        self.latest = pixels[0, :, -1]

    def image(self):
        if self.latest is None:
            return None
        from PIL import Image
        frame = ((self.latest.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(frame)


def _start_pixels(images, size: int):
    """ComfyUI `IMAGE [N, H, W, 3]` in [0, 1] to start frames `[3, N, size, size]` in [-1, 1]:
    centre-cropped to a square, then resized."""
    import torch.nn.functional as F
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"start_frames must be an IMAGE batch [frames, height, width, 3], got {tuple(images.shape)}")
    height, width = images.shape[1:3]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = images[:, top:top + side, left:left + side].permute(0, 3, 1, 2).float()
    if side != size:
        square = F.interpolate(square, size=(size, size), mode="area" if side > size else "bilinear")
    return (square * 2 - 1).clamp(-1, 1).permute(1, 0, 2, 3)


NODE_CLASS_MAPPINGS = {
    "LongTakeLoadModel": LongTakeLoadModel,
    "LongTakeMemoryState": LongTakeMemoryState,
    "LongTakeProgressiveSampler": LongTakeProgressiveSampler,
    "LongTakeSegmentLoop": LongTakeSegmentLoop,
    "LongTakeDecodeChunks": LongTakeDecodeChunks,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LongTakeLoadModel": "Load Long Video Model",
    "LongTakeMemoryState": "Memory State",
    "LongTakeProgressiveSampler": "Progressive Sampler",
    "LongTakeSegmentLoop": "Segment Loop",
    "LongTakeDecodeChunks": "Decode Chunks",
}
