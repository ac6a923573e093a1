"""The exponential moving average of the weights that whole-network phases score."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

TensorList = tuple[torch.Tensor, ...] | list[torch.Tensor]


def make_ema(model: nn.Module, decay: float) -> Any:
    """An exponential moving average of weights and buffers, with the decay warmed up.

    A fixed decay from the first step would keep the average near the starting point for
    ~1/(1-decay) steps (BatchNorm statistics especially), so early epochs would score an
    untrained network. As in timm and Ultralytics, the decay ramps up: min(decay, (1+n)/(10+n)).
    The update is a few fused (foreach) operations over all tensors, with the decay computed
    on the device: per-tensor updates, or reading the step count into Python, would cost a
    GPU hundreds of small kernels and a host sync every step.
    """
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel

    @torch.no_grad()
    def average(averaged: TensorList, current: TensorList, count: torch.Tensor | int) -> None:
        if not torch.is_floating_point(averaged[0]):  # counters such as num_batches_tracked
            torch._foreach_copy_(averaged, current)
            return
        n = torch.as_tensor(count, device=averaged[0].device)
        step_decay = torch.clamp((1.0 + n) / (10.0 + n), max=decay).to(averaged[0].dtype)
        torch._foreach_mul_(averaged, step_decay)
        torch._foreach_add_(averaged, torch._foreach_mul(current, 1.0 - step_decay))

    return AveragedModel(model, multi_avg_fn=average, use_buffers=True)
