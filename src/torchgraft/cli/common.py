"""What every `graft` command shares: the typer app, option helpers, and `guard`, which turns
torchgraft errors and Ctrl-C into a one-line message and an exit status."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from tqdm.contrib.logging import logging_redirect_tqdm

from torchgraft.config import default_of, help_of
from torchgraft.defaults import PRETRAINED_RECIPE, SCRATCH_RECIPE
from torchgraft.errors import GraftError

app = typer.Typer(
    name="graft",
    help="torchgraft: train, fine-tune and use image classifiers, offline by default.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # click's plain help: in 80 columns rich's tables gave the flag names half the width
    # and cut some of them (--backbone-lr-divi…); click wraps the help text instead.
    rich_markup_mode=None,
)

T = TypeVar("T")

# The device option of every command that runs a model (train has its own, in the config).
DeviceOption = Annotated[
    str,
    typer.Option(help="Device: auto (the GPU when there is one), cpu, cuda, cuda:N or mps."),
]


def default_help(dotted: str) -> str:
    """ "(default: X)" for help texts; settings whose default depends on the model say so."""
    value = default_of(dotted)
    key = dotted.split(".")[-1]
    if value is None and hasattr(PRETRAINED_RECIPE, key):
        pretrained, scratch = getattr(PRETRAINED_RECIPE, key), getattr(SCRATCH_RECIPE, key)
        return f"(default: {pretrained} for a pretrained backbone, {scratch} from scratch)"
    return "" if value in (None, "") else f"(default: {value})"


def flag(dotted: str, help_text: str | None = None) -> Any:
    """An on/off option (--x/--no-x) whose absence means "use the config file or default".
    Its help is the setting's own (config.help_of) unless a command words it for itself."""
    name = dotted.split(".")[-1].replace("_", "-")
    return typer.Option(
        f"--{name}/--no-{name}", help=help_with_default(dotted, help_text), show_default=False
    )


def option(dotted: str, help_text: str | None = None) -> Any:
    """A CLI option whose absence means "use the config file or the default". Its help is
    the setting's own (config.help_of) unless a command words it for itself."""
    return typer.Option(help=help_with_default(dotted, help_text), show_default=False)


def help_with_default(dotted: str, help_text: str | None) -> str:
    return f"{help_text or help_of(dotted)} {default_help(dotted)}".strip()


def guard(action: Callable[[], T], quiet: bool = False) -> T:
    """Run `action`, turning torchgraft errors and Ctrl-C into a message and an exit status."""
    configure_logging(quiet)
    try:
        with logging_redirect_tqdm():  # log lines print above progress bars, not through them
            return action()
    except GraftError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: the best weights so far are kept in the run directory", err=True)
        raise typer.Exit(130) from None


def configure_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )


def main() -> None:
    app()
