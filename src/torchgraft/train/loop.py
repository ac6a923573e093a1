"""The training loop, written to be read top to bottom.

`train_one_epoch` and `evaluate` work on any module and any loader of (inputs, labels): the
whole network on images, or only the head on cached features. Everything optional in a step
(mixed precision, accumulation, clipping, MixUp/CutMix, an EMA) is in `StepOptions`; after
every optimizer step `after_step` hears the step's loss and may end the epoch (the schedule
is over, the time is up).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step, as step hooks see it."""

    step: int  # 1-based, counted within the phase
    loss: float  # mean training loss of the batches behind this step
    lr: float  # the last parameter group's (the head's) rate used by this step
    images: int  # training examples behind this step


AfterStep = Callable[[StepRecord], bool]  # returns True to end the epoch here


@dataclass
class EpochResult:
    loss: float  # mean loss over the epoch's examples
    accuracy: float  # share of examples whose top-1 prediction is right
    complete: bool = True  # False when a deadline cut the epoch short
    seen: int = 0  # examples behind the averages (to combine results across processes)


@dataclass
class StepOptions:
    """How each optimisation step is taken (defaults: plain fp32 SGD-style steps)."""

    loss: Loss = F.cross_entropy
    autocast_dtype: torch.dtype | None = None  # e.g. torch.bfloat16; None: full precision
    channels_last: bool = False  # feed NHWC images (the model must be converted too)
    accumulate: int = 1  # batches whose gradients add up before one optimizer step
    grad_clip: float | None = None  # clip the global gradient norm to this
    batch_transform: BatchTransform | None = None  # MixUp/CutMix on (images, labels)
    ema: Any = None  # torch.optim.swa_utils.AveragedModel updated after every step
    after_step: AfterStep | None = None  # hears every step; True ends the epoch
    prepare: Callable[[nn.Module], None] | None = None  # after model.train(), e.g. BN in eval


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    optimizer: Optimizer,
    scheduler: LRScheduler,
    device: torch.device,
    options: StepOptions | None = None,
    *,
    description: str = "train",
    quiet: bool = False,
) -> EpochResult:
    """One pass over `loader`: forward, loss, backward, step; the schedule steps per step."""
    options = options or StepOptions()
    model.train()
    if options.prepare is not None:
        options.prepare(model)
    total_loss, correct, seen, complete = 0.0, 0, 0, True
    group_loss, group_seen, steps = 0.0, 0, int(getattr(scheduler, "last_epoch", 0))
    optimizer.zero_grad(set_to_none=True)
    with tqdm(loader, desc=description, disable=quiet, leave=False, unit="batch") as progress:
        for index, (inputs, labels) in enumerate(progress):
            inputs, labels = _to_device(inputs, labels, device, options)
            targets = labels
            if options.batch_transform is not None:
                inputs, targets = options.batch_transform(inputs, labels)
            with _autocast(device, options.autocast_dtype):
                logits = model(inputs)
                loss = options.loss(logits.float(), targets)
            # Each batch's share of the step; the last group of an epoch may be smaller.
            group_start = index - index % options.accumulate
            group_size = min(options.accumulate, len(loader) - group_start)
            (loss / group_size).backward()
            batch_loss = loss.item() * len(labels)
            total_loss += batch_loss
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
            group_loss, group_seen = group_loss + batch_loss, group_seen + len(labels)
            progress.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
            last_batch = index + 1 == len(loader)
            if (index + 1) % options.accumulate and not last_batch:
                continue
            lr = float(optimizer.param_groups[-1]["lr"])
            _step(model, optimizer, scheduler, options)
            steps += 1
            record = StepRecord(steps, group_loss / group_seen, lr, group_seen)
            group_loss, group_seen = 0.0, 0
            if options.after_step is not None and options.after_step(record):
                complete = last_batch
                break
    return EpochResult(total_loss / max(seen, 1), correct / max(seen, 1), complete, seen)


def _step(
    model: nn.Module, optimizer: Optimizer, scheduler: LRScheduler, options: StepOptions
) -> None:
    if options.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    if options.ema is not None:
        options.ema.update_parameters(model)


def _to_device(
    inputs: torch.Tensor, labels: torch.Tensor, device: torch.device, options: StepOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = inputs.to(device, non_blocking=True)
    if options.channels_last and inputs.ndim == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, labels.to(device, non_blocking=True)


def _autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader[Any],
    device: torch.device,
    options: StepOptions | None = None,
    *,
    description: str = "validate",
    quiet: bool = False,
) -> EpochResult:
    """Mean cross-entropy and accuracy of `model` on `loader`, in eval mode, no gradients."""
    options = options or StepOptions()
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for inputs, labels in tqdm(loader, desc=description, disable=quiet, leave=False):
        inputs, labels = _to_device(inputs, labels, device, options)
        with _autocast(device, options.autocast_dtype):
            logits = model(inputs).float()
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    return EpochResult(total_loss / max(seen, 1), correct / max(seen, 1), True, seen)
