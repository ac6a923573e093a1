"""Data loading inside a real Jupyter kernel, with and without worker processes."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

CELLS = [
    """
import tempfile
import torch
from torchgraft.artifact import Preprocessing
from torchgraft.data import decode_split, load_data, make_loader, split_datasets
from torchgraft.testing import make_messy_folder

folder = tempfile.mkdtemp()
make_messy_folder(folder)
images = load_data(folder, val_fraction=0.0).train
prep = Preprocessing(32, "crop", (0.5,) * 3, (0.5,) * 3)
""",
    """
for mode in ("memory", "none"):
    decoded = decode_split(images, prep, mode=mode, workers=2)
    plain, augmented = split_datasets(images, decoded, prep, "light")
    batches = {
        workers: torch.cat([x for x, _ in make_loader(plain, 8, False, workers)])
        for workers in (0, 2)
    }
    assert torch.equal(batches[0], batches[2]), mode
    assert len(batches[0]) == len(images) - 7
    assert next(iter(make_loader(augmented, 8, True, 2)))[0].shape == (8, 3, 32, 32)
""",
    """
from torchgraft import api
run = api.train(folder, model="cnn", epochs=1, image_size=32, batch_size=8, num_workers=2,
                runs_dir=tempfile.mkdtemp())
assert (run.path / "model.safetensors").is_file()
""",
]


@pytest.mark.slow
def test_loading_works_in_a_notebook_with_workers() -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
    errors = [
        output for cell in notebook.cells for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]  # fmt: skip
    assert errors == []
