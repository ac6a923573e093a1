"""Resolving what a run needs before training: preprocessing, the run directory, the data."""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from torchgraft.artifact import (
    RUN_FILE,
    Preprocessing,
    Run,
    RunInfo,
    atomic_write_bytes,
    library_versions,
)
from torchgraft.config import DataConfig, RunConfig, to_dict
from torchgraft.data import DataSplits, DecodedSplit, Skipped, decode_split, load_display_names
from torchgraft.data.cache import cache_root
from torchgraft.data.sources import printable
from torchgraft.errors import UserError
from torchgraft.models.registry import BackboneSpec
from torchgraft.train.checkpoint import has_checkpoint
from torchgraft.train.distributed import Distributed, broadcast_text, gather_objects

logger = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.csv"


def resolve_preprocessing(
    spec: BackboneSpec, data: DataConfig, splits: DataSplits
) -> Preprocessing:
    """Input size, channels and normalisation for this model on this data."""
    return Preprocessing(
        image_size=data.image_size or default_image_size(spec, splits.native_size),
        resize_mode=data.resize,
        mean=spec.mean,
        std=spec.std,
        channels=3 if spec.pretrainable else splits.channels,
        interpolation=spec.interpolation,
    )


def default_image_size(spec: BackboneSpec, native_size: int | None) -> int:
    """The model's own size, except for tiny bundled images (28 px digits).

    Scratch nets use tiny images as they are; a pretrained backbone sees them upscaled to
    64 px, enough for its stride-32 features and far cheaper than 224 px.
    """
    if native_size is None:
        return spec.image_size
    return native_size if not spec.pretrainable else max(native_size, 64)


def create_run(
    config: RunConfig, splits: DataSplits, preprocessing: Preprocessing, write: bool = True,
    overwrite: bool = False,
) -> Run:  # fmt: skip
    """A new run directory, reserved here, whose graft.json describes the model to come.

    Called once the data has decoded, so a failure before then leaves no folder (and an
    old run is never given new metadata). With `write` False (DDP ranks other than 0) the
    Run exists only in memory: rank 0 reserves the folder and tells the others its path.
    """
    class_names = splits.class_names
    names_file = config.data.class_names
    info = RunInfo(
        model_name=config.model.name,
        class_names=class_names,
        display_names=load_display_names(names_file, class_names) if names_file else class_names,
        preprocessing=preprocessing,
        config=to_dict(config),
        data_fingerprint=splits.fingerprint(),
        versions=library_versions(),
        torchelastic_run_id=elastic_run_id(),
    )
    train = config.train
    if not write:
        return Run(Path(train.runs_dir), info)
    base = automatic_name(config.model.name, splits.source)
    return reserve_run(info, Path(train.runs_dir), train.name, base, overwrite)


def reserve_run(info: RunInfo, runs_dir: Path, name: str | None, base: str, overwrite: bool) -> Run:
    """runs/<name> (refused if it exists, unless `overwrite`), or the first free automatic
    name. mkdir is the test, never a look beforehand: two runs started together get two
    folders."""
    if name:
        path = runs_dir / name
        if overwrite:
            remove_old_run(path)
        try:
            return Run.create(path, info)
        except FileExistsError:
            raise run_exists(path) from None
    for candidate in automatic_paths(runs_dir, base):
        try:
            return Run.create(candidate, info)
        except FileExistsError:
            continue  # taken, perhaps a moment ago by a run started together with this one
    raise AssertionError("automatic_paths never ends")


def refuse_existing_run(runs_dir: str, name: str | None, overwrite: bool) -> None:
    """Fail fast, on every rank and before any data is read: --name naming a folder that
    exists (unless `overwrite` and it is a run), or `overwrite` with no --name."""
    if overwrite and not name:
        raise UserError(
            "--overwrite replaces the run that --name names, and there is no --name (a run "
            "without one gets a new folder of its own): pass --name NAME, or drop --overwrite"
        )
    refuse_unwritable(Path(runs_dir))
    path = Path(runs_dir) / name if name else None
    if path is None or not path.exists():
        return
    if not overwrite:
        raise run_exists(path)
    refuse_unless_run(path)


def refuse_unwritable(runs_dir: Path) -> None:
    """Fail before any data is read when no run can be written under `runs_dir` (a read-only
    disk, no permission, a path under a file). Nothing is left behind: a nameless file is
    tried in the folder, or in its nearest existing parent when it is still to be made."""
    existing = next(folder for folder in (runs_dir, *runs_dir.absolute().parents)
                    if folder.exists())  # fmt: skip
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UserError(
            f"cannot write runs into {runs_dir}: {error.strerror or error}; pass a folder you "
            f"can write to as --runs-dir (runs_dir= in Python)"
        ) from None


def run_exists(path: Path) -> UserError:
    return UserError(
        f"{path} already exists: continue it with `graft train --resume {path}`, choose "
        "another --name, or pass --overwrite (overwrite=True in Python) to replace it"
    )


def remove_old_run(path: Path) -> None:
    """--overwrite: the old run goes in one rename, then is deleted, so no moment shows
    old files beside new ones. Only a run (or an empty folder) is ever deleted."""
    if not path.exists():
        return
    refuse_unless_run(path)  # checked again here: the folder may have changed since
    trash = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.replaced-"))
    path.rename(trash / path.name)
    shutil.rmtree(trash)
    logger.warning("--overwrite: removed the earlier run in %s", path)


def refuse_unless_run(path: Path) -> None:
    """--overwrite deletes only a run (or an empty folder), never someone's other files."""
    if not path.is_dir() or (any(path.iterdir()) and not (path / RUN_FILE).is_file()):
        raise UserError(
            f"{path} is not a torchgraft run (no {RUN_FILE}), so --overwrite leaves it alone: "
            "choose another --name or --runs-dir, or remove it yourself"
        )


def automatic_name(model_name: str, source: str) -> str:
    return f"{model_name}-{Path(source).name or 'data'}"


def automatic_paths(runs_dir: Path, base: str) -> Iterator[Path]:
    """runs/<base>, runs/<base>-2, runs/<base>-3, ..."""
    yield runs_dir / base
    for number in itertools.count(2):
        yield runs_dir / f"{base}-{number}"


def unique_run_path(runs_dir: str, name: str | None, model_name: str, source: str) -> Path:
    """runs/<name>, or the first automatic name not taken (for lr-find's plot folders,
    which a later sweep of the same name may replace)."""
    if name:
        return Path(runs_dir) / name
    base = automatic_name(model_name, source)
    return next(path for path in automatic_paths(Path(runs_dir), base) if not path.exists())


RESUME = "resume"  # a torchrun restart continues its own run from the checkpoint
START_AGAIN = "start again"  # its own run ended no epoch: replace it
FIRST_START = ""  # no restart, or not of this run: refused or replaced as on a first start


def elastic_run_id() -> str:
    """This torchrun job's id (its rendezvous id), or "" outside torchrun and where it names
    no job: without --rdzv-id, a multi-node torchrun calls every job "none"."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return "" if run_id == "none" else run_id


def elastic_restart(runs_dir: str, name: str | None, context: Distributed) -> str:
    """What this start does with runs/<name>: RESUME, START_AGAIN or FIRST_START.

    Rank 0 decides and the others take its word: ranks on nodes that saw the folder
    differently would otherwise train different runs, and their collectives hang.
    """
    choice = own_run_after_restart(runs_dir, name) if context.is_main else FIRST_START
    return broadcast_text(choice, context)


def own_run_after_restart(runs_dir: str, name: str | None) -> str:
    """Under a torchrun restart (TORCHELASTIC_RESTART_COUNT > 0), whether runs/<name> is the
    run the failed attempt started: its graft.json records this job's id. Any other folder
    is an old run of the same name, left to the first-start rules (refused, or replaced
    with --overwrite). Never raises: under DDP the other ranks wait for the answer."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return FIRST_START
    if not name:
        logger.warning(
            "torchrun restarted this job, but without --name the run to resume is unknown: "
            "starting a new run. Pass --name so that a restart resumes it."
        )
        return FIRST_START
    run_id = elastic_run_id()
    if not run_id:
        logger.warning(
            "torchrun restarted this job, but the job has no id of its own, so its run cannot "
            "be told from an old one: starting as if for the first time. Pass torchrun "
            "--rdzv-id JOB_ID (unique to the job) so that a restart resumes it."
        )
        return FIRST_START
    path = Path(runs_dir) / name
    try:
        recorded = Run.load(path).info.torchelastic_run_id
    except (UserError, OSError):
        return FIRST_START  # no folder, or no run in it: nothing of this job's
    if recorded != run_id:
        return FIRST_START
    return RESUME if has_checkpoint(path) else START_AGAIN


def decode_splits(
    splits: DataSplits, preprocessing: Preprocessing, data: DataConfig, quiet: bool
) -> dict[str, DecodedSplit]:
    """One decoding pass per split: fills the decoded-image cache and finds unreadable files."""
    cache_dir = cache_root(data.cache_dir)
    decoded = {}
    for name, split in (("train", splits.train), ("val", splits.val)):
        decoded[name] = decode_split(
            split, preprocessing, mode=data.cache, cache_dir=cache_dir,
            workers=decode_workers(len(split), data.num_workers),
            description=f"decoding {name}", quiet=quiet,
        )  # fmt: skip
    return decoded


def decode_workers(count: int, num_workers: int | None) -> int:
    """Worker processes for the one-off decoding pass: the cores, unless the split is tiny.

    Nothing else computes during this pass, so using every core cannot oversubscribe.
    """
    if count < 256:
        return 0
    return max(num_workers or 0, min(2, os.cpu_count() or 1))


MAX_LOADER_WORKERS = 8


def loader_workers(num_workers: int | None, device: torch.device) -> int:
    """DataLoader processes: as asked, else none on a CPU (its cores run the steps, and
    workers would compete with them) and the cores less one, at most 8, for a GPU."""
    if num_workers is not None:
        return num_workers
    if device.type == "cpu":
        return 0
    return max(1, min(MAX_LOADER_WORKERS, (os.cpu_count() or 2) - 1))


def record_skipped(
    run: Run, splits: DataSplits, decoded: dict[str, DecodedSplit], write: bool = True
) -> None:
    """Write skipped.csv (path, split, reason); refuse to go on without usable images."""
    run.info.data_summary = {
        **{f"{name}_images": len(result.kept) for name, result in decoded.items()},
        "skipped": sum(len(result.skipped) for result in decoded.values()),
        **({"excluded": splits.excluded} if splits.excluded is not None else {}),
    }
    if write:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "split", "reason"])
        for name, result in decoded.items():
            writer.writerows(
                [printable(str(skipped.path)), name, skipped.reason] for skipped in result.skipped
            )
        atomic_write_bytes(run.path / SKIPPED_FILE, buffer.getvalue().encode())
        run.save_info()
    total = run.info.data_summary["skipped"]
    if total:
        logger.warning("%d unreadable files skipped, listed in %s", total, run.path / SKIPPED_FILE)
    for name, result in decoded.items():
        labels = getattr(splits, name).labels[result.kept]
        if len(labels) == 0:
            raise UserError(
                f"no readable images in the {name} split ({len(result.skipped)} skipped, "
                f"see {run.path / SKIPPED_FILE})"
            )
        empty = sorted(set(range(len(splits.class_names))) - set(np.unique(labels).tolist()))
        for label in empty:
            logger.warning("class %r has no readable %s images", splits.class_names[label], name)


def agree_on_decoded(
    decoded: dict[str, DecodedSplit], context: Distributed
) -> dict[str, DecodedSplit]:
    """Under DDP, every rank trains on the files that decoded on every rank.

    Each rank decodes on its own, and a file one rank cannot read (a flaky network disk)
    would otherwise give the ranks datasets of different lengths, and DDP hangs. The ranks
    swap what they kept and skipped, and all take the intersection.
    """
    if context.world_size == 1:
        return decoded
    return {name: _agreed_split(result, context) for name, result in decoded.items()}


def _agreed_split(result: DecodedSplit, context: Distributed) -> DecodedSplit:
    mine = (result.kept.tolist(), [(skipped.path, skipped.reason) for skipped in result.skipped])
    gathered = gather_objects(mine, context)
    kept_by_rank = [set(kept) for kept, _ in gathered]
    common = set.intersection(*kept_by_rank)
    if all(len(kept) == len(common) for kept in kept_by_rank):
        return result
    skipped: dict[str, str] = {}
    for rank, (_, rank_skipped) in enumerate(gathered):
        for path, reason in rank_skipped:
            skipped.setdefault(path, reason if rank == 0 else f"{reason} (on rank {rank})")
    agreed = sorted(common)
    mask = np.isin(result.kept, agreed)
    logger.warning("the ranks decoded different files: training on the %d all of them read",
                   len(agreed))  # fmt: skip
    # Another set of images: another name for the features computed from them.
    key = hashlib.sha256(f"{result.key}:{agreed}".encode()).hexdigest()[:24]
    return DecodedSplit(
        kept=result.kept[mask], skipped=[Skipped(path, why) for path, why in skipped.items()],
        pixels=None if result.pixels is None else result.pixels[mask], key=key,
    )  # fmt: skip
