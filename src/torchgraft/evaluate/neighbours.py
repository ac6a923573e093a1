"""Nearest neighbours in embedding space, by cosine similarity.

The deep audit (`graft doctor --deep`) finds copies and outliers with them, and prediction
scores how unfamiliar an input is from its distance to the training images. Both compare
L2-normalised backbone features, so similarity is a matrix product, done a block of queries at
a time to bound memory (5,000 x 5,000 similarities are 100 MB in float32; a block is not).
"""

from __future__ import annotations

import torch

_QUERY_BLOCK = 1024  # queries compared at once: a block x references matrix in memory


def normalized(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (float32), so a dot product is the cosine similarity."""
    return torch.nn.functional.normalize(features.float(), dim=1)


@torch.no_grad()
def nearest(
    queries: torch.Tensor, references: torch.Tensor, k: int, *, same_set: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices), each (N, k): the `k` references most similar to each query,
    most similar first. Both inputs are normalised rows. With `same_set`, query i is
    reference i and never its own neighbour."""
    k = min(k, len(references) - (1 if same_set else 0))
    if k <= 0:
        empty = torch.empty(len(queries), 0)
        return empty, empty.long()
    similarities, indices = [], []
    for start in range(0, len(queries), _QUERY_BLOCK):
        block = queries[start : start + _QUERY_BLOCK] @ references.T
        if same_set:
            rows = torch.arange(len(block))
            block[rows, rows + start] = -torch.inf
        top = block.topk(k, dim=1)
        similarities.append(top.values)
        indices.append(top.indices)
    return torch.cat(similarities), torch.cat(indices)


def knn_distance(
    queries: torch.Tensor, references: torch.Tensor, k: int, *, same_set: bool = False
) -> torch.Tensor:
    """Mean cosine distance (1 - similarity) from each query to its `k` nearest references:
    small inside a crowd of similar images, large for an image unlike any of them."""
    similarities, _ = nearest(queries, references, k, same_set=same_set)
    return (1.0 - similarities).mean(1)
