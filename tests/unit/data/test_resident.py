"""Batches resident on the training device: the same batches a DataLoader gives, and the
`light` augmentation batched. Checked on the CPU, where `--loader resident` also works."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from torchgraft import api
from torchgraft.data import CachedImageDataset, make_loader
from torchgraft.data.resident import ResidentBatches, fits_on_device, random_crop_and_flip
from torchgraft.errors import UserError
from torchgraft.train.setup import loader_workers

GB = 10**9


def test_resident_batches_are_the_dataloaders_batches() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (50, 3, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 4, 50)
    loader = make_loader(CachedImageDataset(pixels, labels, None), 16, True, 0, seed=3)
    resident = ResidentBatches(
        torch.from_numpy(pixels), torch.from_numpy(labels), 16, shuffle=True, seed=3
    )
    assert len(resident) == len(loader) == 4
    for epoch in (1, 2):  # the engine reseeds both generators each epoch
        loader.generator.manual_seed(epoch)  # type: ignore[union-attr]
        resident.generator.manual_seed(epoch)
        for (expected, expected_labels), (images, batch_labels) in zip(
            loader, resident, strict=True
        ):
            assert torch.equal(images, expected) and torch.equal(batch_labels, expected_labels)


def test_light_augmentation_crops_and_mirrors_about_half_the_batch() -> None:
    ramp = torch.arange(32, dtype=torch.uint8).mul(8).expand(64, 3, 32, 32)  # bright to the right
    generator = torch.Generator().manual_seed(0)
    augmented = random_crop_and_flip(ramp, generator)
    assert augmented.shape == ramp.shape and augmented.dtype == torch.float32
    assert augmented.min() >= 0 and augmented.max() <= 255
    mirrored = (augmented[:, 0, 16, -1] < augmented[:, 0, 16, 0]).float().mean()
    assert 0.3 < mirrored < 0.7
    # A crop keeps 50-100% of the area: mostly narrower than the image (a wide one is not).
    spans = augmented[:, 0, 16].amax(1) - augmented[:, 0, 16].amin(1)
    assert (spans < 248).float().mean() > 0.75 and (spans > 248 * 0.45).all()
    again = random_crop_and_flip(ramp, torch.Generator().manual_seed(0))
    assert torch.equal(again, augmented)  # the generator decides everything


@pytest.mark.parametrize(
    ("device", "nbytes", "free", "augment", "fits"),
    [
        ("cuda", 2 * GB, 16 * GB, "light", True),
        ("cuda", 9 * GB, 16 * GB, "none", False),  # more than half the free memory
        ("cuda", 1 * GB, 16 * GB, "trivial", False),  # per-image augmentation
        ("cpu", 1 * GB, None, "none", False),
    ],
)
def test_images_go_resident_on_a_gpu_with_room_and_batchable_augmentation(
    device: str, nbytes: int, free: int | None, augment: str, fits: bool
) -> None:
    assert fits_on_device(device, nbytes, free, augment)[0] is fits


def test_loader_workers_stay_off_the_cpus_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert loader_workers(None, torch.device("cpu")) == 0
    assert loader_workers(None, torch.device("cuda")) == 8
    assert loader_workers(3, torch.device("cuda")) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert loader_workers(None, torch.device("cuda")) == 1


def test_training_on_resident_batches_learns(tmp_path: Path) -> None:
    run = api.train(
        "digits", model="cnn", epochs=2, loader="resident", augment="light",
        runs_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), quiet=True, report=False,
    )  # fmt: skip
    assert run.info.metrics["val_accuracy"] > 0.5


def test_resident_batches_refuse_per_image_augmentation(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--loader resident augments with none or light"):
        api.train("digits", model="cnn", epochs=1, loader="resident", augment="trivial",
                  runs_dir=str(tmp_path), quiet=True, report=False)  # fmt: skip
