"""Signatures that prove this machine (this user) wrote an export file.

model.pt2 (a native shared library) and model.ts (TorchScript code) run code when loaded,
so a run folder from someone else must not get them loaded by a command that only meant to
time or serve a model. parity.json cannot vouch for them: anyone can write its sha256.

So `graft export` signs each code file it writes: an HMAC-SHA256 over the file's bytes, keyed by
a per-user secret kept outside every run (~/.config/torchgraft/secret, or under
$XDG_CONFIG_HOME; $TORCHGRAFT_SECRET_FILE overrides the path), made with mode 0600 on first
export. The signatures go to exports/signatures.json. A file whose signature checks out was
written here; any other code file loads only when the user asks for it by name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from torchgraft.artifact import atomic_write_bytes
from torchgraft.data.hashing import CHUNK_BYTES
from torchgraft.errors import UserError

logger = logging.getLogger(__name__)

SIGNATURES_FILE = "signatures.json"
LOCK_FILE = ".signatures.lock"
SIGNATURE_PATTERN = re.compile("[0-9a-f]{64}")  # a hex SHA-256 HMAC, as file_signature writes
SECRET_ENV = "TORCHGRAFT_SECRET_FILE"
SECRET_BYTES = 32


def secret_path() -> Path:
    """Where this user's signing secret lives (it may not exist yet)."""
    if override := os.environ.get(SECRET_ENV):
        return Path(override).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "torchgraft" / "secret"


def read_secret(create: bool) -> bytes | None:
    """The signing secret; made (0600, in a 0700 folder) when absent and `create` is set,
    else None when absent. An empty or non-hex secret is a UserError saying what to do."""
    path = secret_path()
    if create and not path.exists():
        make_secret(path)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return parse_secret(path, text)


def make_secret(path: Path) -> None:
    """Write a new secret to `path`, which then exists complete or not at all.

    It is written in full to a private temporary file first, then hard-linked to `path`:
    a link is atomic and never replaces, so of two exports started together one secret
    wins and the other reads it, and a kill or a full disk leaves no empty secret behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(SECRET_BYTES))
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return  # another export made it first: use that one
        logger.info("created the export signing secret %s", path)
    finally:
        temporary.unlink(missing_ok=True)


def parse_secret(path: Path, text: str) -> bytes:
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if not secret:
        raise UserError(
            f"the export signing secret {path} is {'not hex' if text else 'empty'}: delete it "
            "and the next graft export makes a new one; files signed with the old one then "
            "need exporting again (or loading by name, with --engine)"
        )
    return secret


def file_signature(path: Path, secret: bytes) -> str:
    """HMAC-SHA256 of the file's bytes under `secret` (hex), read in chunks."""
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            mac.update(chunk)
    return mac.hexdigest()


def read_signatures(folder: Path) -> dict[str, str]:
    try:
        data = json.loads((folder / SIGNATURES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(name): str(value) for name, value in data.items()}


def sign_files(folder: Path, file_names: list[str]) -> None:
    """Sign these files of `folder` (written by this process), keeping earlier signatures of
    files still there."""
    try:
        secret = read_secret(create=True)
    except OSError as error:
        raise UserError(
            f"cannot read or create the export signing secret {secret_path()} ({error}): "
            f"make its folder writable, or set {SECRET_ENV} to a file path that is"
        ) from None
    assert secret is not None  # just made if it was missing
    signed = {name: file_signature(folder / name, secret) for name in file_names}
    with signatures_lock(folder):  # another export may have signed a file meanwhile: merge
        signatures = {
            name: value
            for name, value in read_signatures(folder).items()
            if (folder / name).is_file()
        }
        signatures.update(signed)
        atomic_write_bytes(folder / SIGNATURES_FILE, json.dumps(signatures, indent=2).encode())


def sign_or_warn(folder: Path, file_name: str, engine: str) -> None:
    """Sign a code file just exported; if that fails (no writable home for the secret), the
    export still stands, unsigned: say so, and how it can be loaded."""
    try:
        sign_files(folder, [file_name])
    except UserError as error:
        logger.warning(
            "%s not signed: it will load only when asked for by name (--engine %s). %s",
            folder / file_name, engine, error,
        )  # fmt: skip


@contextlib.contextmanager
def signatures_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on `folder`'s signatures.json, for read-merge-write (a lock file
    beside it, since the json itself is replaced on every write)."""
    with open(folder / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def signed_here(path: Path) -> bool:
    """Whether `path` is byte for byte a file this user's `graft export` wrote and signed."""
    recorded = read_signatures(path.parent).get(path.name)
    if recorded is None or not SIGNATURE_PATTERN.fullmatch(recorded) or not path.is_file():
        return False  # a forged or damaged entry (any text) proves nothing, and must not crash
    try:
        secret = read_secret(create=False)
    except OSError:  # unreadable: nothing can be proven with it
        return False
    except UserError as error:  # damaged: nothing can be proven either, but say how to fix it
        logger.warning("%s", error)
        return False
    if secret is None:
        return False
    return hmac.compare_digest(recorded.encode(), file_signature(path, secret).encode())
