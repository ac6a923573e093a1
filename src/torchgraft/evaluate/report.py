"""The evaluation's outputs: figures/*.png, the same figures in TensorBoard, and report.html.

report.html is one self-contained file (evaluate.pages): figures are embedded as data URIs,
styles are inline, and there is no script, so it opens offline in any browser and can be
mailed as it is.
"""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import torch

from torchgraft.artifact import Run, atomic_write_bytes
from torchgraft.errors import UserError
from torchgraft.evaluate import figures
from torchgraft.evaluate.pages import data_uri, document, escape, section, table

if TYPE_CHECKING:
    from torchgraft.evaluate.evaluator import Evaluation, Scored
    from torchgraft.evaluate.familiar import FamiliarSummary

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"


def write_outputs(run: Run, evaluation: Evaluation, scored: Scored, quiet: bool) -> None:
    """Render the figures, save them, log them to TensorBoard and write report.html."""
    pngs = render_figures(run, evaluation, scored)
    for name, png in pngs.items():
        atomic_write_bytes(run.path / "figures" / f"{name}.png", png)
    if (run.path / "tensorboard").is_dir():
        log_to_tensorboard(run, pngs)
    html_text = render_report(run, evaluation, pngs)
    atomic_write_bytes(run.path / REPORT_FILE, html_text.encode())
    logger.info("report written to %s", run.path / REPORT_FILE)


def render_figures(run: Run, evaluation: Evaluation, scored: Scored) -> dict[str, bytes]:
    names = run.info.display_names
    reliability = evaluation.reliability
    pngs = {
        "confusion_matrix": figures.confusion_matrix_png(evaluation.metrics, names),
        "reliability": figures.reliability_png(
            [
                ("before calibration", reliability["before"], evaluation.ece_before),
                (
                    f"temperature {evaluation.temperature:.2f}",
                    reliability["after"],
                    evaluation.ece_after,
                ),
            ]
        ),
    }
    if evaluation.top_losses:
        pngs["top_losses"] = top_losses_figure(run, evaluation, scored)
    curves = figures.training_curves_png(run.path / "metrics.csv")
    if curves is not None:
        pngs["training_curves"] = curves
    return pngs


def top_losses_figure(run: Run, evaluation: Evaluation, scored: Scored) -> bytes:
    """The worst mistakes, each shown beside its Grad-CAM for the (wrongly) predicted class:
    what the model saw that made it say so. Plain images when the model has no feature map."""
    from torchgraft.explain import grad_cam, side_by_side

    losses = evaluation.top_losses
    images = torch.stack([scored.dataset[loss.index][0] for loss in losses])
    predicted = torch.tensor([loss.predicted_index for loss in losses])
    try:
        heatmaps = grad_cam(scored.model, images, predicted).heatmaps
    except UserError as error:  # e.g. the MLP: no spatial features to explain
        logger.info("top losses without Grad-CAM: %s", error)
        heatmaps = torch.zeros(images.shape[0], *images.shape[-2:])
    tiles = [
        side_by_side(image, heatmap, 160, colour_bar=False)  # the figure has one for all
        for image, heatmap in zip(images, heatmaps, strict=True)
    ]
    names = run.info.display_names
    captions = [
        f"true {names[x.true_index]} ({x.true_probability:.0%}), said "
        f"{names[x.predicted_index]} ({x.probability:.0%})"
        for x in losses
    ]
    return figures.top_losses_png(tiles, captions, colour_bar="Grad-CAM of the class said")


def log_to_tensorboard(run: Run, pngs: dict[str, bytes]) -> None:
    """The same figures under "evaluation/" in the run's TensorBoard log."""
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    step = int(run.info.metrics.get("epoch", 0) or 0)
    with SummaryWriter(log_dir=str(run.path / "tensorboard")) as writer:
        for name, png in pngs.items():
            image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            writer.add_image(f"evaluation/{name}", image, global_step=step, dataformats="HWC")


def render_report(run: Run, evaluation: Evaluation, pngs: dict[str, bytes]) -> str:
    """The whole report as one HTML string."""
    info = run.info
    sections = [
        overview(run, evaluation),
        section("Data", data_table(run, evaluation)),
        section(
            "Training curves",
            image_tag(
                pngs.get("training_curves"), "training-curves", "Loss and accuracy per epoch"
            ),
        ),
        section("Per-class metrics", per_class_table(evaluation)),
        section(
            "Confusion matrix",
            image_tag(pngs["confusion_matrix"], "confusion-matrix", "Confusion matrix")
            + confusion_table(evaluation, info.display_names)
            + most_confused(evaluation),
        ),
        section("Top losses", top_losses_body(evaluation, pngs.get("top_losses"))),
        section("Calibration", calibration_body(evaluation, pngs["reliability"])),
        section(
            "Configuration",
            "<details><summary>resolved config</summary><pre>"
            + escape(json.dumps(info.config, indent=2))
            + "</pre></details>",
        ),
    ]
    if evaluation.familiar is not None:  # before the configuration, the last section
        sections.insert(-1, section("Unfamiliar inputs", familiar_body(evaluation.familiar)))
    return document(f"torchgraft report: {run.path.name}", "".join(sections))


def image_tag(png: bytes | None, element_id: str, alt: str) -> str:
    if png is None:
        return '<p class="muted">No metrics.csv in this run (trained elsewhere?).</p>'
    return f'<img id="{element_id}" alt="{escape(alt)}" src="{data_uri(png)}">'


def overview(run: Run, evaluation: Evaluation) -> str:
    metrics = evaluation.metrics
    cards = [("accuracy", f"{metrics.accuracy:.2%}")]
    cards += [(f"top-{k}", f"{value:.2%}") for k, value in metrics.top_k_accuracy.items() if k > 1]
    cards += [("macro F1", f"{metrics.macro['f1']:.3f}"),
              ("ECE", f"{evaluation.ece_before:.3f} → {evaluation.ece_after:.3f}")]  # fmt: skip
    if evaluation.tta_views:
        cards.append(("without TTA", f"{evaluation.plain_accuracy:.2%}"))
    body = "".join(f'<div class="card">{escape(n)}<b>{escape(v)}</b></div>' for n, v in cards)
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    tta = f", test-time augmentation over {len(evaluation.tta_views)} views" * bool(
        evaluation.tta_views
    )
    return (
        f'<p class="muted">{escape(run.info.model_name)} on {evaluation.images} images of the '
        f"{escape(evaluation.source)}{escape(tta)}; written {when}.</p>"
        f'<div class="cards">{body}</div>'
    )


def data_table(run: Run, evaluation: Evaluation) -> str:
    summary = run.info.data_summary
    rows = [[name.replace("_", " "), value] for name, value in summary.items()]
    source = run.info.config.get("data", {}).get("source", "")
    rows.insert(0, ["source", source])
    rows.append(["classes", len(run.info.class_names)])
    return table(["", "value"], rows, "data-summary")


def per_class_table(evaluation: Evaluation) -> str:
    metrics = evaluation.metrics
    rows = [
        [c.name, f"{c.precision:.3f}", *([f"{c.recall:.3f}", f"{c.f1:.3f}"] if c.support
                                          else ["no images", "no images"]), c.support]
        for c in metrics.per_class
    ]  # fmt: skip
    total = sum(c.support for c in metrics.per_class)
    table_html = table(["class", "precision", "recall", "F1", "support"], rows, "per-class")
    averages = "".join(
        f'<tr class="average"><td>{label}</td><td>{avg["precision"]:.3f}</td>'
        f"<td>{avg['recall']:.3f}</td><td>{avg['f1']:.3f}</td><td>{total}</td></tr>"
        for label, avg in (("macro average", metrics.macro), ("weighted average", metrics.weighted))
    )
    note = (
        f'<p id="absent-classes">No images of {escape(", ".join(metrics.absent))} in this set: '
        "recall and F1 are undefined there, and the macro average counts such a class only "
        "if the model predicted it (precision 0).</p>"
        if metrics.absent
        else ""
    )
    return table_html.replace("</tbody>", averages + "</tbody>") + note


def confusion_table(evaluation: Evaluation, names: list[str]) -> str:
    """The counts as a table too: readable by screen readers and searchable."""
    head = "".join(f"<th>{escape(name)}</th>" for name in names)
    rows = "".join(
        f"<tr><th>{escape(name)}</th>"
        + "".join(
            f'<td class="diagonal">{n}</td>' if i == j else f"<td>{n}</td>"
            for j, n in enumerate(counts)
        )
        + "</tr>"
        for i, (name, counts) in enumerate(zip(names, evaluation.metrics.confusion, strict=True))
    )
    return (
        "<details><summary>counts (rows: true class, columns: predicted)</summary>"
        f'<table id="confusion-table"><thead><tr><th>true \\ predicted</th>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></details>"
    )


def most_confused(evaluation: Evaluation) -> str:
    pairs = evaluation.metrics.most_confused
    if not pairs:
        return "<p>No mistakes.</p>"
    items = "".join(
        f"<li>{escape(true)} taken for {escape(predicted)}: {count}</li>"
        for true, predicted, count in pairs
    )
    return f"<p>Most confused:</p><ul>{items}</ul>"


def top_losses_body(evaluation: Evaluation, png: bytes | None) -> str:
    if png is None:
        return "<p>No mistakes on this set.</p>"
    rows = [[x.source, x.true_class, x.predicted_class, f"{x.probability:.1%}", f"{x.loss:.2f}"]
            for x in evaluation.top_losses]  # fmt: skip
    return (
        "<p>The images the model got most wrong, each with its Grad-CAM for the predicted class"
        " (red: where the evidence for that class was).</p>"
        + image_tag(png, "top-losses", "Top losses with Grad-CAM")
        + table(["image", "true", "predicted", "probability", "loss"], rows, "top-losses-table")
    )


def calibration_body(evaluation: Evaluation, png: bytes) -> str:
    return (
        f"<p>Expected calibration error {evaluation.ece_before:.4f} before and "
        f"{evaluation.ece_after:.4f} after temperature scaling (T = "
        f"{evaluation.temperature:.3f}, fitted on the validation split and applied by predict, "
        "export and serve). Bars below the diagonal mean the model is more confident than it "
        "is right.</p>" + image_tag(png, "reliability-diagram", "Reliability diagram")
    )


def familiar_body(familiar: FamiliarSummary) -> str:
    return (
        f"<p>Prediction flags an image as unfamiliar when the mean cosine distance of its "
        f"features to its {familiar.k} nearest of {familiar.references} training images is above "
        f"{familiar.threshold:.4f}: the {familiar.quantile:g} quantile of the validation "
        f"images' distances ({familiar.flagged:.1%} of them are above it).</p>"
    )
