from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from torchgraft import api
from torchgraft.data import load_data
from torchgraft.models import load_model


def test_predictions_use_the_temperature_fitted_on_validation(tmp_path: Path) -> None:
    run = api.train("digits", model="mlp", epochs=2, runs_dir=str(tmp_path), quiet=True)
    evaluation = api.evaluate(run.path, quiet=True)
    reloaded = api.load_run(run.path)
    assert reloaded.info.temperature == evaluation.temperature != 1.0
    # What temperature scaling guarantees: a lower validation NLL than the raw logits (ECE
    # may rise on a model that is already well calibrated, as this one is, 0.03).
    val = load_data("digits").val
    model = load_model(reloaded).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.stack(val.images)).unsqueeze(1))
    labels = torch.from_numpy(val.labels).long()
    calibrated = F.cross_entropy(logits / evaluation.temperature, labels)
    assert calibrated < F.cross_entropy(logits, labels)

    images = val.images[:8]
    probabilities = api.predictor(run.path).predict_proba(list(images))
    batch = torch.from_numpy(np.stack(images)).unsqueeze(1)  # 8x8 digits: no resizing needed
    with torch.no_grad():
        expected = (model(batch) / evaluation.temperature).softmax(1).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
