"""The training engine's optional features, each checked the way a user would check it.

Runs use the bundled 8x8 `digits` set with the small from-scratch `cnn` or `mlp` (a couple of
seconds each); the head-phase cases use a generated 3-class folder and efficientnet_lite0.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from torchgraft import api
from torchgraft.artifact import Run
from torchgraft.data import decode_split, load_data, make_loader, split_datasets
from torchgraft.errors import UserError
from torchgraft.models import create_classifier
from torchgraft.testing import make_image_folder
from torchgraft.train.checkpoint import load_checkpoint
from torchgraft.train.loop import evaluate
from torchgraft.train.phases import FineTunePhase, HeadPhase, ScratchPhase, extend_plan
from torchgraft.train.steps import class_weights, mix_transform, step_options

CHANCE = 0.3  # comfortably above chance (0.1) on the 10 digit classes
BATCH_SIZE = 64  # the default


def train_digits(tmp_path: Path, **settings: Any) -> Run:
    merged = dict(
        model="cnn", epochs=2, runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"),
        quiet=True, tensorboard=False,
    )  # fmt: skip
    merged.update(settings)
    return api.train("digits", **merged)


def metrics_rows(run: Run) -> list[dict[str, str]]:
    with (run.path / "metrics.csv").open() as file:
        return list(csv.DictReader(file))


def digits_batches() -> int:
    return math.ceil(len(load_data("digits").train) / BATCH_SIZE)


def saved_weights_score(run: Run) -> tuple[float, float]:
    """(val loss, val accuracy) of model.safetensors, evaluated from scratch on the val split."""
    info, prep = run.info, run.info.preprocessing
    data, train = info.config["data"], info.config["train"]
    splits = load_data(data["source"], data["val_fraction"], train["seed"])
    decoded = decode_split(splits.val, prep, quiet=True)
    val_images, _ = split_datasets(splits.val, decoded, prep, "none")
    model = create_classifier(
        info.model_name, info.num_classes, channels=prep.channels, image_size=prep.image_size,
        mean=prep.mean, std=prep.std, pretrained=False,
    )  # fmt: skip
    model.load_state_dict(run.load_weights())
    result = evaluate(model, make_loader(val_images, 256, False, 0), torch.device("cpu"))
    return result.loss, result.accuracy


@pytest.fixture
def restore_determinism() -> Iterator[None]:
    """`deterministic=True` switches a process-wide torch flag on; switch it back afterwards."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


# --- deterministic, early stop, time limit --------------------------------------------------


@pytest.mark.usefixtures("restore_determinism")
def test_deterministic_runs_give_bitwise_identical_weights(tmp_path: Path) -> None:
    first = train_digits(tmp_path, deterministic=True, name="first").load_weights()
    second = train_digits(tmp_path, deterministic=True, name="second").load_weights()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_early_stop_ends_the_run_when_nothing_improves(tmp_path: Path) -> None:
    run = train_digits(tmp_path, epochs=6, lr=1e-9, early_stop=1)
    rows = metrics_rows(run)
    assert 2 <= len(rows) < 6
    best_epoch = Run.load(run.path).info.metrics["epoch"]
    assert int(rows[-1]["epoch"]) - best_epoch == 1  # stopped as soon as patience ran out
    assert (run.path / "model.safetensors").is_file()


def test_time_limit_stops_a_long_run(tmp_path: Path) -> None:
    run = train_digits(tmp_path, model="mlp", epochs=1000, time_limit="1s")
    assert 1 <= len(metrics_rows(run)) < 1000
    assert (run.path / "model.safetensors").is_file()
    metrics = Run.load(run.path).info.metrics
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and metrics["epoch"] >= 1


def test_an_invalid_time_limit_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="ten minutes"):
        train_digits(tmp_path, model="mlp", epochs=1, time_limit="ten minutes")
    assert not (tmp_path / "runs").exists()  # refused before any run directory was made


# --- class weights --------------------------------------------------------------------------


def test_class_weights_by_hand() -> None:
    labels = np.array([0, 0, 0, 1])  # class 2 is absent
    assert class_weights(labels, 3).tolist() == pytest.approx([0.5, 1.5, 0.0])


def test_class_weights_match_scikit_learn_balanced_weights() -> None:
    rng = np.random.default_rng(0)
    labels = rng.choice(5, size=200, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    balanced = compute_class_weight("balanced", classes=np.arange(5), y=labels)
    expected = balanced / balanced.mean()
    weights = class_weights(labels, 5)
    assert weights.dtype == torch.float32
    assert weights.numpy() == pytest.approx(expected, rel=1e-6)
    assert weights.mean().item() == pytest.approx(1.0)


def test_step_options_follow_the_settings() -> None:
    """The fine-tune loss is cross-entropy with the class weights and label smoothing asked."""
    config = api.train_config(
        label_smoothing=0.1, class_weights="auto", grad_clip=1.0, accumulate=2,
        channels_last=True, precision="bf16", mixup=0.2,
    )  # fmt: skip
    labels = np.array([0, 0, 0, 1, 2, 2])
    options = step_options(config, labels, 3, torch.device("cpu"))
    assert (options.grad_clip, options.accumulate, options.channels_last) == (1.0, 2, True)
    assert (options.precision, options.scaler) == ("bf16", None)
    assert options.batch_transform is not None
    logits, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    expected = F.cross_entropy(
        logits, targets, weight=class_weights(labels, 3), label_smoothing=0.1
    )
    assert torch.allclose(options.loss(logits, targets), expected)


# --- each feature completes a run and learns ------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"label_smoothing": 0.1},
        {"grad_clip": 1.0},
        {"accumulate": 2},
        {"mixup": 0.2},
        {"cutmix": 1.0},
        {"ema_decay": 0.99},
        {"channels_last": True},
        {"precision": "bf16"},
        {"class_weights": "auto"},
    ],
    ids=lambda settings: "-".join(f"{k}={v}" for k, v in settings.items()),
)
def test_feature_completes_a_run_that_learns(tmp_path: Path, settings: dict[str, Any]) -> None:
    run = train_digits(tmp_path, **settings)
    rows = metrics_rows(run)
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert Run.load(run.path).info.metrics["val_accuracy"] > CHANCE
    assert all(math.isfinite(float(row["train_loss"])) for row in rows)


def test_ema_is_updated_every_step_and_supplies_the_best_weights(tmp_path: Path) -> None:
    run = train_digits(tmp_path, ema_decay=0.99)
    checkpoint = load_checkpoint(run.path)
    steps = int(checkpoint.part("optimizer")["0.step"].item())
    assert steps == 2 * digits_batches()
    assert int(checkpoint.tensors["ema.n_averaged"].item()) == steps
    raw, best = checkpoint.part("model"), run.load_weights()
    assert raw.keys() == best.keys()
    floats = [k for k in raw if raw[k].is_floating_point()]
    assert any(not torch.equal(raw[k], best[k]) for k in floats)  # best weights are the EMA's
    assert saved_weights_score(run)[1] > CHANCE


@pytest.mark.parametrize("accumulate", [1, 2])
def test_accumulation_takes_one_optimizer_step_per_group_of_batches(
    tmp_path: Path, accumulate: int
) -> None:
    run = train_digits(tmp_path, epochs=2, accumulate=accumulate)
    checkpoint = load_checkpoint(run.path)
    expected = 2 * math.ceil(digits_batches() / accumulate)  # 23 batches: 46 steps, or 24
    assert checkpoint.meta["scheduler"]["last_epoch"] == expected
    curve = checkpoint.meta["scheduler"]["lr_lambdas"][0]
    assert curve["total_steps"] == expected  # the schedule ends there
    assert int(checkpoint.part("optimizer")["0.step"].item()) == expected


# --- the saved best weights score what graft.json says ----------------------------------------


def _frozen_lite0(tmp_path: Path, **settings: Any) -> Run:
    data = make_image_folder(tmp_path / "data", per_class=8, size=32)
    return api.train(
        data, model="efficientnet_lite0", image_size=32, freeze_epochs=3, epochs=0, lr=1e-2,
        runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"), quiet=True,
        tensorboard=False, **settings,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("make_run", "settings"),
    [
        pytest.param(train_digits, {}, id="cnn"),
        pytest.param(train_digits, {"ema_decay": 0.99}, id="cnn-ema"),
        pytest.param(_frozen_lite0, {}, id="frozen"),
        pytest.param(_frozen_lite0, {"ema_decay": 0.99}, id="frozen-ema"),
    ],
)
def test_saved_weights_reproduce_the_recorded_score(
    tmp_path: Path, make_run: Any, settings: dict[str, Any]
) -> None:
    """Oracle: model.safetensors evaluated by hand gives graft.json's val loss and accuracy."""
    run = make_run(tmp_path, **settings)
    metrics = Run.load(run.path).info.metrics
    loss, accuracy = saved_weights_score(run)
    assert loss == pytest.approx(metrics["val_loss"], rel=1e-4)
    assert accuracy == pytest.approx(metrics["val_accuracy"])


# --- small pure functions -------------------------------------------------------------------


def test_no_mixing_without_mixup_or_cutmix() -> None:
    assert mix_transform(0, 0, 10) is None


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixing_gives_soft_labels_that_sum_to_one(mixup: float, cutmix: float) -> None:
    transform = mix_transform(mixup, cutmix, 10)
    assert transform is not None
    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(8)
    mixed, soft = transform(images, labels)
    assert mixed.shape == images.shape and mixed.is_floating_point()
    assert soft.shape == (8, 10)
    assert torch.allclose(soft.sum(dim=1), torch.ones(8))
    assert (soft >= 0).all()
    # Each row puts its mass on its own label and at most one partner's.
    assert ((soft > 0).sum(dim=1) <= 2).all()
    assert (soft[torch.arange(8), labels] > 0).all()


def test_extend_plan_leaves_the_plan_alone_without_more_epochs() -> None:
    plan = [HeadPhase(2), FineTunePhase(3)]
    assert extend_plan(plan, None) == plan
    assert extend_plan(plan, 3) == plan
    assert extend_plan(plan, 2) == plan


def test_extend_plan_appends_the_missing_whole_network_epochs() -> None:
    plan = [HeadPhase(2), FineTunePhase(3)]
    assert extend_plan(plan, 5) == [*plan, FineTunePhase(2)]
    extended = [FineTunePhase(2), FineTunePhase(2)]
    assert extend_plan(extended, 7) == [*extended, FineTunePhase(3)]
    assert extend_plan([HeadPhase(1)], 4) == [HeadPhase(1), FineTunePhase(4)]
    assert extend_plan([ScratchPhase(3)], 5) == [ScratchPhase(3), ScratchPhase(2)]


def test_layer_decay_gives_deeper_blocks_smaller_rates(tmp_path: Path) -> None:
    from torchgraft.testing import make_image_folder
    from torchgraft.train.checkpoint import load_checkpoint

    data = make_image_folder(tmp_path / "data", per_class=4, size=32)
    run = api.train(
        data, model="efficientnet_lite0", freeze_epochs=0, epochs=1, image_size=32,
        layer_decay=0.8, lr=1e-3, runs_dir=str(tmp_path / "runs"), quiet=True,
        tensorboard=False, cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    groups = load_checkpoint(run.path).meta["optimizer_groups"]
    peaks = [group["initial_lr"] for group in groups]
    assert max(peaks) == pytest.approx(1e-3)  # the head keeps the full rate
    assert min(peaks) < 1e-3 * 0.8**5  # the stem learns far slower
    assert len(set(round(p, 12) for p in peaks)) > 5  # one rate per depth
