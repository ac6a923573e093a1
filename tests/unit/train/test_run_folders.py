"""Run folders: a name that exists is refused, automatic names never collide, --overwrite
replaces only a run (and needs --name), a torchrun restart resumes the named run its own
job started (never an old one), and an interruption says how to go on."""

from __future__ import annotations

import csv
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from torchgraft import api
from torchgraft.artifact import Preprocessing, Run, RunInfo
from torchgraft.errors import UserError
from torchgraft.testing import file_hashes, make_image_folder
from torchgraft.train import callbacks, recipe
from torchgraft.train.distributed import Distributed
from torchgraft.train.setup import (
    FIRST_START,
    RESUME,
    elastic_restart,
    own_run_after_restart,
    reserve_run,
)


def _info() -> RunInfo:
    return RunInfo("mlp", ["a", "b"], ["a", "b"], Preprocessing(8, "pad", (0.5,), (0.5,), 1))


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
    before = file_hashes(old.path)
    with pytest.raises(UserError) as refused:
        reserve_run(_info(), tmp_path, "flowers", "unused", overwrite=False)
    message = str(refused.value)
    assert "--resume" in message and "--name" in message and "--overwrite" in message
    assert "\n" not in message
    assert file_hashes(old.path) == before


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


def _restarted(monkeypatch: pytest.MonkeyPatch, job: str) -> None:
    """The environment torchrun gives a restarted attempt of the job `job`."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", job)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")


def test_a_torchrun_restart_resumes_the_named_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_image_folder(tmp_path / "data", per_class=8, size=16)
    original = callbacks.EpochLog.on_epoch_end

    def fail_at_epoch_2(self, trainer, record):  # type: ignore[no-untyped-def]
        original(self, trainer, record)
        if record.epoch == 2:
            raise RuntimeError("a rank's node went down")

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")  # the first attempt, restart count 0
    with monkeypatch.context() as failing, pytest.raises(RuntimeError, match="node went down"):
        failing.setattr(callbacks.EpochLog, "on_epoch_end", fail_at_epoch_2)
        api.train(data, **_settings(tmp_path))
    run = tmp_path / "runs" / "elastic"
    first_attempt = _epochs(run)
    assert [row["epoch"] for row in first_attempt] == ["1", "2"]

    _restarted(monkeypatch, "job-7")
    restarted = api.train(data, **_settings(tmp_path))
    assert restarted.path == run
    assert [row["epoch"] for row in _epochs(run)] == ["1", "2", "3"]
    assert _epochs(run)[:2] == first_attempt


def test_a_torchrun_restart_before_any_epoch_ended_starts_the_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_image_folder(tmp_path / "data", per_class=8, size=16)
    info = _info()
    info.torchelastic_run_id = "job-7"
    Run.create(tmp_path / "runs" / "elastic", info)  # the failed attempt got no further
    _restarted(monkeypatch, "job-7")
    restarted = api.train(data, **_settings(tmp_path))
    assert [row["epoch"] for row in _epochs(restarted.path)] == ["1", "2", "3"]


@pytest.mark.parametrize("trained", [True, False], ids=["finished", "never-trained"])
def test_a_torchrun_restart_leaves_an_old_run_of_the_same_name_alone(
    trained: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`torchrun --max-restarts 3 ... --name elastic` where runs/elastic is an old run: the
    first attempt is refused, and so is every restart (never resumed, never deleted)."""
    data = make_image_folder(tmp_path / "data", per_class=8, size=16)
    old = tmp_path / "runs" / "elastic"
    if trained:
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-6")  # an earlier torchrun job
        api.train(data, **{**_settings(tmp_path), "epochs": 1})
    else:
        Run.create(old, _info())  # trained outside torchrun, stopped before its first epoch
    before = file_hashes(old)
    _restarted(monkeypatch, "job-7")
    with pytest.raises(UserError, match="elastic already exists"):
        api.train(data, **_settings(tmp_path))
    assert file_hashes(old) == before


def test_a_job_without_an_id_of_its_own_never_takes_a_run_for_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = _info()
    info.torchelastic_run_id = "none"  # what multi-node torchrun says without --rdzv-id
    Run.create(tmp_path / "elastic", info)
    _restarted(monkeypatch, "none")
    assert own_run_after_restart(str(tmp_path), "elastic") == FIRST_START
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    assert own_run_after_restart(str(tmp_path), "elastic") == FIRST_START


def _decide(rank: int, init_file: str, runs_dirs: list[str], out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    choice = elastic_restart(runs_dirs[rank], "elastic", Distributed(rank, 2, rank))
    Path(out, f"{rank}.txt").write_text(choice)
    dist.destroy_process_group()


def test_under_ddp_every_rank_takes_rank_0s_decision_on_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 1's node sees the run folder differently (here: not at all). Deciding alone, it
    would start a new run while rank 0 resumes, and their collectives would hang."""
    info = _info()
    info.torchelastic_run_id = "job-7"
    seen_by_rank_0 = Run.create(tmp_path / "rank0" / "elastic", info).path
    (seen_by_rank_0 / "checkpoints").mkdir()
    (seen_by_rank_0 / "checkpoints" / "last.json").write_text("{}")
    _restarted(monkeypatch, "job-7")  # the spawned ranks inherit it
    runs_dirs = [str(tmp_path / "rank0"), str(tmp_path / "rank1")]
    mp.spawn(_decide, args=(str(tmp_path / "init"), runs_dirs, str(tmp_path)), nprocs=2)
    assert [(tmp_path / f"{rank}.txt").read_text() for rank in (0, 1)] == [RESUME, RESUME]


def test_overwrite_of_a_folder_that_is_not_a_run_is_refused_before_reading_any_data(
    tmp_path: Path,
) -> None:
    """Refused on every rank at the start, not on rank 0 only once the data has decoded."""
    (tmp_path / "runs" / "photos").mkdir(parents=True)
    (tmp_path / "runs" / "photos" / "cat.jpg").write_bytes(b"precious")
    with pytest.raises(UserError, match="not a torchgraft run"):
        api.train(tmp_path / "no-such-folder", model="mlp", name="photos", overwrite=True,
                  runs_dir=str(tmp_path / "runs"))  # fmt: skip
    assert (tmp_path / "runs" / "photos" / "cat.jpg").read_bytes() == b"precious"


def test_overwrite_without_a_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--overwrite.*no --name"):
        api.train(tmp_path / "no-such-folder", model="mlp", overwrite=True,
                  runs_dir=str(tmp_path / "runs"))  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_an_interruption_before_training_says_how_to_train_again_and_that_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C or SIGTERM once the folder exists but before any epoch (here: while writing
    skipped.csv) leaves a folder that blocks its name: the message says how to replace it,
    right for an automatic name too."""
    data = make_image_folder(tmp_path / "data", per_class=8, size=16)
    settings = {**_settings(tmp_path), "epochs": 1}
    del settings["name"]

    def interrupted(*arguments: object, **keywords: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as stopping, pytest.raises(KeyboardInterrupt):
        stopping.setattr(recipe, "record_skipped", interrupted)
        api.train(data, **settings)
    left = tmp_path / "runs" / "mlp-data"
    assert "nothing to resume" in caplog.text
    assert f"--name {left.name} --overwrite" in caplog.text
    again = api.train(data, **settings, name=left.name, overwrite=True)
    assert again.path == left and [row["epoch"] for row in _epochs(left)] == ["1"]


@pytest.mark.parametrize("checkpoint", ["none", "torn"])
def test_resuming_a_run_that_cannot_resume_says_how_to_replace_it(
    checkpoint: str, tmp_path: Path
) -> None:
    """Right for an automatic name too, where a plain --overwrite would be refused."""
    run = Run.create(tmp_path / "mlp-data", _info())  # stopped before its first epoch ended
    if checkpoint == "torn":
        (run.path / "checkpoints").mkdir()
        (run.path / "checkpoints" / "last.json").write_text('{"tensors_file": "s.safetensors"}')
        (run.path / "checkpoints" / "s.safetensors").write_bytes(b"\x08\x00")
    with pytest.raises(UserError, match="--name mlp-data --overwrite"):
        api.resume(run.path)
