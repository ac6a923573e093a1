"""torchgraft: from tensors to a deployed image classifier.

The verbs live in `torchgraft.api` (train, predict, ...): `torchgraft.train` is the training
package, so the verbs are not re-exported here under the same names.
"""

from torchgraft import api
from torchgraft.artifact import Run, RunInfo
from torchgraft.errors import GraftError, UserError
from torchgraft.serve.predictor import Prediction, Predictor

__version__ = "0.1.0"

__all__ = [
    "GraftError",
    "Prediction",
    "Predictor",
    "Run",
    "RunInfo",
    "UserError",
    "__version__",
    "api",
]
