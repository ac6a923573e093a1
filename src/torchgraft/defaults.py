"""The training settings each kind of network gets when the user sets none.

Free of torch on purpose: `graft train --help` shows these defaults and starts in well under a
second, so nothing here may import more than the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RecipeDefaults:
    """The training settings a run of this kind of network gets when the user sets none.

    The one place they live: training, the CLI's help, the demo and the benchmarks read them.
    """

    freeze_epochs: int  # head-only epochs on cached backbone features
    epochs: int  # whole-network epochs
    lr: float  # peak learning rate (one-cycle)
    backbone_lr_divisor: float  # the backbone learns at lr / this
    backbone_lr_divisor_after_head: float  # ... when head-only epochs came first
    label_smoothing: float
    ema_decay: float  # 0: score the weights as they are


# Measured on mnist5k at 64 px on a 2-core CPU (benchmarks/README.md, "Choosing the recipe"):
# one learning rate for the whole network, an EMA of the weights to score, label smoothing,
# and no head-only phase, whose backbone pass cost more than it gave on images this far from
# ImageNet. Four epochs reach 98.5-99% there. After head-only epochs the backbone learns at
# lr/3: the head is good already and the features it learned on are worth protecting (the
# first fine-tune epoch then ends above the head's accuracy, where lr/1 fell 2 points).
PRETRAINED_RECIPE = RecipeDefaults(
    freeze_epochs=0, epochs=4, lr=3e-3, backbone_lr_divisor=1.0,
    backbone_lr_divisor_after_head=3.0, label_smoothing=0.1, ema_decay=0.99,
)  # fmt: skip
# A random network has no pretrained layers to protect and needs more, larger steps
# (mnist5k: the mlp reaches 95% at 1e-2 and 92% at 2e-3 in 10 epochs).
SCRATCH_RECIPE = RecipeDefaults(
    freeze_epochs=0, epochs=10, lr=1e-2, backbone_lr_divisor=1.0,
    backbone_lr_divisor_after_head=1.0, label_smoothing=0.0, ema_decay=0.0,
)  # fmt: skip


def recipe_defaults(starts_pretrained: bool) -> RecipeDefaults:
    """The defaults for a network that starts from pretrained weights, or from random ones."""
    return PRETRAINED_RECIPE if starts_pretrained else SCRATCH_RECIPE
