"""Progress bars: live on a terminal, a few whole lines in a log, off when asked."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import pytest
from tqdm import std

from torchgraft import api
from torchgraft import progress as progress_module
from torchgraft.progress import LOG_EVERY_S, LogLines, progress
from torchgraft.testing import make_image_folder


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_in_a_log_a_bar_writes_one_whole_line_per_interval_and_nothing_on_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    monkeypatch.setattr(progress_module, "_interactive", lambda: False)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)  # not in a Jupyter kernel
    log = io.StringIO()
    with progress(total=100, desc="epoch 1 train", file=log) as bar:
        for step in range(100):
            clock.now += LOG_EVERY_S / 10  # ten steps per interval: 100 steps, 10 intervals
            bar.set_postfix(loss=1 / (step + 1), refresh=False)
            bar.update()
    lines = log.getvalue().splitlines(keepends=True)
    assert "\r" not in log.getvalue()
    assert len(lines) == 10  # 100 steps of 3 s: a line per 30 s
    assert all(line.startswith("epoch 1 train:") and line.endswith("\n") for line in lines)
    assert "loss=" in lines[-1]


def test_a_short_task_in_a_log_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "_interactive", lambda: False)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)  # not in a Jupyter kernel
    log = io.StringIO()
    for _ in progress(range(1000), desc="validate", file=log):
        pass
    assert log.getvalue() == ""


@pytest.mark.parametrize("value", ["1", "true", "True"])
def test_tqdm_disable_turns_even_a_terminal_bar_off(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_module, "_interactive", lambda: True)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setenv("TQDM_DISABLE", value)
    assert progress(range(3), file=io.StringIO()).disable


def test_a_terminal_bar_is_on_unless_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "_interactive", lambda: True)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not progress(range(3), file=io.StringIO()).disable
    assert progress(range(3), file=io.StringIO(), quiet=True).disable


def test_a_run_trains_the_same_on_a_terminal_in_a_notebook_and_into_a_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tqdm.auto's bar called iter() on a DataLoader when made, so a shuffled epoch drew its
    order twice: the same seed trained another model wherever ipykernel was imported."""
    from tqdm.notebook import tqdm as notebook_bar

    data = make_image_folder(tmp_path / "images", per_class=6, size=16)
    histories = []
    for bar in (std.tqdm, notebook_bar, LogLines):
        monkeypatch.setattr(progress_module, "_bar_class", lambda bar=bar: bar)
        run = api.train(data, name=bar.__name__, runs_dir=str(tmp_path / "runs"), model="mlp",
                        epochs=2, image_size=16, batch_size=8, tensorboard=False,
                        report=False, quiet=True)  # fmt: skip
        with open(run.path / "metrics.csv") as file:
            histories.append([row["train_loss"] for row in csv.DictReader(file)])
    assert histories[0] == histories[1] == histories[2]
