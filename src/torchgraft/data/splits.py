"""The splits a run trains on, rebuilt from its config.

Training, resume, evaluation and export all call this with the run's recorded config, so
they see the same images in the same splits (same source, validation share and seed).
"""

from __future__ import annotations

from torchgraft.config import RunConfig
from torchgraft.data.sources import DataSplits, load_data


def load_run_splits(config: RunConfig) -> DataSplits:
    """The splits a run trains on; resume and evaluation rebuild the same ones from it."""
    return load_data(config.data.source, config.data.val_fraction, config.train.seed)
