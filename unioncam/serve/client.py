"""A client of ``unioncam serve``: :class:`RemoteExplainer` explains images on a running server over
the v2 REST protocol (binary tensors) and returns the same :class:`unioncam.Explanation` as the
local runtime, so that ``unioncam explain IMAGE --server URL`` writes the same files as a local run.
Standard library only: no KServe, no torch.

It sends the model's input tensor, made here by the CLI's own decoder and resize: the server then
explains exactly the input a local run would, and its map is the local map, bit for bit.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

from ..errors import BackendUnavailableError, InvalidInputError, UnionCAMError
from ..settings import UNSET
from ..explanation import Explanation
from . import protocol

#: Seconds to wait for the server: connecting, and each answer (an exact VGG-16 explanation on a CPU
#: takes minutes; the server's own --request-timeout answers 504 before this).
TIMEOUT_S = 600.0

def check_server_url(url: str) -> str:
    """``http(s)://HOST[:PORT]`` (``HOST:PORT`` is taken as http), normalised; a port in 1..65535.

    Example:
        >>> check_server_url("127.0.0.1:8080")
        'http://127.0.0.1:8080'
    """
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment:
        raise InvalidInputError(f"--server {url!r} is not http://HOST[:PORT] (the address of `unioncam serve`)")
    try:
        port = parts.port
    except ValueError as e:
        raise InvalidInputError(f"--server {url!r}: {e}") from None
    if port == 0:
        raise InvalidInputError(f"--server {url!r}: port 0 is not a port a server listens on")
    return f"{parts.scheme}://{parts.netloc}"


class RemoteExplainer:
    """``RemoteExplainer(url)(x) -> Explanation``: a running ``unioncam serve`` as an explainer.

    Args:
        url: the server's HTTP address, ``http://HOST:8080``.
        model_name: the served model's name (``--model-name``, default ``unioncam``).
        timeout: seconds to wait for each answer.

    Raises:
        BackendUnavailableError: the server cannot be reached, or is not ready.
        InvalidInputError: the URL is not ``http(s)://HOST[:PORT]``.
    """

    def __init__(self, url: str, model_name: str = "unioncam", timeout: float = TIMEOUT_S):
        self.url = check_server_url(url)
        self.model_name, self.timeout = model_name, timeout
        self.settings: dict = {}
        meta = self._get(f"/v2/models/{model_name}")
        shapes = {t["name"]: t["shape"] for t in meta.get("inputs", [])}
        shape = shapes.get("input")
        if not shape or len(shape) != 4 or min(shape[2:]) < 1:
            raise BackendUnavailableError(f"the server at {self.url} is not ready to explain (its model metadata gives "
                                          f"no input size); wait for {self.url}/v2/health/ready")
        self.input_size = (int(shape[2]), int(shape[3]))
        outputs = {t["name"]: t["shape"] for t in meta.get("outputs", [])}
        self.num_classes = int(outputs.get("logits", [-1, -1])[-1])

    def _open(self, path: str, data: bytes | None = None, headers: dict | None = None):
        request = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", "")
            except (ValueError, AttributeError):
                message = e.reason
            error = InvalidInputError if e.code == 400 else BackendUnavailableError
            raise error(f"the server at {self.url} answered {e.code}: {message}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise BackendUnavailableError(f"cannot reach the server at {self.url} ({reason}); start it with "
                                          "`unioncam serve`, or check --server") from None

    def _get(self, path: str) -> dict:
        with self._open(path) as r:
            return json.loads(r.read())

    def __call__(self, images: np.ndarray, class_idx=None, method: str | None = None, *, theta: float | None = None,
                 max_passes=UNSET) -> Explanation:
        """Explain (B, 3, H, W) float32 images in [0, 1] on the server; the same fields as the runtime's."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        raw = images.tobytes()
        inputs = [{"name": "input", "shape": list(images.shape), "datatype": "FP32",
                   "parameters": {"binary_data_size": len(raw)}}]
        if class_idx is not None:
            classes = np.broadcast_to(np.asarray(class_idx, dtype=np.int64), (images.shape[0],))
            inputs.append({"name": "class", "shape": [images.shape[0]], "datatype": "INT64",
                           "data": [int(c) for c in classes]})
        parameters = {"binary_data_output": True}
        if method:
            parameters["method"] = method
        if theta is not None:
            parameters["theta"] = float(theta)
        if max_passes is not UNSET:
            parameters["max_passes"] = "exact" if max_passes is None else int(max_passes)
        head = json.dumps({"inputs": inputs, "parameters": parameters}).encode()
        with self._open(f"/v2/models/{self.model_name}/infer", head + raw,
                        {"Content-Type": "application/octet-stream",
                         "Inference-Header-Content-Length": str(len(head))}) as r:
            body = r.read()
            length = r.headers.get("Inference-Header-Content-Length")
        return self._explanation(body, int(length) if length else len(body))

    def _explanation(self, body: bytes, length: int) -> Explanation:
        try:
            answer = json.loads(body[:length])
            tensors, start = {}, length
            for out in answer["outputs"]:
                size = (out.get("parameters") or {}).get("binary_data_size")
                if size is not None:
                    raw, start = body[start:start + size], start + size
                    tensors[out["name"]] = protocol.binary_tensor(out["name"], raw, out["datatype"], tuple(out["shape"]))
                else:
                    tensors[out["name"]] = np.asarray(out["data"]).reshape(out["shape"])
            params = answer.get("parameters") or {}
        except (ValueError, KeyError, TypeError, UnionCAMError) as e:
            raise UnionCAMError(f"the server at {self.url} sent an answer this client cannot read ({e}); is it "
                                "`unioncam serve` of the same version?") from None
        self.settings = {k: v for k, v in params.items() if k not in ("timings_ms", "stats")}
        fields = {o.name: tensors.get(o.name) for o in protocol.OUTPUTS if o.name != "overlay"}
        fields["cam"] = np.ascontiguousarray(fields["cam"], dtype=np.float32)
        fields["selected"] = [s.decode() if isinstance(s, bytes) else str(s) for s in tensors.get("selected", [])]
        return Explanation(**fields, method=params.get("method", "unioncam"),
                           timings_ms=json.loads(params.get("timings_ms", "{}")),
                           stats=json.loads(params.get("stats", "{}")))
