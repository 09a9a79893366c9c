"""The default target layer of a model nobody named one for: the last 4-D feature map before the
network pools it away (Grad-CAM's usual choice: ``layer4`` of a ResNet, ``features`` of a VGG)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ExportError, LayerNotFoundError
from . import token_flow


def _probe(model: nn.Module, input_size, hooks: list) -> None:
    """One forward pass on a seeded (1, 3, H, W) input, in eval mode, under ``no_grad``; the
    ``hooks`` are removed and the train flag restored afterwards."""
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
    _probe(model, input_size, hooks)
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


def _trace(model: nn.Module, input_size):
    """:func:`unioncam.models.token_flow.trace` of :func:`_probe`'s input, eval mode restored."""
    from . import token_flow

    was_training = model.training
    try:
        model.eval()
        image = torch.rand(1, 3, int(input_size[0]), int(input_size[1]), generator=torch.Generator().manual_seed(0))
        return token_flow.trace(model, image)
    except RuntimeError as e:
        raise ExportError(f"the model cannot run on a (1, 3, {input_size[0]}, {input_size[1]}) input "
                          f"({str(e).splitlines()[0]}); check --input-size") from None
    finally:
        model.train(was_training)


def default_target(model: nn.Module, input_size=(224, 224)) -> tuple[str, tuple[int, ...], str | None]:
    """(dotted name, output shape, reshape or None): the layer a CAM explains when nobody named one.

    A CNN's is :func:`last_feature_map`. Where attention runs after the last (B, K, h, w) map, the
    model is a vision transformer, and its target is found by data flow, whatever its modules are
    called or however they nest (:mod:`unioncam.models.token_flow`, docs/models.md):

    - tokens (1, N, D): the last block's input, the last token tensor a module outputs that reaches
      the last attention's q, k and v through per-token ops; reshaped with the leading tokens
      (class, distillation, registers) and the grid read off the patch embedding;
    - channels-last maps (B, h, w, D) that permute an earlier (B, D, h, w) map, attention in windows
      (Swin): the last block's output (a module with children; a final norm's only where no
      block's is), with ``reshape="bhwc"``.

    Raises:
        LayerNotFoundError: tokens whose last block input no module outputs, or tokens with no
            attention (give --layer and --reshape).
    """
    from . import token_flow

    tr = _trace(model, input_size)
    records = tr.records
    convs = {(s[1], s[2], s[3]) for _, _, kind, _, s in records if len(s) == 4 and "Conv" in kind}

    def is_channels_last(s):
        return len(s) == 4 and (s[3], s[1], s[2]) in convs and s[1] * s[2] > 1

    spatial_cnn = [r for r in records if len(r[4]) == 4 and not is_channels_last(r[4]) and r[4][2] * r[4][3] > 1]
    cnn_after = (lambda order: bool(spatial_cnn) and spatial_cnn[-1][0] > order)
    own = [a for a in tr.attention if a.batch == 1]
    inner = getattr(model, "unioncam_inner", None)

    def strip(name):
        return name[len(inner) + 1:] if inner and name.startswith(inner + ".") else name

    found = token_flow.last_block_input(tr)
    if found and not cnn_after(own[-1].order):
        name, shape, tid = found
        tokens = shape[1]
        layout = token_flow.token_layout(tr, tokens, input_size, source=tid)
        if layout is None:
            raise LayerNotFoundError(f"the last block's input {strip(name)!r} holds {tokens} tokens, which are no grid "
                                     f"over the {input_size[0]}x{input_size[1]} input after at most "
                                     f"{token_flow.MAX_EXTRA_TOKENS} leading tokens; give --reshape tokens:C:HxW")
        return strip(name), shape, token_flow.reshape_spec(*layout)
    last = [r for r in records if is_channels_last(r[4])]
    # A block's output, not a final norm's: the last block is what a Swin user explains.
    last = [r for r in last if r[2].endswith("/block")] or last
    if last and not cnn_after(last[-1][0]):
        same = [r for r in last if r[3] == last[-1][3]]
        r = min(same, key=lambda r: (r[1].count("."), -r[0]))
        return strip(r[1]), last[-1][4], "bhwc"
    _refuse_transformer(tr, records, input_size, cnn_after, own)
    name, shape = last_feature_map(model, input_size)
    return name, shape, None


def _refuse_transformer(tr, records, input_size, cnn_after, own) -> None:
    """Tokens, or an attention, with no layer found for them: a transformer the automatic layer
    cannot explain, said with what to give instead. A CNN passes."""
    tokens = [r for r in records if len(r[4]) == 3 and r[4][0] == 1
              and token_flow.token_layout(tr, r[4][1], input_size, source=r[3]) is not None and not cnn_after(r[0])]
    if tokens or own:
        why = ("no module outputs the tokens that enter its last attention (the last block's input is made "
               "inline; wrap it in a module, e.g. nn.Identity)" if own else
               "its tokens reach no attention this probe could see (a softmax over an N x N product, "
               "scaled_dot_product_attention or nn.MultiheadAttention)")
        raise LayerNotFoundError(f"no automatic layer for this transformer: {why}; give --layer (the last block's "
                                 "input) and --reshape tokens")


def output_classes(model: nn.Module, input_size=(224, 224)) -> int:
    """C of the model's (1, C) logits: one forward pass (:func:`_probe`'s input, eval mode, no_grad)."""
    seen = []
    hook = model.register_forward_hook(lambda _m, _i, out: seen.append(out))
    _probe(model, input_size, [hook])
    out = seen[-1] if seen else None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ExportError(f"the model must return (B, C) logits, got {getattr(out, 'shape', type(out).__name__)}")
    return int(out.shape[1])
