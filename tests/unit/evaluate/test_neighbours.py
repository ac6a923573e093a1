import torch

from torchgraft.evaluate.neighbours import knn_distance, nearest, normalized


def test_nearest_matches_brute_force_and_skips_itself():
    features = normalized(torch.randn(2500, 16, generator=torch.Generator().manual_seed(0)))
    similarities, indices = nearest(features, features, 3, same_set=True)
    full = features @ features.T
    full.fill_diagonal_(-2.0)
    expected = full.topk(3, dim=1)
    assert torch.equal(indices, expected.indices)
    assert torch.allclose(similarities, expected.values)
    assert not (indices == torch.arange(2500)[:, None]).any()


def test_an_image_unlike_the_references_is_far():
    crowd = normalized(torch.tensor([[1.0, 0.0, 0.0]]) + 0.05 * torch.randn(50, 3))
    stranger = normalized(torch.tensor([[0.0, 0.0, 1.0]]))
    distances = knn_distance(torch.cat([crowd[:5], stranger]), crowd[5:], k=5)
    assert distances[:5].max() < 0.05
    assert distances[5] > 0.9


def test_fewer_references_than_k():
    features = normalized(torch.randn(3, 4))
    similarities, indices = nearest(features, features, 10, same_set=True)
    assert similarities.shape == indices.shape == (3, 2)
