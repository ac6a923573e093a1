"""Serving: the Predictor. The HTTP app is `torchgraft.serve.app` (imported on demand: it
needs FastAPI, which `import torchgraft` does not load)."""

from torchgraft.serve.predictor import ClassScore, Prediction, Predictor, load_model

__all__ = ["ClassScore", "Prediction", "Predictor", "load_model"]
