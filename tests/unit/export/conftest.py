"""A copy of the tiny run exported to every format once per session (AOTInductor compiles
C++, so this is the expensive part); tests that change a run take their own copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from torchgraft.artifact import RUN_FILE, WEIGHTS_FILE, Run
from torchgraft.evaluate.familiar import FAMILIAR_FILE
from torchgraft.export import ExportReport, export_run


def copy_run(run_path: Path, destination: Path) -> Run:
    """The run's graft.json, weights and unfamiliar-input reference set only: no exports, so
    nothing leaks between tests."""
    destination.mkdir(parents=True)
    for name in (RUN_FILE, WEIGHTS_FILE, FAMILIAR_FILE):
        shutil.copy2(run_path / name, destination / name)
    return Run.load(destination)


@pytest.fixture(scope="session")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    run = copy_run(tiny_run, tmp_path_factory.mktemp("exported") / "run")
    return export_run(run, None, quiet=True)


@pytest.fixture
def fresh_run(tiny_run: Path, tmp_path: Path) -> Run:
    """A private copy of the tiny run, for tests that change it or its exports."""
    return copy_run(tiny_run, tmp_path / "run")
