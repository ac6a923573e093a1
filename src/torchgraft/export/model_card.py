"""The model card of the timm folder (its README.md), written from graft.json and metrics.json:
what the model is, how well it did, on what data, how to feed it, and what it is for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torchgraft.artifact import Run

CLASSES_SHOWN = 50


def model_card(run: Run) -> str:
    info, prep = run.info, run.info.preprocessing
    architecture = info.model_name.removeprefix("hf-hub:")
    evaluation = _evaluation(run.path / "metrics.json")
    sections = [
        "---\nlibrary_name: timm\ntags:\n- image-classification\n- timm\n- torchgraft\n---",
        f"# {run.path.name}\n\nAn image classifier of {info.num_classes} classes: "
        f"{architecture}, fine-tuned with torchgraft from the run `{run.path.name}`.",
        "## Results\n\n" + _results(info.metrics, evaluation),
        "## Classes\n\n" + _classes(info.class_names, info.display_names),
        "## Preprocessing\n\n"
        f"- RGB{' converted to 1 grey channel' if prep.channels == 1 else ''}, "
        f"{prep.image_size} x {prep.image_size} pixels\n"
        f"- resize: {prep.resize_mode} ({prep.interpolation}, antialiased)\n"
        f"- values scaled to [0, 1], then normalised with mean {list(prep.mean)} and std "
        f"{list(prep.std)}\n\n"
        "timm's eval transform from config.json does all of this: "
        "`timm.data.create_transform(**timm.data.resolve_data_config(model=model))`.",
        "## Data\n\n" + _data(info.config.get("data", {}), info.data_summary),
        "## How to use\n\n```python\nimport json\n\nimport timm\n\n"
        "# Uploaded to the Hub (huggingface_hub.upload_folder), timm reads config.json itself:\n"
        "model = timm.create_model('hf-hub:ORG/NAME', pretrained=True).eval()\n"
        "# From this folder: the pretrained_cfg keeps the trained head and the preprocessing.\n"
        'config = json.load(open("config.json"))\n'
        'model = timm.create_model(config["architecture"], pretrained=True,\n'
        '    num_classes=config["num_classes"], pretrained_cfg_overlay=dict(\n'
        '        config["pretrained_cfg"], file="model.safetensors")).eval()\n'
        "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))\n"
        "```\n\n"
        "The network returns logits. torchgraft's calibrated probabilities are "
        f"softmax(logits / {info.temperature:.4f}) (the temperature fitted on the validation "
        "split; config.json keeps it under `torchgraft`).",
        "## Intended use\n\n"
        f"Classifying images like those it was trained on into the {info.num_classes} classes "
        "above. It has not been tested on other kinds of images, and it answers one of these "
        "classes for any input: check unfamiliar inputs before trusting an answer.",
        "## Training\n\n" + _training(info.config.get("train", {}), info.versions),
    ]
    return "\n\n".join(sections) + "\n"


def _evaluation(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()).get("metrics", {}))
    except (OSError, json.JSONDecodeError):
        return {}


def _results(metrics: dict[str, Any], evaluation: dict[str, Any]) -> str:
    lines = [f"| validation accuracy | {metrics.get('val_accuracy', float('nan')):.2%} |"]
    if "macro" in evaluation:
        lines.append(f"| macro F1 | {evaluation['macro']['f1']:.3f} |")
    for k, value in evaluation.get("top_k_accuracy", {}).items():
        if k != "1":
            lines.append(f"| top-{k} accuracy | {value:.2%} |")
    return "| metric | value |\n| --- | --- |\n" + "\n".join(lines)


def _classes(class_names: list[str], display_names: list[str]) -> str:
    shown = [
        f"{index}. {display}" + (f" (`{name}`)" if display != name else "")
        for index, (name, display) in enumerate(zip(class_names, display_names, strict=True))
    ][:CLASSES_SHOWN]
    more = len(class_names) - len(shown)
    return "\n".join(shown) + (
        f"\n\n... and {more} more (config.json has them all)" if more else ""
    )


def _data(data: dict[str, Any], summary: dict[str, Any]) -> str:
    return (
        f"- source: `{data.get('source', '?')}`\n"
        f"- {summary.get('train_images', '?')} training and {summary.get('val_images', '?')} "
        f"validation images ({data.get('val_fraction', '?')} of each class held out unless "
        f"the data came split); {summary.get('skipped', 0)} files skipped as unreadable"
    )


def _training(train: dict[str, Any], versions: dict[str, str]) -> str:
    settings = ", ".join(
        f"{key} {train[key]}" for key in ("epochs", "freeze_epochs", "lr", "seed") if key in train
    )
    libraries = ", ".join(f"{name} {version}" for name, version in sorted(versions.items()))
    return f"- {settings}\n- {libraries}"
