"""LongTake checkpoints: one `.safetensors` file holding every part and the config that built it.

Tensor names carry their part as prefix (`vae.`, `text.`, `denoiser.`). The header's `__metadata__`
holds `longtake_format` (the version below) and `longtake_config` (the ModelConfig as JSON). Loading
reads the header first and checks it against the file, so a bad file fails with a message naming the
file and the problem instead of a stack trace from deep inside a parser. No pickle anywhere.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from .config import FORMAT_VERSION, ModelConfig
from .model import LongTakeModel

FORMAT_KEY = "longtake_format"
CONFIG_KEY = "longtake_config"
MAX_HEADER_BYTES = 100 * 1024 * 1024


class CheckpointError(ValueError):
    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


def read_header(path: str | os.PathLike) -> dict:
    """The safetensors header of `path`, checked against the file's real size."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "no such file")
    if not path.is_file():
        raise CheckpointError(path, "is not a file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(path, f"is not a safetensors file (only {size} bytes long)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(path, "is not a safetensors file (its first 8 bytes do not give a valid header length); "
                                        "was it saved by another program, or cut short?")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(path, "is not a safetensors file (its header is not valid JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "is not a safetensors file (its header is not a JSON object)")
    data_end = max((entry["data_offsets"][1] for name, entry in header.items()
                    if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry), default=0)
    if 8 + header_len + data_end > size:
        raise CheckpointError(path, f"is truncated: its header promises {8 + header_len + data_end} bytes, "
                                    f"the file has {size}; copy or download it again")
    return header


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig stored in a checkpoint, without reading its tensors."""
    return _read_metadata(path)[0]


def _read_metadata(path: str | os.PathLike) -> tuple[ModelConfig, int]:
    """The checkpoint's config and format version, checked."""
    metadata = read_header(path).get("__metadata__") or {}
    if FORMAT_KEY not in metadata or CONFIG_KEY not in metadata:
        raise CheckpointError(path, "is a safetensors file but not a LongTake checkpoint (its metadata has no "
                                    f"'{FORMAT_KEY}'/'{CONFIG_KEY}'); load it with the tool that made it")
    if metadata[FORMAT_KEY] not in {str(v) for v in range(1, FORMAT_VERSION + 1)}:
        raise CheckpointError(path, f"has LongTake format version {metadata[FORMAT_KEY]}, this LongTake reads versions 1 to "
                                    f"{FORMAT_VERSION}; update LongTake or convert the file")
    try:
        return ModelConfig.from_json(metadata[CONFIG_KEY]), int(metadata[FORMAT_KEY])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(path, f"has a config this LongTake cannot build a model from: {error}") from None


def save_checkpoint(model: LongTakeModel, path: str | os.PathLike, config: ModelConfig | None = None,
                    dtype: torch.dtype | None = None) -> None:
    """Write every part's tensors and the config (`config` overrides `model.config`, e.g. to add a record).

    `dtype` stores floating tensors in another precision (the shipped demo model uses float16 to stay
    small); loading casts them back into the model's own precision.
    """
    config = config or model.config
    tensors = {name: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).detach().contiguous().cpu()
               for name, t in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed, so an interrupted save never leaves a half file under the real name.
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata={FORMAT_KEY: str(FORMAT_VERSION), CONFIG_KEY: config.to_json()})
    os.replace(partial, path)


def upgrade_tensors(tensors: dict[str, torch.Tensor], version: int) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors under the names and shapes of the present format.

    Format 1 kept each block's self-attention query projection (`attn.q`) apart from its key-value one
    (`attn.kv`); format 2 stacks them into one (`attn.qkv`), which runs as one matrix multiply.
    """
    if version >= 2:
        return tensors
    upgraded = dict(tensors)
    for name in tensors:
        if ".attn.q." in name and name.startswith("denoiser.blocks."):
            joined = name.replace(".attn.q.", ".attn.qkv.")
            key_value = name.replace(".attn.q.", ".attn.kv.")
            if key_value in upgraded:
                upgraded[joined] = torch.cat([upgraded.pop(name), upgraded.pop(key_value)])
    return upgraded


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> LongTakeModel:
    config, version = _read_metadata(path)
    try:
        tensors = load_safetensors_bytes(Path(path).read_bytes())
    except Exception as error:  # the parser's own message says which tensor is broken
        raise CheckpointError(path, f"could not be read as safetensors: {error}") from None
    tensors = upgrade_tensors(tensors, version)
    model = LongTakeModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshapen = [f"{name} {tuple(tensors[name].shape)} (expected {tuple(t.shape)})"
                 for name, t in expected.items() if name in tensors and tensors[name].shape != t.shape]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_listing(missing)}")
    if unexpected:
        problems.append(f"tensors the config does not call for: {_listing(unexpected)}")
    if misshapen:
        problems.append(f"tensors of the wrong shape: {_listing(misshapen)}")
    if problems:
        raise CheckpointError(path, "does not match the model its config describes; " + "; ".join(problems))
    model.load_state_dict(tensors)
    return model.to(device).eval()


def _listing(items: list[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
