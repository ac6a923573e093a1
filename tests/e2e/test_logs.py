"""What a run leaves in a log file: the output of `graft train > file`, and train.log."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.runner import GRAFT

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) ")


def train_into_a_file(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    """`graft train mnist5k --model mlp --epochs 2 ... > out.log 2>&1`, as nohup or CI run it."""
    log = tmp_path / "out.log"
    with log.open("w") as out:
        subprocess.run(
            [*GRAFT, "train", "mnist5k", "--model", "mlp", "--epochs", "2",
             "--runs-dir", str(tmp_path / "runs"), "--name", "mlp", *extra],
            stdout=out, stderr=subprocess.STDOUT, check=True, timeout=600,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
    return log.read_text()


@pytest.mark.slow
def test_a_two_epoch_run_redirected_to_a_file_writes_at_most_40_lines(tmp_path: Path) -> None:
    output = train_into_a_file(tmp_path)
    lines = output.replace("\r", "\n").splitlines()  # each redraw of a bar is a line in a log
    assert len(lines) <= 40, output
    assert "\r" not in output
    assert sum(line.startswith("epoch ") for line in lines) == 2  # one summary per epoch
    # train.log: the same messages with timestamps, every line of it.
    kept = (tmp_path / "runs" / "mlp" / "train.log").read_text().splitlines()
    assert kept and all(TIMESTAMP.match(line) for line in kept), kept
    epochs = [line for line in kept if " INFO epoch " in line]
    assert len(epochs) == 2 and all(line.split(" INFO ")[1] in lines for line in epochs)
    assert "report written to" in kept[-1]  # the evaluation that ends training is logged too


@pytest.mark.slow
def test_quiet_leaves_only_the_result(tmp_path: Path) -> None:
    quiet = train_into_a_file(tmp_path, "--quiet", "--no-report").splitlines()
    assert len(quiet) == 1 and quiet[0].startswith("run saved to"), quiet
