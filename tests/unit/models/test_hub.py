"""Models from the Hugging Face Hub (`hf-hub:org/name`): described by timm's own loader when
online, refused at once (not after half a minute of retries) when offline."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import timm.models
from huggingface_hub import constants

from torchgraft.errors import UserError
from torchgraft.models import get_spec, registry
from torchgraft.models import hub as hub_module
from torchgraft.models.hub import hub_unreachable_reason

NAME = "hf-hub:someone/tiny-classifier"  # described once per process: other tests, other names


def test_a_hub_name_is_described_by_the_config_timm_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []

    def config_from_hub(model_id: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
        asked.append(model_id)
        config = {"input_size": (3, 160, 160), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                  "interpolation": "bicubic"}  # fmt: skip
        return config, "resnet10t", {}

    monkeypatch.setattr(registry, "raise_if_hub_unreachable", lambda: None)  # online
    monkeypatch.setattr(timm.models, "load_model_config_from_hf", config_from_hub)
    spec = get_spec(NAME)
    assert get_spec(NAME) is spec  # asked once: training looks the spec up several times
    assert asked == ["someone/tiny-classifier"]
    assert (spec.name, spec.family, spec.image_size) == (NAME, "timm", 160)
    assert (spec.mean, spec.std, spec.interpolation) == ((0.5,) * 3, (0.25,) * 3, "bicubic")


def test_offline_a_hub_name_is_refused_with_what_works_offline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"HF_HUB_OFFLINE is set.*use cnn, efficientnet_lite0"):
        get_spec("hf-hub:someone/offline-classifier")


def test_a_host_that_does_not_resolve_means_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for variable in hub_module.PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(hub_module.socket, "getaddrinfo", no_dns)
    assert hub_unreachable_reason() == (
        "no network: huggingface.co does not resolve (Name or service not known)"
    )
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # the proxy resolves names instead
    assert hub_unreachable_reason() is None
