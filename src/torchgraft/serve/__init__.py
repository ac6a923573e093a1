"""Serving: the Predictor (and, later, the HTTP app)."""

from torchgraft.serve.predictor import ClassScore, Prediction, Predictor, load_model

__all__ = ["ClassScore", "Prediction", "Predictor", "load_model"]
