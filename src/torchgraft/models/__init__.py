"""Models: the backbone registry, bundled weights, from-scratch nets, the grafted classifier."""

from torchgraft.defaults import RecipeDefaults, recipe_defaults
from torchgraft.models.classifier import GraftedClassifier, create_classifier, load_model
from torchgraft.models.registry import BackboneSpec, get_spec, register, registered_names
from torchgraft.models.weights import read_weights_file

__all__ = [
    "BackboneSpec",
    "GraftedClassifier",
    "RecipeDefaults",
    "create_classifier",
    "get_spec",
    "load_model",
    "read_weights_file",
    "recipe_defaults",
    "register",
    "registered_names",
]
