"""The cache folder's housekeeping: atomic entries, stale temporaries, a size cap, info, clear.

Three kinds of entry live under the cache root, one sub-folder each: decoded images
(`images/KEY.npy` + `KEY.json`), frozen-backbone features (`features/KEY.safetensors`) and
file-digest manifests (`digests/NAME.json`). Every file is written under a temporary name
that carries the writer's host, pid namespace and pid, then renamed: a reader sees a whole
file or none. A process killed with -9 leaves its temporary behind; the next process to use
the cache removes the ones whose writer is gone (same host and pid namespace, pid not alive)
or that are older than a day (another host's or container's, or a pid reused since).

The cache folder may be pointed anywhere (`--cache-dir`, `$TORCHGRAFT_CACHE`), so nothing
is ever deleted but the names the cache makes (hex keys, its own temporaries), and only in
a folder that carries the CACHEDIR.TAG written when the cache was first written to (a
project folder with an images/ sub-folder of photos is never touched). An entry is "used"
when it is read or written
(its newest file's mtime is set then: atime is unreliable), and after each write the least
recently used entries go until the cache fits its cap, `$TORCHGRAFT_CACHE_MAX_SIZE`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from torchgraft.artifact import atomic_path
from torchgraft.errors import UserError

logger = logging.getLogger(__name__)

KINDS = ("images", "features", "digests")  # one sub-folder of the cache root each
LIMIT_VARIABLE = "TORCHGRAFT_CACHE_MAX_SIZE"
DEFAULT_LIMIT = 50 * 10**9  # bytes; or a quarter of the disk holding the cache, if smaller
STALE_AFTER = 24 * 3600  # seconds: a temporary this old is stale whoever wrote it
# The only names the cache makes, and so the only ones it ever deletes: hex keys.
_ENTRY = r"[0-9a-f]{16,24}\.(?:npy|json|safetensors)"
# ".ENTRY.RANDOM.tmp-HOST-PIDNS-PID" from cache_write (".ENTRY.RANDOM.tmp-HOST-PID" before
# temporaries named their pid namespace); "KEY.npy.partial-PID" from older versions.
_TEMPORARY = re.compile(
    rf"^\.{_ENTRY}\.[^.]+\.tmp(-(?P<host>[A-Za-z0-9._]+)(-(?P<ns>\d+|x))?-(?P<pid>\d+))?$"
    rf"|^[0-9a-f]{{16,24}}\.npy\.partial-\d+$"
)
TAG_FILE = "CACHEDIR.TAG"  # https://bford.info/cachedir/: backup tools skip the folder too
_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by torchgraft (graft cache info).\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

_in_use: set[Path] = set()  # entry files this process reads or has written (never evicted)


@dataclass(frozen=True)
class CacheEntry:
    """One cache entry: the files sharing a name (without suffix) in a kind's folder."""

    kind: str
    name: str
    files: tuple[Path, ...]
    size: int  # bytes
    last_used: float  # seconds since the epoch (the newest file's mtime)


@dataclass(frozen=True)
class CacheInfo:
    """What `graft cache info` shows."""

    root: Path
    entries: list[CacheEntry]
    temporaries: list[Path]  # files being written now, or left by a killed process
    limit: int | None  # bytes; None: no cap

    def per_kind(self) -> dict[str, tuple[int, int]]:
        """kind -> (entries, bytes), every kind listed."""
        return {
            kind: (len(entries := [e for e in self.entries if e.kind == kind]),
                   sum(e.size for e in entries))
            for kind in KINDS
        }  # fmt: skip

    @property
    def total(self) -> int:
        return sum(entry.size for entry in self.entries)


@contextlib.contextmanager
def cache_write(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` that says who writes it; renamed to `path` on success
    (artifact.atomic_path: fsynced, removed on any failure). The entry counts as in use."""
    _tag(path.parent.parent)
    with atomic_path(path, suffix=temporary_suffix(os.getpid())) as temporary:
        yield temporary
    mark_used(path)


def temporary_suffix(pid: int) -> str:
    """How a temporary of process `pid` (on this host, in this pid namespace) ends."""
    return f".tmp-{_host()}-{_pid_namespace()}-{pid}"


def _tag(root: Path) -> None:
    """Mark `root` as a cache folder: housekeeping deletes files only where this tag is."""
    tag = root / TAG_FILE
    if not tag.is_file():
        with contextlib.suppress(OSError):  # a read-only cache still serves
            root.mkdir(parents=True, exist_ok=True)
            tag.write_text(_TAG)


def is_cache(root: Path) -> bool:
    """Whether `root` carries the cache's tag (only then are files deleted there)."""
    return (root / TAG_FILE).is_file()


T = TypeVar("T")


def read_or_none(read: Callable[[], T], what: str, path: Path, remedy: str) -> T | None:
    """`read()`, or None with one warning when it fails: any failure to read an entry means
    it is damaged, and the caller rebuilds it (its new files replace the damaged ones)."""
    try:
        return read()
    except Exception as error:
        reason = str(error) or type(error).__name__
        logger.warning("the %s %s is damaged (%s): %s it", what, path, reason, remedy)
        return None


def mark_used(path: Path) -> None:
    """Record that `path` was just read or written: it is the newest, and this process
    keeps it (its pixels may be memory-mapped) whatever the cap."""
    _in_use.add(path.absolute())
    with contextlib.suppress(OSError):  # a read-only cache still serves, unmarked
        os.utime(path)


def tidy(root: Path) -> None:
    """Remove the temporaries that killed processes left (a listing of three folders)."""
    if not is_cache(root):
        return
    removed = remove_files(stale_temporaries(root))
    if removed:
        size = sum(size for _, size in removed)
        logger.info("removed %d stale temporary cache files (%s)", len(removed), human(size))


def temporaries(root: Path) -> list[Path]:
    """Every temporary file in the cache's folders, live or stale."""
    return [path for path in _files(root) if _TEMPORARY.match(path.name)]


def stale_temporaries(root: Path, now: float | None = None) -> list[Path]:
    """The temporaries whose writer has died (this host and pid namespace, pid gone) or
    that are a day old."""
    now = time.time() if now is None else now
    stale = []
    for path in temporaries(root):
        try:
            age = now - path.stat().st_mtime
        except OSError:  # renamed or removed by its writer meanwhile
            continue
        if age > STALE_AFTER or not _writer_alive(path.name):
            stale.append(path)
    return stale


def _writer_alive(name: str) -> bool:
    """Whether the process named in a temporary's name may still be writing it."""
    match = _TEMPORARY.match(name)
    if match is None:
        return False
    pid, host, namespace = match["pid"], match["host"], match["ns"]
    if pid is None or host != _host() or namespace != _pid_namespace() or namespace == "x":
        # Another host's or container's (a container shares the host name but not its
        # pids), or a namespace not known: only the age can tell.
        return True
    return _pid_alive(int(pid))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _host() -> str:
    """This machine's name, as temporaries carry it (no separators that could mislead)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _pid_namespace() -> str:
    """The inode of this process's pid namespace ("x" where not known): two containers on
    one host share its name, and their pids mean different processes."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "x"


def _files(root: Path) -> Iterator[Path]:
    for kind in KINDS:
        folder = root / kind
        if folder.is_dir():
            yield from (path for path in folder.iterdir() if path.is_file())


def entries(root: Path) -> list[CacheEntry]:
    """The cache's entries, least recently used first."""
    groups: dict[tuple[str, str], list[Path]] = {}
    for path in _files(root):
        if re.fullmatch(_ENTRY, path.name):
            groups.setdefault((path.parent.name, path.name.split(".")[0]), []).append(path)
    found = []
    for (kind, name), files in groups.items():
        with contextlib.suppress(OSError):  # removed meanwhile by another process
            stats = [path.stat() for path in files]
            found.append(
                CacheEntry(kind, name, tuple(sorted(files)), sum(s.st_size for s in stats),
                           max(s.st_mtime for s in stats))
            )  # fmt: skip
    return sorted(found, key=lambda entry: entry.last_used)


def info(root: Path) -> CacheInfo:
    return CacheInfo(root, entries(root), temporaries(root), size_limit(root))


def size_limit(root: Path) -> int | None:
    """The cap: $TORCHGRAFT_CACHE_MAX_SIZE ("20GB", "500MB", "none"), else the smaller of
    DEFAULT_LIMIT and a quarter of the disk that holds the cache."""
    configured = os.environ.get(LIMIT_VARIABLE, "").strip()
    if configured:
        if configured.lower() in ("none", "unlimited"):
            return None
        return parse_size(configured, LIMIT_VARIABLE)
    existing = next((p for p in (root, *root.parents) if p.exists()), Path("/"))
    return min(DEFAULT_LIMIT, shutil.disk_usage(existing).total // 4)


def enforce_limit(root: Path) -> list[CacheEntry]:
    """After a write: remove least recently used entries until the cache fits its cap.
    Entries this process uses are kept, even when they alone exceed it."""
    limit = size_limit(root)
    if limit is None or not is_cache(root):
        return []
    found = entries(root)
    excess = sum(entry.size for entry in found) - limit
    evicted = []
    for entry in found:
        if excess <= 0:
            break
        if any(path.absolute() in _in_use for path in entry.files):
            continue
        remove_files(entry.files)
        evicted.append(entry)
        excess -= entry.size
    if evicted:
        logger.info(
            "cache over its %s cap (%s): removed %d least recently used entries (%s)",
            human(limit), LIMIT_VARIABLE, len(evicted), human(sum(e.size for e in evicted)),
        )  # fmt: skip
    if excess > 0:
        logger.warning(
            "the cache in %s holds %s more than its %s cap, all in use by this run: raise "
            "%s or pass --cache-dir elsewhere", root, human(excess), human(limit), LIMIT_VARIABLE,
        )  # fmt: skip
    return evicted


def clear(
    root: Path, kinds: Iterable[str] = KINDS, older_than: float | None = None
) -> tuple[list[CacheEntry], list[Path]]:
    """Remove the entries of `kinds` not used for `older_than` seconds (all, if None), and
    the stale temporaries. Returns what was removed: (entries, temporaries)."""
    kinds = set(kinds)
    unknown = kinds - set(KINDS)
    if unknown:
        choices = ", ".join(KINDS)
        raise UserError(f"unknown cache kind {sorted(unknown)[0]!r}: choose from {choices}")
    if root.is_dir() and not is_cache(root):
        raise UserError(
            f"{root} has no {TAG_FILE}, so it is not a torchgraft cache folder: nothing was "
            "removed. Check --cache-dir and $TORCHGRAFT_CACHE; a cache made by an older "
            "version gets its tag on the next run that writes to it."
        )
    now = time.time()
    chosen = [
        entry for entry in entries(root)
        if entry.kind in kinds and (older_than is None or now - entry.last_used > older_than)
    ]  # fmt: skip
    for entry in chosen:
        remove_files(entry.files)
    return chosen, [path for path, _ in remove_files(stale_temporaries(root, now))]


def remove_files(paths: Iterable[Path]) -> list[tuple[Path, int]]:
    """Remove files, skipping those already gone; (path, size) of each one removed. One that
    cannot be removed (another user's, in a shared cache) is left, with a warning."""
    removed = []
    for path in paths:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as error:
            logger.warning("could not remove the cache file %s: %s", path, error)
            continue
        removed.append((path, size))
    return removed


def parse_size(text: str, where: str) -> int:
    """Bytes in "20GB", "500 MB", "1.5T", "1GiB" or "123"; a UserError naming `where` else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", text.lower())
    if match is None:
        raise UserError(
            f"{where}={text!r} is not a size: write a number of bytes with a unit, like 20GB, "
            "500MB or 1.5TB (or 'none' for no cap)"
        )
    number, unit, binary = float(match[1]), match[2], match[3]
    scale = 1024 ** " kmgt".index(unit or " ") if binary else _UNITS[unit]
    return int(number * scale)


def parse_age(text: str, where: str) -> float:
    """Seconds in "30d", "12h", "2w", "90m" or "45s"; a UserError naming `where` else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if match is None:
        raise UserError(f"{where} {text!r} is not an age: write a number and a unit, like 30d, "
                        "12h, 2w, 90m or 45s")  # fmt: skip
    return float(match[1]) * _AGE_UNITS[match[2]]


def human(size: int) -> str:
    """A byte count as people read it: 1.2 GB, 340 MB, 12 kB, 512 B."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
