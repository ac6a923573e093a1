"""The learning-rate range test (Leslie Smith, 2015; fastai's `lr_find`) and its plot.

`find_lr` trains for a few dozen mini-batches while raising the learning rate exponentially,
records the loss at each rate, and stops once the loss blows up. The model comes back exactly
as it went in (weights, BatchNorm statistics, train/eval mode, gradients), and so do the random
number generators and the loader's shuffling order: the training that follows is the same as
it would have been without the test. `suggest_lr` reads a rate off the curve and
`save_lr_plot` draws it. `sweep_for_training` runs it on training's fine-tune parameter
groups, with as many steps as a time budget allows (a CPU step at 224 px takes seconds).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import AdamW, Optimizer
from torch.utils.data import DataLoader

from torchgraft.artifact import atomic_write_bytes
from torchgraft.errors import GraftRuntimeError, UserError
from torchgraft.models import GraftedClassifier
from torchgraft.plotting import new_figure, to_png
from torchgraft.progress import progress
from torchgraft.train.optim import OptimizerSettings, fine_tune_groups

logger = logging.getLogger(__name__)

SMOOTHING = 0.98  # beta of the exponential moving average of the loss
TRIM_FRACTION = 0.1  # share of points ignored at each end of the curve by suggest_lr
FLAT_DROP = 0.01  # a curve whose loss falls by less than this share counts as flat
MIN_STEPS, MAX_STEPS = 10, 100  # fewer draws no curve; more adds nothing to the suggestion
PROBE_STEPS = 2  # timed before planning: the first pays one-off costs, so the second is used
BUDGET_SHARE = 0.9  # of the time left, planned for steps: a margin for a busy machine


@dataclass
class LrFindResult:
    """The curve of a learning-rate range test. Every rate is the head's (largest) rate."""

    lrs: list[float]  # the largest group's learning rate at each step
    losses: list[float]  # smoothed losses: bias-corrected exponential moving average
    raw_losses: list[float]  # each mini-batch's cross-entropy as measured
    suggestion: float  # the rate suggest_lr reads off `losses`, for the largest group
    stopped_early: bool  # the loss diverged (or stopped being finite) before the last step
    group_ratios: list[float] = field(default_factory=lambda: [1.0])  # group lr / largest lr
    budget_s: float | None = None  # sweep_for_training: the seconds the steps were planned in
    estimate_s: float | None = None  # sweep_for_training: the seconds it announced

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return dataclasses.asdict(self)


@dataclass
class _Curve:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    raw_losses: list[float] = field(default_factory=list)
    stopped_early: bool = False


def find_lr(
    model: nn.Module,
    loader: DataLoader[Any],
    device: torch.device,
    *,
    param_groups: list[dict[str, Any]] | None = None,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    steps: int = 100,
    weight_decay: float = 0.01,
    divergence: float = 4.0,
    quiet: bool = False,
) -> LrFindResult:
    """Sweep the learning rate from `start_lr` to `end_lr` and record the loss at each rate.

    AdamW trains `model` (already on `device`) with cross-entropy for `steps` mini-batches of
    `loader` (cycled when shorter), the rate rising geometrically. The loss is smoothed with
    an exponential moving average (beta 0.98, bias-corrected); the sweep stops early once the
    smoothed loss exceeds `divergence` times the best one so far, or is not finite.

    `param_groups` (default: every parameter that requires grad, in one group) may carry their
    own base rates, e.g. a backbone at lr/10 and a head at lr. Their ratios are kept: the
    swept rate is the largest group's (the head's), every group is scaled by the same factor,
    and `lrs` and `suggestion` are the head's rate; `group_ratios` gives each group's share.
    A group without "lr" runs at the swept rate. The caller's dicts are not modified.

    Afterwards the model's state_dict (weights and buffers such as BatchNorm statistics), each
    module's train/eval flag and the parameters' gradients are restored exactly, as are the
    CPU (and `device`'s) random number generators and the loader's generator.
    """
    _check_arguments(start_lr, end_lr, steps, weight_decay, divergence)
    groups, ratios = _scaled_groups(model, param_groups)
    schedule = [start_lr * (end_lr / start_lr) ** (i / (steps - 1)) for i in range(steps)]
    with _restored(model, loader, device):
        optimizer = AdamW(groups, lr=start_lr, weight_decay=weight_decay)
        curve = _sweep(model, loader, device, optimizer, ratios, schedule, divergence, quiet)
    if not curve.lrs:
        raise GraftRuntimeError(
            f"the loss was not finite on the first batch (lr={start_lr:g}): check the model "
            "and the data (NaN pixels, labels outside 0..num_classes-1)."
        )
    suggestion = suggest_lr(curve.lrs, curve.losses)
    logger.info(
        "lr finder: %d steps%s, suggested lr %.3g",
        len(curve.lrs),
        " (stopped early: the loss diverged)" if curve.stopped_early else "",
        suggestion,
    )
    return LrFindResult(
        curve.lrs, curve.losses, curve.raw_losses, suggestion, curve.stopped_early, ratios
    )


@dataclass(frozen=True)
class SweepPlan:
    """How many steps a time budget allows, from the measured time of a step."""

    steps: int  # steps of the sweep, MIN_STEPS..MAX_STEPS
    seconds_per_step: float  # measured (the last probe step: one-off costs excluded)
    estimate_s: float  # from the start of the call to the end of the sweep
    budget_s: float  # the seconds allowed, counted from the start of the call
    fits: bool  # False: even MIN_STEPS overrun the budget (run anyway: no curve otherwise)


def sweep_for_training(
    model: GraftedClassifier,
    loader: DataLoader[Any],
    device: torch.device,
    settings: OptimizerSettings,
    *,
    budget_s: float,
    quiet: bool,
    clock: Callable[[], float] = time.perf_counter,
) -> LrFindResult:
    """`find_lr` on training's fine-tune groups, with as many steps as `budget_s` allows.

    The groups are `fine_tune_groups(model, settings, lr=1.0)`, the ones fine-tuning builds
    (layer decay and no-decay norms included), so the suggestion is the head's rate for that
    optimizer. Make the backbone trainable first, as fine-tuning does. `PROBE_STEPS` timed
    steps (undone afterwards) set the step count: as many as fit in the budget, counted from
    the start of this call, between MIN_STEPS and MAX_STEPS; the plan is logged before the
    sweep starts. `clock` is for tests. Model, RNG and loader come back as `find_lr` says.
    """
    started = clock()
    groups = fine_tune_groups(model, settings, lr=1.0)
    seconds_per_step, inputs = _time_steps(model, loader, device, groups, clock)
    plan = plan_steps(budget_s, clock() - started, seconds_per_step)
    _announce(plan, inputs)
    result = find_lr(
        model, loader, device, param_groups=groups, steps=plan.steps,
        weight_decay=settings.weight_decay, quiet=quiet,
    )  # fmt: skip
    logger.info(
        "lr finder took %.1f s (announced: about %.0f s, budget %.0f s)",
        clock() - started, plan.estimate_s, budget_s,
    )  # fmt: skip
    return dataclasses.replace(result, budget_s=budget_s, estimate_s=plan.estimate_s)


def plan_steps(budget_s: float, spent_s: float, seconds_per_step: float) -> SweepPlan:
    """The most steps that end within `budget_s`, `spent_s` of it being gone already."""
    if not (math.isfinite(budget_s) and budget_s > 0):
        raise UserError(f"the lr finder's time budget must be positive seconds, got {budget_s}.")
    available = max(0.0, budget_s - spent_s) * BUDGET_SHARE
    wanted = math.floor(available / max(seconds_per_step, 1e-9))
    steps = min(MAX_STEPS, max(MIN_STEPS, wanted))
    estimate = spent_s + steps * seconds_per_step
    return SweepPlan(steps, seconds_per_step, estimate, budget_s, fits=wanted >= MIN_STEPS)


def _time_steps(
    model: nn.Module,
    loader: DataLoader[Any],
    device: torch.device,
    groups: list[dict[str, Any]],
    clock: Callable[[], float],
) -> tuple[float, torch.Tensor]:
    """Seconds of one training step (batch loading included), and the last batch's inputs.

    The probe trains at the sweep's start rate and is undone, like the sweep itself.
    """
    copies, ratios = _scaled_groups(model, groups)
    with _restored(model, loader, device):
        optimizer = AdamW(copies, lr=1e-7)
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = 1e-7 * ratio
        model.train()
        batches = _cycle(loader)
        for _ in range(PROBE_STEPS):
            begun = clock()
            inputs, labels = next(batches)
            _train_step(model, optimizer, inputs.to(device), labels.to(device))
            if device.type == "cuda":  # kernels run asynchronously: wait before reading
                torch.cuda.synchronize(device)
            seconds = clock() - begun
        batches.close()
    return seconds, inputs


def _announce(plan: SweepPlan, inputs: torch.Tensor) -> None:
    """Say up front what the sweep will cost, so a long one can be stopped at once."""
    size = f" at {inputs.shape[-1]} px" if inputs.ndim == 4 else ""
    what = f"{plan.steps} steps of {len(inputs)} images{size}"
    if plan.fits:
        logger.info(
            "lr finder: %s, about %.0f s (%.2f s a step) within its %.0f s budget",
            what, plan.estimate_s, plan.seconds_per_step, plan.budget_s,
        )  # fmt: skip
        return
    logger.warning(
        "lr finder: a step takes %.2f s, so the %.0f s budget fits fewer than %d steps; "
        "running the minimum, %s, about %.0f s. For a shorter sweep lower the batch size or "
        "the image size; for a longer one raise the time limit.",
        plan.seconds_per_step, plan.budget_s, MIN_STEPS, what, plan.estimate_s,
    )  # fmt: skip


def _check_arguments(
    start_lr: float, end_lr: float, steps: int, weight_decay: float, divergence: float
) -> None:
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"{name} must be a positive learning rate, got {value}.")
    if start_lr >= end_lr:
        raise UserError(
            f"start_lr ({start_lr:g}) must be below end_lr ({end_lr:g}): the sweep raises "
            "the rate, e.g. start_lr=1e-7, end_lr=1."
        )
    if steps < 10:
        raise UserError(f"steps must be at least 10 to draw a curve, got {steps}; try 100.")
    if not weight_decay >= 0:
        raise UserError(f"weight_decay must be 0 or more, got {weight_decay}.")
    if not divergence > 1:
        raise UserError(f"divergence must be above 1 (4 is usual), got {divergence}.")


def _scaled_groups(
    model: nn.Module, param_groups: list[dict[str, Any]] | None
) -> tuple[list[dict[str, Any]], list[float]]:
    """Copies of the parameter groups, and each group's base rate over the largest one."""
    if param_groups is None:
        param_groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    groups = []
    for index, group in enumerate(param_groups):
        if "params" not in group:
            raise UserError(f"param_groups[{index}] has no 'params': give each group a list.")
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        rate = group.get("lr")
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise UserError(f"param_groups[{index}] has lr={rate}: base rates must be positive.")
        groups.append({**group, "params": params})
    if not any(group["params"] for group in groups):
        raise UserError("no parameters to train: unfreeze some (requires_grad) or pass groups.")
    rates = [group.get("lr") for group in groups]
    largest = max((rate for rate in rates if rate is not None), default=1.0)
    return groups, [1.0 if rate is None else rate / largest for rate in rates]


@contextmanager
def _restored(model: nn.Module, loader: DataLoader[Any], device: torch.device) -> Iterator[None]:
    """Put back, however the block ends, everything the sweep changes."""
    state = {name: _detached_copy(value) for name, value in model.state_dict().items()}
    modes = {name: module.training for name, module in model.named_modules()}
    gradients = [(parameter, parameter.grad) for parameter in model.parameters()]
    generator = loader.generator if isinstance(loader.generator, torch.Generator) else None
    shuffling = generator.get_state() if generator is not None else None
    try:
        with _forked_rng(device):
            yield
    finally:
        model.load_state_dict(state)
        for name, module in model.named_modules():
            module.training = modes[name]  # not .train(): that would recurse into children
        for parameter, gradient in gradients:
            parameter.grad = gradient
        if generator is not None and shuffling is not None:
            generator.set_state(shuffling)


def _detached_copy(value: Any) -> Any:
    """A copy kept on the CPU, so the saved weights do not double the accelerator's memory."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    return copy.deepcopy(value)


@contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    """Save and restore the CPU random state, and the CUDA one when training there."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"):
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            yield


def _sweep(
    model: nn.Module,
    loader: DataLoader[Any],
    device: torch.device,
    optimizer: Optimizer,
    ratios: list[float],
    schedule: list[float],
    divergence: float,
    quiet: bool,
) -> _Curve:
    """Train one mini-batch per rate of `schedule`; stop when the smoothed loss diverges."""
    curve = _Curve()
    model.train()
    average, best = 0.0, math.inf
    batches = _cycle(loader)
    with progress(total=len(schedule), desc="lr find", unit="batch", quiet=quiet) as bar:
        for step, (lr, (inputs, labels)) in enumerate(zip(schedule, batches, strict=False)):
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            inputs, labels = inputs.to(device, non_blocking=True), labels.to(device)
            loss = _train_step(model, optimizer, inputs, labels)
            if not math.isfinite(loss):
                curve.stopped_early = True
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * loss
            smoothed = average / (1 - SMOOTHING ** (step + 1))
            curve.lrs.append(lr)
            curve.losses.append(smoothed)
            curve.raw_losses.append(loss)
            bar.update()
            bar.set_postfix(lr=f"{lr:.2e}", loss=f"{smoothed:.4f}", refresh=False)
            if smoothed > divergence * best:
                curve.stopped_early = True
                break
            best = min(best, smoothed)
    batches.close()
    return curve


def _cycle(loader: DataLoader[Any]) -> Generator[Any, None, None]:
    """The loader's batches, epoch after epoch, for as long as they are wanted."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise UserError("the loader yields no batches: give the lr finder some data.")


def _train_step(
    model: nn.Module, optimizer: Optimizer, inputs: torch.Tensor, labels: torch.Tensor
) -> float:
    """Forward, loss, backward, step; no step when the loss is not finite."""
    loss = F.cross_entropy(model(inputs), labels)
    value = loss.item()
    if math.isfinite(value):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return value


def suggest_lr(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """The rate where the smoothed loss falls fastest: the steepest descent of the curve.

    The rule: drop the first and last 10% of the points (the smoothing's warm-up and the
    divergence), and every point from the minimum loss on. Among the points left, return the
    rate where d(loss)/d(log10 lr) is most negative (central differences, `numpy.gradient`).
    The suggestion is therefore strictly below the rate of the minimum loss.

    Fallback: when fewer than two points are left, or the loss falls by less than 1% over
    them (a flat curve), return (rate at the minimum loss) / 10. That can lie below the swept
    range when the loss only rose: a sign to start the sweep lower.
    """
    if not lrs or len(lrs) != len(losses):
        raise UserError(f"need equally many rates and losses, got {len(lrs)} and {len(losses)}.")
    curve = np.asarray(losses, dtype=np.float64)
    log_lrs = np.log10(np.asarray(lrs, dtype=np.float64))
    if not np.all(np.isfinite(curve)) or not np.all(np.isfinite(log_lrs)):
        raise UserError("every loss must be finite and every rate positive to suggest a rate.")
    lowest = int(np.argmin(curve))
    fallback = float(lrs[lowest]) / 10
    trim = int(len(curve) * TRIM_FRACTION)
    end = min(len(curve) - trim, lowest + 1)  # include the minimum for its neighbour's slope
    candidates = min(end, lowest) - trim  # points before the minimum, inside the trimmed range
    if candidates < 2:
        logger.debug("lr finder curve too short for a slope: suggesting lr at minimum / 10")
        return fallback
    window = curve[trim : trim + candidates]
    if window.max() - curve[lowest] < FLAT_DROP * abs(window.max()):
        logger.debug("lr finder curve is flat: suggesting lr at minimum / 10")
        return fallback
    slopes = np.gradient(curve[trim:end], log_lrs[trim:end])[:candidates]
    return float(lrs[trim + int(np.argmin(slopes))])


def save_lr_plot(result: LrFindResult, path: Path) -> Path:
    """Draw the smoothed loss against the learning rate (log scale), marking the suggestion.

    A 600x400 PNG, written atomically. The y range covers the curve up to its minimum, so a
    diverging tail does not squash the interesting part.
    """
    if not result.lrs:
        raise UserError("the lr finder result has no points to plot: run find_lr first.")
    figure = new_figure(6, 4)
    axes = figure.add_subplot()
    axes.plot(result.lrs, result.losses, color="tab:blue", label="smoothed loss")
    at = float(np.interp(np.log10(result.suggestion), np.log10(result.lrs), result.losses))
    axes.axvline(result.suggestion, color="tab:red", linestyle="--", linewidth=1)
    axes.plot([result.suggestion], [at], "o", color="tab:red", label="suggestion")
    axes.annotate(
        f"{result.suggestion:.2e}", (result.suggestion, at), xytext=(6, 6),
        textcoords="offset points", color="tab:red",
    )  # fmt: skip
    axes.set_xscale("log")
    axes.set_xlabel("learning rate (head)")
    axes.set_ylabel("loss (smoothed)")
    axes.set_title("Learning-rate finder")
    _limit_losses(axes, result.losses)
    axes.legend(loc="upper left")
    atomic_write_bytes(path, to_png(figure))
    return path


def _limit_losses(axes: Any, losses: list[float]) -> None:
    """From just below the minimum to just above the highest loss before it."""
    lowest = int(np.argmin(losses))
    bottom, top = losses[lowest], max(losses[: lowest + 1])
    if top > bottom:
        margin = 0.1 * (top - bottom)
        axes.set_ylim(bottom - margin, top + 2 * margin)
