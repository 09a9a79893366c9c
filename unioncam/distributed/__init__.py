"""Explain a whole data set on Ray Data: an actor pool of runtime ``Explainer``s, resumable.

``explain_dataset(paths, artifact_dir, out, workers=2)``; the CLI's ``unioncam explain ... --workers N``
calls it. Needs the ``ray`` extra (``pip install "unioncam[ray]"``); importing this package does
not import Ray.
"""
from .dataset import explain_dataset

__all__ = ["explain_dataset"]
