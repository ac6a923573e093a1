"""`--format timm`: a folder that plain timm loads, ready for `huggingface_hub.upload_folder`.

    exports/timm/
      model.safetensors  the network's weights under timm's own names
      config.json        timm's model config: architecture, num_classes, pretrained_cfg (input
                         size, mean and std, interpolation, crop), label_names; torchgraft's
                         own facts (temperature, display names) under "torchgraft"
      README.md          the model card: metrics, classes, preprocessing, data, intended use

Loaded with timm alone, no torchgraft:

    config = json.load(open("exports/timm/config.json"))
    model = timm.create_model(config["architecture"], pretrained=True,
        num_classes=config["num_classes"], pretrained_cfg_overlay=dict(
            config["pretrained_cfg"], file="exports/timm/model.safetensors"))

or, once uploaded, `timm.create_model("hf-hub:ORG/NAME", pretrained=True)`, which reads
config.json itself. The pretrained_cfg matters: with the architecture's own (1,000 ImageNet
classes), timm would drop the trained head as a mismatch, and its eval transform
(`timm.data.resolve_data_config` + `create_transform`) would resize for ImageNet instead of
as the run trained. The network takes normalised floats and returns logits: the
calibration temperature (in config.json) is not applied, which never changes the top-1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import save_file

from torchgraft.errors import GraftRuntimeError
from torchgraft.export.model import METADATA_PREFIX, ExportInputs, Predict
from torchgraft.probabilities import calibrated_probabilities

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
# torchgraft's resize modes as timm's crop modes (both keep the whole image or the centre).
CROP_MODES = {"crop": "center", "squash": "squash", "pad": "border"}
# Where a timm pretrained config points at other weights: dropped, the folder is the source.
SOURCE_KEYS = ("url", "file", "hf_hub_id", "hf_hub_filename", "source", "state_dict", "tag")


def export_timm(inputs: ExportInputs, folder: Path) -> None:
    """Write the folder: weights, config.json and the model card."""
    net = cast(torch.nn.Module, inputs.model.classifier.net)
    pretrained_cfg = getattr(net, "pretrained_cfg", None)
    if pretrained_cfg is None:
        name = inputs.metadata[METADATA_PREFIX + "model_name"]
        raise GraftRuntimeError(
            f"--format timm needs a timm backbone, and {name} is torchgraft's own network: "
            "export it with --format onnx or aoti instead"
        )
    weights = {key: value.detach().contiguous() for key, value in net.state_dict().items()}
    save_file(weights, str(folder / WEIGHTS_FILE))
    config = timm_config(net, dict(pretrained_cfg), inputs.metadata)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (folder / CARD_FILE).write_text(inputs.model_card())


def timm_config(
    net: torch.nn.Module, pretrained_cfg: dict[str, Any], metadata: dict[str, str]
) -> dict[str, Any]:
    """The config.json timm reads for `hf-hub:` models, with this run's preprocessing."""

    def field(name: str) -> str:
        return metadata[METADATA_PREFIX + name]

    size, channels = int(field("image_size")), int(field("channels"))
    classes = field("class_names").split("\n")
    mean, std = (json.loads(field(name)) for name in ("mean", "std"))
    for key in SOURCE_KEYS:
        pretrained_cfg.pop(key, None)
    pretrained_cfg.update(
        input_size=[channels, size, size], mean=mean, std=std, num_classes=len(classes),
        interpolation=field("interpolation"), crop_pct=1.0,
        crop_mode=CROP_MODES[field("resize_mode")],
    )  # fmt: skip
    return {
        "architecture": pretrained_cfg.get("architecture", field("model_name")),
        "num_classes": len(classes),
        "num_features": int(getattr(net, "num_features", 0)),
        "pretrained_cfg": pretrained_cfg,
        "model_args": {"in_chans": channels},
        "label_names": classes,
        "torchgraft": {key: value for key, value in metadata.items()},
    }


def load_timm_folder(folder: Path) -> tuple[Predict, dict[str, str]]:
    """For parity and benchmarks: the folder loaded by plain timm, as uint8 in and calibrated
    probabilities out like every other format."""
    import timm

    config = json.loads((folder / CONFIG_FILE).read_text())
    net = timm.create_model(
        config["architecture"],
        pretrained=True,
        num_classes=config["num_classes"],
        in_chans=config["model_args"]["in_chans"],
        pretrained_cfg_overlay={**config["pretrained_cfg"], "file": str(folder / WEIGHTS_FILE)},
    ).eval()
    pretrained_cfg, metadata = config["pretrained_cfg"], config["torchgraft"]
    mean = torch.tensor(pretrained_cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(pretrained_cfg["std"]).view(1, -1, 1, 1)
    temperature = float(metadata[METADATA_PREFIX + "temperature"])

    def predict(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            inputs = (torch.from_numpy(images).float() / 255 - mean) / std
            return calibrated_probabilities(net(inputs), temperature, dim=1).numpy()

    return predict, metadata
