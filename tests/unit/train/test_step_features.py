"""Each optional step feature acts, measured on the step the engine takes.

The options come from `steps.step_options` (what the recipe hands the Trainer) and the steps
from `loop.train_one_epoch` (what the Trainer runs), on a one-layer model and hand-made
batches, so each check is a formula, not "the run still learns": a flag that is silently
ignored fails here. A fraction of a second each.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from torchgraft import api
from torchgraft.train.ema import make_ema
from torchgraft.train.loop import StepOptions, StepRecord, train_one_epoch
from torchgraft.train.steps import step_options

CPU = torch.device("cpu")
Batch = tuple[torch.Tensor, torch.Tensor]


def options_for(num_classes: int, labels: torch.Tensor, **settings: Any) -> StepOptions:
    """The fine-tune phase's step options for these settings, as the recipe builds them."""
    config = api.train_config(precision="fp32", **settings)
    return step_options(config, labels.numpy(), num_classes, CPU)


def one_epoch(model: nn.Module, batches: list[Batch], options: StepOptions, lr: float) -> Any:
    """Plain SGD (no momentum, no decay) at a constant rate: a step moves by -lr x gradient."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = LambdaLR(optimizer, lambda step: 1.0)
    return train_one_epoch(model, batches, optimizer, scheduler, CPU, options, quiet=True)


def linear_model(seed: int, in_features: int = 48, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, classes))


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# --- grad_clip ------------------------------------------------------------------------------


def test_grad_clip_bounds_the_gradient_norm_a_step_applies() -> None:
    """With SGD at lr 1 a step moves the weights by minus the gradient it applied, so the
    step's length is the applied gradient norm: over the clip without clipping, the clip
    with it, and in the same direction."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 4, 4, generator=generator) * 10  # large inputs: large gradients
    labels = torch.randint(0, 4, (8,), generator=generator)
    clip = 0.5

    def applied_gradient(grad_clip: float | None) -> torch.Tensor:
        model = linear_model(seed=1)
        before = flat(model)
        options = options_for(4, labels, grad_clip=grad_clip)
        one_epoch(model, [(images, labels)], options, lr=1.0)
        return before - flat(model)

    raw, clipped = applied_gradient(None), applied_gradient(clip)
    assert raw.norm() > 4 * clip  # the batch really needs clipping
    assert clipped.norm() == pytest.approx(clip, rel=1e-4)  # clipped to the bound, not below
    torch.testing.assert_close(clipped, raw * (clip / raw.norm()), rtol=1e-4, atol=1e-7)


# --- label_smoothing ------------------------------------------------------------------------


class FixedLogits(nn.Module):
    """Answers `logits` for every input (a parameter, so that the step has a gradient)."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(inputs), -1)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_sets_the_loss_of_a_confident_correct_prediction(
    smoothing: float,
) -> None:
    """Logits (z, 0, 0, 0) for the true class 0. Smoothing eps over K classes makes the target
    q = (1 - eps + eps/K, eps/K, ...), so the loss is -sum q log p = log(e^z + K - 1) - q_0 z:
    it grows with eps even though the prediction is right and confident."""
    z, classes = 6.0, 4
    labels = torch.zeros(5, dtype=torch.long)
    options = options_for(classes, labels, label_smoothing=smoothing)
    result = one_epoch(FixedLogits([z, 0.0, 0.0, 0.0]), [(torch.zeros(5, 1), labels)], options, 0)
    target_share = 1 - smoothing + smoothing / classes
    expected = math.log(math.exp(z) + classes - 1) - target_share * z
    assert result.loss == pytest.approx(expected, abs=1e-6)  # float32 logits
    if smoothing:
        assert result.loss > 10 * (math.log(math.exp(z) + classes - 1) - z)  # vs unsmoothed


# --- cutmix ---------------------------------------------------------------------------------


class Recording(nn.Module):
    """Keeps every batch it is fed; answers logits that do not depend on it."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(classes))
        self.inputs: list[torch.Tensor] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.inputs.append(inputs.detach().clone())
        return self.bias.expand(len(inputs), -1)


def recording_loss(options: StepOptions, targets: list[torch.Tensor]) -> StepOptions:
    """The same options, with the targets each batch's loss was computed against kept."""
    loss = options.loss

    def recorded(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        targets.append(target.detach().clone())
        return loss(logits, target)

    return replace(options, loss=recorded)


def test_cutmix_pastes_a_box_whose_area_share_is_the_label_weight() -> None:
    """Image i is filled with the value i + 1 and labelled i, so in a mixed image each pixel
    says which image it came from. The pasted pixels must form one rectangle, and each
    class's share of an image's pixels must equal that class's weight in its soft label."""
    size, count = 16, 8
    images = (torch.arange(count, dtype=torch.uint8) + 1).view(count, 1, 1, 1)
    images = images.expand(count, 1, size, size).contiguous()
    labels = torch.arange(count)
    torch.manual_seed(0)
    model, targets = Recording(count), []
    options = recording_loss(options_for(count, labels, cutmix=1.0), targets)
    one_epoch(model, [(images, labels)] * 6, options, lr=0.1)
    assert len(model.inputs) == len(targets) == 6
    mixed_batches = 0
    for mixed, soft in zip(model.inputs, targets, strict=True):
        assert soft.shape == (count, count)  # soft labels, not the class indices
        values = mixed[:, 0].round().long() - 1  # (N, H, W): the source image of each pixel
        shares = torch.stack([(values == c).float().mean(dim=(1, 2)) for c in range(count)], 1)
        torch.testing.assert_close(shares, soft, rtol=0, atol=1e-6)
        own = shares[labels, labels]
        mixed_batches += bool(((own > 0) & (own < 1)).any())
        for index in range(count):  # the pasted pixels form one box
            rows, columns = torch.nonzero(values[index] != index, as_tuple=True)
            if len(rows):
                box = (rows.max() - rows.min() + 1) * (columns.max() - columns.min() + 1)
                assert box == len(rows)
    assert mixed_batches >= 3  # most batches pasted a box that neither vanished nor filled all


# --- ema ------------------------------------------------------------------------------------


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def test_ema_follows_the_warmed_up_decay_after_every_step() -> None:
    """After step 1 the average is the weights; after step k > 1 it is d * before + (1 - d) *
    weights with d = min(decay, k / (9 + k)): ema.py's (1 + n) / (10 + n), n = k - 1 updates
    already averaged. BatchNorm's running statistics are averaged the same way."""
    decay, steps = 0.6, 16  # the warm-up reaches 0.6 at step 14: both regimes are covered
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(steps, 8, 3, 4, 4, generator=generator)
    labels = torch.randint(0, 4, (steps, 8), generator=generator)
    batches = list(zip(images, labels, strict=True))
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 4), nn.BatchNorm1d(4))
    ema = make_ema(model, decay)
    assert ema is not None
    history: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def after_step(record: StepRecord) -> bool:
        history.append((snapshot(model), snapshot(ema.module)))
        return False

    options = replace(options_for(4, batches[0][1]), ema=ema, after_step=after_step)
    one_epoch(model, batches, options, lr=0.5)
    assert len(history) == steps
    weights, average = history[0]
    assert all(torch.equal(average[name], weights[name]) for name in weights)
    floats = [name for name in weights if weights[name].is_floating_point()]
    for step in range(2, steps + 1):
        weights, average = history[step - 1]
        before = history[step - 2][1]
        d = min(decay, step / (9 + step))
        for name in floats:
            expected = d * before[name] + (1 - d) * weights[name]
            torch.testing.assert_close(average[name], expected, rtol=1e-5, atol=1e-6)
        assert not torch.equal(average["1.weight"], weights["1.weight"])
    final = history[-1][1]["2.num_batches_tracked"]
    assert int(final) == steps  # counters are copied, not averaged
