"""Exported graphs under ONNX Runtime against torch: gradients, masked scores, checks, bad input."""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tiny import TinyCNN, tiny_images
from unioncam import ArtifactError, ExportError, InvalidInputError, LayerNotFoundError
from unioncam.export import export
from unioncam.export.decompositions import (
    adaptive_avg_pool2d_backward,
    avg_pool2d_backward,
    max_pool2d_with_indices_backward,
)
from unioncam.export.verify import gradient_agreement, masked_agreement
from unioncam.methods.passes import masked_scores


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_gradient_graph(model, layer_name, art, images, classes):
    """logits/activations vs torch on the image; gradients vs torch on identical activations: 1e-4 relative."""
    agree = gradient_agreement(model, layer_name, art, images, classes)
    assert agree["logits_rel"] <= 1e-4 and agree["activations_rel"] <= 1e-4, agree
    assert agree["gradients_rel"] <= 1e-4, agree
    return agree


def test_tiny_gradient_graph_matches_autograd(tiny_art):
    model, art = tiny_art
    images = tiny_images(4, seed=7).numpy()
    check_gradient_graph(model, "features.3", art, images, np.array([0, 4, 2, 1], dtype=np.int64))
    # Dynamic batch: 1 works as well as 4.
    check_gradient_graph(model, "features.3", art, images[:1], np.array([3], dtype=np.int64))


@pytest.mark.parametrize("m", [1, 7, 300])
def test_tiny_masked_forward_matches_eager(tiny_art, m):
    model, art = tiny_art
    images = tiny_images(2, seed=3)
    g = torch.Generator().manual_seed(m)
    maps = torch.rand(2, m, 8, 8, generator=g)
    classes = torch.tensor([1, 3])
    (scores,) = _session(art / "masked_forward.onnx").run(
        None, {"image": images.numpy(), "maps": maps.numpy(), "class_idx": classes.numpy()})
    ref = masked_scores(model, images, torch.arange(2).repeat_interleave(m), maps.reshape(-1, 8, 8), classes,
                        batch_size=64).reshape(2, m)
    assert scores.shape == (2, m)
    assert np.abs(scores - ref.numpy()).max() <= 1e-5


def test_full_size_maps_and_constant_map_give_black_score(tiny_art):
    model, art = tiny_art
    s = _session(art / "masked_forward.onnx")
    images = tiny_images(1, seed=4).numpy()
    maps = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    maps[0, 1] = 0.37  # constant map: the mask is zero, the image black
    classes = np.array([2], dtype=np.int64)
    (scores,) = s.run(None, {"image": images, "maps": maps, "class_idx": classes})
    (black,) = s.run(None, {"image": np.zeros_like(images), "maps": maps, "class_idx": classes})
    assert scores[0, 1] == black[0, 0] == black[0, 2]
    ref = masked_scores(model, torch.from_numpy(images), torch.zeros(3, dtype=torch.int64), torch.from_numpy(maps[0]),
                        torch.from_numpy(classes), batch_size=8)
    assert np.abs(scores[0] - ref.numpy()).max() <= 1e-5


def test_graphs_pass_checker_and_manifest(tiny_art):
    _, art = tiny_art
    for name in ("gradient.onnx", "masked_forward.onnx"):
        onnx.checker.check_model(str(art / name), full_check=True)
        inferred = onnx.shape_inference.infer_shapes(onnx.load(str(art / name)), strict_mode=True)
        for node in inferred.graph.node:  # TensorRT rejects MaxPool's indices output
            if node.op_type == "MaxPool":
                assert len(node.output) == 1
    man = json.loads((art / "manifest.json").read_text())
    assert man["channels"] == 6 and man["feature_size"] == [8, 8] and man["num_classes"] == 5
    assert man["input_size"] == [32, 32] and set(man["files"]) == {"gradient.onnx", "masked_forward.onnx"}
    assert len(man["files"]["gradient.onnx"]) == 64 and man["torch_version"] == torch.__version__
    assert not [p for p in art.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_lite0_real_weights_gradient_graph(lite0, lite0_artifacts, photos):
    model, layer = lite0
    classes = np.array([285, 967], dtype=np.int64)  # Egyptian cat, espresso
    check_gradient_graph(model, layer, lite0_artifacts, photos, classes)


REGISTRY_MODELS = ["resnet50", "vgg16"]


@pytest.fixture(scope="module")
def registry_exports(request, _prewarm):
    """{name: (model, layer, folder) or the export's exception}: both registry models, exported two
    at a time in worker processes (``prewarm.py``)."""
    return _prewarm.for_module(request, "registry_exports")


@pytest.mark.slow
@pytest.mark.parametrize("name", REGISTRY_MODELS)
def test_registry_models_export_and_agree(name, registry_exports):
    result = registry_exports[name]
    if isinstance(result, Exception):
        raise result
    model, layer, art = result
    images = tiny_images(2, size=64, seed=11).numpy()
    check_gradient_graph(model, layer, art, images, np.array([3, 999], dtype=np.int64))
    side = 2 if name == "resnet50" else 4
    maps = np.random.default_rng(1).random((5, side, side), dtype=np.float32)
    assert masked_agreement(model, art, images[:1], maps, 3) <= 1e-5


@pytest.mark.parametrize("kernel, stride, padding, dilation, ceil", [
    (2, 2, 0, 1, False), (3, 2, 1, 1, False), (3, 1, 1, 1, False), (2, 2, 0, 1, True), (3, 2, 0, 2, False),
    (3, 3, 0, 1, False), (9, 9, 0, 1, False)])  # the last two tile the input: the one-ArgMax route
def test_max_pool_backward_without_indices_matches_torch_with_ties(kernel, stride, padding, dilation, ceil):
    g = torch.Generator().manual_seed(0)
    # Integers in {0, 1, 2}: many exact ties, as after a ReLU; the first maximum must get the gradient.
    x = torch.randint(0, 3, (2, 3, 9, 9), generator=g).double().requires_grad_()
    out, idx = torch.nn.functional.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=ceil, return_indices=True)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (ref,) = torch.autograd.grad(out, x, go)
    mine = max_pool2d_with_indices_backward(go, x.detach(), [kernel] * 2, [stride] * 2, [padding] * 2, [dilation] * 2, ceil, idx)
    np.testing.assert_allclose(mine.numpy(), ref.numpy(), atol=1e-12)


@pytest.mark.parametrize("in_size, out_size", [(7, 7), (4, 7), (9, 4), (6, 3)])
def test_adaptive_avg_pool_backward(in_size, out_size):
    x = torch.rand(1, 2, in_size, in_size, dtype=torch.float64, requires_grad=True)
    out = torch.nn.functional.adaptive_avg_pool2d(x, out_size)
    go = torch.rand(out.shape, dtype=torch.float64)
    (ref,) = torch.autograd.grad(out, x, go)
    np.testing.assert_allclose(adaptive_avg_pool2d_backward(go, x.detach()).numpy(), ref.numpy(), atol=1e-12)


class NoTensor(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())

    def forward(self, x):
        return {"logits": self.features(x).mean((2, 3))}


class FractionalHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.pool = nn.FractionalMaxPool2d(2, output_size=3)
        self.fc = nn.Linear(36, 3)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_bad_exports_raise_and_leave_nothing(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(LayerNotFoundError, match="not found"):
        export(TinyCNN(), "features.7", out, input_size=(32, 32))
    with pytest.raises(InvalidInputError, match="not a tensor"):
        export(NoTensor(), "features.1", out, input_size=(16, 16))
    with pytest.raises(ExportError, match="cannot run on a"):
        export(TinyCNN(), "features.3", out, input_size=(2, 2))
    with pytest.raises(ExportError, match=r"unsupported op aten\.fractional_max_pool2d.* layer pool"):
        export(FractionalHead().eval(), "features.1", out, input_size=(16, 16))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ArtifactError, match="cannot write into"):
        export(TinyCNN(), "features.3", blocker / "art", input_size=(32, 32))
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_failed_reexport_keeps_previous_artifacts(tmp_path):
    out = tmp_path / "art"
    export(TinyCNN(), "features.3", out, input_size=(32, 32))
    before = (out / "manifest.json").read_text()
    with pytest.raises(ExportError):
        export(TinyCNN(), "features.3", out, input_size=(2, 2))
    assert (out / "manifest.json").read_text() == before


@pytest.mark.parametrize("kernel, stride, padding, ceil, include_pad, override", [
    (2, 2, 0, False, True, None), (3, 2, 1, False, True, None), (3, 2, 1, True, True, None),
    (3, 2, 1, False, False, None), (3, 2, 1, True, False, None), (3, 3, 1, True, False, None),
    (2, 1, 1, True, True, None), (3, 2, 0, True, True, 5), ((3, 2), (2, 1), (1, 0), True, False, None),
])
@pytest.mark.parametrize("size", [(7, 7), (8, 9)])
def test_avg_pool_backward_every_setting(kernel, stride, padding, ceil, include_pad, override, size):
    """ResNet-D, Inception and NASNet pools included: ceil mode, count_include_pad=False with padding,
    divisor_override, asymmetric kernels, odd sizes. Against autograd, float64."""
    x = torch.rand(2, 3, *size, dtype=torch.float64, requires_grad=True)
    out = torch.nn.functional.avg_pool2d(x, kernel, stride, padding, ceil, include_pad, override)
    go = torch.rand(out.shape, dtype=torch.float64)
    (ref,) = torch.autograd.grad(out, x, go)
    mine = avg_pool2d_backward(go, x.detach(), kernel, stride, padding, ceil, include_pad, override)
    np.testing.assert_allclose(mine.numpy(), ref.numpy(), atol=1e-12)


class ResNetDHead(nn.Module):
    """A ResNet-D style downsampling shortcut after the target: AvgPool2d(2, ceil_mode=True,
    count_include_pad=False) then a 1x1 conv, on an odd-sized map."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU())
        self.down = nn.Sequential(nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), nn.Conv2d(6, 8, 1),
                                  nn.ReLU(), nn.AvgPool2d(2, ceil_mode=True), nn.Flatten(), nn.LazyLinear(4))

    def forward(self, x):
        return self.down(self.features(x))


def test_resnet_d_pooling_after_the_target_exports_and_matches_autograd(tmp_path):
    model = ResNetDHead()
    model(torch.rand(1, 3, 30, 30))  # materialise the lazy layer
    model.eval()
    out = tmp_path / "art"
    export(model, "features.1", out, input_size=(30, 30))
    x = torch.rand(2, 3, 30, 30, generator=torch.Generator().manual_seed(3)).numpy()
    agreement = gradient_agreement(model, "features.1", out, x, np.array([1, 3]))
    assert agreement["gradients_rel"] <= 1e-4 and agreement["logits_rel"] <= 1e-5, agreement
    from unioncam.runtime.backends.tensorrt.engine_file import import_tensorrt

    trt, flavour = import_tensorrt()
    if trt is not None:  # the backward MatMuls parse and build in TensorRT's ONNX parser too
        from unioncam.export import build_engine

        header = build_engine(out / "gradient.onnx", max_batch=2,
                              compute_capability="SM86" if flavour == "tensorrt_rtx" else None)
        assert header["engine_bytes"] > 0


@pytest.mark.parametrize("stride, padding, output_padding, dilation, groups", [
    (1, 0, 0, 1, 1), (2, 1, 1, 1, 1), (2, 0, 0, 1, 2), (3, 1, 2, 1, 1), (2, 2, 1, 2, 3), ((2, 1), (1, 0), (1, 0), 1, 1),
])
def test_conv_transpose_backward(stride, padding, output_padding, dilation, groups):
    from unioncam.export.decompositions import convolution_backward

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 6, 5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(6, {1: 3, 2: 4, 3: 9}[groups], 3, 3, dtype=torch.float64, generator=g)  # (C_in, C_out/groups, k, k)
    out = torch.nn.functional.conv_transpose2d(x, w, None, stride, padding, output_padding, groups, dilation)
    go = torch.rand(out.shape, dtype=torch.float64, generator=g)
    (ref,) = torch.autograd.grad(out, x, go)
    mine, _, _ = convolution_backward(go, x.detach(), w, None, list(torch.nn.modules.utils._pair(stride)),
                                      list(torch.nn.modules.utils._pair(padding)),
                                      list(torch.nn.modules.utils._pair(dilation)), True,
                                      list(torch.nn.modules.utils._pair(output_padding)), groups, [True, False, False])
    np.testing.assert_allclose(mine.numpy(), ref.numpy(), atol=1e-10)


class DecoderHead(nn.Module):
    """A segmentation-style decoder after the target: ConvTranspose2d up, then a classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1), nn.ReLU(),
                                nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2), nn.ReLU(),
                                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        return self.up(self.features(x))


def test_transposed_convolutions_after_the_target_export_and_match_autograd(tmp_path):
    model = DecoderHead().eval()
    out = tmp_path / "art"
    export(model, "features.1", out, input_size=(32, 32))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)).numpy()
    agreement = gradient_agreement(model, "features.1", out, x, np.array([0, 2]))
    assert agreement["gradients_rel"] <= 1e-4 and agreement["logits_rel"] <= 1e-5, agreement


@pytest.mark.parametrize("in_size, out_size", [((7, 8), (2, 2)), ((9, 9), (4, 5)), ((5, 7), (3, 3)), ((8, 8), (2, 4))])
def test_adaptive_max_pool_backward_any_output(in_size, out_size):
    from unioncam.export.decompositions import adaptive_max_pool2d_backward

    x = torch.rand(2, 3, *in_size, dtype=torch.float64)
    x[0, 0, :2, :2] = 1.5  # ties inside a window: the first maximum takes the gradient, as in PyTorch
    x.requires_grad_(True)
    out, idx = torch.nn.functional.adaptive_max_pool2d(x, out_size, return_indices=True)
    go = torch.rand(out.shape, dtype=torch.float64)
    (ref,) = torch.autograd.grad(out, x, go)
    np.testing.assert_allclose(adaptive_max_pool2d_backward(go, x.detach(), idx).numpy(), ref.numpy(), atol=1e-12)
    from unioncam.export.decompositions import adaptive_max_pool2d

    values, indices = adaptive_max_pool2d(x.detach(), out_size)  # the forward, indices included
    np.testing.assert_array_equal(values.numpy(), out.detach().numpy())
    np.testing.assert_array_equal(indices.numpy(), idx.numpy())


class UnevenMaxPoolHead(nn.Module):
    """Adaptive max pooling to 2x3 from a 7x8 map after the target: windows overlap unevenly."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, stride=4, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(6, 5, 1), nn.AdaptiveMaxPool2d((2, 3)), nn.Flatten(), nn.Linear(30, 4))

    def forward(self, x):
        return self.head(self.features(x))


def test_uneven_adaptive_max_pool_exports_and_explains_like_eager(tmp_path):
    """Its forward has no torch.onnx translation: the masked-forward graph is traced through our
    decomposition instead. Gradients match autograd; the runtime's explanation matches eager."""
    from unioncam import UnionCAM
    from unioncam.runtime import Explainer

    model = UnevenMaxPoolHead().eval()
    out = tmp_path / "art"
    export(model, "features.1", out, input_size=(28, 32))
    x = torch.rand(2, 3, 28, 32, generator=torch.Generator().manual_seed(5))
    agreement = gradient_agreement(model, "features.1", out, x.numpy(), np.array([1, 3]))
    assert agreement["gradients_rel"] <= 1e-4 and agreement["logits_rel"] <= 1e-5, agreement
    ref = UnionCAM(model, "features.1")(x)
    with Explainer(out) as ex:
        got = ex(x.numpy())
    assert np.abs(got.cam - ref.cam).max() <= 1e-3 and np.abs(got.region - ref.region).max() <= 1e-3
    assert np.abs(got.beta_region - ref.beta_region).max() <= 1e-4


@pytest.mark.parametrize("fault", ["type", "shape"])
def test_graph_check_rejects_type_and_shape_errors(fault, tmp_path):
    """The exporter's ``check`` is onnx.checker's full check: it must still run strict, type-checking
    shape inference (an Add of float and int64; a MatMul of 2x3 by 4x5), not only the structure."""
    import onnx
    from onnx import TensorProto, helper

    from unioncam.errors import ExportError
    from unioncam.export.onnx_export import check

    if fault == "type":
        inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2]),
                  helper.make_tensor_value_info("b", TensorProto.INT64, [2])]
        node, out = helper.make_node("Add", ["a", "b"], ["y"]), [2]
    else:
        inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
                  helper.make_tensor_value_info("b", TensorProto.FLOAT, [4, 5])]
        node, out = helper.make_node("MatMul", ["a", "b"], ["y"]), [2, 5]
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)])
    path = tmp_path / "bad.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    onnx.checker.check_model(str(path))  # structurally valid: only the full check can fail it
    with pytest.raises(ExportError, match="fails onnx.checker"):
        check(path)
