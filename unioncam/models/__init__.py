"""Registered models, offline: ``load(name, weights=None) -> (model, default_layer)``."""
from ..classes import class_name, imagenet_class_names
from ..model_specs import SPECS, ModelSpec, available, spec
from .registry import UntrainedWeightsWarning, load
from .state_dicts import read_state_dict

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
