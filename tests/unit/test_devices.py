"""A missing GPU or a typo is a UserError naming the device, in serving and training alike."""

from __future__ import annotations

import pytest
import torch

from torchgraft.devices import resolve_device
from torchgraft.errors import UserError


@pytest.fixture
def no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as one without CUDA or MPS, whatever it really has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.usefixtures("no_gpus")
@pytest.mark.parametrize("name", ["cuda", "cuda:1", "mps"])
def test_training_refuses_a_device_this_machine_lacks(name: str) -> None:
    with pytest.raises(UserError, match=rf"^{name}: torch sees no"):
        resolve_device(name)


def test_training_refuses_a_cuda_index_past_the_last_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"cuda:3: torch sees 1 CUDA device\(s\), cuda:0 to cuda:0"):
        resolve_device("cuda:3")


def test_training_refuses_a_typo_with_a_suggestion() -> None:
    with pytest.raises(UserError, match=r"device 'cdua': choose auto, cpu, cuda, mps.*cuda"):
        resolve_device("cdua")


@pytest.mark.usefixtures("no_gpus")
def test_auto_falls_back_to_the_cpu() -> None:
    assert resolve_device("auto") == torch.device("cpu")
