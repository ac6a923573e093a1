"""Prediction on folders, globs and bytes; unreadable files skipped and reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torchgraft import api
from torchgraft.errors import UserError
from torchgraft.serve.predictor import Predictor
from torchgraft.testing import class_image, encoded_image


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """photos/{b.png, a.png, nested/c.jpg, notes.txt, broken.png}: three images, one bad."""
    root = tmp_path / "photos"
    (root / "nested").mkdir(parents=True)
    Image.fromarray(class_image(0, 32, seed=1)).save(root / "b.png")
    Image.fromarray(class_image(1, 32, seed=2)).save(root / "a.png")
    Image.fromarray(class_image(2, 32, seed=3)).save(root / "nested" / "c.jpg")
    (root / "notes.txt").write_text("not an image, and not an image suffix either")
    (root / "broken.png").write_bytes(encoded_image("PNG")[:100])
    return root


def test_a_folder_is_walked_recursively_in_sorted_order(tiny_run: Path, photos: Path) -> None:
    records = api.predict(tiny_run, photos)
    assert [Path(r.source).relative_to(photos).as_posix() for r in records] == [
        "a.png", "b.png", "broken.png", "nested/c.jpg",
    ]  # fmt: skip
    assert [r.class_name for r in records if r.ok] == ["square", "circle", "triangle"]


def test_unreadable_files_are_skipped_with_the_reason(
    tiny_run: Path, photos: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records, probabilities = api.predict(tiny_run, photos, probabilities=True)
    (broken,) = [r for r in records if not r.ok]
    assert broken.source.endswith("broken.png") and "truncated" in broken.error
    assert broken.top_k == [] and broken.class_name == "" and broken.probability == 0.0
    assert "skipped" in caplog.text and "broken.png" in caplog.text
    assert probabilities.shape == (4, 3)
    assert np.isnan(probabilities[2]).all()
    np.testing.assert_allclose(probabilities[[0, 1, 3]].sum(1), 1.0, rtol=1e-5)


def test_probabilities_match_the_records(tiny_run: Path, photos: Path) -> None:
    records, probabilities = api.predict(tiny_run, photos / "*.png", top_k=3, probabilities=True)
    for record, row in zip(records, probabilities, strict=True):
        if record.ok:
            assert record.probability == pytest.approx(float(np.max(row)))


def test_globs_expand_recursively_and_in_order(tiny_run: Path, photos: Path) -> None:
    records = api.predict(tiny_run, [str(photos / "**" / "*.jpg"), photos / "[ab].png"])
    assert [Path(r.source).name for r in records] == ["c.jpg", "a.png", "b.png"]


def test_a_glob_that_matches_nothing_names_the_pattern(tiny_run: Path, photos: Path) -> None:
    with pytest.raises(UserError, match=r"no images match .*\*\.gif"):
        api.predict(tiny_run, str(photos / "*.gif"))


def test_an_empty_folder_is_a_user_error(tiny_run: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no image files"):
        api.predict(tiny_run, tmp_path / "empty")


def test_bytes_predict_like_the_file_they_came_from(tiny_run: Path, photos: Path) -> None:
    predictor = api.predictor(tiny_run)
    from_bytes = predictor.predict_proba((photos / "a.png").read_bytes())
    np.testing.assert_allclose(from_bytes, predictor.predict_proba(photos / "a.png"), atol=1e-6)


def test_predict_proba_refuses_unreadable_files(tiny_run: Path, photos: Path) -> None:
    with pytest.raises(UserError, match=r"cannot read .*broken\.png"):
        api.predictor(tiny_run).predict_proba(photos)


def test_batch_size_and_memory_layout_do_not_change_the_answer(tiny_run: Path) -> None:
    images = [class_image(i % 3, 32, seed=i) for i in range(10)]
    reference = Predictor.from_run(tiny_run, batch_size=64).predict_proba(images)
    one_at_a_time = Predictor.from_run(tiny_run, batch_size=1).predict_proba(images)
    run = Predictor.from_run(tiny_run).run
    contiguous = Predictor(run, channels_last=False, batch_size=3).predict_proba(images)
    np.testing.assert_allclose(one_at_a_time, reference, atol=1e-5)
    np.testing.assert_allclose(contiguous, reference, atol=1e-5)


def test_a_bad_batch_size_is_a_user_error(tiny_run: Path) -> None:
    with pytest.raises(UserError, match="batch size"):
        api.predict(tiny_run, class_image(0, 32), batch_size=0)
