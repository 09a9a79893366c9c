"""Hostile clients, generated (issue 39): every request a client can send is answered right or
refused clearly, and the server stays up.

The rule, over its class: for any v2 request (JSON, or a binary body with any header length), any
v1 body, of any inputs, names, dtypes, shapes (negative, zero, huge, not integers), data and
parameters (any JSON type), the answer is

- 200 with a map of the declared batch, finite, in [0, 1]; or
- a 4xx (never 5xx but 503/504) with ``{"error": "<one line>"}``, no traceback;

and the next good request is answered 200. A real server on 127.0.0.1, a real photo.
"""
from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from generated import examples
from test_serve import PHOTOS, post, ready_server

pytestmark = pytest.mark.generated

PHOTO = (PHOTOS / "chelsea.png").read_bytes()
B64 = base64.b64encode(PHOTO).decode()
GOOD = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [B64]}],
                   "parameters": {"max_passes": 2}}).encode()


@pytest.fixture(scope="module")
def hostile_server(lite0_artifacts, tmp_path_factory):
    yield from ready_server(lite0_artifacts, tmp_path_factory.mktemp("hostile") / "server.log", "--max-inflight", "4",
                            "--max-batch", "4", "--max-body-mb", "2")


any_json = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
                        | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
dims = st.one_of(st.sampled_from([-1, 0, 1, 2, 3, 4, 5, 224, 50000, 2**40]), st.booleans(), st.text(max_size=2),
                 st.floats(allow_nan=False))
shapes = st.one_of(st.lists(dims, max_size=5), any_json)
names = st.sampled_from(["image", "input", "class", "Image", "", "overlay", "../etc"])
dtypes = st.sampled_from(["BYTES", "FP32", "INT64", "INT32", "FP16", "BOOL", "bogus"])
data = st.one_of(st.just([B64]), st.just([B64, B64]), st.just([B64] * 5), st.lists(st.floats(allow_nan=False), max_size=6),
                 st.lists(st.integers(-5, 2000), max_size=6), st.just([0.5] * (3 * 224 * 224)),
                 st.lists(st.text(max_size=5), max_size=3), any_json)
parameter_values = st.one_of(any_json, st.sampled_from(["exact", "unioncam", "gradcam", "64", "true", "tabby", "nan"]))
parameters = st.dictionaries(st.sampled_from(["max_passes", "theta", "method", "overlay", "class", "artifacts",
                                              "binary_data_output"]), parameter_values, max_size=3)
tensors = st.fixed_dictionaries({"name": names, "datatype": dtypes, "shape": shapes, "data": data})
v2_bodies = st.builds(lambda ins, ps: {"inputs": ins, "parameters": ps}, st.lists(tensors, max_size=3),
                      st.one_of(parameters, any_json))


def _check(server, code: int, answer: dict, what) -> None:
    assert server.proc.poll() is None, f"the server died on {what!r}"
    if code == 200:
        return
    assert 400 <= code < 500 or code in (503, 504), (code, answer, what)
    error = answer.get("error")
    assert isinstance(error, str) and error and "\n" not in error and "Traceback" not in error, (answer, what)


def _cams(answer: dict) -> list:
    return [o for o in answer.get("outputs", []) if o["name"] == "cam"]


@examples(60)
@given(body=v2_bodies)
@example(body={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [B64]}], "parameters": [1]})
def test_any_v2_json_request_is_answered_or_refused_in_one_line(hostile_server, body):
    code, answer = post(f"{hostile_server.url}/v2/models/unioncam/infer", json.dumps(body).encode())
    _check(hostile_server, code, answer, body)
    if code == 200:
        (cam,) = _cams(answer)
        values = np.asarray(cam["data"], dtype=np.float64)
        assert cam["shape"][1:] == [224, 224] and np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1


@examples(40)
@given(head=v2_bodies, header_length=st.one_of(st.none(), st.integers(-5, 1 << 20),
                                              st.text(alphabet="0123456789abc+- ", max_size=4)),
       kind=st.sampled_from(["random", "a photo, prefixed", "a prefix that lies"]), noise=st.binary(max_size=64),
       sizes=st.lists(st.one_of(st.integers(-4, 1 << 31), st.booleans(), st.text(max_size=3)), max_size=3))
@example(head={"inputs": [], "parameters": True}, header_length=None, kind="random", noise=b"", sizes=[])  # found
def test_any_binary_request_is_answered_or_refused_in_one_line(hostile_server, head, header_length, kind, noise,
                                                                sizes):
    blob = {"random": noise, "a photo, prefixed": struct.pack("<I", len(PHOTO)) + PHOTO,
            "a prefix that lies": struct.pack("<I", 1 << 30) + b"abcd"}[kind]
    for tensor, size in zip(head["inputs"], sizes):
        tensor.pop("data")
        tensor["parameters"] = {"binary_data_size": size}
    raw = json.dumps(head).encode()
    headers = {"Content-Type": "application/octet-stream"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(len(raw) if header_length == 0 else header_length)
    code, answer = post(f"{hostile_server.url}/v2/models/unioncam/infer", raw + blob, headers)
    _check(hostile_server, code, answer, (head, header_length, kind, sizes))


@examples(30)
@given(body=st.one_of(any_json, st.fixed_dictionaries({"instances": st.lists(
    st.one_of(any_json, st.fixed_dictionaries({"b64": st.one_of(st.just(B64), st.text(max_size=6))}),
              st.fixed_dictionaries({"b64": st.just(B64), "class": parameter_values})), max_size=5)},
    optional={"parameters": st.one_of(parameters, any_json)})),
       verb=st.sampled_from([":predict", ":explain"]))
def test_any_v1_request_is_answered_or_refused_in_one_line(hostile_server, body, verb):
    code, answer = post(f"{hostile_server.url}/v1/models/unioncam{verb}", json.dumps(body).encode())
    _check(hostile_server, code, answer, body)


def test_after_every_generated_request_a_good_one_is_answered(hostile_server):
    """Last in the module: the server answers as on its first request."""
    code, answer = post(f"{hostile_server.url}/v2/models/unioncam/infer", GOOD)
    assert code == 200 and _cams(answer), answer
