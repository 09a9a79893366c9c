"""Each CNN family's distinctive layers export and explain: gradients against autograd at an early
and a late layer, the runtime's explanation against the eager reference at the late one, and the
gradient graph through TensorRT-RTX's parser (architectures from ``zoo.py``, 32x32 inputs)."""

import numpy as np
import pytest

from unioncam import UnionCAM
from unioncam.engine_file import import_tensorrt
from unioncam.export.verify import gradient_agreement
from zoo import ARCHITECTURES, zoo_images


@pytest.fixture(scope="module")
def zoo_exports(request, _prewarm):
    """{family: ((model, early, late), folder) or the export's exception} for the selected families,
    exported two at a time in worker processes (``prewarm.py``). A family whose export fails raises
    in its own test, with the exporter's error."""
    return _prewarm.for_module(request, "zoo_exports")


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_architecture_exports_and_explains_like_eager(name, zoo_exports):
    from unioncam.runtime import Explainer

    result = zoo_exports[name]
    if isinstance(result, Exception):
        raise result
    (model, early, late), exported = result
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
