import pytest
import torch
from safetensors.torch import save_file

from torchgraft.errors import UserError
from torchgraft.models import (
    BackboneSpec,
    GraftedClassifier,
    create_classifier,
    get_spec,
    register,
)


def pretrained_resnet18(weights_path: str | None = None) -> GraftedClassifier:
    """A 4-class resnet18 grafted onto pretrained weights (a file, else the hub)."""
    return create_classifier(
        "resnet18", 4, channels=3, image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3,
        pretrained=True, weights_path=weights_path,
    )  # fmt: skip


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(BackboneSpec("mlp", "scratch", 28, (0.5,), (0.5,)))


def test_unknown_model_gets_a_suggestion() -> None:
    with pytest.raises(UserError, match="Did you mean 'efficientnet_lite0'"):
        get_spec("efficientnet_lite")


def test_any_timm_model_has_a_spec_from_timm() -> None:
    spec = get_spec("resnet18")
    assert spec.family == "timm" and spec.image_size == 224 and len(spec.mean) == 3


def test_local_weights_file_of_another_timm_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import timm

    source = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    save_file(source.state_dict(), tmp_path / "resnet18.safetensors")
    model = pretrained_resnet18(weights_path=str(tmp_path / "resnet18.safetensors"))
    assert torch.equal(model.net.conv1.weight, source.conv1.weight)
    assert model.net.fc.out_features == 4


def test_weights_of_the_wrong_model_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    save_file({"foo": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(UserError, match="does not fit this model"):
        pretrained_resnet18(weights_path=str(tmp_path / "other.safetensors"))


def test_offline_hub_failure_says_how_to_pass_a_local_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    real_create = timm.create_model

    def offline(name: str, pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(UserError, match=r"--weights PATH"):
        pretrained_resnet18()
