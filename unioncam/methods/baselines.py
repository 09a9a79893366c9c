"""Baseline CAMs that fall out of UnionCAM's pipeline: Grad-CAM, Grad-CAM++, XGrad-CAM (from the
gradient pass) and Score-CAM (the region map). Each returns ``minmax(up(L))``, (B, H, W) in [0, 1].
Their weights are :mod:`unioncam.algebra.weights` (named in :mod:`unioncam.registry`); their sequence is
:func:`unioncam.pipeline.explain`.

Each example runs on the bundled EfficientNet-Lite0 and its photo of a cat."""
from __future__ import annotations

from .cam_method import CAMMethod, RegionMapMethod


class GradCAM(CAMMethod):
    """Grad-CAM (Selvaraju et al., 2017): ``L = relu(sum_k w_k A_k)``, ``w_k = mean_ij dy_c/dA_kij``.

    Example::

        >>> import torch
        >>> from unioncam.image_io import read_rgb, sample_image_path, to_model_input
        >>> from unioncam.models import load
        >>> model, layer = load("efficientnet_lite0")
        >>> images = torch.from_numpy(to_model_input(read_rgb(sample_image_path("chelsea")), (224, 224)))[None]
        >>> GradCAM(model, layer)(images).cam.shape  # (B, H, W) in [0, 1]
        (1, 224, 224)
    """

    method = "gradcam"


class GradCAMpp(CAMMethod):
    """Grad-CAM++ (Chattopadhay et al., 2018): second-order pixel weights on positive gradients,
    ``w_k = sum_ij alpha_kij relu(G_kij)``.

    Example::

        >>> import torch
        >>> from unioncam.image_io import read_rgb, sample_image_path, to_model_input
        >>> from unioncam.models import load
        >>> model, layer = load("efficientnet_lite0")
        >>> images = torch.from_numpy(to_model_input(read_rgb(sample_image_path("chelsea")), (224, 224)))[None]
        >>> GradCAMpp(model, layer)(images).cam.shape
        (1, 224, 224)
    """

    method = "gradcampp"


class XGradCAM(CAMMethod):
    """XGrad-CAM (Fu et al., 2020): ``w_k = sum_ij G_kij A_kij / sum_ij A_kij``.

    Example::

        >>> import torch
        >>> from unioncam.image_io import read_rgb, sample_image_path, to_model_input
        >>> from unioncam.models import load
        >>> model, layer = load("efficientnet_lite0")
        >>> images = torch.from_numpy(to_model_input(read_rgb(sample_image_path("chelsea")), (224, 224)))[None]
        >>> XGradCAM(model, layer)(images).cam.shape
        (1, 224, 224)
    """

    method = "xgradcam"


class ScoreCAM(RegionMapMethod):
    """Score-CAM (Wang et al., 2020) as UnionCAM's region map: ``R = N(relu(sum_k s_k A_k))`` with
    ``s_k = p_c(minmax(up(A_k)) * I0)``; constant channels get ``p_c(Ib)`` without a pass. Options:
    :class:`RegionMapMethod`.

    Example::

        >>> import torch
        >>> from unioncam.image_io import read_rgb, sample_image_path, to_model_input
        >>> from unioncam.models import load
        >>> model, layer = load("efficientnet_lite0")
        >>> images = torch.from_numpy(to_model_input(read_rgb(sample_image_path("chelsea")), (224, 224)))[None]
        >>> ScoreCAM(model, layer, max_passes=16)(images).cam.shape
        (1, 224, 224)
    """

    method = "scorecam"
