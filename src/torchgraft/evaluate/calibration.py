"""How far to trust the probabilities: expected calibration error and temperature scaling.

A network trained with cross-entropy is usually overconfident. Temperature scaling (Guo et
al., 2017) divides the logits by one scalar T fitted on validation logits to minimise the
negative log-likelihood; it never changes the top-1 class, only how sure the model says it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error


def expected_calibration_error(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 15
) -> float:
    """The mean gap between confidence and accuracy over `bins` confidence bins (L1)."""
    classes = probabilities.shape[1]
    return float(
        multiclass_calibration_error(
            probabilities, labels, num_classes=classes, n_bins=bins, norm="l1"
        )
    )


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on these labels (LBFGS on log T)."""
    log_temperature = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_temperature], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe"
    )
    logits, labels = logits.detach().float(), labels.detach()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_temperature.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_temperature.detach().exp())
