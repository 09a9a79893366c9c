"""Deployment files (issue 34): the Triton model repository of the one graph, checked with Triton's
own schema against what ONNX Runtime reads from the graph; the KServe manifests and the image's
command line, parsed and checked against the server's own defaults and parser."""
from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest

yaml = pytest.importorskip("yaml")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="needs tritonclient (the test extra): Triton's model-config schema")

from unioncam.cli import build_parser, main  # noqa: E402

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
#: ONNX Runtime's type names -> Triton's (the oracle's vocabulary, not the writer's table).
ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64", "tensor(bool)": "TYPE_BOOL"}


def parse_config(path: Path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("device, tensorrt", [("cpu", None), ("gpu", "FP16")])
def test_triton_repository_matches_the_graph(tiny_e2e, tmp_path, device, tensorrt):
    """The CLI's repository (CPU), and the writer's with a GPU instance and TensorRT."""
    import onnxruntime as ort

    from unioncam.export.triton import write_repository

    _, onnx_path = tiny_e2e
    out, repo = tmp_path / "e2e", tmp_path / "repo"
    if device == "cpu":
        import sys

        sys.path.insert(0, str(Path(__file__).parent))  # tiny.py, for the factory name
        assert main(["export", "--model", "tiny:TinyCNN", "--layer", "features.3", "--input-size", "32",
                     "--end-to-end", "--chunk", "4", "--out", str(out), "--triton", str(repo)]) == 0
    else:
        out.mkdir()
        (out / "unioncam.onnx").write_bytes(onnx_path.read_bytes())
        write_repository(out / "unioncam.onnx", repo, kind=device, tensorrt=tensorrt)
    config = parse_config(repo / "unioncam" / "config.pbtxt")
    model = repo / "unioncam" / "1" / "model.onnx"
    assert (config.name, config.platform, config.max_batch_size) == ("unioncam", "onnxruntime_onnx", 0)
    assert model.read_bytes() == (out / "unioncam.onnx").read_bytes()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for declared, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [t.name for t in declared] == [t.name for t in actual]
        for t, a in zip(declared, actual):
            assert model_config_pb2.DataType.Name(t.data_type) == ORT_TO_TRITON[a.type], t.name
            assert list(t.dims) == [d if isinstance(d, int) else -1 for d in a.shape], t.name
    # The graph answers what the config declares: run it with the declared inputs.
    feeds = {t.name: np.zeros(list(t.dims), np.float32 if t.data_type == model_config_pb2.TYPE_FP32 else np.int64)
             for t in config.input}
    feeds["class_idx"][:] = -1
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    assert [list(outputs[t.name].shape) for t in config.output] == [list(t.dims) for t in config.output]
    kind = config.instance_group[0].kind
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(kind) == ("KIND_GPU" if device == "gpu" else "KIND_CPU")
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    if tensorrt:
        assert accelerators[0].name == "tensorrt" and accelerators[0].parameters["precision_mode"] == tensorrt
    else:
        assert not accelerators


def test_triton_options_are_checked_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import unioncam.models

    def no_load(*_, **__):
        raise AssertionError("the model loaded before the options were checked")

    monkeypatch.setattr(unioncam.models, "load", no_load)
    base = ["export", "--model", "efficientnet_lite0", "--out", str(tmp_path / "o")]
    assert main([*base, "--triton", str(tmp_path / "r")]) == 2  # no --end-to-end
    assert main([*base, "--end-to-end", "--triton", str(tmp_path / "r"), "--triton-tensorrt", "FP16"]) == 2  # cpu
    assert main([*base, "--end-to-end", "--triton", str(tmp_path / "r"), "--triton-name", "../x"]) == 2
    (tmp_path / "user" / "unioncam").mkdir(parents=True)
    (tmp_path / "user" / "unioncam" / "config.pbtxt").write_text("mine")
    assert main([*base, "--end-to-end", "--triton", str(tmp_path / "user")]) == 2  # a user's file, kept
    assert (tmp_path / "user" / "unioncam" / "config.pbtxt").read_text() == "mine"
    assert "--replace-user-files" in capsys.readouterr().err


def _manifest(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def _image_command() -> list[str]:
    """The image's ENTRYPOINT, from deploy/Dockerfile (exec form)."""
    import json

    line = next(ln for ln in (DEPLOY / "Dockerfile").read_text().splitlines() if ln.startswith("ENTRYPOINT"))
    return json.loads(line.removeprefix("ENTRYPOINT"))


@pytest.mark.parametrize("name, port, port_name", [("kserve-unioncam.yaml", 8080, None),
                                                   ("kserve-unioncam-grpc.yaml", 8081, "h2c")])
def test_the_custom_predictor_runs_unioncam_serve_as_configured(name, port, port_name):
    isvc = _manifest(name)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    container = isvc["spec"]["predictor"]["containers"][0]
    command = _image_command() + container["args"]
    assert command[:2] == ["unioncam", "serve"]
    args = build_parser().parse_args(command[1:])  # the server's own parser: every option exists and parses
    assert args.model_name == "unioncam" and (args.http_port, args.grpc_port) == (8080, 8081)
    assert args.max_inflight == isvc["spec"]["predictor"]["containerConcurrency"]
    assert args.request_timeout == isvc["spec"]["predictor"]["timeout"]
    # Safe defaults: a budget of passes, and one memory budget, with a quarter of the pod's limit to
    # spare, from which every request limit is derived (its peak measured below).
    assert args.max_passes == 64 and args.max_batch == 4
    assert args.max_body_mb is None and args.max_image_pixels is None  # derived, not set one by one
    limit_mib = float(container["resources"]["limits"]["memory"].removesuffix("Gi")) * 1024
    assert args.memory_mb <= 0.75 * limit_mib
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]
    ports = container["ports"]
    assert [p["containerPort"] for p in ports] == [port] and ports[0].get("name") == port_name
    probe = container["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/v2/health/ready", args.http_port)


def test_the_triton_manifest_serves_the_one_graph_over_v2():
    isvc = _manifest("kserve-triton.yaml")
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "onnx" and model["protocolVersion"] == "v2"
    assert model["runtime"] == "kserve-tritonserver"
    text = (DEPLOY / "kserve-triton.yaml").read_text()
    assert "--triton" in text and "/v2/models/unioncam/infer" in text  # the model's name is its folder's


def test_the_image_exports_the_model_it_serves():
    lines = (DEPLOY / "Dockerfile").read_text()
    export = next(shlex.split(seg.strip(" \\\n")) for seg in lines.split("&&") if "unioncam export" in seg)
    assert export[export.index("--out") + 1] == _image_command()[_image_command().index("--artifacts") + 1]


def _vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(key)


def test_the_shipped_limits_hold_a_server_at_every_limit_inside_its_budget(lite0_artifacts, tmp_path):
    """The image's command line (its budget and batch), a server at every limit at once: requests of
    the most images, whose real photos together declare just under the pixels it allows a request,
    in bodies just under its body limit, sent at once. Its peak (VmHWM) stays under --memory-mb, and
    so under the pod's limit with the quarter to spare the manifest check asks."""
    import re

    import cv2
    from test_serve import _b64, _v2, post_all, ready_server

    command = _image_command() + _manifest("kserve-unioncam.yaml")["spec"]["predictor"]["containers"][0]["args"]
    args = build_parser().parse_args(command[1:])
    keep = ["--max-batch", str(args.max_batch), "--memory-mb", f"{args.memory_mb:g}", "--max-passes",
            str(args.max_passes)]
    log = tmp_path / "server.log"
    for server in ready_server(lite0_artifacts, log, *keep):
        allowed = int(re.search(r"may declare ([\d,]+) decoded pixels", log.read_text()).group(1).replace(",", ""))
        side = int((allowed / args.max_batch) ** 0.5 * 0.98)
        photo = cv2.imread(str(Path(__import__("skimage").__file__).parent / "data" / "chelsea.png"))
        big = cv2.imencode(".jpg", cv2.resize(photo, (side, side)), [cv2.IMWRITE_JPEG_QUALITY, 40])[1].tobytes()
        body = _v2([{"name": "image", "datatype": "BYTES", "shape": [args.max_batch], "data": [_b64(big)] * args.max_batch}])
        answers = post_all(f"{server.url}/v2/models/unioncam/infer", body, 3)
        peak = _vm(server.proc.pid, "VmHWM")
    print(f"{args.max_batch} x {side}x{side} a request ({len(body) / 2**20:.1f} MiB body), 3 at once: peak "
          f"{peak / 2**20:.0f} MiB of --memory-mb {args.memory_mb:g}")
    assert [c for c, _ in answers] == [200] * 3, answers
    assert peak < args.memory_mb * (1 << 20)
