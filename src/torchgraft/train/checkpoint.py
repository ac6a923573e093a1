"""Resumable training state: checkpoints/last.json + a safetensors file, no pickle.

A checkpoint holds what `graft train --resume` needs to continue exactly: the model (and its
EMA), the optimizer's moments, the schedule's position, the random-number state, and the
training progress (phase, epoch, best score, history). It is written after every epoch.

The JSON index is the commit point. Tensors go to a fresh file first; then the index, which
names that file, replaces the old index atomically; only then is the previous tensor file
removed. A process killed at any moment leaves the old checkpoint or the new one, whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from torchgraft.artifact import atomic_write_bytes, load_tensors, save_tensors
from torchgraft.errors import UserError

CHECKPOINT_FOLDER = "checkpoints"
INDEX_FILE = "last.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors by prefix, and the JSON side."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    def part(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors saved under `prefix.` with the prefix removed."""
        start = f"{prefix}."
        return {k[len(start) :]: v for k, v in self.tensors.items() if k.startswith(start)}


def save_checkpoint(
    run_path: Path,
    *,
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    progress: dict[str, Any],
    ema: nn.Module | None = None,
) -> None:
    """Write the training state after an epoch (see the module docstring for the protocol)."""
    folder = run_path / CHECKPOINT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    optimizer_state = optimizer.state_dict()
    for index, state in optimizer_state["state"].items():
        for name, value in state.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    epoch = int(progress["epoch"])
    tensors_file = f"state-epoch{epoch:04d}.safetensors"
    save_tensors(folder / tensors_file, tensors)
    previous = _read_index(folder).get("tensors_file") if (folder / INDEX_FILE).is_file() else None
    index = {
        "tensors_file": tensors_file,
        "progress": progress,
        "optimizer_groups": optimizer_state["param_groups"],
        "scheduler": _plain(scheduler.state_dict()),
    }
    atomic_write_bytes(folder / INDEX_FILE, json.dumps(index, indent=1).encode())
    if previous and previous != tensors_file:
        (folder / previous).unlink(missing_ok=True)


def has_checkpoint(run_path: Path) -> bool:
    """Whether a run has a complete epoch to resume from."""
    return (run_path / CHECKPOINT_FOLDER / INDEX_FILE).is_file()


def how_to_resume(path: Path) -> str:
    """What an interrupted run kept: its last complete epoch, or nothing to resume."""
    if has_checkpoint(path):
        return (
            "interrupted: the last complete epoch is kept; resume with "
            f"`graft train --resume {path}`"
        )
    return (
        f"interrupted before the first epoch ended: {path} has nothing to resume; train "
        f"again, {replace_it(path)}"
    )


def replace_it(path: Path) -> str:
    """How to train again over a run's folder; right for an automatic name too (a plain
    `--overwrite` would be refused without --name, and a new run would take another)."""
    return f"with `--name {path.name} --overwrite` to replace it (or under another --name)"


def load_checkpoint(run_path: Path) -> Checkpoint:
    folder = run_path / CHECKPOINT_FOLDER
    if not (folder / INDEX_FILE).is_file():
        raise UserError(
            f"{run_path} has no checkpoint to resume ({CHECKPOINT_FOLDER}/{INDEX_FILE} is "
            f"missing): it stopped before its first epoch ended. Train it again instead, "
            f"{replace_it(run_path)}."
        )
    meta = _read_index(folder)
    # Only a file inside the checkpoint folder, read as safetensors: never a pickle.
    tensors_file = folder / Path(str(meta["tensors_file"])).name
    try:
        tensors = load_tensors(tensors_file)
    except Exception as error:  # safetensors raises its own error types for torn files
        raise UserError(_damaged(tensors_file, error)) from None
    if "rng.torch" not in tensors or not any(name.startswith("model.") for name in tensors):
        raise UserError(_damaged(tensors_file, "it holds no model weights or random state"))
    return Checkpoint(tensors, meta)


def restore_optimizer(optimizer: Optimizer, checkpoint: Checkpoint) -> None:
    """Load the optimizer's moments and group settings saved by `save_checkpoint`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in checkpoint.part("optimizer").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = checkpoint.meta["optimizer_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def restore_rng(checkpoint: Checkpoint) -> None:
    torch.set_rng_state(checkpoint.tensors["rng.torch"])


# What a checkpoint index must hold, by key and type; its progress, by key.
INDEX_KEYS = {"tensors_file": str, "progress": dict, "optimizer_groups": list, "scheduler": dict}
PROGRESS_KEYS = ("epoch", "position", "phases", "records")


def _read_index(folder: Path) -> dict[str, Any]:
    """The index, checked for what resuming reads: a damaged one is a UserError saying so."""
    path = folder / INDEX_FILE
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise UserError(_damaged(path, error)) from None
    if not isinstance(index, dict):
        raise UserError(_damaged(path, "it is not a JSON object"))
    wrong = [key for key, kind in INDEX_KEYS.items() if not isinstance(index.get(key), kind)]
    if not wrong:
        wrong = [f"progress.{key}" for key in PROGRESS_KEYS if key not in index["progress"]]
    if wrong:
        raise UserError(_damaged(path, f"{', '.join(wrong)} missing or of the wrong type"))
    return index


def _damaged(path: Path, reason: object) -> str:
    """One line: which checkpoint file is damaged, why, and how to go on."""
    reason = " ".join(str(reason).split())
    run_path = path.parent.parent
    return (
        f"the checkpoint file {path} is damaged ({reason}): the run cannot resume from it. "
        f"Train it again, {replace_it(run_path)}."
    )


def _plain(value: Any) -> Any:
    """JSON-ready copy of a scheduler state (tuples become lists; tensors become numbers)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item()
    return value
