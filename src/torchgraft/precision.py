"""Which floating-point precision a device computes in, decided from what the device is.

`choose_precision` is a pure function of a `DeviceProperties`, so the decision for a T4, a
V100, an A100 or an H100 is testable on a machine without any of them:
- bf16 autocast on GPUs with native bf16 (compute capability 8.0 and up: A100, RTX 30xx,
  H100). Below that torch still says bf16 is "supported", but emulates it (slowly).
- fp16 autocast with a gradient scaler on older GPUs (T4, V100): their tensor cores are fp16.
- fp32 on the CPU and on Apple's MPS. A CPU only gains from bf16 with native bf16 matrix
  units (AMX); on the 2-core AVX2 development machine a fine-tune step of EfficientNet-Lite0
  at 64 px took 0.33 s under bf16 autocast against 0.146 s in fp32, so bf16 on a CPU is
  there only when asked for.

Low in the import order (torch, `config` and `errors` only): training, evaluation and
serving share it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Any

import torch

from torchgraft.config import PRECISIONS
from torchgraft.errors import UserError

logger = logging.getLogger(__name__)

NATIVE_BF16_CAPABILITY = (8, 0)  # Ampere and later compute bf16 in their tensor cores
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DeviceProperties:
    """What the precision decision needs to know about a device."""

    type: str  # "cpu", "cuda" or "mps"
    name: str = ""  # e.g. "Tesla T4"
    capability: tuple[int, int] | None = None  # CUDA compute capability, e.g. (7, 5)

    @classmethod
    def of(cls, device: torch.device) -> DeviceProperties:
        if device.type == "cuda":
            properties = torch.cuda.get_device_properties(device)
            return cls("cuda", properties.name, (properties.major, properties.minor))
        return cls(device.type, device.type)

    @property
    def native_bf16(self) -> bool:
        return self.capability is not None and self.capability >= NATIVE_BF16_CAPABILITY


@functools.cache  # asked by several stages of one run: its warning is said once
def choose_precision(requested: str, device: DeviceProperties) -> str:
    """bf16, fp16 or fp32 for `requested` (one of PRECISIONS) on `device`."""
    if requested not in PRECISIONS:
        raise UserError(f"precision {requested!r}: choose {', '.join(PRECISIONS)}")
    if requested == "fp16" and device.type != "cuda":
        raise UserError(
            f"--precision fp16 needs an NVIDIA GPU; on {device.type} float16 has no fast "
            "kernels and no gradient scaler. Use --precision fp32 (or bf16), or auto."
        )
    if requested == "bf16" and device.type == "cuda" and not device.native_bf16:
        logger.warning(
            "%s has no native bf16 (compute capability %s): torch emulates it, slowly; "
            "--precision fp16 (or auto) uses its fp16 tensor cores",
            device.name, device.capability,
        )  # fmt: skip
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if device.native_bf16 else "fp16"
    return "fp32"


def precision_for(requested: str, device: torch.device) -> str:
    """`choose_precision` for a real device."""
    return choose_precision(requested, DeviceProperties.of(device))


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast region for a chosen precision (no region at all for fp32)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def gradient_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def trained_on(device: torch.device, precision: str) -> dict[str, str]:
    """What graft.json records about the hardware a run trained on."""
    return {"device": str(device), "device_name": DeviceProperties.of(device).name,
            "precision": precision}  # fmt: skip
