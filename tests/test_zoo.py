"""Each CNN family's distinctive layers export and explain: gradients against autograd at an early
and a late layer, the runtime's explanation against the eager reference at the late one, and the
gradient graph through TensorRT-RTX's parser (architectures from ``zoo.py``, 32x32 inputs)."""

import numpy as np
import pytest

from unioncam import UnionCAM
from unioncam.runtime.backends.tensorrt.engine_file import import_tensorrt
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


# -- every precision variant loads, whatever the installed converter does ----------------------

def _like_onnxruntime_1_31(convert):
    """The float16 converter as onnxruntime 1.31.1 ships it (issue 24): one Cast back to float32
    per consumer of a float16 tensor, each with the same node name and output name, a graph ONNX
    Runtime refuses ("two nodes with same node name"). Reproduced on the installed converter by
    repeating each of its Casts to float32 once per extra consumer of its input."""
    def converted(model, **kwargs):
        half = convert(model, **kwargs)
        casts = [n for n in half.graph.node if n.op_type == "Cast" and n.name.endswith("_cast_to_fp32_node")]
        assert casts, "the converter added no Cast to float32: nothing to reproduce on"
        for node in casts:
            copy = half.graph.node.add()
            copy.CopyFrom(node)
        return half
    return converted


def _copy_with_an_old_converter(result, tmp_path, monkeypatch):
    """A copy of a zoo family's full export, with the fp16 converter made to behave as 1.31's."""
    import shutil

    import unioncam.export.precision as precision

    if isinstance(result, Exception):
        raise result
    (_, _, late), exported = result
    d = tmp_path / "art"
    shutil.copytree(exported / late, d)
    real = precision.float16_converter
    monkeypatch.setattr(precision, "float16_converter", lambda: _like_onnxruntime_1_31(real()))
    return d


@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_fp16_and_int8_variants_load_whatever_the_converter(name, zoo_exports, tmp_path, monkeypatch):

    import onnx

    from unioncam.export import add_precision
    from unioncam.runtime import Explainer

    d = _copy_with_an_old_converter(zoo_exports[name], tmp_path, monkeypatch)
    add_precision(d, "fp16")
    add_precision(d, "int8", calibration_images=zoo_images(2, seed=3).numpy())
    for variant in ("masked_forward.fp16.onnx", "masked_forward.int8.onnx"):
        nodes = [n.name for n in onnx.load(str(d / variant)).graph.node]
        assert len(nodes) == len(set(nodes)), variant
    x = zoo_images(2, seed=7).numpy()
    exact = Explainer(d)(x)
    for p in ("fp16", "int8"):
        got = Explainer(d, precision=p)(x)  # loads: ONNX Runtime accepted the graph
        assert got.class_idx.tolist() == exact.class_idx.tolist()
    np.testing.assert_allclose(Explainer(d, precision="fp16")(x).region, exact.region, atol=2e-2)


@pytest.mark.parametrize("name", ["vgg"])
def test_a_graph_onnx_runtime_refuses_is_never_written(name, zoo_exports, tmp_path, monkeypatch):
    """With the repair off, the 1.31-style graph is refused by the load check: ExportError, and the
    folder and its manifest are as before (no variant listed, no file, no temporary file)."""
    import hashlib

    import unioncam.export.precision as precision
    from unioncam import ExportError
    from unioncam.export import add_precision

    d = _copy_with_an_old_converter(zoo_exports[name], tmp_path, monkeypatch)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}
    monkeypatch.setattr(precision, "repair_graph", lambda model: 0)
    with pytest.raises(ExportError, match="does not load in ONNX Runtime"):
        add_precision(d, "fp16")
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()} == before
