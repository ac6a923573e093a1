"""The one-cycle learning-rate schedule, with a length that a time budget can set.

torch's `OneCycleLR` fixes its length when it is made. A time limit needs the opposite: start
the phase, measure how long a step takes, then fit the whole schedule (warm-up and the
annealing to its final value) into the time that is left. `OneCycle` has the same shape as
`OneCycleLR` (cosine warm-up from max/25, cosine annealing to max/25e4) and a `total_steps`
that may change until the annealing is reached. It lives in a `LambdaLR`, whose state_dict
saves it, so a resumed run continues on the same curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

WARMUP_SHARE = 0.25  # share of the steps spent rising to the peak
START_DIVISOR = 25.0  # the first step runs at peak / this
FINAL_DIVISOR = 25.0 * 1e4  # the last step runs at peak / this


@dataclass
class OneCycle:
    """The factor by which a group's peak rate is multiplied at each step."""

    total_steps: int

    def __call__(self, step: int) -> float:
        last = max(1, self.total_steps - 1)
        warmup = max(1, round(WARMUP_SHARE * last))
        step = min(step, last)
        start, final = 1.0 / START_DIVISOR, 1.0 / FINAL_DIVISOR
        if step <= warmup:
            return _cosine(start, 1.0, step / warmup)
        return _cosine(1.0, final, (step - warmup) / max(1, last - warmup))

    @property
    def final_factor(self) -> float:
        return 1.0 / FINAL_DIVISOR


def _cosine(start: float, end: float, progress: float) -> float:
    return end + (start - end) * (1.0 + math.cos(math.pi * progress)) / 2.0


def one_cycle(optimizer: Optimizer, total_steps: int) -> tuple[LambdaLR, OneCycle]:
    """A scheduler over `optimizer`'s groups (their "lr" is each group's peak) and its curve.

    Every group follows the same curve, so their ratios (backbone against head) hold.
    """
    curve = OneCycle(max(1, total_steps))
    scheduler = LambdaLR(optimizer, [curve] * len(optimizer.param_groups))
    return scheduler, curve


def curve_of(scheduler: LambdaLR) -> OneCycle:
    curve = scheduler.lr_lambdas[0]
    assert isinstance(curve, OneCycle)
    return curve
