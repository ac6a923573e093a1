"""File digests remembered by size and modification time: an unchanged file is not read again.

The decoded-image cache is keyed by the contents of every file, so a run on 20,000 photos
would read a few gigabytes just to learn that nothing changed. A manifest keeps, per file,
(size, mtime in nanoseconds, sha256); a file whose size and mtime still match is taken as
unchanged, as make and rsync do. Only new or changed files are read and digested. One
manifest per data folder lives in the cache folder; a damaged one is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from torchgraft.data.cache_files import cache_write, mark_used
from torchgraft.data.hashing import content_digest

logger = logging.getLogger(__name__)

MANIFEST_FOLDER = "digests"
Entry = tuple[int, int, str]  # size, mtime_ns, sha256


class DigestManifest:
    """sha256 digests of files, read from disk only for files that changed."""

    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: remember nothing between runs
        self.entries: dict[str, Entry] = _read(path) if path is not None else {}
        self.changed = False
        self.read_files = 0  # files whose bytes this manifest had to read

    def digest(self, file: Path) -> str:
        """The file's sha256, or "unreadable:PATH" when it cannot be read (decoding says why)."""
        try:
            status = os.stat(file)
        except OSError:
            return f"unreadable:{file}"
        name = os.path.abspath(file)
        known = self.entries.get(name)
        if known is not None and known[:2] == (status.st_size, status.st_mtime_ns):
            return known[2]
        try:
            digest = content_digest(file)
        except OSError:
            return f"unreadable:{file}"
        self.entries[name] = (status.st_size, status.st_mtime_ns, digest)
        self.changed, self.read_files = True, self.read_files + 1
        return digest

    def save(self) -> None:
        """Write the manifest when it changed; either way it counts as used (size cap)."""
        if self.path is None:
            return
        if self.changed:
            with cache_write(self.path) as temporary:
                temporary.write_bytes(json.dumps(self.entries).encode())
            self.changed = False
        elif self.path.is_file():
            mark_used(self.path)


def manifest_for(cache_dir: Path | None, files: Sequence[Path]) -> DigestManifest:
    """The manifest of the folder holding `files` (their common parent), under `cache_dir`."""
    if cache_dir is None or not files:
        return DigestManifest(None)
    try:
        parent = os.path.commonpath([os.path.abspath(f) for f in files])
    except ValueError:  # paths on different drives (Windows): one manifest for all
        parent = ""
    name = hashlib.sha256(os.fsencode(parent)).hexdigest()[:16]  # any bytes, UTF-8 or not
    return DigestManifest(cache_dir / MANIFEST_FOLDER / f"{name}.json")


def _read(path: Path) -> dict[str, Entry]:
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {
            name: (int(size), int(mtime), str(digest))
            for name, (size, mtime, digest) in raw.items()
        }
    except (OSError, ValueError, TypeError, AttributeError) as error:
        logger.warning("ignoring a damaged digest manifest %s (%s): rebuilding it", path, error)
        return {}
