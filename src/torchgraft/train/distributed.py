"""Data-parallel training under `torchrun` (PyTorch DDP): gloo on CPUs, NCCL on GPUs.

    torchrun --nproc-per-node 2 -m torchgraft train DATA ...
    torchrun --nnodes 2 --node-rank 0 --rdzv-endpoint HOST:29500 --nproc-per-node 4 \\
        -m torchgraft train DATA ...

torchrun starts one process per device and sets RANK, WORLD_SIZE and LOCAL_RANK; torchgraft
sees them and joins the group. Every rank holds the whole model; each trains on its own shard
of every epoch (a seeded permutation split by rank), gradients are averaged by DDP, and epoch
metrics are summed over ranks so every rank sees the same numbers and makes the same
decisions. Only rank 0 writes the run directory, logs and shows progress.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Distributed(rank=0, world_size=1, local_rank=0)


def join_process_group() -> Distributed:
    """The process group torchrun describes in the environment, or SINGLE without torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return SINGLE
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    context = Distributed(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    )
    if torch.cuda.is_available():
        torch.cuda.set_device(context.local_rank)
    return context


def leave_process_group(context: Distributed) -> None:
    if context.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def device_for(context: Distributed, device: torch.device) -> torch.device:
    """Each rank drives its own GPU; on CPUs all ranks share the CPU device."""
    if device.type == "cuda" and context.world_size > 1:
        return torch.device("cuda", context.local_rank)
    return device


def sum_over_ranks(values: list[float], context: Distributed) -> list[float]:
    """Element-wise sums across ranks (the values themselves with one process)."""
    if context.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def any_rank(flag: bool, context: Distributed) -> bool:
    """True on every rank when any rank says True (to stop all ranks together)."""
    return sum_over_ranks([float(flag)], context)[0] > 0


def broadcast_text(text: str, context: Distributed) -> str:
    """Rank 0's string on every rank (the run directory's path, for one)."""
    if context.world_size == 1:
        return text
    box = [text]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def broadcast_float(value: float, context: Distributed) -> float:
    """Rank 0's number on every rank, exactly (the learning rate `--lr auto` found)."""
    return float(broadcast_text(repr(float(value)), context))


def gather_objects(value: T, context: Distributed) -> list[T]:
    """Every rank's `value` (picklable plain data), in rank order, on every rank."""
    if context.world_size == 1:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


class ShardSampler(Sampler[int]):
    """This rank's share of an epoch: a seeded permutation (or the plain order), by stride.

    Training (`shuffle`) drops the last few images of each epoch's permutation so every rank
    takes the same number of steps, which DDP needs (a different few each epoch). Validation
    never pads or drops, so every image is counted exactly once.
    """

    def __init__(self, length: int, context: Distributed, shuffle: bool, seed: int) -> None:
        self.context, self.shuffle, self.seed = context, shuffle, seed
        self.length = length - length % context.world_size if shuffle else length
        self.total = length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.total, generator=generator).tolist()[: self.length]
        else:
            order = list(range(self.length))
        return iter(order[self.context.rank :: self.context.world_size])

    def __len__(self) -> int:
        return len(range(self.context.rank, self.length, self.context.world_size))
