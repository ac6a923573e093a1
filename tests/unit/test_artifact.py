import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError

from torchgraft.artifact import (
    Preprocessing,
    Run,
    RunInfo,
    atomic_path,
    atomic_write,
    atomic_write_bytes,
)
from torchgraft.errors import UserError


def _info() -> RunInfo:
    return RunInfo(
        model_name="cnn",
        class_names=["a", "b"],
        display_names=["Apple", "b"],
        preprocessing=Preprocessing(32, "pad", (0.5,), (0.5,), channels=1),
        temperature=1.5,
    )


def test_run_round_trips_info_and_weights(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "run", _info())
    tensors = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    run.save_weights(tensors)
    loaded = Run.load(tmp_path / "run")
    assert loaded.info == run.info
    assert loaded.info.preprocessing.mean == (0.5,)
    for name, tensor in loaded.load_weights().items():
        assert torch.equal(tensor, tensors[name])


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "file.json"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["file.json"]


def test_missing_run_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no run at .*graft.json is missing"):
        Run.load(tmp_path / "nowhere")


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned",))


def test_loading_weights_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run.create(tmp_path / "run", _info())
    (run.path / "model.safetensors").write_bytes(pickle.dumps(_Boom()))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SafetensorError, match="deserializing"):  # read as safetensors only
        run.load_weights()
    assert not (tmp_path / "pwned").exists()


def test_atomic_writes_get_ordinary_file_permissions(tmp_path: Path) -> None:
    """Not mkstemp's owner-only 0600: a run must be readable by whoever serves it."""
    atomic_write_bytes(tmp_path / "graft.json", b"{}")
    (tmp_path / "plain.json").write_bytes(b"{}")
    mode = os.stat(tmp_path / "graft.json").st_mode & 0o777
    assert mode == os.stat(tmp_path / "plain.json").st_mode & 0o777


def test_atomic_write_streams_into_the_file_and_respects_the_umask(tmp_path: Path) -> None:
    """np.save writes straight into the temporary file; the mode is what open() would give."""
    pixels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    previous = os.umask(0o027)
    try:
        atomic_write(tmp_path / "pixels.npy", lambda file: np.save(file, pixels))
    finally:
        os.umask(previous)
    np.testing.assert_array_equal(np.load(tmp_path / "pixels.npy"), pixels)
    assert os.stat(tmp_path / "pixels.npy").st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["pixels.npy"]


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.pt2"
    target.write_bytes(b"old")
    seen: list[Path] = []
    with pytest.raises(RuntimeError, match="exporter failed"), atomic_path(target, ".pt2") as temp:
        seen.append(temp)
        temp.write_bytes(b"half")
        raise RuntimeError("exporter failed")
    assert seen[0].suffix == ".pt2" and seen[0].parent == tmp_path  # writers may check it
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.pt2"]


def test_creating_a_run_never_writes_into_an_existing_folder(tmp_path: Path) -> None:
    old = Run.create(tmp_path / "run", _info())
    old.save_weights({"w": torch.ones(2)})
    before = {p.name: p.read_bytes() for p in old.path.iterdir()}
    with pytest.raises(FileExistsError):
        Run.create(tmp_path / "run", RunInfo("mlp", ["x"], ["x"], _info().preprocessing))
    assert {p.name: p.read_bytes() for p in old.path.iterdir()} == before


class _Canary:
    """Unpickling this creates the canary file: proof that a loader ran code from a file."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.canary), "w"))


def hostile_checkpoint(path: Path, canary: Path) -> Path:
    """A torch.save file, as a .pth checkpoint is, whose loading would create `canary`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"weight": torch.zeros(2)}, "extra": _Canary(canary)}, path)
    return path


def test_the_hostile_checkpoint_really_runs_code_when_loaded_unsafely(tmp_path: Path) -> None:
    """The control: without weights_only, loading it creates the canary, so the tests below
    would catch a loader that unpickles."""
    canary = tmp_path / "canary"
    torch.load(hostile_checkpoint(tmp_path / "x.pth", canary), weights_only=False)
    assert canary.exists()


def test_a_hostile_pickle_as_weights_file_never_runs(tmp_path: Path) -> None:
    """`--weights x.pth` reads with torch.load(weights_only=True): refused, not run."""
    from torchgraft.models.weights import read_weights_file

    canary = tmp_path / "canary"
    with pytest.raises(UserError, match=r"cannot read .*x\.pth as tensors"):
        read_weights_file(hostile_checkpoint(tmp_path / "x.pth", canary))
    assert not canary.exists()


@pytest.mark.parametrize("file_name", ["state-epoch0001.safetensors", "last.pth"])
def test_a_hostile_pickle_as_a_checkpoint_never_runs(tmp_path: Path, file_name: str) -> None:
    """The resume checkpoint is read as safetensors, whatever its name: a pickle there is
    refused with a message, never unpickled."""
    from torchgraft.train.checkpoint import CHECKPOINT_FOLDER, INDEX_FILE, load_checkpoint

    run = Run.create(tmp_path / "run", _info())
    canary = tmp_path / "canary"
    folder = run.path / CHECKPOINT_FOLDER
    hostile_checkpoint(folder / file_name, canary)
    progress = {"epoch": 1, "position": [0, 1], "phases": [], "records": []}
    index = {
        "tensors_file": file_name,
        "progress": progress,
        "optimizer_groups": [],
        "scheduler": {},
    }  # a whole index: the tensors file is what gets refused
    (folder / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(UserError, match=f"the checkpoint .*{file_name} is damaged"):
        load_checkpoint(run.path)
    assert not canary.exists()


def test_a_run_written_before_torchrun_ids_were_recorded_still_loads(tmp_path: Path) -> None:
    run = Run.create(tmp_path / "old", _info())
    saved = json.loads((run.path / "graft.json").read_text())
    del saved["torchelastic_run_id"]  # graft.json as earlier versions wrote it
    (run.path / "graft.json").write_text(json.dumps(saved))
    assert Run.load(run.path).info.torchelastic_run_id == ""  # no torchrun job of its own


def test_an_atomic_folder_replaces_the_old_one_whole_or_leaves_it(tmp_path: Path) -> None:
    from torchgraft.artifact import atomic_folder

    target = tmp_path / "timm"
    with atomic_folder(target) as folder:
        (folder / "old.txt").write_text("old")
    with atomic_folder(target) as folder:
        (folder / "new.txt").write_text("new")
    assert [path.name for path in target.iterdir()] == ["new.txt"]  # not merged with the old
    with pytest.raises(RuntimeError), atomic_folder(target) as folder:
        (folder / "half.txt").write_text("half")
        raise RuntimeError("the exporter failed")
    assert [path.name for path in target.iterdir()] == ["new.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["timm"]  # no temporary left behind
