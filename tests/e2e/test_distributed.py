"""Two processes under torchrun (DDP over gloo on the CPU) train as one process would.

One torchrun start-up serves every test here (tests/e2e/ddp_worker.py): it trains the run
"straight" to the end, then the run "killed", which the test kills with SIGKILL once its
checkpoint of epoch 2 is written. A single process trains the same run in this process.
The mlp on 16px images, no augmentation; one step per epoch takes the whole training
split, so one process at batch 18 and two at batch 9 each see the same images in a step.
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e import ddp_worker
from torchgraft.testing import make_image_folder
from torchgraft.train.checkpoint import load_checkpoint

WORKER = Path(ddp_worker.__file__)
TRAIN_IMAGES = 18  # 3 classes of 8 images, 2 of each held out for validation
RANKS = (0, 1)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", "2", *args]  # fmt: skip


def wait_until_blocked(process: subprocess.Popen[bytes], out: Path) -> None:
    """Until both ranks wait after the killed run's checkpoint (each wrote its pid)."""
    pid_files = [out / f"killed-rank{rank}.pid" for rank in RANKS]
    deadline = time.monotonic() + 600
    while not all(path.is_file() for path in pid_files):
        if process.poll() is not None or time.monotonic() > deadline:
            log = (out / "torchrun.log").read_text()[-3000:]
            pytest.fail(f"the ranks never blocked (torchrun exit {process.poll()}):\n{log}")
        time.sleep(0.1)  # sleep-ok: paces a poll for the pid files, under a deadline


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    data = make_image_folder(root / "data", per_class=8, size=16, split=True)
    out = root / "out"
    out.mkdir()
    with (out / "torchrun.log").open("wb") as log:
        process = subprocess.Popen(
            torchrun(str(WORKER), str(data), str(root / "runs"), str(out)), cwd=root, env=ENV,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            ddp_worker.train(data, root / "single", out, "single")  # meanwhile, one process
            wait_until_blocked(process, out)
        finally:  # SIGKILL to torchrun's process group, then to each rank's (its own)
            for pid in [process.pid, *(int(f.read_text()) for f in out.glob("*.pid"))]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            process.wait(timeout=60)
    return root


def report(root: Path, run: str, rank: int, what: str) -> dict[str, torch.Tensor]:
    return load_file(root / "out" / f"{run}-rank{rank}-{what}.safetensors")


def rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
def test_one_step_of_two_ranks_is_one_step_of_one_process_on_both_shards(root: Path) -> None:
    start, single = report(root, "single", 0, "init"), report(root, "single", 0, "step1")
    for rank in RANKS:
        initial = report(root, "straight", rank, "init")
        assert all(torch.equal(initial[name], start[name]) for name in start)  # same start
        parallel = report(root, "straight", rank, "step1")
        assert parallel.keys() == single.keys()
        for name, weights in single.items():
            step = (weights - start[name]).abs().max()
            assert step > 0, name  # the step moved every tensor
            # Adam's first step is about lr * sign(gradient) for every weight: a gradient
            # that is not the average over both shards moves many weights by 2 lr.
            difference = (parallel[name] - weights).abs().max()
            assert difference <= 0.01 * step, (rank, name, float(difference), float(step))


@pytest.mark.slow
def test_ranks_hold_identical_weights(root: Path) -> None:
    for run in ("straight", "killed"):  # at the end; after epoch 2 of the killed run
        weights = [report(root, run, rank, "final") for rank in RANKS]
        assert weights[0].keys() == weights[1].keys()
        for name in weights[0]:
            assert torch.equal(weights[0][name], weights[1][name]), (run, name)
        assert not torch.equal(weights[0]["net.classifier.weight"],
                               report(root, run, 0, "step1")["net.classifier.weight"])  # fmt: skip


@pytest.mark.slow
def test_ranks_train_on_disjoint_shards_that_cover_the_training_split(root: Path) -> None:
    everything = report(root, "single", 0, "seen")["images"]  # one process: the whole split
    index = {row.numpy().tobytes(): number for number, row in enumerate(everything)}
    assert len(index) == len(everything) == TRAIN_IMAGES  # 18 different images
    shards = []
    for rank in RANKS:
        seen = report(root, "straight", rank, "seen")["images"]
        shards.append(sorted(index[row.numpy().tobytes()] for row in seen))
    assert set(shards[0]).isdisjoint(shards[1]), shards
    assert sorted(shards[0] + shards[1]) == list(range(TRAIN_IMAGES)), shards  # once each


@pytest.mark.slow
def test_a_killed_run_resumes_under_torchrun_exactly_and_extends(root: Path) -> None:
    runs = root / "runs"
    assert sorted(path.name for path in runs.iterdir()) == ["killed", "straight"]  # 1 per run
    killed, straight = runs / "killed", runs / "straight"
    before = rows(killed)
    assert [row["epoch"] for row in before] == ["1", "2"]
    assert load_checkpoint(killed).meta["progress"]["epoch"] == 2

    resumed = subprocess.run(
        torchrun("-m", "torchgraft", "train", "--resume", str(killed), "--epochs", "5",
                 "--quiet"),
        cwd=root, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("run saved to") == 1  # rank 0 speaks for both
    after = rows(killed)
    assert [row["epoch"] for row in after] == ["1", "2", "3", "4", "5"]  # extended to 5
    assert after[:2] == before  # the epochs before the kill are kept, not trained again
    # Epochs 3 and 4 are those of the run nobody killed, to the last digit: the resume
    # started from the checkpoint's weights, optimizer and random state.
    unchanged = [{k: v for k, v in row.items() if k != "seconds"} for row in after[2:4]]
    assert unchanged == [{k: v for k, v in row.items() if k != "seconds"}
                         for row in rows(straight)[2:4]]  # fmt: skip
