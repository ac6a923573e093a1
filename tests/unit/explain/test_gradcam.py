"""Grad-CAM must point at the evidence: a network that can only tell classes apart by one
coloured square must be shown looking at that square."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchgraft import api
from torchgraft.errors import UserError
from torchgraft.explain import grad_cam
from torchgraft.explain.gradcam import CAPTION_HEIGHT, SCALE_WIDTH
from torchgraft.models import create_classifier, load_model
from torchgraft.testing import PATCH_CLASSES, make_patch_folder, patch_image

SIZE, PATCH = 32, 8


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("patch")
    data = make_patch_folder(root / "data", per_class=48, size=SIZE, patch=PATCH)
    run = api.train(data, model="cnn", epochs=6, image_size=SIZE, batch_size=16,
                    runs_dir=str(root / "runs"), name="patch", quiet=True)  # fmt: skip
    assert run.info.metrics["val_accuracy"] >= 0.95
    return run.path


def held_out_patches(count: int) -> tuple[torch.Tensor, list[tuple[int, int]], list[str]]:
    images, corners, classes = [], [], []
    for index in range(count):
        label = index % 2
        image, row, column = patch_image(label, SIZE, PATCH, seed=99_000 + index)
        images.append(torch.from_numpy(image).permute(2, 0, 1))
        corners.append((row, column))
        classes.append(PATCH_CLASSES[label])
    return torch.stack(images), corners, classes


def test_heatmap_peaks_on_the_patch_that_decides_the_class(patch_run: Path) -> None:
    run = api.load_run(patch_run)
    images, corners, classes = held_out_patches(20)
    cam = grad_cam(load_model(run), images)
    assert [run.info.class_names[i] for i in cam.class_indices] == classes
    assert cam.heatmaps.shape == (20, SIZE, SIZE)
    peaks_inside, shares = 0, []
    for heatmap, (row, column) in zip(cam.heatmaps, corners, strict=True):
        peak_row, peak_column = divmod(int(heatmap.argmax()), SIZE)
        # Two pixels of slack: the 8x8 feature map is upsampled bilinearly to 32x32.
        peaks_inside += (row - 2 <= peak_row < row + PATCH + 2) and (
            column - 2 <= peak_column < column + PATCH + 2
        )
        patch_mass = heatmap[row : row + PATCH, column : column + PATCH].sum()
        shares.append(float(patch_mass / heatmap.sum()))
    assert peaks_inside >= 18, f"only {peaks_inside}/20 heatmaps peak on the patch"
    uniform_share = PATCH * PATCH / (SIZE * SIZE)  # what a heatmap blind to the patch gets
    assert np.mean(shares) > 3 * uniform_share


def test_explain_writes_overlays_and_skips_unreadable_files(
    patch_run: Path, tmp_path: Path
) -> None:
    image, _, _ = patch_image(0, SIZE, PATCH, seed=123)
    Image.fromarray(image).save(tmp_path / "red.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    result = api.explain(patch_run, [tmp_path / "red.png", tmp_path / "broken.jpg"],
                         output_dir=tmp_path / "out")  # fmt: skip
    assert [x.class_name for x in result.explained] == ["red_patch"]
    assert result.skipped[0][0].endswith("broken.jpg")
    figure = np.asarray(Image.open(result.explained[0].heatmap_path).convert("RGB"))
    side = 224  # 32 px enlarged 7x: the image, its overlay, then the colour scale
    assert figure.shape == (CAPTION_HEIGHT + side, 2 * side + SCALE_WIDTH, 3)
    bar = figure[CAPTION_HEIGHT:, 2 * side + 2 : 2 * side + 14].astype(int)
    assert bar[0].mean(0)[0] > 100 and bar[0].mean(0)[2] < 50  # high: red at the top
    assert bar[-1].mean(0)[2] > 100 and bar[-1].mean(0)[0] < 50  # low: blue at the bottom
    assert (figure[:CAPTION_HEIGHT, :60] < 100).any()  # the caption's dark text

    single = api.explain(patch_run, str(tmp_path / "red.png"), output_dir=tmp_path / "out")
    assert [x.source for x in single.explained] == [str(tmp_path / "red.png")]  # not 'r', 'e'...

    forced = api.explain(patch_run, [tmp_path / "red.png"], class_name="blue_patch",
                         output_dir=tmp_path / "out")  # fmt: skip
    assert forced.explained[0].class_name == "blue_patch"
    assert forced.explained[0].probability < 0.5 < result.explained[0].probability


def test_explanations_are_captioned_with_display_names(patch_run: Path, tmp_path: Path) -> None:
    run = api.load_run(shutil.copytree(patch_run, tmp_path / "run"))  # shared runs: read-only
    shown = {"red_patch": "Red square", "blue_patch": "Blue square"}
    run.info.display_names = [shown[name] for name in run.info.class_names]
    run.save_info()
    image, _, _ = patch_image(1, SIZE, PATCH, seed=7)
    Image.fromarray(image).save(tmp_path / "blue.png")
    (explained,) = api.explain(run, [tmp_path / "blue.png"], output_dir=tmp_path / "out").explained
    assert (explained.class_name, explained.display_name) == ("blue_patch", "Blue square")


def test_unknown_class_names_the_choices(patch_run: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"blue_patch.*Did you mean 'red_patch'"):
        api.explain(patch_run, [tmp_path / "x.png"], class_name="red_pach")


def test_networks_without_a_feature_map_are_refused_clearly() -> None:
    mlp = create_classifier("mlp", 3, channels=1, image_size=8, mean=(0.5,), std=(0.5,))
    with pytest.raises(UserError, match="convolutional feature map"):
        grad_cam(mlp, torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def test_timm_backbone_looks_at_the_cat_pasted_on_noise(imagenet_model: torch.nn.Module) -> None:
    """A real pretrained timm CNN, no training: the ImageNet "cat" evidence sits on the cat."""
    import skimage.data
    import torch.nn.functional as F

    cat = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)[None].float()
    cat = F.interpolate(cat, size=(96, 96), mode="bilinear", antialias=True)[0]
    ratios = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        canvas = torch.from_numpy(rng.normal(128, 30, (3, 224, 224)).clip(0, 255))
        row, column = (int(v) for v in rng.integers(0, 224 - 96, 2))
        canvas[:, row : row + 96, column : column + 96] = cat.round().clamp(0, 255)
        cam = grad_cam(imagenet_model, canvas.to(torch.uint8)[None])  # type: ignore[arg-type]
        assert int(cam.class_indices[0]) in range(281, 286)  # an ImageNet cat class
        heatmap = cam.heatmaps[0]
        inside = heatmap[row : row + 96, column : column + 96].sum() / heatmap.sum()
        ratios.append(float(inside) / (96 * 96 / 224**2))
    # Measured 2.3x to 3.1x the share of a heatmap blind to the cat; the 7x7 map is coarse.
    assert min(ratios) > 1.5 and np.mean(ratios) > 2.0, ratios


def square_photo(photo: np.ndarray, size: int) -> torch.Tensor:
    """The centre square of a scikit-image photo, resized to `size`: uint8 (3, size, size)."""
    import torch.nn.functional as F

    pixels = torch.from_numpy(photo).permute(2, 0, 1)[None].float()
    height, width = pixels.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = pixels[..., top : top + side, left : left + side]
    resized = F.interpolate(square, size=(size, size), mode="bilinear", antialias=True)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


IMAGENET_CATS = list(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_CUPS = [504, 967, 968]  # coffee mug, espresso, cup


def test_each_class_heatmap_sits_on_its_own_object(imagenet_model: torch.nn.Module) -> None:
    """A cat beside a cup, both orders: the heatmap asked for the cat class lies on the cat's
    half and the one asked for the cup class on the cup's half, whichever the model prefers.
    A Grad-CAM that explained the top class whatever it was asked would draw both maps on
    the same half."""
    import skimage.data

    cat = square_photo(skimage.data.chelsea(), 224)
    cup = square_photo(skimage.data.coffee(), 224)
    pairs = torch.stack([torch.cat([cat, cup], dim=2), torch.cat([cup, cat], dim=2)])  # 224x448
    with torch.no_grad():
        logits = imagenet_model(pairs)
    # The model sees both objects: its two best classes are a cat and a cup in both orders.
    for row in logits:
        assert {int(i) in IMAGENET_CATS for i in row.topk(2).indices} == {True, False}
        assert {int(i) in IMAGENET_CUPS for i in row.topk(2).indices} == {True, False}
    cat_class = [IMAGENET_CATS[int(row[IMAGENET_CATS].argmax())] for row in logits]
    cup_class = [IMAGENET_CUPS[int(row[IMAGENET_CUPS].argmax())] for row in logits]
    images = pairs.repeat_interleave(2, dim=0)  # cat|cup, cat|cup, cup|cat, cup|cat
    asked = torch.tensor([cat_class[0], cup_class[0], cat_class[1], cup_class[1]])
    cam = grad_cam(imagenet_model, images, asked)  # type: ignore[arg-type]
    assert cam.class_indices.tolist() == asked.tolist()
    left_share = [float(h[:, :224].sum() / h.sum()) for h in cam.heatmaps]
    cat_on_cat = [left_share[0], 1 - left_share[2]]
    cup_on_cup = [1 - left_share[1], left_share[3]]
    # Measured: cat 0.82 and 0.90 of its mass on the cat, cup 0.99 and 0.92 on the cup.
    assert min(cat_on_cat) > 0.65, f"cat heatmap on the cat's half: {cat_on_cat}"
    assert min(cup_on_cup) > 0.65, f"cup heatmap on the cup's half: {cup_on_cup}"
    # Asked for different classes of one image, the maps put their mass on different halves.
    assert abs(left_share[0] - left_share[1]) > 0.5 and abs(left_share[2] - left_share[3]) > 0.5
