"""`graft ... --help` reads in 80 columns, and `graft train` offers every setting."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from torchgraft.cli import app
from torchgraft.config import flat_settings

COMMANDS = ["train", "lr-find", "evaluate", "explain", "predict", "export", "benchmark",
            "serve", "doctor", "models", "cache"]  # fmt: skip


def help_text(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)], ids=str)
def test_help_fits_80_columns(command: list[str]) -> None:
    text = help_text(*command)
    too_wide = [line for line in text.splitlines() if len(line) > 80]
    assert too_wide == [] and "…" not in text  # rich's tables cut names with an ellipsis
    assert "(default: )" not in text


def test_every_command_is_listed() -> None:
    listed = [line.split()[0] for line in help_text().split("Commands:")[1].splitlines() if line]
    assert listed == COMMANDS


def test_train_offers_every_config_setting_as_an_option() -> None:
    """A setting added to the config dataclasses but not to `graft train` fails here."""
    options = help_text("train")
    positional = {"data", "source"}  # DATA, the argument
    missing = [
        name
        for name in flat_settings()
        if name not in positional and f"--{name.replace('_', '-')}" not in options
    ]
    assert missing == []


def test_train_help_texts_are_the_config_fields_own() -> None:
    """One place for a setting's help: its field in torchgraft.config. `graft train` shows
    that text (then the default) for every option that sets a config field."""
    import typer

    from torchgraft.config import help_of

    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    settings = flat_settings()
    shown = {param.name: param.help or "" for param in command.params}
    differing = {
        name: text
        for name, text in shown.items()
        if name in settings and not text.startswith(help_of(settings[name]))
    }
    assert differing == {}
    assert set(settings) - {"source"} <= set(shown)  # data.source is DATA, the argument
