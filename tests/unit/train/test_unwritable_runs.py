"""A runs folder that cannot be written, and a disk that fills up during training.

As root, chmod does not stop writes, so the unwritable folder is a path under a regular
file (the OS refuses it for everyone), and the full disk is simulated by making the fsync
of an atomic write fail with ENOSPC, where a real full disk surfaces on delayed-allocation
filesystems."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from torchgraft import api, artifact
from torchgraft.errors import GraftRuntimeError, UserError
from torchgraft.testing import file_hashes, make_image_folder
from torchgraft.train import recipe
from torchgraft.train.checkpoint import load_checkpoint


def kept(run: Path) -> dict[str, str]:
    """The run's files, less the temporaries of atomic writes in progress (".NAME.xyz.tmp")."""
    return {name: digest for name, digest in file_hashes(run).items()
            if not Path(name).name.startswith(".")}  # fmt: skip


@pytest.mark.parametrize("where", ["under-a-file", "is-a-file"])
def test_an_unwritable_runs_folder_is_refused_before_any_data_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    (tmp_path / "notes.txt").write_text("not a folder")
    runs = tmp_path / "notes.txt" / "runs" if where == "under-a-file" else tmp_path / "notes.txt"

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data was read before the runs folder was checked")

    monkeypatch.setattr(recipe, "load_run_splits", no_reading)
    for name in (None, "flowers"):
        with pytest.raises(UserError) as refused:
            api.train(tmp_path / "data", model="mlp", runs_dir=str(runs), name=name, quiet=True)
        message = str(refused.value)
        assert f"cannot write runs into {runs}" in message and "--runs-dir" in message
    assert (tmp_path / "notes.txt").read_text() == "not a folder"


def test_a_full_disk_during_training_keeps_the_last_epochs_files_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epoch 1 is saved; from then on every write of the run (metrics.csv, weights,
    checkpoint) fails with ENOSPC. Training
    stops with a GraftRuntimeError (exit 1) naming the disk, the file and --resume; the
    weights and checkpoint of epoch 1 are there, byte for byte, and resumable."""
    data = make_image_folder(tmp_path / "data", per_class=6, size=16)
    run_path = tmp_path / "runs" / "full"
    fsync = artifact._fsync
    saved: dict[str, str] = {}

    def full_disk_after_epoch_1(path: Path) -> None:
        if path.is_file() and (run_path / "checkpoints" / "last.json").is_file():
            if not saved:  # the run's files before the first failed write
                saved.update(kept(run_path))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(path)

    monkeypatch.setattr(artifact, "_fsync", full_disk_after_epoch_1)
    with pytest.raises(GraftRuntimeError) as stopped:
        api.train(str(data), model="mlp", epochs=3, image_size=16, batch_size=16,
                  runs_dir=str(tmp_path / "runs"), name="full", report=False,
                  tensorboard=False, quiet=True)  # fmt: skip
    message = str(stopped.value)
    assert "the disk is full" in message and "No space left on device" in message
    assert str(run_path) in message and f"graft train --resume {run_path}" in message
    monkeypatch.setattr(artifact, "_fsync", fsync)

    assert saved and file_hashes(run_path) == saved  # nothing replaced, nothing half-written
    assert "model.safetensors" in saved and "checkpoints/last.json" in saved
    assert load_checkpoint(run_path).meta["progress"]["epoch"] == 1
    assert artifact.Run.load(run_path).load_weights()
    assert not [p for p in run_path.rglob(".*") if p.is_file()]  # no temporaries left
