"""Everything the nodes take from ComfyUI, in one place, with the plain stand-ins used without it.

The nodes run inside ComfyUI, where `folder_paths`, `comfy.*` and `comfy_api` exist; the tests and the
library run without them. Each function here uses the ComfyUI facility when it can be imported and
otherwise does the simplest honest thing (a folder under the working directory, no progress bar, a
video object that only knows its file), so the node classes stay the same in both worlds.
Nothing here imports torch at module level: `import longtake` must stay light.
"""
from __future__ import annotations

import os
from pathlib import Path

try:
    import folder_paths
except ImportError:  # not inside ComfyUI
    folder_paths = None

MODEL_FOLDER = "longtake"          # ComfyUI's models/longtake/
STATE_FOLDER = "longtake_states"   # under ComfyUI's output folder

if folder_paths is not None:
    folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))
    # Only safetensors: a LongTake checkpoint is never a pickle.
    paths, _ = folder_paths.folder_names_and_paths[MODEL_FOLDER]
    folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, {".safetensors"})


def inside_comfyui() -> bool:
    return folder_paths is not None


def output_directory() -> Path:
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory())
    return Path(os.environ.get("LONGTAKE_OUTPUT", "output")).resolve()


def model_files() -> list[str]:
    if folder_paths is None:
        return []
    return folder_paths.get_filename_list(MODEL_FOLDER)


def model_path(name: str) -> Path:
    if folder_paths is None:
        raise ValueError(f"no ComfyUI model folder to find {name!r} in")
    path = folder_paths.get_full_path(MODEL_FOLDER, name)
    if path is None:
        raise ValueError(f"{name!r} is not in models/{MODEL_FOLDER}/; put LongTake checkpoints (.safetensors) there "
                         "and refresh")
    return Path(path)


def state_files() -> list[str]:
    folder = output_directory() / STATE_FOLDER
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.safetensors"))


def state_path(name: str) -> Path:
    """Where the state called `name` lives, refusing names that climb out of the state folder."""
    folder = (output_directory() / STATE_FOLDER).resolve()
    path = (folder / name).resolve()
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    if folder not in path.parents:
        raise ValueError(f"state name {name!r} must stay inside the output folder's {STATE_FOLDER}/")
    return path


def next_video_path(prefix: str) -> tuple[Path, str, str]:
    """A fresh `<prefix>_00001.mp4` in the output folder: (path, file name, subfolder), as SaveVideo names them."""
    if folder_paths is not None:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, folder_paths.get_output_directory())
        file = f"{name}_{counter:05}_.mp4"
        return Path(folder) / file, file, subfolder
    root = output_directory()
    folder = (root / prefix).parent
    folder.mkdir(parents=True, exist_ok=True)
    stem, counter = Path(prefix).name, 1
    while (folder / f"{stem}_{counter:05}_.mp4").exists():
        counter += 1
    file = f"{stem}_{counter:05}_.mp4"
    return folder / file, file, str(folder.relative_to(root)) if folder != root else ""


def devices(choice: str):
    """(load device, offload device) for the Load node's device choice."""
    import torch
    if choice == "cpu":
        return torch.device("cpu"), torch.device("cpu")
    try:
        import comfy.model_management as mm
        return mm.get_torch_device(), mm.unet_offload_device()
    except ImportError:
        gpu = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        return gpu, torch.device("cpu")


def managed(model, load_device, offload_device):
    """Hand the model to ComfyUI's memory management (a ModelPatcher), as core models are; or None."""
    try:
        import comfy.model_patcher
        import torch
    except ImportError:
        return None
    holder = torch.nn.Module()  # ModelPatcher sets `.device` on what it manages; ours is a read-only property
    holder.longtake = model
    holder.device = offload_device
    return comfy.model_patcher.ModelPatcher(holder, load_device=load_device, offload_device=offload_device)


def load_onto_device(patcher) -> None:
    if patcher is not None:
        import comfy.model_management
        comfy.model_management.load_models_gpu([patcher])


def interrupted() -> bool:
    try:
        import comfy.model_management
    except ImportError:
        return False
    return comfy.model_management.processing_interrupted()


def clear_interrupt() -> None:
    """Take the Cancel as handled, so the graph goes on to decode and save what was made."""
    try:
        import comfy.model_management
    except ImportError:
        return
    comfy.model_management.interrupt_current_processing(False)


class Progress:
    """A ComfyUI progress bar over all sampling steps, with an optional preview image."""

    def __init__(self, total: int):
        try:
            import comfy.utils
            self.bar = comfy.utils.ProgressBar(total)
        except ImportError:
            self.bar = None
        self.total = total

    def update(self, step: int, preview=None) -> None:
        if self.bar is not None:
            self.bar.update_absolute(step, self.total, ("JPEG", preview, 512) if preview is not None else None)


def video_from_file(path: Path, fps: float, frames: int):
    """Core `VIDEO` for a finished mp4 (SaveVideo and the preview read it lazily)."""
    try:
        from comfy_api.input_impl import VideoFromFile
        return VideoFromFile(str(path))
    except ImportError:
        return VideoFile(path, fps, frames)


def video_from_images(images, fps: float):
    try:
        from fractions import Fraction

        from comfy_api.input_impl import VideoFromComponents
        from comfy_api.util import VideoComponents
        return VideoFromComponents(VideoComponents(images=images, frame_rate=Fraction(fps).limit_denominator(1001)))
    except ImportError:
        return VideoFrames(images, fps)


class VideoFile:
    """The `VIDEO` output without ComfyUI: where the mp4 is."""

    def __init__(self, path: Path, fps: float, frames: int):
        self.path, self.fps, self.frames = Path(path), fps, frames


class VideoFrames:
    """The `VIDEO` output without ComfyUI, when no mp4 was written: the frames themselves."""

    def __init__(self, images, fps: float):
        self.images, self.fps = images, fps
