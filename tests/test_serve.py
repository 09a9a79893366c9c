"""``unioncam serve`` (issue 34): a real server in a subprocess on 127.0.0.1, clients over v1 and v2,
REST and gRPC (tritonclient, the clients users have), every map compared with the in-process
runtime's on the same input, bit for bit. Two servers per module: one for answers (in-flight bound
16), one for limits (in-flight bound 2, a 1 s time limit), which the last test stops with SIGTERM.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("kserve") is None:  # found, not imported: its gRPC protos clash with tritonclient's
    pytest.skip('needs the serve extra: pip install "unioncam[serve]"', allow_module_level=True)
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient (the test extra)")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient (the test extra)")

from unioncam.image_io import decode_rgb, to_model_input  # noqa: E402
from unioncam.runtime import Explainer  # noqa: E402

PASSES = 16
PHOTOS = Path(__file__).resolve().parents[1] / "unioncam" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``unioncam serve`` in a process of its own, bound to 127.0.0.1 only."""

    def __init__(self, artifacts: Path, log: Path, *extra: str):
        self.http, self.grpc = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http}"
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unioncam", "serve", "--artifacts", str(artifacts), "--host", "127.0.0.1",
             "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--max-passes", str(PASSES), *extra],
            stdout=subprocess.DEVNULL, stderr=open(log, "w"))  # noqa: SIM115 - the process owns it
        self.early: list[int] = []  # readiness answers from the moment the port answers

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            code = status(f"{self.url}/v2/health/ready")
            if code is not None:
                self.early.append(code)
                if code == 200:
                    return
            time.sleep(0.02)
        raise AssertionError(f"not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def ready_server(artifacts: Path, log: Path, *extra: str):
    """A module fixture's body: the server, ready, stopped after the module (SIGTERM)."""
    s = Server(artifacts, log, *extra)
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


def post_all(url: str, body: bytes, n: int) -> list[tuple[int, dict]]:
    """``n`` copies of ``body`` posted at once, each from a thread of its own; their answers."""
    answers: list = []
    clients = [threading.Thread(target=lambda: answers.append(post(url, body))) for _ in range(n)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    return answers


def status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def server(lite0_artifacts, tmp_path_factory):
    yield from ready_server(lite0_artifacts, tmp_path_factory.mktemp("serve") / "server.log", "--max-inflight", "16",
               "--max-body-mb", "4")


@pytest.fixture(scope="module")
def explainer(lite0_artifacts):
    with Explainer(lite0_artifacts, max_passes=PASSES) as e:
        yield e


def photo(name: str = "chelsea") -> bytes:
    return (PHOTOS / f"{name}.png").read_bytes()


def model_input(data: bytes) -> np.ndarray:
    return to_model_input(decode_rgb(data), (224, 224))[None]


# -- health and metadata -----------------------------------------------------------------------

def test_readiness_is_false_until_the_model_is_loaded_and_warmed(server):
    """The port answers while the model loads; readiness turned 200 only after 503s."""
    assert server.early[0] == 503 and server.early[-1] == 200, server.early
    log = server.log.read_text()
    assert log.index("listening") < log.index("ready: model")
    assert status(f"{server.url}/v2/health/live") == 200
    assert grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}").is_server_ready()


def test_metadata_names_each_input_and_output_with_dtype_and_shape(server):
    for meta in (json.loads(urllib.request.urlopen(f"{server.url}/v2/models/unioncam").read()),
                 grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}").get_model_metadata("unioncam",
                                                                                                  as_json=True)):
        inputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]}
        outputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in meta["outputs"]}
        assert inputs == {"image": ("BYTES", [-1]), "input": ("FP32", [-1, 3, 224, 224]), "class": ("INT64", [-1])}
        assert outputs["cam"] == ("FP32", [-1, 224, 224]) and outputs["logits"] == ("FP32", [-1, 1000])
        assert outputs["selected"] == ("BYTES", [-1]) and outputs["class_idx"] == ("INT64", [-1])
        assert set(outputs) == {"cam", "class_idx", "score", "beta_denoising", "beta_region", "beta_de_region",
                                "selected", "logits", "overlay"}


# -- round trips: each equals the in-process runtime, bit for bit -------------------------------

def test_v1_predict_and_explain_equal_the_runtime(server, explainer):
    data = photo()
    x = model_input(data)
    ref = explainer(x)
    probs = explainer.probabilities(x)[0]
    body = json.dumps({"instances": [{"b64": base64.b64encode(data).decode()}]}).encode()
    code, answer = post(f"{server.url}/v1/models/unioncam:predict", body)
    assert code == 200
    p = answer["predictions"][0]
    assert p["class_idx"] == int(np.argmax(probs)) == 285 and p["class_name"] == "Egyptian cat"
    assert p["score"] == float(probs[285]) and [t["index"] for t in p["top5"]][0] == 285
    code, answer = post(f"{server.url}/v1/models/unioncam:explain", body)
    assert code == 200
    e = answer["explanations"][0]
    np.testing.assert_array_equal(np.asarray(e["cam"], dtype=np.float32), ref.cam[0])
    assert (e["class_idx"], e["selected"], e["beta_region"]) == (285, ref.selected[0], float(ref.beta_region[0]))
    assert answer["parameters"]["max_passes"] == PASSES and answer["parameters"]["layer"] == "head"


def test_v2_rest_json_equals_the_runtime(server, explainer):
    """Plain JSON as curl sends it: the image as base64 text, the answer as JSON numbers; the request's
    method and budget are the ones it ran with, and the answer says so."""
    data = photo("coffee")
    ref = explainer(model_input(data), None, "scorecam", max_passes=8)
    body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                   "data": [base64.b64encode(data).decode()]}],
                       "parameters": {"method": "scorecam", "max_passes": 8, "theta": 20}}).encode()
    code, answer = post(f"{server.url}/v2/models/unioncam/infer", body)
    assert code == 200, answer
    out = {o["name"]: o for o in answer["outputs"]}
    cam = np.asarray(out["cam"]["data"], dtype=np.float32).reshape(out["cam"]["shape"])
    np.testing.assert_array_equal(cam, ref.cam)
    assert not np.array_equal(ref.cam, explainer(model_input(data), None, "scorecam").cam)  # the budget matters
    assert "selected" not in out  # a baseline has no AMS
    params = answer["parameters"]
    assert (params["method"], params["max_passes"], params["theta"]) == ("scorecam", 8, "20.0")
    assert json.loads(params["timings_ms"])["total"] > 0


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("kind", ["image", "input"])
def test_v2_binary_rest_and_grpc_equal_the_runtime(server, explainer, protocol, kind):
    """tritonclient over REST (binary tensors) and gRPC, encoded images and float tensors."""
    mod = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(f"127.0.0.1:{server.http if protocol == 'http' else server.grpc}")
    data = photo()
    x = model_input(data)
    if kind == "image":
        tensor = mod.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=object))
    else:
        tensor = mod.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
    klass = mod.InferInput("class", [1], "INT64")
    klass.set_data_from_numpy(np.array([281], dtype=np.int64))
    answer = client.infer("unioncam", [tensor, klass], parameters={"method": "unioncam"})
    ref = explainer(x, 281)
    np.testing.assert_array_equal(answer.as_numpy("cam"), ref.cam)
    np.testing.assert_array_equal(answer.as_numpy("beta_de_region"), ref.beta_de_region)
    assert answer.as_numpy("class_idx").tolist() == [281]
    assert [s.decode() for s in answer.as_numpy("selected")] == ref.selected


def test_overlay_is_the_plain_overlay_png(server, explainer):
    import cv2

    from unioncam.image_io import overlay

    data = photo()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=object))
    answer = client.infer("unioncam", [tensor], parameters={"overlay": True})
    png = answer.as_numpy("overlay")[0]
    expected = overlay(decode_rgb(data), explainer(model_input(data)).cam[0])
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), expected)


def test_eight_concurrent_requests_equal_the_serial_results(server, explainer):
    names = ["chelsea", "coffee"] * 4
    classes = [None, None, 281, 967, 285, 504, None, 282]
    results: dict[int, np.ndarray] = {}

    def call(i):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http}")
        tensors = [httpclient.InferInput("image", [1], "BYTES")]
        tensors[0].set_data_from_numpy(np.array([photo(names[i])], dtype=object))
        if classes[i] is not None:
            tensors.append(httpclient.InferInput("class", [1], "INT64"))
            tensors[1].set_data_from_numpy(np.array([classes[i]], dtype=np.int64))
        results[i] = client.infer("unioncam", tensors).as_numpy("cam")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(8))
    for i in range(8):
        np.testing.assert_array_equal(results[i], explainer(model_input(photo(names[i])), classes[i]).cam)


# -- bad input: 400 with one line, and the next request is answered ------------------------------

def _huge_png(side: int = 10000) -> bytes:
    """A PNG whose header declares side x side pixels (10000: above a request's pixels at the default
    budget, below this machine's ceiling), with a few bytes of data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _v2(inputs: list, parameters: dict | None = None) -> bytes:
    return json.dumps({"inputs": inputs, **({"parameters": parameters} if parameters else {})}).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BAD = {
    "truncated JPEG": lambda: _v2([{"name": "image", "datatype": "BYTES", "shape": [1],
                                    "data": [_b64(_jpeg()[:len(_jpeg()) // 2])]}]),
    "wrong dtype": lambda: _v2([{"name": "input", "datatype": "INT32", "shape": [1, 3, 224, 224],
                                 "data": [0] * (3 * 224 * 224)}]),
    "wrong shape": lambda: _v2([{"name": "input", "datatype": "FP32", "shape": [1, 3, 100, 100],
                                 "data": [0.5] * (3 * 100 * 100)}]),
    "out of range": lambda: _v2([{"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224],
                                  "data": [255.0] * (3 * 224 * 224)}]),
    "unknown class name": lambda: _v2([{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64(photo())]}],
                                      {"class": "no such animal"}),
    "class out of range": lambda: _v2([{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64(photo())]},
                                       {"name": "class", "datatype": "INT64", "shape": [1], "data": [1000]}]),
    "huge declared image": lambda: _v2([{"name": "image", "datatype": "BYTES", "shape": [1],
                                         "data": [_b64(_huge_png())]}]),
    # A good request, padded past the server's 4 MiB: only the limit refuses it.
    "body over the limit": lambda: _v2([{"name": "image", "datatype": "BYTES", "shape": [1],
                                         "data": [_b64(photo())]}]) + b" " * (5 << 20),
    "a parameter naming a file": lambda: _v2([{"name": "image", "datatype": "BYTES", "shape": [1],
                                               "data": [_b64(photo())]}], {"artifacts": "/etc"}),
    "not JSON": lambda: b"{not json",
    "no image": lambda: _v2([{"name": "class", "datatype": "INT64", "shape": [1], "data": [1]}]),
    "not base64": lambda: _v2([{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]),
    # A request says what it sends: -1 is no shape, even where the data would fill it.
    "negative dimension": lambda: _v2([{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224],
                                        "data": [0.5] * (3 * 224 * 224)}]),
    "empty body": lambda: b"",
    "deeply nested JSON": lambda: b"[" * 100000 + b"]" * 100000,
    # Each image within a request's pixels (16 M of about 35 M), three of them above: refused by
    # their headers before the first is decoded.
    "images above the request's pixels together": lambda: _v2([{"name": "image", "datatype": "BYTES", "shape": [3],
                                                                 "data": [_b64(_huge_png(4000))] * 3}]),
    # A count no batch holds: refused by its declared shape, before an element is read.
    "more classes than a batch holds": lambda: _v2([{"name": "image", "datatype": "BYTES", "shape": [1],
                                                     "data": [_b64(photo())]},
                                                    {"name": "class", "datatype": "INT64", "shape": [50000],
                                                     "data": [1] * 50000}]),
    "theta true": lambda: _v2([{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64(photo())]}],
                              {"theta": True}),
}


def _jpeg() -> bytes:
    import cv2

    return cv2.imencode(".jpg", cv2.imread(str(PHOTOS / "chelsea.png")))[1].tobytes()


#: What the one line must say, where a wrong refusal could also be a 400.
SAYS = {"huge declared image": "server's limit", "body over the limit": "body is",
        "a parameter naming a file": "unknown parameter", "truncated JPEG": "image 0", "wrong dtype": "FP32",
        "unknown class name": "no such animal", "out of range": "[0, 1]",
        "negative dimension": "positive integers", "theta true": "theta", "empty body": "inputs",
        "deeply nested JSON": "JSON", "images above the request's pixels together": "in all",
        "more classes than a batch holds": "50000 elements"}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_400_with_one_line_and_the_next_request_is_answered(server, case):
    code, answer = post(f"{server.url}/v2/models/unioncam/infer", BAD[case]())
    assert code == 400, (case, code, answer)
    assert isinstance(answer.get("error"), str) and "\n" not in answer["error"] and "Traceback" not in answer["error"]
    assert SAYS.get(case, "") in answer["error"], answer
    good = _v2([{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64(photo("coffee"))]}])
    code, answer = post(f"{server.url}/v2/models/unioncam/infer", good)
    assert code == 200 and server.proc.poll() is None


def test_encoded_bodies_415_and_huge_headers_refused(server):
    """A gzip body is refused by name (not parsed as JSON); a 1 MB header is refused before it is read."""
    import gzip

    good = _v2([{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64(photo("coffee"))]}])
    code, answer = post(f"{server.url}/v2/models/unioncam/infer", gzip.compress(good), {"Content-Encoding": "gzip"})
    assert code == 415 and "gzip" in answer["error"], answer
    try:  # refused before anything reads it: h11 answers 4xx or closes while the client still sends
        code, _ = post(f"{server.url}/v2/models/unioncam/infer", good, {"X-Big": "a" * (1 << 20)})
        assert 400 <= code < 500, code
    except (urllib.error.URLError, ConnectionError):
        pass
    assert post(f"{server.url}/v2/models/unioncam/infer", good)[0] == 200


def test_a_lying_binary_length_prefix_is_400(server):
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": 8}}]}).encode()
    body = head + struct.pack("<I", 1 << 30) + b"abcd"  # says 1 GiB, holds 4 bytes
    code, answer = post(f"{server.url}/v2/models/unioncam/infer", body,
                        {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"})
    assert code == 400 and "length" in answer["error"], (code, answer)


def test_nan_is_400_over_binary_rest_and_grpc(server):
    x = np.full((1, 3, 224, 224), np.nan, dtype=np.float32)
    for mod, port in ((httpclient, server.http), (grpcclient, server.grpc)):
        tensor = mod.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        with pytest.raises(Exception) as raised:
            mod.InferenceServerClient(f"127.0.0.1:{port}").infer("unioncam", [tensor])
        status_code = str(getattr(raised.value, "status", lambda: "")())
        assert status_code in ("400", "StatusCode.INVALID_ARGUMENT"), raised.value
        assert "NaN" in raised.value.message()


def test_v1_bad_instances_are_400(server):
    for body in (b'{"instances": "x"}', b'{"instances": [{"b64": "%%"}]}', b'{"instances": [[1, 2]]}',
                 json.dumps({"instances": [{"b64": _b64(photo()), "path": "/etc/passwd"}]}).encode()):
        code, answer = post(f"{server.url}/v1/models/unioncam:explain", body)
        assert code == 400, (body[:60], code, answer)


# -- a client: explain --server writes what a local run writes ----------------------------------

def test_explain_on_a_server_writes_the_files_of_a_local_run(server, lite0_artifacts, tmp_path):
    from unioncam.cli import main

    image = tmp_path / "coffee.png"
    image.write_bytes(photo("coffee"))
    # A class other than the predicted one (espresso, 967): the request must carry it.
    assert main(["explain", str(image), "--server", server.url, "--class", "cup", "--out", str(tmp_path / "remote"),
                 "--no-progress"]) == 0
    assert main(["explain", str(image), "--artifacts", str(lite0_artifacts), "--max-passes", str(PASSES),
                 "--class", "cup", "--out", str(tmp_path / "local"), "--no-progress"]) == 0
    remote, local = tmp_path / "remote", tmp_path / "local"
    np.testing.assert_array_equal(np.load(remote / "coffee_cam.npy"), np.load(local / "coffee_cam.npy"))
    assert (remote / "coffee.png").read_bytes() == (local / "coffee.png").read_bytes()
    a, b = (json.loads((d / "coffee.json").read_text()) for d in (remote, local))
    differ = {k for k in a if a[k] != b.get(k)} - {"timings_ms", "weights"}
    assert not differ, {k: (a[k], b[k]) for k in differ}
    assert a["class_idx"] == 968


def test_explain_on_no_server_is_one_line_and_exit_1(tmp_path, capsys):
    from unioncam.cli import main

    assert main(["explain", "--server", f"127.0.0.1:{free_port()}", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the server" in err[0] and "unioncam serve" in err[0]
    assert main(["explain", "--server", "ftp://x", "--out", str(tmp_path)]) == 2
    assert main(["explain", "--server", "127.0.0.1:8080", "--layer", "x", "--out", str(tmp_path)]) == 2


# -- limits and SIGTERM --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def limited(lite0_artifacts, tmp_path_factory):
    import os

    os.environ["UNIONCAM_SERVE_BODY_TIMEOUT_S"] = "2"  # the server process reads it at its start
    try:
        yield from ready_server(lite0_artifacts, tmp_path_factory.mktemp("serve") / "limited.log", "--max-inflight",
                                "2", "--request-timeout", "1")
    finally:
        os.environ.pop("UNIONCAM_SERVE_BODY_TIMEOUT_S", None)


def test_a_stalled_body_is_408_and_the_connection_let_go(limited):
    """Headers promise 1000 bytes, 10 arrive, then nothing: 408 once the body read timeout passes."""
    with socket.create_connection(("127.0.0.1", limited.http), timeout=30) as sock:
        sock.sendall(b"POST /v2/models/unioncam/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"inputs\":")
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def _exact(server: Server) -> bytes:  # noqa: ARG001
    """An exact explanation: every pass, some seconds on these cores."""
    return _v2([{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64(photo())]}],
               {"max_passes": "exact"})


def test_past_the_inflight_bound_503_at_once_and_past_the_time_limit_504(limited):
    answers: list = []
    slow = [threading.Thread(target=lambda: answers.append(post(f"{limited.url}/v2/models/unioncam/infer",
                                                                _exact(limited)))) for _ in range(2)]
    for t in slow:
        t.start()
    time.sleep(0.5)  # both admitted (ms); their slots stay held for seconds (an exact explanation)
    code, answer = post(f"{limited.url}/v2/models/unioncam/infer", _exact(limited))
    for t in slow:
        t.join()
    assert code == 503 and "in flight" in answer["error"], (code, answer)
    assert sorted(c for c, _ in answers) == [504, 504], answers  # each over the 1 s limit
    assert "time limit" in answers[0][1]["error"]


#: Seconds a request past its time limit may hold its slot: it stops at its next batch of passes
#: (one batch: a second or two here; the sixteen exact explanations below: most of a minute).
RELEASE_BOUND_S = 10


def test_work_past_its_time_limit_stops_and_frees_its_slot(limited):
    """Two exact requests fill the bound and time out; their work stops at the next batch of passes,
    so a new request is admitted within the bound, not after the exact work would have ended."""
    small = _v2([{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64(photo())]}], {"max_passes": 2})
    while post(f"{limited.url}/v2/models/unioncam/infer", small)[0] == 503:  # the test above's work stops first
        time.sleep(0.2)
    # Sixteen photos, every pass: most of a minute of work here, more on a loaded machine, were it not stopped.
    exact16 = _v2([{"name": "image", "datatype": "BYTES", "shape": [16], "data": [_b64(photo())] * 16}],
                 {"max_passes": "exact"})
    answers = post_all(f"{limited.url}/v2/models/unioncam/infer", exact16, 2)
    timed_out = time.monotonic()
    assert sorted(c for c, _ in answers) == [504, 504], answers
    # One worker thread: a small request is answered only once the timed-out work has let go of it.
    while post(f"{limited.url}/v2/models/unioncam/infer", small)[0] != 200:
        assert time.monotonic() - timed_out < RELEASE_BOUND_S, "the timed-out work still holds its slot"
        time.sleep(0.2)
    print(f"slot free {time.monotonic() - timed_out:.2f} s after the 504s")


def test_a_client_that_leaves_frees_its_work_within_the_bound(server):
    """A client sends eight exact explanations (half a minute of work here, within the server's 120 s
    limit and its 4 MiB body) and hangs up: the work stops at its next batch of passes, and the next
    request, which needs the one worker thread, is answered within the bound."""
    exact8 = _v2([{"name": "image", "datatype": "BYTES", "shape": [8], "data": [_b64(photo())] * 8}],
                 {"max_passes": "exact"})
    with socket.create_connection(("127.0.0.1", server.http), timeout=30) as sock:
        sock.sendall(b"POST /v2/models/unioncam/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(exact8)}\r\n\r\n".encode() + exact8)
        time.sleep(1.0)  # admitted and working
    left = time.monotonic()
    small = _v2([{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64(photo())]}], {"max_passes": 2})
    code, answer = post(f"{server.url}/v2/models/unioncam/infer", small)
    waited = time.monotonic() - left
    assert code == 200, answer
    assert waited < RELEASE_BOUND_S, f"the next request waited {waited:.1f} s: the abandoned work ran on"
    print(f"next request answered {waited:.2f} s after the client left")


def test_sigterm_finishes_the_requests_in_flight_and_exits_0(lite0_artifacts, tmp_path):
    """Two requests in flight, then SIGTERM: both are answered 200, then the process exits 0. A server
    of its own with the default time limit: how long the two take on a loaded machine is no part of
    the property."""
    body = _v2([{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64(photo())]}], {"max_passes": 4})
    server = Server(lite0_artifacts, tmp_path / "sigterm.log")
    try:
        server.wait_ready()
        answers: list = []
        threads = [threading.Thread(target=lambda: answers.append(post(f"{server.url}/v2/models/unioncam/infer", body)))
                   for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # both connected and admitted (milliseconds); each takes seconds to answer
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        assert [c for c, _ in answers] == [200, 200], answers
        assert server.proc.wait(60) == 0
        assert server.log.read_text().rstrip().endswith("stopped")
    finally:
        server.stop()


# -- usage errors before anything loads ---------------------------------------------------------

@pytest.mark.parametrize("args", [["--http-port", "0"], ["--http-port", "65536"], ["--http-port", "9", "--grpc-port", "9"],
                                  ["--max-inflight", "0"], ["--request-timeout", "nan"], ["--max-body-mb", "0"],
                                  ["--model-name", "../x"], ["--backend", "torch"], ["--host", "no.such.host.invalid"],
                                  ["--memory-mb", "0"], ["--memory-mb", "nan"], ["--max-body-mb", "100"]])
def test_bad_server_options_exit_2_before_loading(args, lite0_artifacts):
    r = subprocess.run([sys.executable, "-m", "unioncam", "serve", "--artifacts", str(lite0_artifacts), "--host",
                        "127.0.0.1", *args], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "error" in last and "listening" not in r.stderr, r.stderr
    assert args[-2] in last, last  # the message names the option it is about


def test_an_unknown_model_is_exit_2_naming_the_option():
    r = subprocess.run([sys.executable, "-m", "unioncam", "serve", "--model", "nope", "--host", "127.0.0.1"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "--model" in r.stderr.strip().splitlines()[-1], r.stderr


def test_a_port_in_use_is_exit_2(server, lite0_artifacts):
    r = subprocess.run([sys.executable, "-m", "unioncam", "serve", "--artifacts", str(lite0_artifacts), "--host",
                        "127.0.0.1", "--http-port", str(server.http), "--grpc-port", str(free_port())],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and f"--http-port {server.http}" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "unioncam", "serve", "--artifacts", str(lite0_artifacts), "--host",
                        "127.0.0.1", "--grpc-port", str(server.grpc), "--http-port", str(free_port())],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and f"--grpc-port {server.grpc}" in r.stderr, r.stderr



def test_a_model_that_cannot_load_stops_the_server_with_one_line_and_exit_1(lite0_artifacts, tmp_path):
    """The ports listen first; a graph that fails its check at load (a flipped byte) stops both
    servers: one line naming the folder and what to do, exit 1, never ready."""
    import shutil

    art = tmp_path / "art"
    shutil.copytree(lite0_artifacts, art)
    graph = art / "masked_forward.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    s = Server(art, tmp_path / "server.log")
    try:
        code = s.proc.wait(120)
    finally:
        s.stop()
    log = s.log.read_text().strip().splitlines()
    assert code == 1, log
    assert log[-1].startswith("unioncam: error:") and str(art) in log[-1] and "Traceback" not in "\n".join(log)
    assert not any("ready: model" in line for line in log)


def test_json_sent_as_curl_sends_it_is_read(server):
    """``curl -d`` says application/x-www-form-urlencoded; the body is JSON all the same."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    v1 = json.dumps({"instances": [{"b64": _b64(photo("coffee"))}]}).encode()
    code, answer = post(f"{server.url}/v1/models/unioncam:predict", v1, form)
    assert code == 200 and answer["predictions"][0]["class_name"] == "espresso", answer
    v2 = _v2([{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64(photo("coffee"))]}])
    code, answer = post(f"{server.url}/v2/models/unioncam/infer", v2, form)
    assert code == 200 and [o["data"] for o in answer["outputs"] if o["name"] == "class_idx"] == [[967]], answer


# -- on KServe's public surface ----------------------------------------------------------------------

def test_the_server_uses_no_private_name_of_kserves():
    """Every name taken from KServe is public, and no attribute read or written on anything but our
    own objects starts with one underscore: KServe's releases may change their internals freely."""
    import ast

    import unioncam.serve as pkg

    # KServe's own names on the classes we extend, read in a process of its own (KServe's gRPC
    # messages and tritonclient's, imported here, cannot share one).
    kserves = set(json.loads(subprocess.run([sys.executable, "-c", (
        "import json; from unioncam.serve import import_kserve; import_kserve(); from kserve import Model; "
        "from kserve.model_repository import ModelRepository; from kserve.protocol.dataplane import DataPlane; "
        "print(json.dumps(sorted({*vars(Model('x')), *dir(Model), *vars(DataPlane(ModelRepository())), "
        "*dir(DataPlane)})))")], capture_output=True, text=True, check=True).stdout))
    found = []
    for path in Path(pkg.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kserve"):
                found += [f"{path.name}: from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") or any(p.startswith("_") for p in node.module.split("."))]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                ours = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
                if not ours or node.attr in kserves:  # our subclasses' own names must not be KServe's
                    found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert not found, found


def test_a_budget_the_loaded_model_fills_is_exit_2_naming_it(lite0_artifacts):
    """--memory-mb below what the loaded model uses leaves no pixels for a request: found at load
    (the figure is measured there), one line naming the option, exit 2, never ready."""
    r = subprocess.run([sys.executable, "-m", "unioncam", "serve", "--artifacts", str(lite0_artifacts), "--host",
                        "127.0.0.1", "--http-port", str(free_port()), "--grpc-port", str(free_port()),
                        "--memory-mb", "200"], capture_output=True, text=True, timeout=120, check=False)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "--memory-mb 200" in last and "ready:" not in r.stderr, r.stderr
