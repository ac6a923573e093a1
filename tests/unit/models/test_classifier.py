"""The grafted classifier keeps its stem in float32 under autocast, without renaming anything."""

from __future__ import annotations

import pytest
import timm
import torch

from torchgraft.models import create_classifier


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "cnn"])
def test_the_stem_computes_in_float32_under_bf16_autocast(name: str) -> None:
    model = create_classifier(name, 3, channels=3, image_size=32, mean=(0.5,) * 3,
                              std=(0.5,) * 3, pretrained=False).eval()  # fmt: skip
    convolutions = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    outputs: list[torch.dtype] = []
    for convolution in convolutions[:2]:
        convolution.register_forward_hook(
            lambda module, inputs, output: outputs.append(output.dtype)
        )
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert outputs == [torch.float32, torch.bfloat16]  # the stem, then the next convolution


def test_keeping_the_stem_in_float32_renames_no_weight() -> None:
    model = create_classifier("efficientnet_lite0", 3, channels=3, image_size=32,
                              mean=(0.5,) * 3, std=(0.5,) * 3, pretrained=False)  # fmt: skip
    plain = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=3)
    assert [key.removeprefix("net.") for key in model.state_dict()] == list(plain.state_dict())
