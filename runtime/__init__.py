"""Torch-free UnionCAM runtime around the exported graphs.

``from unioncam.runtime import Explainer``; ``Explainer(artifact_dir)(images)`` takes NumPy float32
(B, 3, H, W) in [0, 1] and returns a :class:`unioncam.Explanation`. Imports no torch.
"""
from .backends import BACKENDS, available_backends
from .explainer import Explainer

__all__ = ["BACKENDS", "Explainer", "available_backends"]
