"""Images held in memory as training data: layouts, labels, and the name a run records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchgraft.data import load_data, memory
from torchgraft.data.memory import hold, image_array, label_indices
from torchgraft.errors import UserError


def test_uint8_arrays_are_used_without_a_copy() -> None:
    grey = np.zeros((6, 8, 8), np.uint8)
    colour = np.zeros((6, 8, 8, 3), np.uint8)
    assert np.shares_memory(image_array(grey), grey)
    assert np.shares_memory(image_array(colour), colour)
    assert np.shares_memory(image_array(torch.from_numpy(colour)), colour)  # tensors too


def test_channels_first_tensors_of_floats_become_channels_last_pixels() -> None:
    pixels = torch.rand(4, 3, 5, 7)
    array = image_array(pixels)
    assert array.shape == (4, 5, 7, 3) and array.dtype == np.uint8
    expected = (pixels.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(array, expected)
    assert image_array(np.ones((2, 1, 9, 9), np.float32)).shape == (2, 9, 9)  # one channel
    assert image_array(np.full((2, 9, 9), 300, np.int64)).max() == 255  # integers: 0..255


@pytest.mark.parametrize("shape", [(5,), (5, 8), (5, 8, 8, 2), (5, 2, 8, 8, 3)])
def test_other_shapes_are_refused_with_the_shapes_that_work(shape: tuple[int, ...]) -> None:
    with pytest.raises(UserError, match=r"expected \(N, H, W\), \(N, H, W, C\)"):
        image_array(np.zeros(shape, np.uint8))


def test_labels_as_strings_name_the_classes_in_sorted_order() -> None:
    labels, names = label_indices(["dog", "cat", "dog", "bird"], None)
    assert names == ["bird", "cat", "dog"] and labels.tolist() == [2, 1, 2, 0]
    labels, names = label_indices(torch.tensor([1, 0, 2]), ["zero", "one", "two"])
    assert names == ["zero", "one", "two"] and labels.tolist() == [1, 0, 2]
    assert label_indices(np.array([0, 3]), None)[1] == ["0", "1", "2", "3"]


def test_labels_outside_the_class_names_are_refused() -> None:
    with pytest.raises(UserError, match="labels must index the class names"):
        label_indices([0, 5], ["a", "b"])
    with pytest.raises(UserError, match=r"labels \['fish'\] are not among"):
        label_indices(["cat", "fish"], ["cat", "dog"])


def test_held_arrays_split_like_a_bundled_set_and_record_one_name() -> None:
    images = np.random.default_rng(0).integers(0, 256, (40, 12, 12), dtype=np.uint8)
    labels = np.repeat([0, 1, 2, 3], 10)
    name = hold((images, labels))
    assert name.startswith("memory:") and hold((images.copy(), labels)) == name  # by content
    splits = load_data(name, val_fraction=0.2, seed=0)
    assert (len(splits.train), len(splits.val)) == (32, 8)
    assert np.bincount(splits.val.labels).tolist() == [2, 2, 2, 2]  # stratified
    assert splits.channels == 1 and splits.native_size == 12
    train_rows = [images.tolist().index(image.tolist()) for image in splits.train.images]
    assert labels[train_rows].tolist() == splits.train.labels.tolist()


def test_another_process_is_told_the_held_images_are_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    name = hold((np.zeros((4, 8, 8), np.uint8), [0, 1, 0, 1]))
    monkeypatch.setattr(memory, "_HELD", {})  # what a new process holds
    with pytest.raises(UserError, match=r"held in memory.*save the images to a folder"):
        load_data(name)


def test_a_dataset_of_mixed_sizes_is_refused_with_the_folder_route() -> None:
    pairs = [(torch.zeros(3, 8, 8), 0), (torch.zeros(3, 9, 9), 1)]
    with pytest.raises(UserError, match=r"must share one.*folder"):
        hold(pairs, quiet=True)


def test_a_list_of_images_and_labels_is_told_to_be_a_tuple() -> None:
    images, labels = np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 0, 1])
    with pytest.raises(UserError, match=r"not an \(image, label\) pair.*api.train\(\(images"):
        hold([images, labels], quiet=True)


def test_something_that_is_not_data_names_what_is_accepted() -> None:
    with pytest.raises(UserError, match=r"cannot train on a int: pass a folder"):
        hold(42)
