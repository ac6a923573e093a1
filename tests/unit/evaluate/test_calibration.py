"""Temperature scaling repairs an overconfident model's probabilities, not its answers."""

import torch

from torchgraft.evaluate import expected_calibration_error, fit_temperature
from torchgraft.probabilities import calibrated_probabilities


def overconfident_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """A 70%-accurate classifier whose logits are scaled up 5x: it claims near-certainty."""
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 5, (2000,), generator=generator)
    logits = torch.randn(2000, 5, generator=generator)
    logits[torch.arange(2000), labels] += 1.5
    return logits * 5.0, labels


def test_ece_drops_after_temperature_scaling() -> None:
    logits, labels = overconfident_logits()
    before = expected_calibration_error(logits.softmax(1), labels)
    temperature = fit_temperature(logits, labels)
    after = expected_calibration_error((logits / temperature).softmax(1), labels)
    assert temperature > 2.0  # it found the inflation
    assert before > 0.15 and after < before / 3


def test_temperature_never_changes_the_predicted_class() -> None:
    logits, labels = overconfident_logits()
    temperature = fit_temperature(logits, labels)
    assert torch.equal((logits / temperature).argmax(1), logits.argmax(1))


def test_ece_of_a_perfectly_calibrated_toy_is_zero() -> None:
    probabilities = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probabilities, torch.tensor([0, 1])) == 0.0


def test_calibrated_probabilities_are_softmax_of_logits_over_temperature() -> None:
    """Against exp / sum in float64, along the class axis of (views, N, classes) logits."""
    logits = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = (logits / 2.5).exp() / (logits / 2.5).exp().sum(-1, keepdim=True)
    probabilities = calibrated_probabilities(logits.half(), 2.5)
    assert probabilities.dtype == torch.float32  # half-precision logits are upcast first
    torch.testing.assert_close(probabilities.double(), expected, atol=2e-3, rtol=0)
    along_first = calibrated_probabilities(logits.transpose(0, 2), 2.5, dim=0)
    torch.testing.assert_close(along_first.transpose(0, 2).double(), expected, atol=1e-6, rtol=0)
