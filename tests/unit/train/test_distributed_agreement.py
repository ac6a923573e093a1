"""Under DDP the ranks agree: on the files that decoded, and on the `--lr auto` rate.

Two gloo processes, spawned here (seconds, not a torchrun job)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp

from torchgraft.data import DecodedSplit, Skipped
from torchgraft.train.distributed import Distributed, broadcast_float
from torchgraft.train.setup import agree_on_decoded

WORLD = 2
RANK_0_LR = 0.0012345678901234567


def _rank(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    context = Distributed(rank, WORLD, rank)
    # Rank 1 could not read training file 2 (a flaky network disk, say).
    kept = np.array([0, 1, 2, 3, 4]) if rank == 0 else np.array([0, 1, 3, 4])
    skipped = [] if rank == 0 else [Skipped("c/2.png", "truncated file")]
    pixels = np.broadcast_to(kept.astype(np.uint8)[:, None, None, None], (len(kept), 1, 2, 2))
    decoded = {
        "train": DecodedSplit(kept, skipped, pixels.copy(), key="train-key"),
        "val": DecodedSplit(np.array([0, 1]), [], None, key="val-key"),
    }
    agreed = agree_on_decoded(decoded, context)
    lr = broadcast_float(RANK_0_LR if rank == 0 else 0.5, context)
    train = agreed["train"]
    assert train.pixels is not None
    result = {
        "kept": train.kept.tolist(),
        "pixels_of": train.pixels[:, 0, 0, 0].tolist(),
        "skipped": [[s.path, s.reason] for s in train.skipped],
        "key": train.key,
        "val": [agreed["val"].kept.tolist(), agreed["val"].key],
        "lr": lr,
    }
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def test_ranks_train_on_the_files_every_rank_read_and_on_rank_0s_rate(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(WORLD)]
    assert results[0] == results[1]  # every rank trains on the same list, at the same rate
    agreed = results[0]
    assert agreed["kept"] == [0, 1, 3, 4]
    assert agreed["pixels_of"] == agreed["kept"]  # each image's pixels stay with its index
    assert agreed["skipped"] == [["c/2.png", "truncated file (on rank 1)"]]  # in skipped.csv
    assert agreed["key"] != "train-key"  # features cached for 5 images are not these 4
    assert agreed["val"] == [[0, 1], "val-key"]  # a split the ranks agree on is unchanged
    assert agreed["lr"] == RANK_0_LR
