"""The default target layer of a model nobody named one for: the last 4-D feature map before the
network pools it away (Grad-CAM's usual choice: ``layer4`` of a ResNet, ``features`` of a VGG)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ExportError, LayerNotFoundError


def last_feature_map(model: nn.Module, input_size=(224, 224)) -> tuple[str, tuple[int, ...]]:
    """(dotted name, output shape) of the module whose output is the last (B, K, h, w) tensor with
    h * w > 1 that the forward pass produces, pooling outputs left out (a pooled map is a resampled
    copy of the features: VGG's last max pool and adaptive 7x7 pool are skipped for its last ReLU).

    Modules returning the same tensor (a block and its last in-place ReLU) are one candidate; the
    outermost name is chosen (``layer4`` rather than ``layer4.2.relu``), then the latest to finish.
    Names inside a :class:`unioncam.models.Normalized` wrapper lose its prefix, as ``resolve_layer``
    accepts. One forward pass on a (1, 3, H, W) input, in eval mode, under ``no_grad``.

    Raises:
        LayerNotFoundError: no module produces a spatial map (the model is not a CNN classifier).
    """
    records = []  # (completion order, name, id(output), shape)
    pooled = set()  # ids of tensors a pooling layer produced
    alive = []
    hooks = []

    def hook(name, is_pool):
        def fn(_m, _i, out):
            if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
                records.append((len(records), name, id(out), tuple(out.shape)))
                alive.append(out)
                if is_pool:
                    pooled.add(id(out))
        return fn

    for name, mod in model.named_modules():
        if name:
            hooks.append(mod.register_forward_hook(hook(name, "Pool" in type(mod).__name__)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.rand(1, 3, int(input_size[0]), int(input_size[1]), generator=torch.Generator().manual_seed(0)))
    except RuntimeError as e:
        raise ExportError(f"the model cannot run on a (1, 3, {input_size[0]}, {input_size[1]}) input "
                          f"({str(e).splitlines()[0]}); check --input-size") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    # ``alive`` held every recorded output during the pass, so no id was reused by a new tensor.
    alive.clear()
    records = [r for r in records if r[2] not in pooled]
    if not records:
        raise LayerNotFoundError("no layer of this model outputs a (B, K, h, w) feature map larger than 1x1; "
                                 "give --layer")
    last_id = records[-1][2]
    same = [r for r in records if r[2] == last_id]
    name = min(same, key=lambda r: (r[1].count("."), -r[0]))[1]
    inner = getattr(model, "unioncam_inner", None)
    if inner and name.startswith(inner + "."):
        name = name[len(inner) + 1:]
    return name, records[-1][3]
