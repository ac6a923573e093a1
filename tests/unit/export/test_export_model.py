"""The module every exporter traces (and parity compares each file with), against a formula
written from graft.json alone: uint8 pixels in, softmax(net((pixels / 255 - mean) / std) / T)
out. Parity cannot see a step missing from this module, since it is parity's reference too."""

from __future__ import annotations

import torch

from torchgraft.artifact import Run
from torchgraft.export.model import probability_model
from torchgraft.models import load_model


def test_the_exported_module_normalises_with_the_runs_mean_and_std_and_divides_by_t(
    fresh_run: Run,
) -> None:
    run = fresh_run
    run.info.temperature = 3.0  # far from 1, so that a dropped temperature shows
    prep = run.info.preprocessing
    generator = torch.Generator().manual_seed(0)
    shape = (6, prep.channels, prep.image_size, prep.image_size)
    pixels = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std = torch.tensor(prep.std).view(1, -1, 1, 1)
    assert not torch.allclose(mean, torch.zeros(1)) and not torch.allclose(std, torch.ones(1))
    net = load_model(run).eval().net  # the network alone, without the normalisation
    with torch.no_grad():
        expected = (net((pixels / 255 - mean) / std) / 3.0).softmax(1)
        exported = probability_model(run)(pixels)
    torch.testing.assert_close(exported, expected, rtol=0, atol=1e-5)
    with torch.no_grad():  # the same network on raw pixels answers differently: it matters
        raw = (net(pixels.float()) / 3.0).softmax(1)
    assert (raw - expected).abs().max() > 1e-2
