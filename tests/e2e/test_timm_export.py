"""`graft export --format timm`: a folder that plain timm loads (no torchgraft import) and that
answers as `graft predict` does; its model card and config say what a Hub page needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from torchgraft import api
from torchgraft.data import load_data
from torchgraft.errors import GraftRuntimeError
from torchgraft.testing import make_image_folder

# What a timm user runs: the folder's config gives timm's own eval transform.
PLAIN_TIMM = """
import json, sys
import timm, torch
from PIL import Image

folder, files = sys.argv[1], json.loads(sys.argv[2])
config = json.load(open(f"{folder}/config.json"))
model = timm.create_model(config["architecture"], pretrained=True,
                          num_classes=config["num_classes"],
                          pretrained_cfg_overlay=dict(config["pretrained_cfg"],
                                                      file=f"{folder}/model.safetensors")).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
with torch.inference_mode():
    batch = torch.stack([transform(Image.open(file).convert("RGB")) for file in files])
    top1 = model(batch).argmax(1).tolist()
assert not any(name.startswith("torchgraft") for name in sys.modules)
print(json.dumps([config["label_names"][index] for index in top1]))
"""


@pytest.mark.slow
def test_the_timm_folder_loads_in_plain_timm_and_agrees_with_predict(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "shapes", per_class=70, size=32)
    run = api.train(data, model="efficientnet_lite0", image_size=32, epochs=1, batch_size=32,
                    val_fraction=0.5, runs_dir=str(tmp_path / "runs"), quiet=True,
                    tensorboard=False)  # fmt: skip
    report = api.export(run, formats=["timm"], quiet=True)
    assert report.passed  # parity: the folder, loaded by timm, against eager PyTorch
    folder = report.folder / "timm"
    assert sorted(path.name for path in folder.iterdir()) == [
        "README.md", "config.json", "model.safetensors",
    ]  # fmt: skip

    files = [str(path) for path in load_data(str(data), val_fraction=0.5).val.images[:100]]
    assert len(files) == 100
    plain = subprocess.run(
        [sys.executable, "-c", PLAIN_TIMM, str(folder), json.dumps(files)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-2000:]
    expected = [prediction.class_name for prediction in api.predict(run, files)]
    assert json.loads(plain.stdout) == expected

    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm") and "## Intended use" in card
    accuracy = run.info.metrics["val_accuracy"]
    assert f"| validation accuracy | {accuracy:.2%} |" in card
    assert all(name in card for name in run.info.class_names)


def test_a_network_that_is_not_timms_is_refused_with_the_formats_that_work(
    copied_run: Path,
) -> None:
    with pytest.raises(GraftRuntimeError, match=r"timm: --format timm needs a timm backbone.*onnx"):
        api.export(copied_run, formats=["timm"], quiet=True)
