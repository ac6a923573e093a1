"""The run directory: graft.json (plain data) and model.safetensors (tensors only).

Every stage reads and writes a run through this module. Writes are atomic (temporary name,
fsync, rename), so a killed process never leaves a half-written file, and loading never
unpickles: a run from a stranger cannot execute code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from torchgraft.config import config_yaml
from torchgraft.errors import UserError

RUN_FILE = "graft.json"
WEIGHTS_FILE = "model.safetensors"
LOG_FILE = "train.log"
CONFIG_FILE = "config.yaml"
FORMAT_VERSION = 1


@dataclass
class Preprocessing:
    """What an image goes through before the network; it travels with the weights."""

    image_size: int  # square side length in pixels fed to the network
    resize_mode: str  # crop, pad or squash
    mean: tuple[float, ...]  # per-channel mean applied after scaling to [0, 1]
    std: tuple[float, ...]  # per-channel standard deviation
    channels: int = 3  # 3 for RGB, 1 for grayscale
    interpolation: str = "bilinear"  # resampling filter used when resizing


@dataclass
class RunInfo:
    """Everything in graft.json."""

    model_name: str  # registry or timm name of the architecture
    class_names: list[str]  # label index -> class (folder) name
    display_names: list[str]  # label index -> human-readable name
    preprocessing: Preprocessing
    temperature: float = 1.0  # logits are divided by this before softmax (calibration)
    config: dict[str, Any] = field(default_factory=dict)  # the resolved training config
    data_fingerprint: str = ""  # hash of the training data (paths, sizes, labels)
    data_summary: dict[str, Any] = field(default_factory=dict)  # images used and skipped
    metrics: dict[str, Any] = field(default_factory=dict)  # headline results, e.g. val_accuracy
    versions: dict[str, str] = field(default_factory=dict)  # library versions that made it
    trained_on: dict[str, str] = field(default_factory=dict)  # device, its name, precision
    # The torchrun job (TORCHELASTIC_RUN_ID) that made the run, "" outside one: a torchrun
    # restart resumes only a run its own job made, never an old run of the same name.
    torchelastic_run_id: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunInfo:
        data = json.loads(text)
        data["preprocessing"] = Preprocessing(**data["preprocessing"])
        data["preprocessing"].mean = tuple(data["preprocessing"].mean)
        data["preprocessing"].std = tuple(data["preprocessing"].std)
        return cls(**data)


def library_versions() -> dict[str, str]:
    import timm
    import torchvision

    import torchgraft

    return {
        "torchgraft": torchgraft.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


class Run:
    """A run directory on disk. `Run.load(path)` for an existing one, `Run.create` for new."""

    def __init__(self, path: Path, info: RunInfo) -> None:
        self.path = path
        self.info = info

    @classmethod
    def load(cls, path: str | Path) -> Run:
        path = Path(path)
        run_file = path / RUN_FILE
        if not run_file.is_file():
            raise UserError(
                f"no run at {path}: {RUN_FILE} is missing. Pass the folder `graft train` "
                f"created (for example --run runs/NAME)."
            )
        try:
            info = RunInfo.from_json(run_file.read_text())
        except (json.JSONDecodeError, TypeError, KeyError) as error:
            raise UserError(f"{run_file} is not a valid torchgraft run file: {error}") from None
        return cls(path, info)

    @classmethod
    def create(cls, path: Path, info: RunInfo) -> Run:
        """A new run in a folder made here: FileExistsError when `path` exists, so a new
        run never writes into an old one and two processes never share a folder (mkdir
        is atomic: exactly one of them makes it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir()
        run = cls(path, info)
        run.save_info()
        return run

    @property
    def log_file(self) -> Path:
        """train.log: the run's messages with timestamps, across resumes."""
        return self.path / LOG_FILE

    def save_info(self) -> None:
        atomic_write_bytes(self.path / RUN_FILE, self.info.to_json().encode())
        if self.info.config:  # the same config again, as a file `graft train --config` reads
            atomic_write_bytes(self.path / CONFIG_FILE, config_yaml(self.info.config).encode())

    def save_weights(self, state_dict: dict[str, torch.Tensor], name: str = WEIGHTS_FILE) -> None:
        save_tensors(self.path / name, state_dict)

    def load_weights(self, name: str = WEIGHTS_FILE) -> dict[str, torch.Tensor]:
        weights_file = self.path / name
        if not weights_file.is_file():
            raise UserError(f"{weights_file} is missing: the run has no trained weights yet.")
        return load_tensors(weights_file)


def save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write tensors as safetensors, atomically. Shared or strided tensors are copied first.
    `metadata` goes in the file's header, as text."""
    contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    atomic_write_bytes(path, save_safetensors(contiguous, metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(path.read_bytes())


def load_tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the header's metadata ({} if none), from one read of the file."""
    data = path.read_bytes()
    tensors = load_safetensors(data)  # checks the header first: a damaged file raises here
    header_length = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + header_length]).get("__metadata__") or {}
    return tensors, metadata


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    atomic_write(path, lambda file: file.write(data))


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` through `write(file)`, atomically: `write` streams into a temporary file
    (np.save of a large array, say), so the whole content never has to sit in memory."""
    with atomic_path(path) as temporary, temporary.open("wb") as file:
        write(file)


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside `path` for the body to fill; on success it replaces `path`.

    The files are fsynced before the folder is renamed into place. A reader finds the old
    folder or the new one (or, for the moment between two renames, none), never half of
    one; on any failure the temporary folder goes and `path` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield temporary
        os.chmod(temporary, 0o777 & ~_umask())  # mkdtemp's folder is its owner's alone
        for file in temporary.rglob("*"):
            if file.is_file():
                _fsync(file)
        _swap_folder(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)  # gone already after a swap


def _swap_folder(new: Path, path: Path) -> None:
    """Rename `new` to `path`; an old `path` is set aside first, and put back on failure."""
    aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old.")) / path.name
    try:
        if path.exists():
            os.replace(path, aside)
        try:
            os.replace(new, path)
        except BaseException:
            if aside.exists():
                os.replace(aside, path)
            raise
    finally:
        shutil.rmtree(aside.parent, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary name beside `path` for the body to write; on success it becomes `path`.

    For writers that take a file name rather than a file (the exporters). Readers see the
    old file or the new one, never half: the temporary is fsynced before the rename, and the
    rename itself after. On any failure (Ctrl-C included) the temporary is removed and
    `path` is left as it was. `suffix` ends the temporary's name, for writers that check
    the extension (".pt2").
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp: a fresh name, so two processes writing the same file never share a temporary.
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        # mkstemp creates files readable by their owner only; give the file the permissions
        # an ordinary open() would, so a run can be shared and served by another user.
        os.chmod(temporary, 0o666 & ~_umask())
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:
            error.filename = str(path)  # a failed write() or fsync() names no file
        raise
    # Make the rename itself durable (POSIX); skipped where directories cannot be opened.
    with contextlib.suppress(OSError):
        _fsync(path.parent)


def _fsync(path: Path) -> None:
    """Flush a closed file's data, or a directory's entries, to disk, whoever wrote them."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _umask() -> int:
    """The process's umask, read on every write (a process may change it) from /proc on
    Linux; elsewhere found once by setting it and straight back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return _umask_by_setting()


@functools.cache
def _umask_by_setting() -> int:
    """Once only: there is a brief window where another thread could see 022."""
    current = os.umask(0o022)
    os.umask(current)
    return current
