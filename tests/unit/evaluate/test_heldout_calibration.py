"""The temperature fitted on the validation split makes a held-out test set's
probabilities more trustworthy, not just the validation split it was fitted on."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchgraft.testing import make_image_folder


def noisy_folder(folder: Path, per_class: int, split: bool) -> Path:
    """Generated classes with every third image filed under the next class (label noise),
    so that no model can be right more than about two times in three."""
    make_image_folder(folder, per_class=per_class, size=16, split=split)
    for sub in [folder / "train", folder / "val"] if split else [folder]:
        classes = sorted(path.name for path in sub.iterdir())
        for label, name in enumerate(classes):
            for index, file in enumerate(sorted((sub / name).iterdir())):
                if index % 3 == 1:
                    file.rename(sub / classes[(label + 1) % len(classes)] / f"moved_{file.name}")
    return folder


@pytest.mark.slow
def test_the_validation_temperature_lowers_the_ece_on_a_held_out_folder(tmp_path: Path) -> None:
    """An overconfident run (an mlp after one epoch, its logits scaled by 10: the same
    classes, near-certain probabilities) is evaluated on its validation split, which fits T,
    then on a separate noisy test folder (`graft evaluate TEST --run RUN`): there the stored T
    is applied, not refitted, and must cut the ECE by at least 0.15 and by half."""
    from torchgraft import api

    data = noisy_folder(tmp_path / "data", 40, split=True)
    test = noisy_folder(tmp_path / "test", 20, split=False)
    run = api.train(str(data), model="mlp", epochs=1, image_size=16, batch_size=16,
                    runs_dir=str(tmp_path / "runs"), name="overconfident", report=False,
                    quiet=True)  # fmt: skip
    weights = run.load_weights()
    for key in ("net.classifier.weight", "net.classifier.bias"):
        weights[key] = weights[key] * 10.0
    run.save_weights(weights)

    validation = api.evaluate(run, quiet=True)
    assert validation.temperature > 2.0  # it found the run overconfident
    held_out = api.evaluate(run, str(test), quiet=True)
    assert held_out.source == str(test) and held_out.images == 60
    assert held_out.temperature == pytest.approx(validation.temperature)  # not refitted
    assert held_out.ece_before > 0.25  # miscalibrated on the test folder too
    assert held_out.ece_after < held_out.ece_before - 0.15
    assert held_out.ece_after < held_out.ece_before / 2
