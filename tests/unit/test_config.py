from pathlib import Path

import pytest

from torchgraft.config import dotted_overrides, load_train_config
from torchgraft.errors import UserError


def test_defaults_are_valid() -> None:
    config = load_train_config()
    assert config.model.name == "efficientnet_lite0"
    assert config.data.source == "mnist5k"


def test_cli_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  source: digits\n  batch_size: 16\ntrain:\n  epochs: 7\n  lr: 0.01\n")
    config = load_train_config(path, {"train.epochs": 2})
    assert config.data.source == "digits"
    assert config.data.batch_size == 16
    assert config.train.epochs == 2  # the override
    assert config.train.lr == 0.01  # from the file


def test_unknown_key_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(UserError, match=r"unknown setting 'epoch'.*Did you mean 'epochs'"):
        load_train_config(path)


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(UserError, match="Did you mean 'train'"):
        load_train_config(path)


def test_bad_choice_lists_the_allowed_values() -> None:
    with pytest.raises(UserError, match=r"'crpo' is not one of crop, pad, squash.*'crop'"):
        load_train_config(overrides={"data.resize": "crpo"})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.epochs", -1, "below the minimum"),
        ("data.val_fraction", 0.95, "above the maximum"),
        ("train.lr", "fast", "expected float"),
        ("data.batch_size", 2.5, "expected int"),
        ("model.pretrained", "maybe", "expected true or false"),
    ],
)
def test_bad_values_are_refused(key: str, value: object, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_train_config(overrides={key: value})


def test_yaml_strings_are_coerced() -> None:
    config = load_train_config(overrides={"train.epochs": "4", "model.pretrained": "no"})
    assert config.train.epochs == 4
    assert config.model.pretrained is False


def test_flat_settings_map_to_sections() -> None:
    assert dotted_overrides({"epochs": 3, "model": "mlp", "data": "digits", "name": "x"}) == {
        "train.epochs": 3,
        "model.name": "mlp",
        "data.source": "digits",
        "train.name": "x",
    }
    with pytest.raises(UserError, match="Did you mean 'batch_size'"):
        dotted_overrides({"batchsize": 3})


def test_missing_config_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="config file not found"):
        load_train_config(tmp_path / "nope.yaml")
