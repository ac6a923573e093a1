"""Two processes under torchrun (DDP over gloo on the CPU) learn like one."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.runner import graft

TRAIN = ("train", "digits", "--model", "cnn", "--epochs", "8", "--batch-size", "32", "--quiet")


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "-m", "torchgraft", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def best_accuracy(run: Path) -> float:
    with (run / "metrics.csv").open() as file:
        return max(float(row["val_accuracy"]) for row in csv.DictReader(file))


@pytest.mark.slow
def test_two_gloo_processes_match_one_and_resume(tmp_path: Path) -> None:
    single = graft(*TRAIN, "--name", "single", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    parallel = torchrun(*TRAIN, "--name", "ddp", cwd=tmp_path)
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["ddp", "single"]  # one folder for 2 ranks
    assert parallel.stdout.count("run saved to") == 1  # rank 0 speaks for both
    assert abs(best_accuracy(runs / "ddp") - best_accuracy(runs / "single")) <= 0.01

    extended = torchrun(
        "train", "--resume", str(runs / "ddp"), "--epochs", "10", "--quiet", cwd=tmp_path
    )
    assert extended.returncode == 0, extended.stderr[-3000:]
    with (runs / "ddp" / "metrics.csv").open() as file:
        assert [int(row["epoch"]) for row in csv.DictReader(file)] == list(range(1, 11))
