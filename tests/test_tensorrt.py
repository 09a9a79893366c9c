"""Both graphs of the real default model parse and build in TensorRT's ONNX parser (TensorRT-RTX,
ahead of time for SM86, no GPU needed), and engine files carry a header that catches stale or
foreign engines."""
import json
import shutil

import pytest

from unioncam import ArtifactError
from unioncam.runtime.backends.tensorrt.engine_file import check_header, import_tensorrt, read_engine

trt, flavour = import_tensorrt()
pytestmark = [
    pytest.mark.tensorrt,
    pytest.mark.skipif(trt is None, reason="no TensorRT module: pip install 'unioncam[tensorrt]' (tensorrt-rtx-cu13)"),
]


@pytest.fixture(scope="module")
def engines(lite0_artifacts, tmp_path_factory):
    from unioncam.export import build_engine

    art = tmp_path_factory.mktemp("trt") / "lite0"
    shutil.copytree(lite0_artifacts, art)
    cc = "SM86" if flavour == "tensorrt_rtx" else None
    headers = {n: build_engine(art / n, fp16=False, max_batch=32, compute_capability=cc)
               for n in ("gradient.onnx", "masked_forward.onnx")}
    return art, headers


def test_real_model_graphs_parse_and_build(engines):
    art, headers = engines
    man = json.loads((art / "manifest.json").read_text())
    for name, header in headers.items():
        engine = art / name.replace(".onnx", ".engine")
        h, blob = read_engine(engine)
        assert h == header and len(blob) == h["engine_bytes"] > 1_000_000
        assert h["onnx_sha256"] == man["files"][name]
        assert h["trt_version"] == trt.__version__
    prof = headers["masked_forward.onnx"]["profile"]
    assert prof["maps"][0] == [1, 1, 7, 7] and prof["maps"][2] == [1, 32, 224, 224]


def test_stale_foreign_and_truncated_engines_are_refused(engines, tmp_path):
    art, headers = engines
    engine = art / "gradient.engine"
    h, _ = read_engine(engine, header_only=True)
    with pytest.raises(ArtifactError, match="stale"):
        check_header(engine, h, onnx_sha256="0" * 64, trt_version=trt.__version__, gpu=None)
    with pytest.raises(ArtifactError, match="built with TensorRT"):
        check_header(engine, h, onnx_sha256=h["onnx_sha256"], trt_version="0.0.1", gpu=None)
    with pytest.raises(ArtifactError, match="compute capability"):
        check_header(engine, h, onnx_sha256=h["onnx_sha256"], trt_version=trt.__version__,
                     gpu={"name": "Orin", "compute_capability": "8.7"})
    foreign = tmp_path / "plain.engine"
    foreign.write_bytes(b"\x00" * 100)  # what trtexec writes has no unioncam header
    with pytest.raises(ArtifactError, match="not a unioncam engine"):
        read_engine(foreign)
    cut = tmp_path / "cut.engine"
    cut.write_bytes(engine.read_bytes()[:5000])
    with pytest.raises(ArtifactError, match="truncated"):
        read_engine(cut)


def test_fp16_request_is_clear_on_tensorrt_rtx(engines):
    if flavour != "tensorrt_rtx":
        pytest.skip("standard TensorRT supports FP16")
    from unioncam import ExportError
    from unioncam.export import build_engine

    art, _ = engines
    with pytest.raises(ExportError, match="FP16"):
        build_engine(art / "gradient.onnx", art / "x.engine", fp16=True, compute_capability="SM86")


def test_engine_loader_checks_the_gpu_it_finds(engines, monkeypatch):
    """The loader asks which GPU this is and refuses an engine built for another compute capability;
    with no GPU to ask (no cuda-python, no device) it refuses, rather than skipping the check."""
    from unioncam import BackendUnavailableError
    from unioncam.runtime.backends.tensorrt import loader as loaders

    art, headers = engines
    engine = art / "gradient.engine"
    sha = headers["gradient.onnx"]["onnx_sha256"]
    built_for = headers["gradient.onnx"]["compute_capability"]
    monkeypatch.setattr(loaders, "current_gpu", lambda: {"name": "Jetson AGX Orin", "compute_capability": "8.7"})
    with pytest.raises(ArtifactError, match=r"built for compute capability 8\.6 .*Jetson AGX Orin \(8\.7\)"):
        loaders.EngineFromFile(engine, onnx_sha256=sha)
    monkeypatch.setattr(loaders, "current_gpu", lambda: {"name": "RTX A6000", "compute_capability": built_for})
    loader = loaders.EngineFromFile(engine, onnx_sha256=sha)  # the header fits this GPU
    assert loader.header["onnx_sha256"] == sha
    monkeypatch.setattr(loaders, "current_gpu", lambda: None)
    with pytest.raises(BackendUnavailableError, match="none was found"):
        loaders.EngineFromFile(engine, onnx_sha256=sha)
