"""The tutorial notebooks in docs/tutorials: stored without outputs, and each one runs top to
bottom in a real Jupyter kernel (its asserts are the tutorial's claims)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parents[2] / "docs" / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
# Generous: each notebook is meant to run in well under 3 minutes on 2 CPU cores.
CELL_TIMEOUT_S = 300


def notebook_id(path: Path) -> str:
    return path.stem


def code_cells(path: Path) -> list[nbformat.NotebookNode]:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_the_learning_path_is_there() -> None:
    names = [path.name for path in NOTEBOOKS]
    assert names == [
        "01_tensors.ipynb",
        "02_autograd.ipynb",
        "03_training.ipynb",
        "04_transfer_learning.ipynb",
        "05_deployment.ipynb",
    ]


def test_the_index_links_every_notebook() -> None:
    index = (TUTORIALS.parent / "index.md").read_text()
    unlinked = [path.name for path in NOTEBOOKS if f"(tutorials/{path.name})" not in index]
    assert unlinked == [], f"add these notebooks to docs/index.md: {unlinked}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    with_outputs = [
        index
        for index, cell in enumerate(code_cells(path))
        if cell.outputs or cell.execution_count is not None
    ]
    assert with_outputs == [], f"clear the outputs of {path.name} (code cells {with_outputs})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_notebook_opens_with_colab_install_and_drive_cells(path: Path) -> None:
    install, drive = (cell.source for cell in code_cells(path)[:2])
    assert "IN_COLAB = " in install and "pip" in install and "if IN_COLAB:" in install
    assert "if IN_COLAB:" in drive and "drive.mount(" in drive


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=notebook_id)
def test_notebook_runs_top_to_bottom(
    path: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Off Colab a notebook saves to a throwaway folder from tempfile (trained runs, the
    # feature cache: over 100 MB for notebook 4). Under pytest's temporary root, which
    # pytest prunes, those do not pile up in /tmp run after run.
    monkeypatch.setenv("TMPDIR", str(tmp_path_factory.mktemp(f"{path.stem}-tmp")))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert errors == []
    # Everything a tutorial saves goes to its DATA_DIR (a temporary folder off Colab).
    assert list(tmp_path.iterdir()) == [], "the notebook wrote into its working directory"
