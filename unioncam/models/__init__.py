"""Registered models, offline: ``load(name, weights=None) -> (model, default_layer)``."""
from ..classes import class_name, imagenet_class_names
from .registry import SPECS, ModelSpec, UntrainedWeightsWarning, available, load, read_state_dict, spec

__all__ = [
    "SPECS",
    "ModelSpec",
    "UntrainedWeightsWarning",
    "available",
    "class_name",
    "imagenet_class_names",
    "load",
    "read_state_dict",
    "spec",
]
