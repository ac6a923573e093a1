"""Run folders: a name that exists is refused, automatic names never collide, --overwrite
replaces only a run, and a torchrun restart of a named run resumes it."""

from __future__ import annotations

import csv
import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from torchgraft import api
from torchgraft.artifact import Preprocessing, RunInfo
from torchgraft.errors import UserError
from torchgraft.testing import make_image_folder
from torchgraft.train import callbacks
from torchgraft.train.setup import reserve_run


def _info() -> RunInfo:
    return RunInfo("mlp", ["a", "b"], ["a", "b"], Preprocessing(8, "pad", (0.5,), (0.5,), 1))


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_runs_started_together_get_folders_of_their_own(tmp_path: Path) -> None:
    (tmp_path / "mlp-data").mkdir()  # an earlier run took the plain name
    count = 8
    barrier = threading.Barrier(count)

    def start() -> Path:
        barrier.wait()  # all reserve at the same moment
        return reserve_run(_info(), tmp_path, None, "mlp-data", overwrite=False).path

    with ThreadPoolExecutor(count) as pool:
        paths = list(pool.map(lambda _: start(), range(count)))
    assert sorted(p.name for p in paths) == sorted(f"mlp-data-{n}" for n in range(2, 2 + count))
    assert all((path / "graft.json").is_file() for path in paths)


def test_a_named_run_that_exists_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    old = reserve_run(_info(), tmp_path, "flowers", "unused", overwrite=False)
    old.save_weights({})
    before = _hashes(old.path)
    with pytest.raises(UserError) as refused:
        reserve_run(_info(), tmp_path, "flowers", "unused", overwrite=False)
    message = str(refused.value)
    assert "--resume" in message and "--name" in message and "--overwrite" in message
    assert "\n" not in message
    assert _hashes(old.path) == before


def test_overwrite_replaces_a_run_and_leaves_nothing_of_it(tmp_path: Path) -> None:
    old = reserve_run(_info(), tmp_path, "flowers", "unused", overwrite=False)
    old.save_weights({})
    (old.path / "checkpoints").mkdir()
    (old.path / "checkpoints" / "last.json").write_text("{}")
    new = reserve_run(_info(), tmp_path, "flowers", "unused", overwrite=True)
    assert new.path == old.path
    assert sorted(p.name for p in new.path.iterdir()) == ["graft.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["flowers"]  # no hidden leftovers


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"precious")
    with pytest.raises(UserError, match="not a torchgraft run"):
        reserve_run(_info(), tmp_path, "photos", "unused", overwrite=True)
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"precious"


def test_api_train_refuses_an_existing_name_before_reading_any_data(tmp_path: Path) -> None:
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    with pytest.raises(UserError, match=r"taken already exists.*--overwrite"):
        api.train(tmp_path / "no-such-folder", model="mlp", name="taken",
                  runs_dir=str(tmp_path / "runs"))  # fmt: skip


def _settings(tmp_path: Path) -> dict[str, Any]:
    return dict(
        model="mlp", epochs=3, name="elastic", runs_dir=str(tmp_path / "runs"), batch_size=8,
        cache_dir=str(tmp_path / "cache"), quiet=True, tensorboard=False, report=False,
    )  # fmt: skip


def _epochs(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as file:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(file)]


def test_a_torchrun_restart_resumes_the_named_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_image_folder(tmp_path / "data", per_class=8, size=16)
    original = callbacks.EpochLog.on_epoch_end

    def fail_at_epoch_2(self, trainer, record):  # type: ignore[no-untyped-def]
        original(self, trainer, record)
        if record.epoch == 2:
            raise RuntimeError("a rank's node went down")

    monkeypatch.setattr(callbacks.EpochLog, "on_epoch_end", fail_at_epoch_2)
    with pytest.raises(RuntimeError, match="node went down"):
        api.train(data, **_settings(tmp_path))
    monkeypatch.undo()
    run = tmp_path / "runs" / "elastic"
    first_attempt = _epochs(run)
    assert [row["epoch"] for row in first_attempt] == ["1", "2"]

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # what torchrun sets on a restart
    restarted = api.train(data, **_settings(tmp_path))
    assert restarted.path == run
    assert [row["epoch"] for row in _epochs(run)] == ["1", "2", "3"]
    assert _epochs(run)[:2] == first_attempt


def test_a_torchrun_restart_before_any_epoch_ended_starts_the_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_image_folder(tmp_path / "data", per_class=8, size=16)
    run = tmp_path / "runs" / "elastic"
    run.mkdir(parents=True)
    (run / "graft.json").write_text("{}")  # the failed attempt got no further
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    restarted = api.train(data, **_settings(tmp_path))
    assert [row["epoch"] for row in _epochs(restarted.path)] == ["1", "2", "3"]
