"""A time limit that plans the run instead of cutting it (as Ultralytics' `time=` does).

The clock starts when training starts (data, features and the head phase count). Early in
the last phase, `TimeBudget` measures the step time, estimates the validation that follows
each epoch, and sets the length of the one-cycle schedule so that all of it, the annealing
included, ends inside the limit. Every few steps, and after each epoch with the validation
time measured, it plans again.
If the machine slows down so much that the plan overruns anyway, the limit still stops the
run (between epochs under DDP, where ranks must take equal steps).
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from torchgraft.train.callbacks import Callback, EpochRecord
from torchgraft.train.loop import StepRecord

if TYPE_CHECKING:
    from torchgraft.train.engine import Trainer

logger = logging.getLogger(__name__)

WARMUP_STEPS = 2  # the first steps of a phase are slower (allocations, caches): not timed
MEASURED_STEPS = 4  # then this many steps are timed before the plan is made
VALIDATION_SHARE = 0.35  # a forward pass costs about this share of a training step per image
RESERVE_S = 1.0  # saving the last checkpoint and weights, after the last epoch
REPLAN_EVERY = 10  # steps between plans, so a machine that slows down still ends in time
RECENT_STEPS = 20  # the step time is the mean of this many latest steps


class TimeBudget(Callback):
    """Fit the last phase's schedule into `seconds` from `started` (a time.monotonic())."""

    def __init__(
        self, seconds: float, started: float | None = None, epochs_asked: int | None = None
    ) -> None:
        self.seconds = seconds
        self.started = started
        self.epochs_asked = epochs_asked  # the user's --epochs, which the plan overrides
        self.deadline = math.inf
        self.planned_phase: int | None = None  # the phase index the plan was made for
        self._step_times: list[float] = []  # gaps between steps of the same epoch
        self._last_step_at: float | None = None  # None at the start of an epoch
        self.validation_s: float | None = None  # measured: last step to the end of an epoch

    def on_train_start(self, trainer: Trainer) -> None:
        started = self.started if self.started is not None else time.monotonic()
        self.deadline = started + self.seconds

    def on_step_end(self, trainer: Trainer, step: StepRecord) -> None:
        now = time.monotonic()
        if trainer.in_last_phase:
            if self._last_step_at is not None:
                self._step_times.append(now - self._last_step_at)
            measured = len(self._step_times) >= WARMUP_STEPS + MEASURED_STEPS
            if self.planned_phase != trainer.phase_index and measured:
                self._plan(trainer, first=True)
            elif self.planned_phase == trainer.phase_index and step.step % REPLAN_EVERY == 0:
                self._plan(trainer, first=False)  # the machine may have slowed down
        self._last_step_at = now
        if now > self.deadline and not trainer.distributed_run:
            trainer.stop(f"time limit of {self.seconds:.0f}s reached during the epoch")

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        """Runs after the other callbacks of ours, so their epoch-end work is measured too."""
        now = time.monotonic()
        if trainer.in_last_phase and self._last_step_at is not None:
            self.validation_s = now - self._last_step_at
            if self.planned_phase == trainer.phase_index and not trainer.phase_finished:
                self._plan(trainer, first=False)
        self._last_step_at = None  # the next gap spans validation: not a step time
        if now + RESERVE_S > self.deadline and not trainer.phase_finished:
            trainer.stop(f"time limit of {self.seconds:.0f}s reached")

    def step_seconds(self) -> float:
        """The mean of the recent step times (the warm-up steps left out)."""
        timed = self._step_times[WARMUP_STEPS:][-RECENT_STEPS:]
        return sum(timed) / len(timed)

    def _plan(self, trainer: Trainer, first: bool) -> None:
        step_s, done = self.step_seconds(), trainer.phase_steps
        per_epoch = trainer.steps_per_epoch
        validation_s = self.validation_s
        if validation_s is None:  # not measured yet: estimate it from the step time
            validation_s = step_s * VALIDATION_SHARE * trainer.validation_images_per_step
        left = self.deadline - time.monotonic() - RESERVE_S
        total = fitting_steps(done, per_epoch, step_s, validation_s, left)
        self.planned_phase = trainer.phase_index
        trainer.plan_steps(total)
        asked = self.epochs_asked
        if first:
            logger.info(
                "time limit %.0fs: %s of %s (%d steps of %.2fs, validation %.1fs an epoch) fit "
                "the %.0fs left%s", self.seconds, _epochs_text(total, per_epoch),
                trainer.phase_name, total, step_s, validation_s, left + RESERVE_S,
                f"; --epochs {asked} was asked, the limit wins"
                if asked is not None and asked != trainer.phase_epochs else "",
            )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"planned_phase": self.planned_phase}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.planned_phase = state.get("planned_phase")


def fitting_steps(
    done: int, per_epoch: int, step_s: float, validation_s: float, seconds_left: float
) -> int:
    """The most steps in all (`done` already taken) whose remaining steps and validations
    (one after each epoch, the last one included) fit `seconds_left`; at least done + 1."""
    total = done + max(1, int(seconds_left / step_s))
    while total > done + 1:
        epochs_left = math.ceil(total / per_epoch) - done // per_epoch
        if (total - done) * step_s + epochs_left * validation_s <= seconds_left:
            break
        total -= 1
    return total


def _epochs_text(total: int, per_epoch: int) -> str:
    epochs = total / per_epoch
    return f"{epochs:.0f} epochs" if total % per_epoch == 0 else f"{epochs:.1f} epochs"
