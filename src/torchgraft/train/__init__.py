"""Training: the loop, the transfer-learning recipe, and its bookkeeping."""

from torchgraft.train.loop import EpochResult, evaluate, train_one_epoch
from torchgraft.train.recipe import fit, resume

__all__ = ["EpochResult", "evaluate", "fit", "resume", "train_one_epoch"]
