"""The splits a run trains on, rebuilt from its config.

Training, resume, evaluation and export all call this with the run's recorded config, so
they see the same images in the same splits (same source, validation share and seed, and
the same files left out by `data.exclude`).
"""

from __future__ import annotations

from torchgraft.config import RunConfig
from torchgraft.data.exclude import apply_exclusions
from torchgraft.data.sources import DataSplits, load_data


def load_run_splits(config: RunConfig) -> DataSplits:
    """The splits a run trains on; resume and evaluation rebuild the same ones from it."""
    splits = load_data(config.data.source, config.data.val_fraction, config.train.seed)
    if config.data.exclude is None:
        return splits
    # After the split, so the files left keep their splits (those doctor's report names).
    return apply_exclusions(splits, config.data.exclude)
