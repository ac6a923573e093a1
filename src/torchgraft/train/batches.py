"""Where a phase's batches come from: resident on the GPU, a DataLoader, or shards of one.

`auto` keeps the decoded images on a GPU when they fit (`data.resident`): no worker
processes, no per-image Python, augmentation batched on the device. Otherwise a DataLoader
with pinned memory and persistent workers; under DDP each rank reads its own shard.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import DataLoader

from torchgraft.data import CachedImageDataset, make_loader
from torchgraft.data.resident import RESIDENT_AUGMENTS, ResidentBatches, fits_on_device, to_device
from torchgraft.errors import UserError
from torchgraft.train.distributed import Distributed, ShardSampler
from torchgraft.train.phases import PhaseData

logger = logging.getLogger(__name__)

Loader = DataLoader[Any] | ResidentBatches  # either gives a phase its batches


class BatchSource:
    """Makes each phase's (train, val) batches; copies images to the device once per run."""

    def __init__(
        self, loader: str, batch_size: int, seed: int, device: torch.device,
        distributed: Distributed,
    ) -> None:  # fmt: skip
        self.loader, self.batch_size, self.seed = loader, batch_size, seed
        self.device, self.distributed = device, distributed
        self._on_device: dict[int, torch.Tensor] = {}  # id(pixels) -> their device copy

    def batches(self, data: PhaseData, sharded: bool) -> tuple[Loader, Loader]:
        """Shuffled training batches and ordered validation ones."""
        cached = None if sharded else _cached_images(data)
        if cached is not None and self._resident_wanted(*cached):
            return self._resident(*cached, data.val_batch_size)
        if not sharded:
            train = make_loader(data.train, self.batch_size, True, data.shuffle_workers, self.seed)
            val = make_loader(data.val, data.val_batch_size, False, data.shuffle_workers)
            return train, val
        per_rank = max(1, self.batch_size // self.distributed.world_size)
        return tuple(  # type: ignore[return-value]
            DataLoader(
                images, batch_size=per_rank * (1 if shuffle else 2),
                num_workers=data.shuffle_workers,
                sampler=ShardSampler(len(images), self.distributed, shuffle, self.seed),  # type: ignore[arg-type]
            )
            for images, shuffle in ((data.train, True), (data.val, False))
        )  # fmt: skip

    def _resident_wanted(self, train: CachedImageDataset, val: CachedImageDataset) -> bool:
        if self.loader == "dataloader":
            return False
        if self.loader == "resident":
            if train.preset not in RESIDENT_AUGMENTS:
                raise UserError(
                    f"--loader resident augments with {' or '.join(RESIDENT_AUGMENTS)} only; "
                    f"--augment {train.preset} needs --loader dataloader (or auto)"
                )
            return True
        if id(train.pixels) in self._on_device and id(val.pixels) in self._on_device:
            return True  # copied for an earlier phase: the free memory no longer counts them
        nbytes = train.pixels.nbytes + val.pixels.nbytes
        fits, why = fits_on_device(self.device.type, nbytes, free_memory(self.device), train.preset)
        if not fits and self.device.type == "cuda":
            logger.info("images stay in host memory (%s): a DataLoader feeds the GPU", why)
        return fits

    def _resident(
        self, train: CachedImageDataset, val: CachedImageDataset, val_batch_size: int
    ) -> tuple[ResidentBatches, ResidentBatches]:
        return (
            ResidentBatches(
                self._device_copy(train.pixels), torch.as_tensor(train.labels), self.batch_size,
                shuffle=True, augment=train.preset, seed=self.seed,
            ),
            ResidentBatches(
                self._device_copy(val.pixels), torch.as_tensor(val.labels), val_batch_size,
                shuffle=False,
            ),
        )  # fmt: skip

    def _device_copy(self, pixels: Any) -> torch.Tensor:
        if id(pixels) not in self._on_device:
            self._on_device[id(pixels)] = to_device(pixels, self.device)
        return self._on_device[id(pixels)]


def _cached_images(data: PhaseData) -> tuple[CachedImageDataset, CachedImageDataset] | None:
    """The phase's decoded-image datasets, when both are (features or on-the-fly are not)."""
    train, val = data.train, data.val
    if isinstance(train, CachedImageDataset) and isinstance(val, CachedImageDataset):
        return train, val
    return None


def free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device; None elsewhere."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)
