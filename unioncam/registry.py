"""The methods every path implements: one registry (after OpenVINO XAI's method registry).

Each method is a kind of the one pipeline (:mod:`unioncam.pipeline`): ``"gradient"`` methods need
the gradient pass only, ``"region"`` methods the region map's masked passes, ``"union"`` all of
UnionCAM. The CLI's choices, the validation of ``method=`` and the eager classes read this table.
Torch-free: an eager class is named, and imported only when asked for.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from .errors import InvalidInputError

KINDS = ("gradient", "region", "union")


@dataclass(frozen=True)
class MethodInfo:
    """name: the public name (``--methods``, ``method=``); kind: see :data:`KINDS`; eager: the
    eager class as ``"module:Class"``; summary: one line for ``--help``; weights: for a
    ``"gradient"`` method, the name of its channel-weight function in :mod:`unioncam.algebra`."""

    name: str
    kind: str
    eager: str
    summary: str
    weights: str = ""

    def options(self, **settings) -> dict:
        """The constructor options of this method's kind among ``settings`` (theta, batch_size,
        max_passes, progress): a gradient method takes no budget, only UnionCAM takes theta."""
        takes = {"gradient": ("batch_size", "progress"), "region": ("batch_size", "progress", "max_passes"),
                 "union": ("batch_size", "progress", "max_passes", "theta")}[self.kind]
        return {k: v for k, v in settings.items() if k in takes}

    def eager_class(self):
        """The eager PyTorch class (imports torch)."""
        module, _, cls = self.eager.partition(":")
        return getattr(importlib.import_module(module), cls)


METHODS: dict[str, MethodInfo] = {}


def register_method(info: MethodInfo) -> MethodInfo:
    """Add a method; its ``kind`` says which part of the pipeline it runs."""
    if info.kind not in KINDS:
        raise InvalidInputError(f"method kind must be one of {KINDS}, got {info.kind!r}")
    METHODS[info.name] = info
    return info


for _info in (
    MethodInfo("unioncam", "union", "unioncam.methods.unioncam:UnionCAM", "UnionCAM (Hu et al., 2024)"),
    MethodInfo("gradcam", "gradient", "unioncam.methods.baselines:GradCAM", "Grad-CAM (Selvaraju et al., 2017)",
               "gradcam_weights"),
    MethodInfo("gradcampp", "gradient", "unioncam.methods.baselines:GradCAMpp",
               "Grad-CAM++ (Chattopadhay et al., 2018)", "gradcampp_weights"),
    MethodInfo("xgradcam", "gradient", "unioncam.methods.baselines:XGradCAM", "XGrad-CAM (Fu et al., 2020)",
               "xgradcam_weights"),
    MethodInfo("scorecam", "region", "unioncam.methods.baselines:ScoreCAM", "Score-CAM (Wang et al., 2020)"),
):
    register_method(_info)


def method_info(name: str) -> MethodInfo:
    """The registered method, or InvalidInputError listing the names."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise InvalidInputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None
