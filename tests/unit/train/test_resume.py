"""A resume continues from the checkpoint, not from scratch: it ends with the uninterrupted
run's weights, bit for bit, trains only the epochs after the checkpoint, and leaves the rows
of the epochs before it as they were. A process that dies while writing a checkpoint
resumes from a whole one, never from a torn pair of files."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from torchgraft import api
from torchgraft.artifact import load_tensors
from torchgraft.testing import make_image_folder
from torchgraft.train import resume
from torchgraft.train.callbacks import Callback, EpochRecord
from torchgraft.train.checkpoint import load_checkpoint

# The smallest run in which resuming means something: 3 epochs of a from-scratch mlp.
SETTINGS = dict(model="mlp", epochs=3, image_size=16, batch_size=8, quiet=True,
                tensorboard=False, report=False, deterministic=True)  # fmt: skip


class CtrlCIn(Callback):
    """Ctrl-C at the first step of `epoch`: the checkpoint is the one of the epoch before."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_step_end(self, trainer: Any, step: Any) -> None:
        if trainer.epoch == self.epoch:
            raise KeyboardInterrupt


class EpochsTrained(Callback):
    """The epochs this process trained."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_epoch_end(self, trainer: Any, record: EpochRecord) -> None:
        self.epochs.append(record.epoch)


def train(
    data: Path, runs: Path, name: str, callbacks: Sequence[Callback] = (), **extra: Any
) -> Path:
    api.train(data, name=name, runs_dir=str(runs), callbacks=callbacks, **{**SETTINGS, **extra})
    return runs / name


def interrupted(data: Path, runs: Path, name: str, in_epoch: int) -> Path:
    with pytest.raises(KeyboardInterrupt):
        train(data, runs, name, [CtrlCIn(in_epoch)])
    return runs / name


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run).part("model")


def differing(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> list[str]:
    """The names whose tensors differ; the names themselves must match (and be some)."""
    assert expected, "no tensors to compare"
    assert sorted(actual) == sorted(expected)
    return [name for name in expected if not torch.equal(expected[name], actual[name])]


def metric_lines(run: Path) -> list[str]:
    return (run / "metrics.csv").read_text().splitlines()


def without_seconds(lines: list[str]) -> list[str]:
    return [line.rsplit(",", 1)[0] for line in lines]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "images", per_class=6, size=16)


@pytest.fixture(scope="module")
def straight(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run (seed 0) a resumed one must end up identical to."""
    return train(data, tmp_path_factory.mktemp("straight"), "straight")


def test_resume_continues_from_the_checkpoint_not_from_scratch(
    data: Path, straight: Path, tmp_path: Path
) -> None:
    run = interrupted(data, tmp_path, "stopped", in_epoch=3)  # kept: epochs 1 and 2
    before = metric_lines(run)
    assert [line.split(",")[1] for line in before[1:]] == ["1", "2"]

    trained = EpochsTrained()
    resume(run, quiet=True, callbacks=[trained])
    assert trained.epochs == [3]  # epochs 1 and 2 came from the checkpoint
    after = metric_lines(run)
    assert after[:3] == before  # their rows, timings included, were not written again
    assert without_seconds(after) == without_seconds(metric_lines(straight))
    assert differing(final_weights(straight), final_weights(run)) == []
    best = load_tensors(straight / "model.safetensors")
    assert differing(best, load_tensors(run / "model.safetensors")) == []

    # The equality says something: another seed, trained from scratch, ends elsewhere.
    other = train(data, tmp_path, "seed1", seed=1)
    assert differing(final_weights(straight), final_weights(other)) != []


MOMENTS = ("writing the tensors", "between the tensors and the index",
           "before the old tensors are removed")  # fmt: skip


def snapshots_at(moments: Sequence[str], folder: Path) -> Callable[..., None]:
    """os.replace, wrapped: at each moment of epoch 2's checkpoint write, the run's folder is
    copied to folder/<moment> as it stands on disk, which is what a kill -9 there leaves (a
    kill while the tensors are written leaves their temporary file half-written)."""
    real = os.replace

    def snapshot(run: Path, moment: str) -> None:
        if moment in moments:
            shutil.copytree(run, folder / moment)

    def replacing(source: Any, destination: Any) -> None:
        destination = Path(destination)
        run, tensors = destination.parent.parent, destination.parent / "state-epoch0002.safetensors"
        if destination == tensors:
            snapshot(run, "writing the tensors")
            for torn in (folder / "writing the tensors" / "checkpoints").glob(".state-*"):
                torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
        epoch_2_index = destination.name == "last.json" and tensors.is_file()
        if epoch_2_index and not (folder / "between the tensors and the index").exists():
            snapshot(run, "between the tensors and the index")
        real(source, destination)
        if epoch_2_index and not (folder / "before the old tensors are removed").exists():
            snapshot(run, "before the old tensors are removed")

    return replacing


def test_a_kill_while_writing_a_checkpoint_resumes_from_a_whole_one(
    data: Path, straight: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    killed = tmp_path / "killed"
    monkeypatch.setattr(os, "replace", snapshots_at(MOMENTS, killed))
    train(data, tmp_path / "runs", "run")
    monkeypatch.undo()
    torn = list((killed / "writing the tensors" / "checkpoints").glob(".state-epoch0002*"))
    assert len(torn) == 1  # the half-written tensors a kill there leaves behind

    for moment, kept_epoch in zip(MOMENTS, (1, 1, 2), strict=True):
        snapshot = killed / moment
        assert load_checkpoint(snapshot).meta["progress"]["epoch"] == kept_epoch, moment
        trained = EpochsTrained()
        resume(snapshot, quiet=True, callbacks=[trained])
        assert trained.epochs == list(range(kept_epoch + 1, 4)), moment
        assert differing(final_weights(straight), final_weights(snapshot)) == [], moment
        assert without_seconds(metric_lines(snapshot)) == without_seconds(metric_lines(straight))
