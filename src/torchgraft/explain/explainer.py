"""`graft explain`: Grad-CAM heatmaps for image files, saved as PNGs next to the run."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from torchgraft.artifact import Run, atomic_write_bytes
from torchgraft.data import UnreadableImage, decode_file, eval_transform
from torchgraft.devices import resolve_device
from torchgraft.errors import UserError, did_you_mean
from torchgraft.explain.gradcam import grad_cam, png_bytes, side_by_side
from torchgraft.models import load_model
from torchgraft.probabilities import calibrated_probabilities

logger = logging.getLogger(__name__)

BATCH_SIZE = 32


@dataclass
class Explanation:
    source: str  # the image file
    class_name: str  # the class the heatmap explains
    display_name: str  # ... by its display name, the caption of the PNG
    probability: float  # the model's calibrated probability for that class
    predicted: str  # the class the model predicts
    heatmap_path: Path  # the PNG: the image and its Grad-CAM overlay side by side, the colour
    # scale on the right, the display name and probability above


@dataclass
class Explanations:
    explained: list[Explanation] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why it was skipped)


def explain_images(
    run: Run,
    images: Sequence[str | Path],
    class_name: str | None = None,
    output_dir: str | Path | None = None,
    device: str | torch.device = "auto",
) -> Explanations:
    """Grad-CAM for each image file: for `class_name`, else for the predicted class, with
    the model on `device` (auto: the GPU when there is one).

    Unreadable files are skipped with a warning and listed in `skipped`.
    """
    chosen = resolve_device(device)
    target = class_index(run, class_name)
    output = Path(output_dir) if output_dir is not None else run.path / "figures" / "gradcam"
    model = load_model(run).to(chosen)
    result = Explanations()
    readable = []
    used_names: set[str] = set()
    for image in images:
        try:
            readable.append((str(image), load_for_model(run, Path(image))))
        except UnreadableImage as error:
            logger.warning("skipping %s: %s", image, error.reason)
            result.skipped.append((str(image), error.reason))
    for start in range(0, len(readable), BATCH_SIZE):
        chunk = readable[start : start + BATCH_SIZE]
        batch = torch.stack([pixels for _, pixels in chunk]).to(chosen)
        targets = None if target is None else torch.full((len(chunk),), target)
        cam = grad_cam(model, batch, targets)
        logits = cam.logits.cpu()
        probabilities = calibrated_probabilities(logits, run.info.temperature, dim=1)
        for row, (source, pixels) in enumerate(chunk):
            path = output / png_name(Path(source).stem, used_names)
            explained = int(cam.class_indices[row])
            display_name = run.info.display_names[explained]
            caption = f"{display_name} {probabilities[row, explained]:.0%}"
            save_png(side_by_side(pixels, cam.heatmaps[row], caption=caption), path)
            result.explained.append(
                Explanation(
                    source,
                    run.info.class_names[explained],
                    display_name,
                    float(probabilities[row, explained]),
                    run.info.class_names[int(probabilities[row].argmax())],
                    path,
                )
            )
    return result


def class_index(run: Run, class_name: str | None) -> int | None:
    """The label index of `class_name` (a class or display name), or None for "predicted"."""
    if class_name is None:
        return None
    for names in (run.info.class_names, run.info.display_names):
        if class_name in names:
            return names.index(class_name)
    raise UserError(
        f"--class {class_name!r} is not a class of {run.path}: choose from "
        f"{', '.join(run.info.class_names)}.{did_you_mean(class_name, run.info.class_names)}"
    )


def load_for_model(run: Run, path: Path) -> torch.Tensor:
    """The image as the model sees it: decoded like training data, resized to the run's size."""
    if path.is_dir():
        raise UnreadableImage(path, "a folder: pass its image files (e.g. folder/*.jpg)")
    if not path.is_file():
        raise UnreadableImage(path, "no such file")
    pixels, _ = decode_file(path, run.info.preprocessing.channels)
    transformed: torch.Tensor = eval_transform(run.info.preprocessing)(pixels)
    return transformed


def png_name(stem: str, used: set[str]) -> str:
    """stem.gradcam.png, numbered when two inputs of one call share a name (a rerun
    overwrites its own earlier files rather than piling up copies)."""
    name, number = f"{stem}.gradcam.png", 1
    while name in used:
        number += 1
        name = f"{stem}-{number}.gradcam.png"
    used.add(name)
    return name


def save_png(image: Image.Image, path: Path) -> None:
    atomic_write_bytes(path, png_bytes(image))
