"""One pipeline over a Passes seam: the eager reference and the runtime run the same function, a
backend is one registry entry (a NumPy backend defined here), each name is declared once, and every
runtime session sees one call shape."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from test_runtime import assert_agree
from tiny import TinyCNN, tiny_images
from unioncam import ScoreCAM, UnionCAM, pipeline
from unioncam.registry import METHODS
from unioncam.runtime import Explainer
from unioncam.runtime.backends import (BACKENDS, BackendInfo, Runner, backend_info, register_backend,
                                       unregister_backend)

ROOT = Path(__file__).resolve().parents[1]


def test_eager_and_runtime_run_the_same_pipeline_function(tiny_art, monkeypatch):
    model, art = tiny_art
    calls = []
    real = pipeline.explain

    def counting(passes, *args, **kwargs):
        calls.append(type(passes).__name__)
        return real(passes, *args, **kwargs)

    monkeypatch.setattr(pipeline, "explain", counting)
    x = tiny_images(2, seed=3)
    UnionCAM(model, "features.3")(x)
    ScoreCAM(model, "features.3")(x)
    ex = Explainer(art)
    ex(x.numpy())
    ex(x.numpy(), method="gradcam")
    assert calls == ["TorchPasses", "TorchPasses", "RunnerPasses", "RunnerPasses"]


# -- a backend defined by the test suite: TinyCNN's masked pass in NumPy ---------------------------
def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """(N, C, H, W) * (O, C, k, k) -> (N, O, H', W'), cross-correlation as torch's Conv2d."""
    k = w.shape[-1]
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    N, C, H, W = x.shape
    Ho, Wo = (H - k) // stride + 1, (W - k) // stride + 1
    cols = np.empty((N, C, k, k, Ho, Wo), x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = x[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride]
    return np.einsum("nckluv,ockl->nouv", cols, w) + b[None, :, None, None]


def numpy_tiny_logits(params: dict, x: np.ndarray) -> np.ndarray:
    """TinyCNN's forward pass in NumPy float64 from its state dict: (N, 3, 32, 32) -> (N, 5)."""
    p = params
    h = np.maximum(_conv(x, p["features.0.weight"], p["features.0.bias"], 2, 1), 0)
    h = np.maximum(_conv(h, p["features.2.weight"], p["features.2.bias"], 2, 1), 0)
    N, C, H, W = h.shape
    h = h.reshape(N, C, H // 2, 2, W // 2, 2).max(axis=(3, 5))
    scale = p["head.1.weight"] / np.sqrt(p["head.1.running_var"] + 1e-5)
    h = (h - p["head.1.running_mean"][None, :, None, None]) * scale[None, :, None, None] + p["head.1.bias"][None, :, None, None]
    h = np.maximum(_conv(h, p["head.2.weight"], p["head.2.bias"], 1, 1), 0).mean(axis=(2, 3))
    return h @ p["head.6.weight"].T + p["head.6.bias"]


class NumpyTinyMaskedRunner(Runner):
    """The masked-forward graph's contract, (image (1,3,32,32), maps (1,M,h,w), class (1,)) ->
    scores (1,M), computed in NumPy. Records every feed's shape."""

    def __init__(self, params: dict, shapes: list):
        super().__init__()
        self.params, self.shapes, self.name = params, shapes, "numpy-tiny"

    def activate_impl(self):
        self.inputs = {"image": ("float32", (None, 3, 32, 32)), "maps": ("float32", (None, None, None, None)),
                       "class_idx": ("int64", (None,))}

    def deactivate_impl(self):
        pass

    def infer_impl(self, feeds):
        image, maps, cls = feeds["image"].astype(np.float64), feeds["maps"][0].astype(np.float64), feeds["class_idx"]
        self.shapes.append(feeds["maps"].shape)
        # N(map) = minmax(up(map)), written here with the half-pixel bilinear resize (not unioncam.algebra).
        up = torch.nn.functional.interpolate(torch.from_numpy(maps)[:, None], size=(32, 32), mode="bilinear",
                                             align_corners=False)[:, 0].numpy()
        lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
        const = (maps.max(axis=(1, 2)) == maps.min(axis=(1, 2)))[:, None, None]
        masks = np.where(const, 0.0, (up - lo) / np.where(hi > lo, hi - lo, 1.0))
        logits = numpy_tiny_logits(self.params, image * masks[:, None])
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        return {"scores": probs[:, int(cls[0])][None].astype(np.float32)}


@pytest.fixture
def numpy_backend(tiny_art):
    model, _ = tiny_art
    params = {k: v.double().numpy() for k, v in model.state_dict().items()}
    shapes: list = []
    onnx = backend_info("onnxruntime")

    def runner(directory, graph, *, device, manifest, **options):
        if graph == "gradient.onnx":  # the gradient pass stays on ONNX Runtime
            return onnx.make_runner(directory, graph, device=device, manifest=manifest, **options)
        return NumpyTinyMaskedRunner(params, shapes)

    register_backend(BackendInfo("numpy-tiny", ("cpu",), default_batch={"cpu": 4}, runner=runner,
                                 summary="TinyCNN's masked pass in NumPy (test only)"))
    yield shapes
    unregister_backend("numpy-tiny")


def test_a_backend_is_one_registry_entry(tiny_art, numpy_backend):
    model, art = tiny_art
    x = tiny_images(3, seed=12)
    got = Explainer(art, backend="numpy-tiny")(x.numpy())
    assert got.stats["backend"] == "numpy-tiny" and got.stats["batch_size"] == 4
    assert_agree(got, UnionCAM(model, "features.3")(x))
    assert numpy_backend and set(numpy_backend) <= {(1, 4, 8, 8), (1, 1, 8, 8), (1, 1, 32, 32)}
    assert "numpy-tiny" in BACKENDS


def test_the_numpy_backend_is_an_independent_model():
    """The test backend's forward pass is TinyCNN's (so agreement above is not shared algebra)."""
    model = TinyCNN()
    x = tiny_images(2, seed=5)
    params = {k: v.double().numpy() for k, v in model.state_dict().items()}
    np.testing.assert_allclose(numpy_tiny_logits(params, x.double().numpy()), model(x).detach().numpy(), atol=1e-5)


# -- names declared once -------------------------------------------------------------------------
def _collections_naming(names: set) -> list[str]:
    """Places in the product that list two or more of ``names``: tuple, list, set or dict-key literals."""
    places = []
    for folder in ("unioncam", "runtime", "export"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text())
            # pip distribution names (bench reports' versions), not backends
            skip = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                    and any(getattr(t, "id", "") == "DISTRIBUTIONS" for t in n.targets)}
            for node in ast.walk(tree):
                if id(node) in skip:
                    continue
                elts = (node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else
                        [k for k in node.keys if k is not None] if isinstance(node, ast.Dict) else [])
                values = {e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if len(values & names) >= 2:
                    places.append(str(path.relative_to(ROOT)))
    return sorted(set(places))


def test_backends_methods_and_devices_are_each_declared_in_one_place():
    assert _collections_naming({"onnxruntime", "tensorrt", "torch"}) == []  # registered one by one
    assert set(BACKENDS) >= {"onnxruntime", "tensorrt", "torch"}
    assert _collections_naming(set(METHODS)) == []
    assert _collections_naming({"cpu", "cuda", "tensorrt"}) == ["runtime/devices.py"]


# -- one shape per session -----------------------------------------------------------------------
class _Recorder:
    """Wraps a runner's ``infer`` to record the shape of every feed."""

    def __init__(self, runner):
        self.runner, self.shapes = runner, set()
        self._infer = runner.infer
        runner.infer = self

    def __call__(self, feeds):
        self.shapes.add(tuple((k, getattr(v, "shape", None)) for k, v in sorted(feeds.items())
                              if isinstance(v, np.ndarray)))
        return self._infer(feeds)


@pytest.mark.slow
def test_every_session_sees_one_shape_on_real_photos(lite0_artifacts):
    """Across 3 real photos, a baseline, a batch of 2 and class_scores, each ONNX Runtime session of
    an Explainer (gradient, region, fusion, and on the CPU the remainder's tail) receives one feed
    shape (so a GPU's cuDNN search runs once); so does each session of a budgeted Explainer."""
    from skimage import data

    from unioncam.image_io import read_rgb, sample_image_path, to_model_input

    rgb = [read_rgb(sample_image_path(n)) for n in ("chelsea", "coffee")] + [data.astronaut()]
    photos = [to_model_input(im, (224, 224))[None] for im in rgb]
    ex = Explainer(lite0_artifacts, batch_size=64)
    budget = Explainer(lite0_artifacts, batch_size=64, max_passes=45)
    recorders = [_Recorder(r) for e in (ex, budget) for r in e.passes.runners.values()]
    outs = [ex(x) for x in photos]
    budget(photos[1])
    ex(photos[2], method="scorecam")
    ex(np.concatenate(photos[:2]), method="gradcam")
    ex.class_scores(photos[0], np.random.default_rng(0).random((1, 2, 224, 224), dtype=np.float32), [285])
    for rec in recorders:  # one shape, or none where the budget sent every pass to the tail session
        assert len(rec.shapes) <= 1, (rec.runner.name, rec.shapes)
    assert all(len(rec.shapes) == 1 for rec in recorders[:4])
    region = dict(next(iter(recorders[1].shapes)))
    assert region["maps"][:2] == (1, 64)
    assert dict(next(iter(recorders[2].shapes)))["maps"] == (1, 1, 224, 224)
    # The count reports real passes: no image's non-constant channels are a multiple of 64 here.
    assert all(o.stats["masked_passes"] % 64 != 3 for o in outs)


def test_padding_is_dropped_and_counted_out(tiny_art):
    """The last chunk is padded to batch_size; its scores are dropped and ``masked_passes`` counts
    only real passes, so padded and unpadded runs agree exactly in the values they report."""
    model, art = tiny_art
    x = tiny_images(3, seed=8)
    ex = Explainer(art, batch_size=3)
    ex.passes.tail = False  # the GPU's remainder policy: pad the last chunk
    rec = {stage: _Recorder(r) for stage, r in ex.passes.runners.items()}
    padded = ex(x.numpy())
    assert {dict(s)["maps"] for s in rec["region"].shapes} == {(1, 3, 8, 8)}
    ex.passes.pad = False
    plain = ex(x.numpy())
    assert len({dict(s)["maps"] for s in rec["region"].shapes}) > 1  # 4 non-constant channels an image: 3 + 1
    for key in ("cam", "region", "denoising", "beta_region", "beta_denoising"):
        np.testing.assert_array_equal(getattr(padded, key), getattr(plain, key))
    assert padded.stats["masked_passes"] == plain.stats["masked_passes"]
    assert_agree(padded, UnionCAM(model, "features.3")(x))


def test_the_cpu_remainder_goes_one_map_a_call_to_its_own_session(tiny_art):
    """On the CPU no pass is padded: the last partial chunk runs one map per call in the tail
    session; every session still sees one shape, and the values are the padded path's."""
    model, art = tiny_art
    x = tiny_images(3, seed=8).numpy()
    ex = Explainer(art, batch_size=3)
    rec = {stage: _Recorder(r) for stage, r in ex.passes.runners.items()}
    calls = {stage: 0 for stage in rec}
    for stage, r in rec.items():
        inner = r._infer

        def counted(feeds, stage=stage, inner=inner):
            calls[stage] += 1
            return inner(feeds)
        r._infer = counted
    tail = ex(x)
    assert {dict(s)["maps"] for s in rec["region"].shapes} == {(1, 3, 8, 8)}
    assert {dict(s)["maps"] for s in rec["tail"].shapes} == {(1, 1, 8, 8)}
    assert calls["tail"] == 3  # 4 non-constant channels an image: 3 + 1, three images
    ex.passes.tail = False
    padded = ex(x)
    for key in ("cam", "region", "denoising", "beta_region"):
        np.testing.assert_allclose(getattr(tail, key), getattr(padded, key), atol=1e-6, err_msg=key)
    assert tail.stats["masked_passes"] == padded.stats["masked_passes"]


def test_warm_up_calls_each_session_at_its_one_shape(tiny_art):
    """A GPU Explainer warms each session at load time; the warm-up must use the explanation's shapes
    (else the first explanation searches again)."""
    _, art = tiny_art
    ex = Explainer(art, batch_size=3)
    rec = {stage: _Recorder(r) for stage, r in ex.passes.runners.items()}
    ex.passes.warm_up()
    warm = {stage: set(r.shapes) for stage, r in rec.items()}
    ex(tiny_images(2, seed=1).numpy())
    for stage in ("region", "fusion"):
        assert rec[stage].shapes == warm[stage] and len(warm[stage]) == 1, stage


def test_precision_and_provider_options_are_checked_in_one_place(tiny_art):
    from unioncam import BackendUnavailableError, InvalidInputError
    from unioncam.runtime.backends.onnxruntime.loader import SessionFromOnnx
    from unioncam.validation import check_provider_options

    _, art = tiny_art
    assert check_provider_options("cudnn_conv_algo_search=HEURISTIC,gpu_mem_limit=1073741824") == {
        "cudnn_conv_algo_search": "HEURISTIC", "gpu_mem_limit": "1073741824"}
    for bad, match in [("use_tf32=1", "precision"), ("cudnn_conv_algo_search=FAST", "EXHAUSTIVE"),
                       ("gpu_mem_limit=-1", "integer"), ("foo=1", "unknown CUDA provider option"),
                       ("enable_cuda_graph", "KEY=VALUE")]:
        with pytest.raises(InvalidInputError, match=match):
            check_provider_options(bad)
    with pytest.raises(BackendUnavailableError, match="GPU math mode"):
        Explainer(art, precision="tf32")
    with pytest.raises(BackendUnavailableError, match="device 'cpu' takes none"):
        Explainer(art, provider_options="cudnn_conv_algo_search=HEURISTIC")
    # The CUDA provider gets TF32 off unless asked, and the user's options (read back from the loader).
    loader = SessionFromOnnx.__new__(SessionFromOnnx)
    loader.providers, loader.provider_options, loader.tf32 = ["CUDAExecutionProvider", "CPUExecutionProvider"], {
        "cudnn_conv_algo_search": "HEURISTIC"}, False
    assert loader.provider_list() == [("CUDAExecutionProvider", {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}),
                                      "CPUExecutionProvider"]
    loader.tf32 = True
    assert loader.provider_list()[0][1]["use_tf32"] == "1"


def test_the_gpu_runner_path_explains_like_the_cpu_path(tiny_art):
    """Every session bound to reused buffers (the CUDA path's I/O binding, run on the CPU device)
    gives bit-identical explanations, for UnionCAM, a budget and a baseline."""
    _, art = tiny_art
    x = tiny_images(3, seed=17).numpy()
    plain, bound = Explainer(art, batch_size=4), Explainer(art, batch_size=4)
    for runner in bound.passes.runners.values():
        runner.bind = True
    for kwargs in ({}, {"method": "scorecam"}):
        a, b = plain(x, **kwargs), bound(x, **kwargs)
        for key in ("cam", "region", "denoising", "beta_region", "beta_de_region", "score"):
            if getattr(a, key) is not None:
                np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    assert all(r._buffers for r in bound.passes.runners.values())


def test_options_reach_the_sessions_they_control(tiny_art):
    """threads and precision read back where they act: every session's intra-op threads, and the
    graph file each stage's session runs."""
    _, art = tiny_art
    with Explainer(art, threads=1) as ex:
        for runner in ex.passes.runners.values():
            assert runner.session.get_session_options().intra_op_num_threads == 1, runner.name
    with Explainer(art) as ex:
        import os

        assert {r.session.get_session_options().intra_op_num_threads for r in ex.passes.runners.values()} == {
            os.cpu_count()}


def test_threads_and_batch_size_have_ceilings_from_the_machine(tiny_art):
    import os

    from unioncam import InvalidInputError
    from unioncam.validation import PASS_PLANES, machine_memory

    _, art = tiny_art
    limit = 4 * os.cpu_count()
    with Explainer(art, threads=limit):
        pass
    with pytest.raises(InvalidInputError, match=f"limit {limit}"):
        Explainer(art, threads=limit + 1)
    fits = min(4096, machine_memory() // 2 // (PASS_PLANES * 32 * 32 * 4))
    with Explainer(art, batch_size=fits):
        pass
    with pytest.raises(InvalidInputError, match=f"above {fits} masked passes"):
        Explainer(art, batch_size=fits + 1)
    with pytest.raises(InvalidInputError, match="above"):
        Explainer(art, batch_size=10**9)
