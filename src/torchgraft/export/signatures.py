"""Signatures that prove this machine (this user) wrote an export file.

model.pt2 (a native shared library) and model.ts (TorchScript code) run code when loaded,
so a run folder from someone else must not get them loaded by a command that only meant to
time or serve a model. parity.json cannot vouch for them: anyone can write its sha256.

So `graft export` signs each file it writes: an HMAC-SHA256 over the file's bytes, keyed by
a per-user secret kept outside every run (~/.config/torchgraft/secret, or under
$XDG_CONFIG_HOME; $TORCHGRAFT_SECRET_FILE overrides the path), made with mode 0600 on first
export. The signatures go to exports/signatures.json. A file whose signature checks out was
written here; any other code file loads only when the user asks for it by name.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path

from torchgraft.artifact import atomic_write_bytes
from torchgraft.data.hashing import CHUNK_BYTES
from torchgraft.errors import UserError

logger = logging.getLogger(__name__)

SIGNATURES_FILE = "signatures.json"
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
    else None when absent."""
    path = secret_path()
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:  # O_EXCL: two exports started together make one secret, not two
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_hex(SECRET_BYTES))
            logger.info("created the export signing secret %s", path)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return bytes.fromhex(text) if text else None


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
    except (OSError, ValueError) as error:
        raise UserError(
            f"cannot read or create the export signing secret {secret_path()} ({error}): "
            f"make its folder writable, or set {SECRET_ENV} to a file path that is"
        ) from None
    assert secret is not None  # just made if it was missing
    signatures = {
        name: value for name, value in read_signatures(folder).items() if (folder / name).is_file()
    }
    for name in file_names:
        signatures[name] = file_signature(folder / name, secret)
    atomic_write_bytes(folder / SIGNATURES_FILE, json.dumps(signatures, indent=2).encode())


def signed_here(path: Path) -> bool:
    """Whether `path` is byte for byte a file this user's `graft export` wrote and signed."""
    recorded = read_signatures(path.parent).get(path.name)
    try:
        secret = read_secret(create=False)
    except (OSError, ValueError):  # unreadable or not hex: nothing can be proven with it
        return False
    if recorded is None or secret is None or not path.is_file():
        return False
    return hmac.compare_digest(recorded, file_signature(path, secret))
