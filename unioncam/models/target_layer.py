"""The default target layer of a model nobody named one for: the last 4-D feature map before the
network pools it away (Grad-CAM's usual choice: ``layer4`` of a ResNet, ``features`` of a VGG)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ExportError, LayerNotFoundError


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


class _AttentionSpy:
    """Which modules run attention, seen from the ops, not the names: a module is an attention
    where, innermost in the forward pass, it calls ``scaled_dot_product_attention`` or a softmax
    over a (..., N, N) score matrix (N > 1), or is an ``nn.MultiheadAttention``. Records also the
    ids of every module's tensor inputs, to find the norm that feeds an attention."""

    def __init__(self):
        from torch.overrides import TorchFunctionMode

        spy = self
        self.stack: list[str] = []
        self.attention: list[str] = []  # in the order they ran
        self.inputs: dict[str, set[int]] = {}
        self.alive: list = []

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if spy.stack and spy._is_attention_op(func, args):
                    if spy.stack[-1] not in spy.attention:
                        spy.attention.append(spy.stack[-1])
                return func(*args, **kwargs)

        self.mode = Mode()

    @staticmethod
    def _is_attention_op(func, args) -> bool:
        F = torch.nn.functional
        if func is F.scaled_dot_product_attention:
            return True
        if func in (torch.softmax, F.softmax, torch.Tensor.softmax) and args and isinstance(args[0], torch.Tensor):
            t = args[0]
            return t.dim() >= 3 and t.shape[-1] == t.shape[-2] > 1
        return False

    def hooks(self, name: str, module: nn.Module) -> list:
        def pre(m, args, kwargs):
            self.stack.append(name)
            if isinstance(m, nn.MultiheadAttention) and name not in self.attention:
                self.attention.append(name)
            tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
            self.inputs.setdefault(name, set()).update(id(t) for t in tensors)
            self.alive.extend(tensors)

        def post(m, args, out):
            if self.stack and self.stack[-1] == name:
                self.stack.pop()

        return [module.register_forward_pre_hook(pre, with_kwargs=True), module.register_forward_hook(post)]


def default_target(model: nn.Module, input_size=(224, 224)) -> tuple[str, tuple[int, ...], str | None]:
    """(dotted name, output shape, reshape or None): the layer a CAM explains when nobody named one.

    A CNN's is :func:`last_feature_map`. A vision transformer's is found by its structure, whatever
    its modules are called (timm's ``norm1``, torchvision's ``ln_1``, Hugging Face's
    ``layernorm_before``), when its last spatial outputs come after the last (B, K, h, w) map:

    - tokens (B, N, D) with N a square grid after 0-2 class tokens (ViT, DeiT): the last block's
      input, the last LayerNorm whose output feeds an attention (:class:`_AttentionSpy`; the layer
      pytorch-grad-cam's users pick: the last block's output reaches the class token's head through
      no attention, so its patch tokens get no gradient), else the output that enters the last
      module holding an attention; with ``reshape="tokens"``;
    - channels-last maps (B, h, w, D) that permute an earlier (B, D, h, w) map (Swin): the last
      block's (a module with children; a final norm's only where no block's is), with ``reshape="bhwc"``.

    Raises:
        LayerNotFoundError: neither a feature map nor tokens (give --layer and --reshape).
    """
    import math

    records = []  # (order, name, module type, id, shape)
    alive, hooks = [], []
    spy = _AttentionSpy()
    norms_by_type = set()

    def hook(name):
        def fn(m, _i, out):
            if isinstance(out, torch.Tensor) and out.dim() in (3, 4):
                kind = type(m).__name__ + ("/block" if any(True for _ in m.children()) else "")
                records.append((len(records), name, kind, id(out), tuple(out.shape)))
                alive.append(out)
        return fn

    for name, mod in model.named_modules():
        if name:
            hooks.append(mod.register_forward_hook(hook(name)))
            hooks.extend(spy.hooks(name, mod))
            if isinstance(mod, nn.LayerNorm):
                norms_by_type.add(name)
    with spy.mode:
        _probe(model, input_size, hooks)
    alive.clear()
    spy.alive.clear()
    convs = {(s[1], s[2], s[3]) for _, _, kind, _, s in records if len(s) == 4 and "Conv" in kind}

    def is_tokens(s):
        # The probe's one image: a window batch inside a Swin block ((windows, k*k, D)) is not tokens of it.
        return len(s) == 3 and s[0] == 1 and any(
            s[1] - c > 0 and math.isqrt(s[1] - c) ** 2 == s[1] - c for c in (1, 2, 0))

    def is_channels_last(s):
        return len(s) == 4 and (s[3], s[1], s[2]) in convs and s[1] * s[2] > 1

    spatial_cnn = [r for r in records if len(r[4]) == 4 and not is_channels_last(r[4]) and r[4][2] * r[4][3] > 1]
    transformer = [r for r in records if is_tokens(r[4]) or is_channels_last(r[4])]
    if not transformer or (spatial_cnn and spatial_cnn[-1][0] > transformer[-1][0]):
        name, shape = last_feature_map(model, input_size)
        return name, shape, None
    inner = getattr(model, "unioncam_inner", None)

    def strip(name):
        return name[len(inner) + 1:] if inner and name.startswith(inner + ".") else name

    fed = set().union(*(spy.inputs.get(a, set()) for a in spy.attention)) if spy.attention else set()
    norms = [r for r in records if is_tokens(r[4]) and r[1] in norms_by_type and r[3] in fed]
    if not norms and spy.attention:
        # No norm before the attention: the tokens that enter the last module holding one.
        holder = spy.attention[-1].rpartition(".")[0]
        entering = spy.inputs.get(holder, set()) if holder else set()
        norms = [r for r in records if is_tokens(r[4]) and r[3] in entering]
    last = [r for r in records if is_channels_last(r[4])]
    # A block's output, not a final norm's: the last block is what a Swin user explains.
    last = [r for r in last if r[2].endswith("/block")] or last
    if norms and not (last and last[-1][0] > norms[-1][0]):
        same = [r for r in norms if r[3] == norms[-1][3]]
        r = min(same, key=lambda r: (r[1].count("."), -r[0]))
        return strip(r[1]), r[4], "tokens"
    if last:
        same = [r for r in last if r[3] == last[-1][3]]
        r = min(same, key=lambda r: (r[1].count("."), -r[0]))
        return strip(r[1]), last[-1][4], "bhwc"
    raise LayerNotFoundError("this model's tokens reach no attention this probe could see (a softmax over an N x N "
                             "score matrix, scaled_dot_product_attention or nn.MultiheadAttention); give --layer (the "
                             "last block's input) and --reshape tokens")


def output_classes(model: nn.Module, input_size=(224, 224)) -> int:
    """C of the model's (1, C) logits: one forward pass (:func:`_probe`'s input, eval mode, no_grad)."""
    seen = []
    hook = model.register_forward_hook(lambda _m, _i, out: seen.append(out))
    _probe(model, input_size, [hook])
    out = seen[-1] if seen else None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ExportError(f"the model must return (B, C) logits, got {getattr(out, 'shape', type(out).__name__)}")
    return int(out.shape[1])
