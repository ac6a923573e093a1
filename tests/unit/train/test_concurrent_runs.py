"""Two trainings started at the same moment in one runs folder (two notebooks, a job array):
without a name each gets a folder of its own and finishes there; with the same name exactly
one trains and the other is refused (a UserError, which `graft train` answers with exit 2).

Threads released by one barrier, so both pass the early "does the name exist?" check
together and meet at the folder's creation, the moment that decides."""

from __future__ import annotations

import csv
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from torchgraft import api
from torchgraft.artifact import Run
from torchgraft.errors import UserError
from torchgraft.testing import make_image_folder


def epochs_recorded(run: Path) -> int:
    with (run / "metrics.csv").open() as file:
        return len(list(csv.DictReader(file)))


def test_trainings_started_together_never_share_a_folder(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=6, size=16)
    # Two without a name (1 and 2 epochs, to tell their files apart), two named "same".
    starts = [("runs", 1, None), ("runs", 2, None), ("named", 1, "same"), ("named", 1, "same")]
    barrier = threading.Barrier(len(starts))

    def train(runs: str, epochs: int, name: str | None) -> Run | UserError:
        barrier.wait()
        try:
            return api.train(str(data), model="mlp", epochs=epochs, image_size=16,
                             batch_size=16, runs_dir=str(tmp_path / runs), name=name,
                             report=False, tensorboard=False, quiet=True)  # fmt: skip
        except UserError as error:
            return error

    with ThreadPoolExecutor(len(starts)) as pool:
        results = list(pool.map(lambda start: train(*start), starts))

    first, second = results[:2]
    assert isinstance(first, Run) and isinstance(second, Run)
    assert first.path != second.path
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["mlp-data", "mlp-data-2"]
    for run, epochs in ((first, 1), (second, 2)):  # each folder holds its own whole run
        saved = json.loads((run.path / "graft.json").read_text())
        assert saved["config"]["train"]["epochs"] == epochs
        assert epochs_recorded(run.path) == epochs
        assert (run.path / "model.safetensors").is_file()
        assert (run.path / "checkpoints" / "last.json").is_file()

    named = results[2:]
    winners = [r for r in named if isinstance(r, Run)]
    refused = [r for r in named if isinstance(r, UserError)]
    assert len(winners) == 1 and len(refused) == 1
    assert "same already exists" in str(refused[0]) and "--resume" in str(refused[0])
    assert [p.name for p in (tmp_path / "named").iterdir()] == ["same"]
    assert epochs_recorded(winners[0].path) == 1
