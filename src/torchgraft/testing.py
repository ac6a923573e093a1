"""Tiny image folders and tiny runs for tests, tutorials and bug reports (no downloads).

Each generated class has its own colour and stripe direction, so even a small network can
tell them apart in a few steps, while the images still go through real files and decoders.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_CLASSES = ("circle", "square", "triangle")
_COLOURS = ((220, 40, 40), (40, 160, 60), (40, 70, 220), (230, 180, 30), (150, 50, 180))


def class_image(label: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """An (size, size, 3) uint8 image whose colour and stripes say which class it is."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    stripes = np.sin((x if label % 2 == 0 else y) * (0.6 + 0.3 * (label // 2))) > 0
    colour = np.array(_COLOURS[label % len(_COLOURS)], dtype=np.float32)
    image = np.where(stripes[..., None], colour, colour * 0.35)
    image = image + rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_image_folder(
    root: str | Path,
    classes: Sequence[str] = DEFAULT_CLASSES,
    per_class: int = 8,
    size: int = 32,
    split: bool = False,
    val_folder: str = "val",
    suffix: str = ".png",
) -> Path:
    """Write a folder of generated images: root/<class>/i.png, or root/{train,val}/<class>/.

    With `split`, a quarter of each class (at least one image) goes to `val_folder`.
    """
    root = Path(root)
    for label, name in enumerate(classes):
        for index in range(per_class):
            held_out = split and index < max(1, per_class // 4)
            folder = root / (val_folder if held_out else "train") / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            image = class_image(label, size, seed=label * 1000 + index)
            Image.fromarray(image).save(folder / f"{name}_{index:03d}{suffix}")
    return root
