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


@pytest.mark.parametrize(
    ("name", "size", "dims"),
    [
        ("efficientnet_lite0", 64, 2 * (16 + 24 + 40 + 112 + 320)),  # its five stages
        ("resnet18", 64, 2 * (64 + 64 + 128 + 256 + 512)),
        ("convnext_atto", 64, 2 * (40 + 80 + 160 + 320)),  # four stages
        ("vit_tiny_patch16_224", 224, 2 * 192 * 5),  # the last five of twelve blocks
        ("deit_tiny_distilled_patch16_224", 224, 2 * 192 * 5),  # forward_head: both heads
        ("cnn", 28, 2 * (32 + 64 + 128)),
        ("mlp", 28, 256),  # no stages: the pre-logit features
    ],
)
def test_one_pass_gives_the_embedding_and_the_forwards_logits(
    name: str, size: int, dims: int
) -> None:
    model = create_classifier(name, 3, channels=3, image_size=size, mean=(0.5,) * 3,
                              std=(0.5,) * 3, pretrained=False).eval()  # fmt: skip
    images = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        embedding, logits = model.embedding_and_logits(images)
        assert torch.equal(logits, model(images))
    assert model._one_pass is True
    assert embedding.shape == (4, dims) and embedding.dtype == torch.float32


def test_a_net_whose_forward_is_not_its_head_gets_the_forward_in_a_second_pass() -> None:
    """Should a net's forward be more than its head on its final features, the check on the
    first call finds it."""
    model = create_classifier("cnn", 3, channels=3, image_size=28, mean=(0.5,) * 3,
                              std=(0.5,) * 3, pretrained=False).eval()  # fmt: skip
    plain_forward = model.net.forward
    model.net.forward = lambda x: plain_forward(x) * 2 + 1  # type: ignore[method-assign]
    images = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        for _ in range(2):  # the first call decides, the second follows the decision
            _, logits = model.embedding_and_logits(images)
            assert torch.equal(logits, model(images))
    assert model._one_pass is False
