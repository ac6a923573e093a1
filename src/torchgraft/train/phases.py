"""The phases of a plan, as objects: what each trains, on what, and with which groups.

- `HeadPhase`: the new head alone, on backbone features computed once (the backbone frozen).
- `FineTunePhase`: the whole network on images, the backbone slower than the head.
- `ScratchPhase`: the whole network of a randomly initialised model, one rate for all.

A phase says which module learns, on which data, with which optimizer groups; the Trainer
runs whatever phase it is given the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn
from torch.utils.data import Dataset, TensorDataset

from torchgraft.models import GraftedClassifier
from torchgraft.train.optim import OptimizerSettings, fine_tune_groups, head_groups

ImageSet = Dataset[Any]


@dataclass(frozen=True)
class PhaseData:
    """What one phase trains on and is scored on."""

    train: Dataset[Any]
    val: Dataset[Any]
    shuffle_workers: int  # loader worker processes (0 for in-memory features)
    val_batch_size: int


@dataclass
class Phase:
    """`epochs` of training; subclasses say what learns."""

    epochs: int
    name: ClassVar[str] = "phase"
    whole_network: ClassVar[bool] = True  # False: only the head learns, on features

    def prepare(self, model: GraftedClassifier, train_depthwise: bool) -> nn.Module:
        """Set what is trainable; return the module whose forward the loop calls."""
        model.set_backbone_trainable(True, depthwise=train_depthwise)
        return model

    def groups(self, model: GraftedClassifier, settings: OptimizerSettings) -> list[dict[str, Any]]:
        return fine_tune_groups(model, settings)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "epochs": self.epochs}


@dataclass
class HeadPhase(Phase):
    name: ClassVar[str] = "head"
    whole_network: ClassVar[bool] = False

    def prepare(self, model: GraftedClassifier, train_depthwise: bool) -> nn.Module:
        model.set_backbone_trainable(False)
        return model.head

    def groups(self, model: GraftedClassifier, settings: OptimizerSettings) -> list[dict[str, Any]]:
        return head_groups(model, settings)


@dataclass
class FineTunePhase(Phase):
    name: ClassVar[str] = "finetune"


@dataclass
class ScratchPhase(Phase):
    name: ClassVar[str] = "scratch"


PHASES: dict[str, type[Phase]] = {
    "head": HeadPhase,
    "frozen": HeadPhase,  # the name in checkpoints written before phases were objects
    "finetune": FineTunePhase,
    "scratch": ScratchPhase,
}


def phase_from_dict(saved: dict[str, Any]) -> Phase:
    return PHASES[saved["name"]](int(saved["epochs"]))


def plan_phases(freeze_epochs: int, epochs: int, starts_pretrained: bool) -> list[Phase]:
    """Head then fine-tune for a pretrained backbone; one scratch phase for a random one."""
    if not starts_pretrained:
        return [ScratchPhase(epochs)] if epochs else []
    phases: list[Phase] = [HeadPhase(freeze_epochs), FineTunePhase(epochs)]
    return [phase for phase in phases if phase.epochs]


def extend_plan(phases: list[Phase], epochs: int | None) -> list[Phase]:
    """A finished plan plus a new whole-network phase reaching `epochs` such epochs in all.

    The new phase gets its own one-cycle schedule, warming up from the current weights.
    """
    done = whole_network_epochs(phases)
    if epochs is None or epochs <= done:
        return phases
    last_kind = next((type(p) for p in reversed(phases) if p.whole_network), FineTunePhase)
    return [*phases, last_kind(epochs - done)]


def whole_network_epochs(phases: list[Phase]) -> int:
    return sum(phase.epochs for phase in phases if phase.whole_network)


def feature_data(features: tuple[TensorDataset, TensorDataset]) -> PhaseData:
    return PhaseData(features[0], features[1], shuffle_workers=0, val_batch_size=1024)
