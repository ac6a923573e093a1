"""The training loop, written to be read top to bottom.

`train_one_epoch` and `evaluate` work on any module and any loader of (inputs, labels): the
whole network on images, or only the head on cached features. Everything optional in a step
(mixed precision, accumulation, clipping, MixUp/CutMix, an EMA) is in `StepOptions`; after
every optimizer step `after_step` hears the step's loss and may end the epoch (the schedule
is over, the time is up).

The running loss and accuracy stay on the device as tensors. Reading one (`.item()`) makes
the CPU wait for the GPU to finish every queued kernel, so it happens only when the
progress bar is redrawn (every `DISPLAY_EVERY` batches) and at the end of the epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from torchgraft.precision import autocast
from torchgraft.progress import progress

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DISPLAY_EVERY = 20  # batches between progress-bar updates (each one waits for the device)
BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step, as step hooks see it."""

    step: int  # 1-based, counted within the phase
    loss_sum: torch.Tensor  # summed training loss of the step's examples, on the device
    lr: float  # the last parameter group's (the head's) rate used by this step
    images: int  # training examples behind this step

    @property
    def loss(self) -> float:
        """Mean training loss of the step's examples (reading it waits for the device)."""
        return float(self.loss_sum) / max(self.images, 1)


AfterStep = Callable[[StepRecord], bool]  # returns True to end the epoch here


class Batches(Protocol):
    """A DataLoader, or anything sized that yields (inputs, labels) batches like one."""

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]: ...


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
    precision: str = "fp32"  # bf16 or fp16: autocast regions (precision.choose_precision)
    scaler: torch.amp.GradScaler | None = None  # loss scaling, for fp16
    channels_last: bool = False  # feed NHWC images (the model must be converted too)
    accumulate: int = 1  # batches whose gradients add up before one optimizer step
    grad_clip: float | None = None  # clip the global gradient norm to this
    batch_transform: BatchTransform | None = None  # MixUp/CutMix on (images, labels)
    ema: Any = None  # torch.optim.swa_utils.AveragedModel updated after every step
    after_step: AfterStep | None = None  # hears every step; True ends the epoch
    prepare: Callable[[nn.Module], None] | None = None  # after model.train(), e.g. BN in eval


def train_one_epoch(
    model: nn.Module,
    loader: Batches,
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
    totals = _Totals(device)
    group_loss, group_seen, steps = totals.zero(), 0, int(getattr(scheduler, "last_epoch", 0))
    complete = True
    optimizer.zero_grad(set_to_none=True)
    with progress(loader, desc=description, quiet=quiet, unit="batch") as bar:
        for index, (inputs, labels) in enumerate(bar):
            inputs, labels = _to_device(inputs, labels, device, options)
            targets = labels
            if options.batch_transform is not None:
                inputs, targets = options.batch_transform(inputs, labels)
            with autocast(device, options.precision):
                logits = model(inputs)
                loss = options.loss(logits.float(), targets)
            # Each batch's share of the step; the last group of an epoch may be smaller.
            group_start = index - index % options.accumulate
            group_size = min(options.accumulate, len(loader) - group_start)
            _backward(loss / group_size, options.scaler)
            batch_loss = totals.add(loss.detach(), logits.detach(), labels)
            group_loss, group_seen = group_loss + batch_loss, group_seen + len(labels)
            if index % DISPLAY_EVERY == 0 and not quiet:
                # refresh=False: a redraw per postfix would be a line per batch in a log.
                bar.set_postfix(totals.postfix(), refresh=False)
            last_batch = index + 1 == len(loader)
            if (index + 1) % options.accumulate and not last_batch:
                continue
            lr = float(optimizer.param_groups[-1]["lr"])
            _step(model, optimizer, scheduler, options)
            steps += 1
            record = StepRecord(steps, group_loss, lr, group_seen)
            group_loss, group_seen = totals.zero(), 0
            if options.after_step is not None and options.after_step(record):
                complete = last_batch
                break
    return totals.result(complete)


class _Totals:
    """An epoch's summed loss and correct predictions, kept on the device until read."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss, self.correct, self.seen = self.zero(), self.zero(), 0

    def zero(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float64, device=self.device)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Count one batch (`loss` its mean); returns the batch's summed loss."""
        batch_loss = loss.double() * len(labels)
        self.loss += batch_loss
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += len(labels)
        return batch_loss

    def postfix(self) -> dict[str, str]:
        seen = max(self.seen, 1)
        return {
            "loss": f"{float(self.loss) / seen:.4f}",
            "acc": f"{float(self.correct) / seen:.3f}",
        }

    def result(self, complete: bool = True) -> EpochResult:
        seen = max(self.seen, 1)
        return EpochResult(float(self.loss) / seen, float(self.correct) / seen, complete, self.seen)


def _backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (loss if scaler is None else scaler.scale(loss)).backward()


def _step(
    model: nn.Module, optimizer: Optimizer, scheduler: LRScheduler, options: StepOptions
) -> None:
    scaler = options.scaler
    if options.grad_clip is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        scaler.update()
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


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Batches,
    device: torch.device,
    options: StepOptions | None = None,
    *,
    description: str = "validate",
    quiet: bool = False,
) -> EpochResult:
    """Mean cross-entropy and accuracy of `model` on `loader`, in eval mode, no gradients."""
    options = options or StepOptions()
    model.eval()
    totals = _Totals(device)
    for inputs, labels in progress(loader, desc=description, quiet=quiet):
        inputs, labels = _to_device(inputs, labels, device, options)
        with autocast(device, options.precision):
            logits = model(inputs).float()
        totals.add(F.cross_entropy(logits, labels), logits, labels)
    return totals.result()
