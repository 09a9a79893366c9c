"""``unioncam serve``: explanations over the network, on KServe's model server (docs/serve.md)."""
from __future__ import annotations

import argparse

from ..registry import METHODS
from ..runtime.backends import BACKENDS, devices
from .common import (
    add_model_source_options,
    as_usage_error,
    check_model_options,
    positive_int,
    resolve_model_spec,
)

#: Runtime backends a server runs: every registered one but the eager reference (for checking, not serving).
SERVE_BACKENDS = tuple(name for name, info in BACKENDS.items() if not info.eager)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve explanations over HTTP and gRPC (KServe v1 and v2; pip install \"unioncam[serve]\")",
        description="Serve UnionCAM on KServe's model server: v1 POST /v1/models/NAME:predict and :explain, v2 "
        "POST /v2/models/NAME/infer over REST and gRPC, /v2/health/live and /ready, /v2/models/NAME. The model "
        "loads and warms once the ports listen; readiness is false until then. SIGTERM: stop accepting, finish "
        "the requests in flight, exit 0. See docs/serve.md.")
    add_model_source_options(p)
    p.add_argument("--backend", choices=SERVE_BACKENDS, default="onnxruntime", help="a runtime backend (default onnxruntime)")
    p.add_argument("--device", choices=devices(), default="cpu", help="cpu (default), cuda or tensorrt")
    p.add_argument("--method", choices=METHODS,
                   help="the method of requests that name none (default unioncam)")
    net = p.add_argument_group("network and limits")
    net.add_argument("--model-name", default="unioncam", help="the model's name in the routes (default unioncam)")
    net.add_argument("--host", default="0.0.0.0",
                     help="address to listen on (default 0.0.0.0, every interface, as KServe; 127.0.0.1: this "
                          "machine only, e.g. behind a proxy on it)")
    net.add_argument("--http-port", type=int, default=8080, help="REST port (default 8080, KServe's)")
    net.add_argument("--grpc-port", type=int, default=8081, help="gRPC port (default 8081, KServe's)")
    net.add_argument("--max-inflight", type=positive_int, default=32,
                     help="requests admitted at once, running or waiting; more are answered 503 at once (default 32)")
    net.add_argument("--concurrency", type=positive_int, default=1,
                     help="explanations running at once (default 1: on a CPU the sessions use every core already)")
    net.add_argument("--request-timeout", type=float, default=120.0,
                     help="seconds a request may take, waiting included; then 504 (default 120)")
    net.add_argument("--max-batch", type=positive_int, default=16, help="images per request (default 16)")
    net.add_argument("--memory-mb", type=float, default=DEFAULT_MEMORY_MB,
                     help="the server's memory budget, MiB (set it below the pod's limit): a quarter holds the bodies "
                          "in flight (the body limit), what the loaded model leaves of the rest bounds the pixels a "
                          f"request may declare (default {DEFAULT_MEMORY_MB:g}; docs/serve.md, \"Limits\")")
    net.add_argument("--max-body-mb", type=float, default=None,
                     help="largest request body, MiB, refused before it is read (default: from --memory-mb; at most "
                          "that)")
    net.add_argument("--max-image-pixels", type=positive_int, default=None,
                     help="pixels a request's images may declare together, refused before decoding (default: from "
                          "--memory-mb; at most that)")
    p.set_defaults(func=run)


#: The server's memory budget by default, MiB: a 2 GiB pod, what the shipped manifests give.
DEFAULT_MEMORY_MB = 2048.0
#: The share of the budget the bodies in flight may hold, and how many copies of its body a request
#: keeps while it is parsed (the bytes, the JSON or base64 they decode to, the arrays).
BODY_SHARE, BODY_COPIES = 0.25, 3
#: Ceilings of the server's own options (docs/serve.md, "Limits").
MAX_INFLIGHT = 4096
MAX_CONCURRENCY = 256
MAX_SERVE_BATCH = 1024
MAX_BODY_MB = 4096.0


def check_serve_options(args) -> None:
    """Every server option within its bounds: a usage error (exit 2) before any model loads."""
    from ..errors import InvalidInputError
    from ..validation import check_count, check_duration, check_port

    with as_usage_error():
        check_port(args.http_port, "--http-port")
        check_port(args.grpc_port, "--grpc-port")
        check_count(args.max_inflight, "--max-inflight", MAX_INFLIGHT)
        check_count(args.concurrency, "--concurrency", MAX_CONCURRENCY)
        check_count(args.max_batch, "--max-batch", MAX_SERVE_BATCH)
        check_duration(args.request_timeout, "--request-timeout")
        if not 0 < args.memory_mb < float("inf"):  # NaN fails too
            raise InvalidInputError(f"--memory-mb must be a positive number of MiB, got {args.memory_mb}")
        derived = body_limit_mb(args.memory_mb, args.max_inflight)
        if args.max_body_mb is not None and not 0 < args.max_body_mb <= min(MAX_BODY_MB, derived):
            raise InvalidInputError(f"--max-body-mb must be in (0, {min(MAX_BODY_MB, derived):g}], got "
                                    f"{args.max_body_mb}: {args.max_inflight} bodies (--max-inflight) of at most that "
                                    f"fit a quarter of --memory-mb {args.memory_mb:g}; give more --memory-mb or less "
                                    "--max-inflight")
        if args.http_port == args.grpc_port:
            raise InvalidInputError(f"--http-port and --grpc-port are both {args.http_port}; give them different ports")
        if not args.model_name or not all(c.isalnum() or c in "-_." for c in args.model_name):
            raise InvalidInputError(f"--model-name {args.model_name!r}: use letters, digits, '-', '_' and '.'")


def body_limit_mb(memory_mb: float, max_inflight: int) -> float:
    """The largest body, MiB: ``max_inflight`` of them, ``BODY_COPIES`` times each, fill ``BODY_SHARE``
    of the budget.

    Example:
        >>> body_limit_mb(2048, 32)
        5.333333333333333
    """
    return min(MAX_BODY_MB, memory_mb * BODY_SHARE / (max_inflight * BODY_COPIES))


def run(args: argparse.Namespace) -> int:
    from ..serve import import_kserve
    from ..serve.network import check_host, check_port_free

    args.precision = args.precision or "fp32"
    model_spec = resolve_model_spec(args)
    check_model_options(args, model_spec)
    check_serve_options(args)
    import_kserve()  # a missing extra is said before anything loads
    check_host(args.host)
    check_port_free(args.host, args.http_port, "--http-port")
    check_port_free(args.host, args.grpc_port, "--grpc-port")
    from ..serve.model import UnionCAMModel
    from ..serve.server import serve

    def load():
        from .common import open_runtime

        explainer, layer = open_runtime(args, model_spec, backend=args.backend, device=args.device,
                                        batch_size=args.batch_size, theta=args.theta, max_passes=args.max_passes,
                                        precision=args.precision, method=args.method,
                                        provider_options=args.provider_options, threads=args.threads)
        m = explainer.manifest
        settings = {"model": args.model, "layer": m.layer or layer, "input_size": "x".join(map(str, m.input_size)),
                    "num_classes": m.num_classes, "theta": args.theta, "max_passes": args.max_passes,
                    "precision": args.precision, "backend": args.backend, "device": args.device,
                    "weights_sha256": (m.extra or {}).get("fingerprint", {}).get("weights_sha256")}
        return explainer, settings

    max_body_mb = args.max_body_mb or body_limit_mb(args.memory_mb, args.max_inflight)
    model = UnionCAMModel(args.model_name, load, max_inflight=args.max_inflight, concurrency=args.concurrency,
                          timeout_s=args.request_timeout, max_batch=args.max_batch,
                          memory_mb=args.memory_mb, reserved_mb=args.memory_mb * BODY_SHARE,
                          max_pixels=args.max_image_pixels)
    from ..verbosity import verbose

    return serve(model, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                 max_body=int(max_body_mb * (1 << 20)), verbose=verbose())
