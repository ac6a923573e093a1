"""Checkpoints resume exactly: after kill -9, SIGTERM or SIGINT sent during an epoch, after
Ctrl-C across a phase boundary, and to extend a finished run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from torchgraft import api
from torchgraft.cli import app
from torchgraft.train.checkpoint import load_checkpoint

# The smallest run in which a resume means something: 3 epochs of a from-scratch mlp.
TRAIN = ("train", "--model", "mlp", "--epochs", "3", "--image-size", "16", "--batch-size", "8",
         "--deterministic", "--no-tensorboard", "--no-report", "--quiet")  # fmt: skip
SETTINGS = dict(model="mlp", epochs=3, image_size=16, batch_size=8, deterministic=True,
                tensorboard=False, report=False, quiet=True)  # fmt: skip

# `graft ARGS` that holds still in the first step of epoch 3 (after epoch 2's checkpoint),
# having touched $PAUSED_FILE, until a signal stops it; exit 3 if none comes.
PAUSING_GRAFT = """
import os, runpy, sys, time
from pathlib import Path
from torchgraft.train import callbacks

def pause_in_epoch_3(self, trainer, step):
    if trainer.epoch == 3:
        Path(os.environ["PAUSED_FILE"]).touch()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            time.sleep(0.01)  # sleep-ok: holds the child until the test signals it
        os._exit(3)

callbacks.Checkpointer.on_step_end = pause_in_epoch_3
sys.argv = ["graft", *sys.argv[1:]]
runpy.run_module("torchgraft", run_name="__main__")
"""


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


def wait_until_paused(paused: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if paused.is_file():
            return
        time.sleep(0.05)  # sleep-ok: paces a poll for the pause file, under a deadline
    _, stderr = process.communicate(timeout=60)
    pytest.fail(f"the training never reached epoch 3 (exit {process.returncode}): {stderr}")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from torchgraft.testing import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("data") / "images", per_class=6, size=16)


@pytest.fixture(scope="module")
def straight(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run (the same settings, in this process) the stopped ones must end
    up identical to."""
    runs = tmp_path_factory.mktemp("straight")
    return api.train(data, name="straight", runs_dir=str(runs), **SETTINGS).path


def started_in_the_background() -> None:
    """As `nohup graft ... &` leaves a process: SIGINT ignored (SIGTERM must still work)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def started_at_a_terminal() -> None:
    """Ctrl-C's SIGINT heard, even when these tests run in the background (which ignores it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize(
    "stop", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["kill-9", "sigterm", "sigint"]
)
def test_a_signal_during_an_epoch_leaves_a_run_that_resumes_to_the_uninterrupted_weights(
    stop: signal.Signals, data: Path, straight: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    paused = tmp_path / "paused"
    env = {**os.environ, "PAUSED_FILE": str(paused)}
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSING_GRAFT, *TRAIN, str(data), "--name", "killed"],
        cwd=tmp_path, env=env, text=True, stderr=subprocess.PIPE,
        preexec_fn=started_at_a_terminal if stop == signal.SIGINT else started_in_the_background,
    )  # fmt: skip
    wait_until_paused(paused, process)
    process.send_signal(stop)  # from outside, in the middle of epoch 3
    _, stderr = process.communicate(timeout=300)
    killed = tmp_path / "runs" / "killed"
    command = "graft train --resume runs/killed"
    if stop == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:  # stopped as Ctrl-C stops it, saying how to go on
        assert process.returncode == 130, stderr
        assert f"resume with `{command}`" in stderr
        assert "Traceback" not in stderr
    assert load_checkpoint(killed).meta["progress"]["epoch"] == 2
    kept = (killed / "metrics.csv").read_text().splitlines()
    assert len(kept) == 3  # the header and epochs 1 and 2

    monkeypatch.chdir(tmp_path)  # the command as the message gives it, in this process
    resumed = CliRunner().invoke(app, command.split()[1:])
    assert resumed.exit_code == 0, resumed.output
    # From the checkpoint: epochs 1 and 2 were not trained again (their rows, timings
    # included, are as the killed process wrote them); the result is the uninterrupted run's.
    assert (killed / "metrics.csv").read_text().splitlines()[:3] == kept
    assert rows(killed) == rows(straight)
    assert_same_weights(final_weights(straight), final_weights(killed))


def test_extending_a_finished_run(data: Path, tmp_path: Path) -> None:
    run = api.train(data, runs_dir=str(tmp_path), **{**SETTINGS, "epochs": 2})
    finished = final_weights(run.path)
    extended = api.resume(run.path, epochs=4, quiet=True)
    assert [int(row["epoch"]) for row in rows(extended.path)] == [1, 2, 3, 4]
    phases = load_checkpoint(run.path).meta["progress"]["phases"]
    assert phases == [{"name": "scratch", "epochs": 2}, {"name": "scratch", "epochs": 2}]
    assert api.load_run(run.path).info.config["train"]["epochs"] == 4
    trained_on = final_weights(run.path)
    assert any(not torch.equal(finished[name], trained_on[name]) for name in finished)


def test_resume_after_ctrl_c_across_the_phase_boundary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted in the fine-tune phase after a head phase: the resumed run matches."""
    from torchgraft.testing import make_image_folder
    from torchgraft.train import callbacks

    data = make_image_folder(tmp_path / "data", per_class=4, size=32)
    settings = dict(
        model="efficientnet_lite0", freeze_epochs=1, epochs=2, image_size=32, batch_size=8,
        runs_dir=str(tmp_path / "runs"), quiet=True, tensorboard=False, deterministic=True,
        report=False, cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    straight = api.train(data, name="straight", **settings)

    original = callbacks.EpochLog.on_epoch_end

    def interrupt_at_epoch_2(self, trainer, record):  # type: ignore[no-untyped-def]
        original(self, trainer, record)
        if record.epoch == 2:  # the first fine-tune epoch, after the head's
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.EpochLog, "on_epoch_end", interrupt_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        api.train(data, name="interrupted", **settings)
    monkeypatch.undo()
    interrupted = api.resume(tmp_path / "runs" / "interrupted", quiet=True)
    expected, actual = final_weights(straight.path), final_weights(interrupted.path)
    assert_same_weights(expected, actual)
    assert rows(interrupted.path) == rows(straight.path)
