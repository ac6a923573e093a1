"""The precision each device computes in: decided from the device's properties, so the
choice for GPUs this machine lacks is checked here too."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchgraft import api
from torchgraft.errors import UserError
from torchgraft.precision import DeviceProperties, choose_precision, gradient_scaler
from torchgraft.train.loop import StepOptions, train_one_epoch
from torchgraft.train.schedule import one_cycle

T4 = DeviceProperties("cuda", "Tesla T4", (7, 5))
V100 = DeviceProperties("cuda", "Tesla V100-SXM2-16GB", (7, 0))
A100 = DeviceProperties("cuda", "NVIDIA A100-SXM4-40GB", (8, 0))
H100 = DeviceProperties("cuda", "NVIDIA H100 80GB HBM3", (9, 0))
CPU = DeviceProperties("cpu", "cpu")
MPS = DeviceProperties("mps", "mps")


@pytest.mark.parametrize(
    ("device", "expected"),
    [(T4, "fp16"), (V100, "fp16"), (A100, "bf16"), (H100, "bf16"), (CPU, "fp32"), (MPS, "fp32")],
)
def test_auto_is_native_bf16_then_fp16_on_gpus_and_fp32_elsewhere(
    device: DeviceProperties, expected: str
) -> None:
    assert choose_precision("auto", device) == expected


@pytest.mark.parametrize("device", [T4, A100, CPU])
def test_an_explicit_choice_is_kept(device: DeviceProperties) -> None:
    assert choose_precision("fp32", device) == "fp32"
    assert choose_precision("bf16", device) == "bf16"


def test_bf16_on_a_gpu_that_only_emulates_it_warns(caplog: pytest.LogCaptureFixture) -> None:
    choose_precision.cache_clear()  # the decision is cached, its warning said once
    with caplog.at_level(logging.WARNING, logger="torchgraft.precision"):
        assert choose_precision("bf16", T4) == "bf16"
    assert "emulates" in caplog.text and "fp16" in caplog.text


@pytest.mark.parametrize("device", [CPU, MPS])
def test_fp16_off_an_nvidia_gpu_is_refused(device: DeviceProperties) -> None:
    with pytest.raises(UserError, match=r"--precision fp16 needs an NVIDIA GPU.*fp32"):
        choose_precision("fp16", device)


def test_training_refuses_fp16_on_the_cpu_before_decoding(tmp_path: object) -> None:
    with pytest.raises(UserError, match="fp16 needs an NVIDIA GPU"):
        api.train("digits", model="mlp", epochs=1, precision="fp16", device="cpu",
                  runs_dir=str(tmp_path), quiet=True)  # fmt: skip


def test_only_fp16_scales_the_loss() -> None:
    cpu = torch.device("cpu")
    assert gradient_scaler("bf16", cpu) is None and gradient_scaler("fp32", cpu) is None
    assert isinstance(gradient_scaler("fp16", cpu), torch.amp.GradScaler)


def test_loss_scaling_leaves_the_update_unchanged() -> None:
    """fp16's scaler multiplies the loss and divides the gradients back (before clipping):
    in fp32 arithmetic the trained weights match a run without it."""
    inputs = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    labels = (inputs[:, 0] > 0).long()
    loader = torch.utils.data.DataLoader(list(zip(inputs, labels, strict=True)), batch_size=16)
    trained = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=1024.0)):
        torch.manual_seed(0)
        model = nn.Linear(8, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        scheduler, _ = one_cycle(optimizer, len(loader))
        options = StepOptions(loss=F.cross_entropy, grad_clip=0.5, scaler=scaler)
        train_one_epoch(model, loader, optimizer, scheduler, torch.device("cpu"), options,
                        quiet=True)  # fmt: skip
        trained.append(model.weight.detach().clone())
    assert torch.allclose(trained[0], trained[1], atol=1e-6)


def test_the_run_records_its_device_and_precision(tmp_path: object) -> None:
    run = api.train("digits", model="mlp", epochs=1, device="cpu", runs_dir=str(tmp_path),
                    quiet=True, report=False)  # fmt: skip
    reloaded = api.load_run(run.path)
    assert reloaded.info.trained_on == {"device": "cpu", "device_name": "cpu", "precision": "fp32"}
