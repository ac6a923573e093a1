"""Choosing and checking a device before anything is put on it: a typo or a missing GPU is a
message that says what to choose, not a traceback from deep inside torch.

Every stage (train, evaluate, explain, predict, benchmark, serve) takes `--device`, `auto`
by default: the GPU when there is one, so a model trained on a GPU is scored there too.
Low in the import order (it needs only torch and `errors`), so serving can use it without
importing the training code.
"""

from __future__ import annotations

import os

import torch

from torchgraft.errors import UserError, did_you_mean

DEVICE_TYPES = ("cpu", "cuda", "mps")
AUTO = "auto"


def resolve_device(device: str | torch.device = AUTO) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; any other name must exist here."""
    if str(device) == AUTO:
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    return check_device(device)


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device that exists on this machine, or a UserError."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in DEVICE_TYPES:
        name = str(device)
        # "gpu" is one letter from "cpu", but whoever types it means an NVIDIA GPU
        is_gpu = name.lower() == "gpu"
        hint = " Did you mean 'cuda'?" if is_gpu else did_you_mean(name, DEVICE_TYPES)
        choices = ", ".join((AUTO, *DEVICE_TYPES))
        raise UserError(f"device {name!r}: choose {choices}.{hint}")
    if resolved.type == "cuda":
        _check_cuda(resolved)
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{resolved}: torch sees no Apple GPU (MPS) here; use cpu")
    return resolved


def _check_cuda(device: torch.device) -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise UserError(
            f"{device}: torch sees no CUDA device here; use cpu (or install a CUDA build of "
            "torch on a machine with an NVIDIA GPU)"
        )
    if device.index is not None and device.index >= count:
        raise UserError(f"{device}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the OS has one)."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return max(1, len(usable) if usable else os.cpu_count() or 1)
