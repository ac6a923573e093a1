"""Checkpoints resume exactly: after kill -9, SIGTERM or Ctrl-C, and to extend a finished run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.e2e.runner import GRAFT, graft
from torchgraft import api
from torchgraft.train.checkpoint import load_checkpoint

TRAIN = ("train", "digits", "--model", "cnn", "--epochs", "6", "--batch-size", "32",
         "--deterministic", "--no-tensorboard", "--quiet")  # fmt: skip


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run).part("model")


def assert_same_weights(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    """The same tensors under the same names, bit for bit (an empty dict is no evidence)."""
    assert expected, "no model tensors to compare"
    assert sorted(actual) == sorted(expected)
    differing = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert differing == []


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as file:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(file)]


def wait_for_epoch(run: Path, epoch: int, process: subprocess.Popen[str]) -> None:
    index = run / "checkpoints" / "last.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if index.is_file() and json.loads(index.read_text())["progress"]["epoch"] >= epoch:
            return
        time.sleep(0.05)
    pytest.fail("the training process never reached the epoch to kill it at")


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run the stopped ones must end up identical to."""
    root = tmp_path_factory.mktemp("straight")
    assert graft(*TRAIN, "--name", "straight", cwd=root).returncode == 0
    return root / "runs" / "straight"


def started_in_the_background() -> None:
    """As `nohup graft ... &` leaves a process: SIGINT ignored (SIGTERM must still work)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_resume_after_a_kill_gives_the_uninterrupted_weights(
    stop: signal.Signals, straight: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    process = subprocess.Popen(
        [*GRAFT, *TRAIN, "--name", "killed"], cwd=tmp_path, env=env, text=True,
        stderr=subprocess.PIPE, preexec_fn=started_in_the_background,
    )  # fmt: skip
    killed = tmp_path / "runs" / "killed"
    wait_for_epoch(killed, 2, process)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=300)
    assert json.loads((killed / "checkpoints" / "last.json").read_text())["progress"]["epoch"] < 6
    if stop == signal.SIGTERM:  # stopped as Ctrl-C stops it, saying how to go on
        assert process.returncode == 130, stderr
        assert "resume with `graft train --resume runs/killed`" in stderr
        assert "Traceback" not in stderr

    resumed = graft("train", "--resume", str(killed), "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    expected, actual = final_weights(straight), final_weights(killed)
    assert_same_weights(expected, actual)
    assert rows(killed) == rows(straight)


def test_extending_a_finished_run(tmp_path: Path) -> None:
    run = api.train(
        "digits", model="cnn", epochs=2, runs_dir=str(tmp_path), quiet=True, tensorboard=False
    )
    extended = api.resume(run.path, epochs=4, quiet=True)
    assert [int(row["epoch"]) for row in rows(extended.path)] == [1, 2, 3, 4]
    phases = load_checkpoint(run.path).meta["progress"]["phases"]
    assert phases == [{"name": "scratch", "epochs": 2}, {"name": "scratch", "epochs": 2}]
    assert api.load_run(run.path).info.config["train"]["epochs"] == 4


def test_resume_after_ctrl_c_across_the_phase_boundary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted in the fine-tune phase after a head phase: the resumed run matches."""
    from torchgraft.testing import make_image_folder
    from torchgraft.train import callbacks

    data = make_image_folder(tmp_path / "data", per_class=8, size=32)
    settings = dict(
        model="efficientnet_lite0", freeze_epochs=2, epochs=2, image_size=32, batch_size=8,
        runs_dir=str(tmp_path / "runs"), quiet=True, tensorboard=False, deterministic=True,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    straight = api.train(data, name="straight", **settings)

    original = callbacks.EpochLog.on_epoch_end

    def interrupt_at_epoch_3(self, trainer, record):  # type: ignore[no-untyped-def]
        original(self, trainer, record)
        if record.epoch == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.EpochLog, "on_epoch_end", interrupt_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        api.train(data, name="interrupted", **settings)
    monkeypatch.undo()
    interrupted = api.resume(tmp_path / "runs" / "interrupted", quiet=True)
    expected, actual = final_weights(straight.path), final_weights(interrupted.path)
    assert_same_weights(expected, actual)
    assert rows(interrupted.path) == rows(straight.path)
