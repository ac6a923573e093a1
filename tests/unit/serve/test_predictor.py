import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchgraft import api
from torchgraft.errors import UserError
from torchgraft.serve.predictor import Scores
from torchgraft.testing import class_image


def test_paths_pil_arrays_and_tensors_give_the_same_prediction(
    tiny_run: Path, tmp_path: Path
) -> None:
    array = class_image(1, size=32, seed=99)
    Image.fromarray(array).save(tmp_path / "x.png")
    predictor = api.predictor(tiny_run)
    inputs = [
        tmp_path / "x.png",
        str(tmp_path / "x.png"),
        Image.fromarray(array),
        array,
        torch.from_numpy(array).permute(2, 0, 1),
        torch.from_numpy(array).permute(2, 0, 1).float() / 255,
    ]
    probabilities = predictor.predict_proba(inputs)
    assert probabilities.shape == (6, 3)
    np.testing.assert_allclose(probabilities, probabilities[[0]].repeat(6, 0), atol=1e-3)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)


def test_batched_arrays_count_as_many_images(tiny_run: Path) -> None:
    batch = np.stack([class_image(label, 32, seed=7) for label in (0, 1, 2)])
    predictions = api.predict(tiny_run, batch, top_k=2)
    assert len(predictions) == 3
    assert all(len(p.top_k) == 2 for p in predictions)
    assert [p.class_name for p in predictions] == ["circle", "square", "triangle"]


def test_top_k_is_sorted_and_capped_at_the_class_count(tiny_run: Path) -> None:
    (prediction,) = api.predict(tiny_run, class_image(2, 32), top_k=10)
    probabilities = [score.probability for score in prediction.top_k]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)


def test_class_names_file_sets_display_names(tiny_run: Path, tmp_path: Path) -> None:
    names = tmp_path / "names.json"
    names.write_text('{"circle": "Round thing"}')
    (prediction,) = api.predict(tiny_run, class_image(0, 32), top_k=3, class_names=names)
    shown = {score.class_name: score.display_name for score in prediction.top_k}
    assert shown == {"circle": "Round thing", "square": "square", "triangle": "triangle"}


def test_missing_image_is_a_user_error(tiny_run: Path) -> None:
    with pytest.raises(UserError, match="image not found"):
        api.predict(tiny_run, ["no/such.jpg"])


def test_prediction_uses_the_runs_resize_mode(tmp_path: Path) -> None:
    from torchgraft.testing import make_image_folder

    data = make_image_folder(tmp_path / "data", per_class=4, size=32)
    run = api.train(
        data, model="cnn", epochs=1, image_size=32, resize="pad", runs_dir=str(tmp_path),
        quiet=True,
    )  # fmt: skip
    assert run.info.preprocessing.resize_mode == "pad"
    wide = np.full((20, 80, 3), 255, dtype=np.uint8)
    pixels = api.predictor(run.path).preprocess(wide)
    assert pixels.shape == (3, 32, 32)
    assert pixels[:, 0, :].max() == 0 and pixels[:, 16, :].min() == 255  # letterboxed, not cut


@pytest.mark.parametrize("top_k", [0, -1])
def test_a_top_k_below_one_is_a_user_error(tiny_run: Path, top_k: int) -> None:
    predictor = api.predictor(tiny_run)
    with pytest.raises(UserError, match=f"top_k must be at least 1.*got {top_k}"):
        predictor.predict(class_image(0, 32), top_k=top_k)
    with pytest.raises(UserError, match="top_k must be at least 1"):
        predictor.top_classes(np.full(3, 1 / 3), top_k)


def test_an_unknown_device_is_a_user_error(tiny_run: Path) -> None:
    with pytest.raises(
        UserError, match=r"device 'gpu': choose auto, cpu, cuda, mps\. Did you mean 'cuda'"
    ):
        api.predictor(tiny_run, device="gpu")


def test_cuda_without_a_cuda_device_is_a_user_error(
    tiny_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(UserError, match="cuda: torch sees no CUDA device here"):
        api.predictor(tiny_run, device="cuda")


def test_each_prediction_says_how_unfamiliar_its_image_is(tiny_run: Path) -> None:
    """A shape like the training ones is familiar; a photo (scikit-image's cat) is not."""
    from skimage.data import chelsea

    predictor = api.predictor(tiny_run)
    assert predictor.familiarity is not None
    shape, cat = predictor.predict([class_image(1, 32, seed=5), chelsea()], top_k=1)
    for prediction in (shape, cat):
        assert prediction.unfamiliar_threshold == predictor.familiarity.threshold
    assert shape.is_unfamiliar is False and cat.is_unfamiliar is True
    assert cat.to_dict()["is_unfamiliar"] is True and cat.to_dict()["unfamiliar"] > 0
    # The score comes from the same pass as the probabilities, which stay as they were.
    probabilities = predictor.predict_proba([class_image(1, 32, seed=5), chelsea()])
    assert [shape.probability, cat.probability] == pytest.approx(probabilities.max(1), abs=1e-6)


def test_the_next_batch_decodes_while_the_model_classifies_this_one(
    tiny_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of 2 from 6 images: while the first batch is with the model, the images of
    the second are decoded by the pool (the model waits until it sees one)."""
    predictor = api.predictor(tiny_run, batch_size=2)
    decoded: set[int] = set()
    second_batch_started = threading.Event()
    real_preprocess, real_score = predictor.preprocess, predictor.score

    def preprocess(image: np.ndarray) -> torch.Tensor:
        index = int(image[0, 0, 0])  # each test image carries its index in one pixel
        decoded.add(index)
        if index in (2, 3):
            second_batch_started.set()
        return real_preprocess(image)

    overlapped = []

    def score(pixels: torch.Tensor, unfamiliar: bool = True) -> Scores:
        if not overlapped:  # the first batch: wait (bounded) for the pool to move on
            overlapped.append(second_batch_started.wait(timeout=30))
        return real_score(pixels, unfamiliar)

    monkeypatch.setattr(predictor, "preprocess", preprocess)
    monkeypatch.setattr(predictor, "score", score)
    images = []
    for index in range(6):
        image = class_image(index % 3, 32, seed=index)
        image[0, 0, 0] = index
        images.append(image)
    records = predictor.predict(images)
    assert overlapped == [True]
    assert decoded == set(range(6)) and all(record.ok for record in records)
