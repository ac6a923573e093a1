"""A damaged checkpoint: `graft train --resume` exits 2 with one line that names the file
and says how to go on, never a traceback, and never resumes from it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tests.unit.train.test_resume import train
from torchgraft.cli import app
from torchgraft.testing import make_image_folder
from torchgraft.train.callbacks import Callback
from torchgraft.train.checkpoint import load_checkpoint


class StopAfterEpoch1(Callback):
    """Stops cleanly after epoch 1 of 2, so the run has a checkpoint and a resume to do."""

    def on_epoch_end(self, trainer: object, record: object) -> None:
        trainer.stop("stopped by the test")  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stopped")
    data = make_image_folder(root / "data", per_class=4, size=16)
    return train(data, root / "runs", "run", [StopAfterEpoch1()], epochs=2)


def tensors_file(run: Path) -> Path:
    return run / "checkpoints" / load_checkpoint(run).meta["tensors_file"]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def without_key(key: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        index = json.loads(path.read_text())
        del index[key]
        path.write_text(json.dumps(index))

    return damage


INDEX_DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": truncate,
    "empty": lambda path: path.write_bytes(b""),
    "not text": lambda path: path.write_bytes(b"\xff\xfe\x00garbage"),
    "a list": lambda path: path.write_text("[]"),
    "no progress": without_key("progress"),
    "no tensors file": without_key("tensors_file"),
}
TENSORS_DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": truncate,
    "empty": lambda path: path.write_bytes(b""),
    "missing": lambda path: path.unlink(),
}


def resume_in_cli(run: Path) -> Result:
    """`graft train --resume RUN`, in this process (a subprocess spends seconds importing)."""
    return CliRunner().invoke(app, ["train", "--resume", str(run), "--quiet"])


def assert_refused_naming(result: Result, damaged: Path, run: Path) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert lines[0].startswith("error: ") and str(damaged) in lines[0]
    assert "cannot resume" in lines[0]
    assert f"--name {run.name} --overwrite" in lines[0]  # how to go on


def test_the_undamaged_copy_resumes(stopped: Path, tmp_path: Path) -> None:
    """The control: what the other tests damage is a checkpoint the same command resumes."""
    run = Path(shutil.copytree(stopped, tmp_path / "run"))
    assert load_checkpoint(run).meta["progress"]["epoch"] == 1
    result = resume_in_cli(run)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run).meta["progress"]["epoch"] == 2


@pytest.mark.parametrize("damage", INDEX_DAMAGE)
def test_a_damaged_last_json_is_refused_in_one_line(
    damage: str, stopped: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(stopped, tmp_path / "run"))
    index = run / "checkpoints" / "last.json"
    INDEX_DAMAGE[damage](index)
    assert_refused_naming(resume_in_cli(run), index, run)


@pytest.mark.parametrize("damage", TENSORS_DAMAGE)
def test_damaged_checkpoint_tensors_are_refused_in_one_line(
    damage: str, stopped: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(stopped, tmp_path / "run"))
    tensors = tensors_file(run)
    TENSORS_DAMAGE[damage](tensors)
    assert_refused_naming(resume_in_cli(run), tensors, run)
