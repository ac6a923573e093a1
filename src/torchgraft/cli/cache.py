"""`graft cache info` and `graft cache clear`: what the caches hold, and removing it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from torchgraft.cli.common import app, guard

if TYPE_CHECKING:
    from torchgraft.data.cache_files import CacheEntry, CacheInfo

cache_app = typer.Typer(
    help="The decoded-image, feature and file-digest caches: what they hold, and clearing them.",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")

CacheDirOption = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="The cache folder (default: $TORCHGRAFT_CACHE or ~/.cache/torchgraft).",
        show_default=False,
    ),
]


@cache_app.command("info")
def cache_info(cache_dir: CacheDirOption = None) -> None:
    """Where the caches are, their entries and size per kind, the size cap, temporaries."""
    from torchgraft.data.cache import cache_root
    from torchgraft.data.cache_files import info

    report = guard(lambda: info(cache_root(str(cache_dir) if cache_dir else None)))
    for line in _info_lines(report):
        typer.echo(line)


def _info_lines(report: CacheInfo) -> list[str]:
    from torchgraft.data.cache_files import LIMIT_VARIABLE, human

    cap = "no cap" if report.limit is None else f"cap {human(report.limit)}"
    lines = [f"cache folder {report.root.absolute()} ({cap}; set ${LIMIT_VARIABLE} to change it)"]
    for kind, (count, size) in report.per_kind().items():
        lines.append(f"  {kind:<10}{_entries(count):>14}{human(size):>12}")
    lines.append(f"  {'total':<10}{_entries(len(report.entries)):>14}{human(report.total):>12}")
    if report.temporaries:
        size = sum(_size(path) for path in report.temporaries)
        lines.append(
            f"  {len(report.temporaries)} temporary file(s), {human(size)}: being written, or "
            "left by a killed run (the next run or `graft cache clear` removes those)"
        )
    return lines


@cache_app.command("clear")
def cache_clear(
    kind: Annotated[
        list[str] | None,
        typer.Option(
            "--kind",
            help="Only this kind: images, features or digests (repeat for more; default: all).",
            show_default=False,
        ),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            help="Only entries not used for this long: 30d, 12h, 2w, 90m (default: all).",
            show_default=False,
        ),
    ] = None,
    cache_dir: CacheDirOption = None,
) -> None:
    """Remove cache entries (all, or by kind and age) and stale temporaries; asks nothing,
    prints what it removed. Later runs rebuild what they need."""
    from torchgraft.data.cache import cache_root
    from torchgraft.data.cache_files import KINDS, clear, human, parse_age

    def action() -> tuple[list[CacheEntry], list[Path]]:
        age = parse_age(older_than, "--older-than") if older_than else None
        return clear(cache_root(str(cache_dir) if cache_dir else None), kind or KINDS, age)

    removed, temporaries = guard(action)
    now = time.time()
    for entry in removed:
        days = (now - entry.last_used) / 86400
        typer.echo(f"removed {entry.kind}/{entry.name} ({human(entry.size)}, unused {days:.1f} d)")
    for path in temporaries:
        typer.echo(f"removed stale temporary {path}")
    total = human(sum(entry.size for entry in removed))
    typer.echo(f"removed {_entries(len(removed))} ({total}) and {len(temporaries)} temporaries")


def _size(path: Path) -> int:
    """A file's size; 0 once it is gone (a writer renames its temporary at any moment)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _entries(count: int) -> str:
    return f"{count} entr{'y' if count == 1 else 'ies'}"
