"""Baseline CAMs that fall out of UnionCAM's pipeline: Grad-CAM, Grad-CAM++, XGrad-CAM (from the
gradient pass) and Score-CAM (the region map). Each returns ``minmax(up(L))``, (B, H, W) in [0, 1].
Their weights are :mod:`unioncam.algebra.weights` (named in :mod:`unioncam.registry`); their sequence is
:func:`unioncam.pipeline.explain`."""
from __future__ import annotations

from .cam_method import CAMMethod, RegionMapMethod


class GradCAM(CAMMethod):
    """Grad-CAM (Selvaraju et al., 2017): ``L = relu(sum_k w_k A_k)``, ``w_k = mean_ij dy_c/dA_kij``.

    Example::

        >>> GradCAM(model, "features.16")(images).cam.shape  # (B, H, W) in [0, 1]
    """

    method = "gradcam"


class GradCAMpp(CAMMethod):
    """Grad-CAM++ (Chattopadhay et al., 2018): second-order pixel weights on positive gradients,
    ``w_k = sum_ij alpha_kij relu(G_kij)``.

    Example::

        >>> GradCAMpp(model, "features.16")(images).cam.shape
    """

    method = "gradcampp"


class XGradCAM(CAMMethod):
    """XGrad-CAM (Fu et al., 2020): ``w_k = sum_ij G_kij A_kij / sum_ij A_kij``.

    Example::

        >>> XGradCAM(model, "features.16")(images).cam.shape
    """

    method = "xgradcam"


class ScoreCAM(RegionMapMethod):
    """Score-CAM (Wang et al., 2020) as UnionCAM's region map: ``R = N(relu(sum_k s_k A_k))`` with
    ``s_k = p_c(minmax(up(A_k)) * I0)``; constant channels get ``p_c(Ib)`` without a pass. Options:
    :class:`RegionMapMethod`.

    Example::

        >>> ScoreCAM(model, "features.16", max_passes=64)(images).cam.shape
    """

    method = "scorecam"
