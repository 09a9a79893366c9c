"""The two functions we export, written in PyTorch, and their tracing into ATen graphs.

Route for gradients (``torch.onnx.export`` cannot trace a backward call):
1. ``GradientFunction`` runs the model with a forward hook that makes the target layer's output a
   fresh autograd leaf, and calls ``torch.autograd.grad`` of the selected logits w.r.t. that leaf.
2. ``make_fx`` traces it below autograd (symbolic shapes), so the backward appears as plain ATen
   ops; PyTorch's core decompositions plus ours (``decompositions.py``) lower the backward ops that
   have no ONNX translation (``convolution_backward``, pooling backwards) to forward ops.
3. The traced graph is an ordinary ``GraphModule``: the dynamo ONNX exporter exports it with a
   dynamic batch dimension (``onnx_export.py``).
Only the layers after the target are differentiated; the layers before it run forward only.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from unioncam import algebra
from unioncam.methods.passes import class_probs, logit_gradient


class GradientFunction(nn.Module):
    """(image (B,3,H,W) in [0,1], class_idx (B,) int64) -> logits (B,C), activations, gradients (B,K,h,w).

    A negative class index selects the arg-max of the image's logits (first maximum), so the
    runtime needs one pass whether or not the class is given.
    """

    def __init__(self, model: nn.Module, layer_name: str, layer: nn.Module, reshape=None):
        super().__init__()
        self.model = model
        self.layer_name = layer_name
        self.layer = layer
        self.reshape = reshape

    def forward(self, image: torch.Tensor, class_idx: torch.Tensor):
        logits, A, G, _ = logit_gradient(self.model, self.layer_name, self.layer, image, class_idx,
                                         reshape=self.reshape)
        return logits, A, G


class MaskedForward(nn.Module):
    """(image (B,3,H,W), maps (B,M,h',w'), class_idx (B,)) -> scores (B,M) = p_c(N(map) * image).

    ``N`` = minmax(up(map)), zero for a constant map (docs/method.md, "The method"). Maps may be activations
    (h', w') = (h, w) or full-size maps (H, W), where the half-pixel bilinear resize is the identity.
    """

    def __init__(self, model: nn.Module, input_size: tuple[int, int]):
        super().__init__()
        self.model = model
        self.input_size = tuple(input_size)

    def forward(self, image: torch.Tensor, maps: torch.Tensor, class_idx: torch.Tensor):
        B, M = maps.shape[:2]
        H, W = self.input_size
        masks = algebra.saliency_masks(maps, (H, W))  # (B, M, H, W); exactly 0 for a constant map
        x = (image[:, None] * masks[:, :, None]).reshape(B * M, 3, H, W)
        return class_probs(self.model, x, class_idx.reshape(B, 1).expand(B, M).reshape(B * M)).reshape(B, M)


def trace(fn: nn.Module, example_inputs: tuple, *, dynamic: bool = True) -> torch.fx.GraphModule:
    """Trace ``fn`` below autograd into ATen ops, lowering backward ops: with symbolic shapes (a
    dynamic batch), or with ``dynamic=False`` the example's shapes (about 4x faster to trace and
    export: a graph for one batch size)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from .decompositions import decomposition_table
    from .restride import simplify_restrides

    # Attention in its math form (matmuls and a softmax): the fused CPU kernels' backward
    # (``_scaled_dot_product_flash_attention_for_cpu_backward``) has no ONNX translation, the math
    # form's backward is plain ops. The same function, computed the textbook way.
    with sdpa_kernel([SDPBackend.MATH]):
        gm = make_fx(fn, decomposition_table=decomposition_table(), tracing_mode="symbolic" if dynamic else "fake",
                     _allow_non_fake_inputs=True)(*example_inputs)
    simplify_restrides(gm)  # ONNX has no strides: see restride.py
    return gm
