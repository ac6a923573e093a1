"""api.train on images in memory (arrays, tensors, ImageFolder, a Dataset, a Hugging Face
dataset) trains the same model as on the folder they came from, with the same seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from torchgraft import api
from torchgraft.testing import make_image_folder

SETTINGS = dict(model="cnn", epochs=1, image_size=32, batch_size=8, seed=3, quiet=True,
                report=False, tensorboard=False)  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "shapes", per_class=12, size=32)


def folder_contents(folder: Path) -> tuple[np.ndarray, list[str]]:
    """The folder's images as one (N, 32, 32, 3) array, in the order a folder is read (class
    folders sorted, then file names), with their class names as labels."""
    files = sorted(folder.glob("*/*.png"))
    images = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in files])
    return images, [path.parent.name for path in files]


def predicted(run: Any, images: np.ndarray) -> list[str]:
    return [prediction.class_name for prediction in api.predict(run, list(images))]


@pytest.mark.slow
def test_every_in_memory_source_trains_the_folders_model(folder: Path, tmp_path: Path) -> None:
    import datasets
    from torchvision.datasets import ImageFolder

    images, labels = folder_contents(folder)
    names = sorted(set(labels))
    indices = np.array([names.index(label) for label in labels])
    hugging_face = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(image) for image in images], "label": indices.tolist()},
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}
        ),
    )
    sources = {
        "arrays with string labels": (images, labels),
        "channels-first float tensors": (
            torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255,
            torch.from_numpy(indices),
        ),
        "ImageFolder": ImageFolder(str(folder)),
        "a Dataset of (tensor, label)": torch.utils.data.TensorDataset(
            torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(indices)
        ),
        "a Hugging Face dataset": hugging_face,
    }
    runs_dir = str(tmp_path / "runs")
    reference = api.train(folder, runs_dir=runs_dir, **SETTINGS)
    expected = predicted(reference, images)
    for what, data in sources.items():
        # Integer labels are named "0", "1", ... unless the class names come along.
        unnamed = what in ("channels-first float tensors", "a Dataset of (tensor, label)")
        extra = {"class_names": names} if unnamed else {}
        run = api.train(data, runs_dir=runs_dir, **SETTINGS, **extra)
        assert run.info.class_names == names, what
        assert run.info.metrics["val_accuracy"] == reference.info.metrics["val_accuracy"], what
        assert predicted(run, images) == expected, what
        assert run.info.config["data"]["source"].startswith("memory:"), what
    # An evaluation later in this process finds the held images again (the last run's).
    assert api.evaluate(run, quiet=True).metrics.accuracy == pytest.approx(
        reference.info.metrics["val_accuracy"]
    )
