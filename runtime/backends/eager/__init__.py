"""The eager PyTorch reference as a backend name (``--backend torch``): it runs no exported graph
(``unioncam.UnionCAM`` and its baselines), so its entry has no runner."""
from __future__ import annotations

import importlib.util

from ...devices import EAGER_BATCH, EAGER_DEVICES
from ..registry import BackendInfo, register_backend

INFO = register_backend(BackendInfo(
    "torch", EAGER_DEVICES, default_batch=dict.fromkeys(EAGER_DEVICES, EAGER_BATCH), eager=True,
    available=lambda: None if importlib.util.find_spec("torch") else "pip install \"unioncam[torch]\"",
    summary="the eager PyTorch reference (unioncam.UnionCAM), no export"))
