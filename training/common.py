"""What both training stages share: distributed setup, EMA, resumable training state, the loss log."""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under `torchrun` joins the process group; alone it is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return rank, world, torch.device("cpu")


def hardware() -> str:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return f"{int(os.environ.get('WORLD_SIZE', '1'))}x {name}"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


class EMA:
    """Exponential moving average of a module's parameters: the weights that get shipped."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        # Warm-up: early on the average would mostly remember the random initialisation.
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, p in module.named_parameters():
            self.shadow[name].lerp_(p.detach(), 1 - decay)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        for name, p in module.named_parameters():
            p.copy_(self.shadow[name])


def save_training_state(path: Path, module: torch.nn.Module, ema: EMA | None, optimizer: torch.optim.Optimizer,
                        progress: dict) -> None:
    """Weights, EMA, AdamW moments and progress in one safetensors file (written beside, then renamed)."""
    names = {p: name for name, p in module.named_parameters()}
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.cpu().contiguous() for k, v in ema.shadow.items()})
    for p, state in optimizer.state.items():
        for key, value in state.items():
            tensors[f"optim.{names[p]}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata={"progress": json.dumps(progress)})
    os.replace(partial, path)


def load_training_state(path: Path, module: torch.nn.Module, ema: EMA | None,
                        optimizer: torch.optim.Optimizer) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        progress = json.loads(f.metadata()["progress"])
    tensors = load_file(str(path))
    module.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        for name in ema.shadow:
            ema.shadow[name].copy_(tensors[f"ema.{name}"])
    device = next(module.parameters()).device
    for name, p in module.named_parameters():
        keys = [k for k in tensors if k.startswith(f"optim.{name}.") and k.count(".") == name.count(".") + 2]
        if keys:
            optimizer.state[p] = {k.rsplit(".", 1)[1]: tensors[k].to(device) for k in keys}
    return progress


class LossLog:
    """One JSON object a line: step, losses, learning rate, seconds since the start."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        self.started = time.monotonic()
        if not resume and path.exists():
            path.unlink()

    def write(self, **fields) -> None:
        fields["elapsed"] = round(time.monotonic() - self.started, 1)
        with open(self.path, "a") as f:
            f.write(json.dumps(fields) + "\n")


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(progress * math.pi)))
