import torch

from torchgraft.evaluate.embeddings import content_box, middle_stages
from torchgraft.models import create_classifier, get_spec


def _stroke(offset: int, size: int = 64) -> torch.Tensor:
    image = torch.zeros(3, size, size, dtype=torch.uint8)
    image[:, 20 + offset : 40 + offset, 24 + offset : 30 + offset] = 255
    image[:, 20 + offset : 26 + offset, 24 + offset : 44 + offset] = 255
    return image


def test_shifted_copies_on_a_plain_background_have_one_content_box():
    first, second = content_box(_stroke(0)), content_box(_stroke(9))
    assert first.shape == second.shape == (3, 64, 64)
    assert (first.float() - second.float()).abs().mean() < 1.0
    assert (_stroke(0).float() - _stroke(9).float()).abs().mean() > 20


def test_an_image_without_a_plain_border_is_left_as_it_is():
    photo = torch.randint(
        0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(content_box(photo), photo)
    blank = torch.full((3, 32, 32), 7, dtype=torch.uint8)
    assert torch.equal(content_box(blank), blank)


def test_the_middle_stages_are_the_stride_8_and_16_ones():
    spec = get_spec("efficientnet_lite0")
    model = create_classifier(
        "efficientnet_lite0", 3, channels=3, mean=spec.mean, std=spec.std, image_size=64,
        pretrained=False,
    )  # fmt: skip
    stages = middle_stages(model.net)
    assert [model.net.feature_info[i]["reduction"] for i in stages] == [8, 16]
    scratch = create_classifier(
        "mlp", 3, channels=1, mean=(0.5,), std=(0.5,), image_size=28, pretrained=False
    )
    assert middle_stages(scratch.net) == []


def test_deep_with_a_random_network_says_so_and_keeps_the_pixel_report(tmp_path, caplog):
    from torchgraft import api
    from torchgraft.testing import make_image_folder

    folder = make_image_folder(tmp_path / "shapes", per_class=4)
    report = api.doctor(folder, deep=True, model="mlp", workers=0, quiet=True)
    assert report.deep is None
    assert report.counts["all"]["circle"] == 4
    assert "needs a pretrained backbone" in caplog.text
