"""Each CNN family's distinctive layers export and explain: gradients against autograd at an early
and a late layer, the runtime's explanation against the eager reference at the late one, and the
gradient graph through TensorRT-RTX's parser (architectures from ``zoo.py``, 32x32 inputs)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from unioncam import UnionCAM
from unioncam.engine_file import import_tensorrt
from unioncam.export import export
from unioncam.export.verify import gradient_agreement
from workers import run_in_workers
from zoo import ARCHITECTURES, build, zoo_images

SIZE = (32, 32)


def export_gradient_only(model, layer, out):
    """gradient.onnx as export() writes it, but for the batch of 2 the test feeds: the decompositions
    under test are the same, and a static trace exports ~4x faster (the late layer's full export
    keeps the dynamic batch)."""
    from unioncam.export.exporter import _Call
    from unioncam.export.graphs import GradientFunction, trace
    from unioncam.export.onnx_export import export_onnx
    from unioncam.methods.hooks import resolve_layer

    name, module = resolve_layer(model, layer)
    x, c = torch.rand(2, 3, *SIZE), torch.tensor([0, 1])
    out.mkdir(parents=True)
    export_onnx(_Call(trace(GradientFunction(model, name, module), (x, c), dynamic=False)).eval(), (x, c),
                out / "gradient.onnx", input_names=["image", "class_idx"],
                output_names=["logits", "activations", "gradients"], dynamic_shapes=None, opset=18, model=model,
                layer_name=name)


def export_family(model, early: str, late: str, out: str) -> Path:
    """Both exports of one family (run in a worker process): the early layer's gradient graph and the
    late layer's full export."""
    out = Path(out)
    export_gradient_only(model, early, out / early)
    export(model, late, out / late, input_size=SIZE)
    return out


@pytest.fixture(scope="module")
def zoo_exports(request, tmp_path_factory):
    """The selected families' models and exports, two at a time in worker processes (``workers.py``).
    A family whose export fails raises in its own test, with the exporter's error."""
    root = tmp_path_factory.mktemp("zoo")
    selected = {item.callspec.params["name"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    models = {name: build(name) for name in sorted(selected)}
    done = run_in_workers(export_family, {name: ((*models[name], str(root / name)), {}) for name in models})
    return {name: (models[name], done[name]) for name in models}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_exports_and_explains_like_eager(name, zoo_exports):
    from unioncam.runtime import Explainer

    (model, early, late), exported = zoo_exports[name]
    if isinstance(exported, Exception):
        raise exported
    x = zoo_images(2, seed=7)
    classes = np.array([1, 4])
    for layer in (early, late):
        out = exported / layer
        agreement = gradient_agreement(model, layer, out, x.numpy(), classes)
        # Logits relative to their largest: 1e-4 (the seeded heads rescale logits, which scales rounding too).
        assert agreement["gradients_rel"] <= 1e-4 and agreement["logits_rel"] <= 1e-4, (layer, agreement)
    ref = UnionCAM(model, late)(x)
    # The seeded network must respond to its input, or the betas compared below would be noise.
    assert np.abs(ref.beta_region).max() > 1e-3, ref.beta_region
    with Explainer(out) as ex:
        got = ex(x.numpy())
    for key in ("cam", "region", "denoising"):
        assert np.abs(getattr(got, key) - getattr(ref, key)).max() <= 1e-3, key
    assert np.abs(got.beta_region - ref.beta_region).max() <= 1e-4
    trt, flavour = import_tensorrt()
    if trt is not None:  # the gradient graph (backward ops lowered to forward ones) builds in TensorRT
        from unioncam.export import build_engine

        header = build_engine(out / "gradient.onnx", max_batch=2,
                              compute_capability="SM86" if flavour == "tensorrt_rtx" else None)
        assert header["engine_bytes"] > 0
