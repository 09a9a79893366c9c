"""The runtime's options: precisions and their graphs, ONNX Runtime session and CUDA provider
options (their flag keys tested against the installed ONNX Runtime), methods, the eager device."""
from __future__ import annotations



from ..errors import InvalidInputError, InvalidTypeError
from ..registry import method_info


#: The masked-forward graph each precision runs: ``tf32`` is the FP32 graph with TensorFloat-32
#: convolutions on a GPU (an opt-in: the spec's tolerances hold for ``fp32``, TF32 off).
PRECISION_GRAPH = {"fp32": "fp32", "tf32": "fp32", "fp16": "fp16", "int8": "int8"}


#: Precisions an explanation can run in (``--precision``, ``Explainer(precision=...)``).
PRECISIONS = tuple(PRECISION_GRAPH)


#: Precisions an export can write a graph in (``unioncam export --precision``).
GRAPH_PRECISIONS = tuple(dict.fromkeys(PRECISION_GRAPH.values()))


#: How far a masked-forward graph's black-image score may be from the FP32 gradient graph's, per
#: graph precision (the load check's second line, after the fingerprints). FP32: the same network,
#: reordered float sums. FP16: measured on the real EfficientNet-Lite0/1/2 weights (largest
#: difference over every class, benchmarks/results/2026-12-03-cpu2-black-score-fp16.md) times 10.
#: INT8: None, no numeric check: quantisation moves a small model's scores by up to 0.42 (measured
#: on the seeded test models), which no bound separates from a foreign graph; its identity is the
#: fingerprint and the manifest's records alone.
BLACK_SCORE_TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3, "int8": None}


def check_precision(precision: str, device: str | None = None) -> str:
    """One of :data:`PRECISIONS`; ``tf32`` only on a GPU ``device``."""
    if precision not in PRECISIONS:
        raise InvalidInputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "tf32" and device == "cpu":
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError("precision 'tf32' is a GPU math mode (TensorFloat-32 convolutions); on the "
                                      "CPU use 'fp32', which computes the same values")
    return precision


#: ONNX Runtime session options a user can set (``Explainer(session_options=...)``, ``unioncam bench
#: --ort-options``), and their values. Keys starting ``session.`` or ``mlas.`` are ONNX Runtime's own
#: session config entries and pass through as given.
ORT_OPTIONS = {
    "opt": ("disable", "basic", "extended", "layout", "all"),  # graph optimisation level (default all)
    "spin": ("0", "1"),  # intra-op threads spin between ops (default 1)
    "mem_pattern": ("0", "1"),  # plan buffers once per shape (default 1)
    "arena": ("0", "1"),  # CPU memory arena (default 1)
}


#: ONNX Runtime session config keys that are flags ("0" or "1"; onnxruntime_session_options_config_keys.h):
#: another value is ignored without a word, so it is refused here. Tested against the strings of the
#: installed library (tests/test_validation.py), which found a run option listed here as a session key.
ORT_FLAG_KEYS = frozenset({
    "session.intra_op.allow_spinning", "session.inter_op.allow_spinning", "session.disable_prepacking",
    "session.use_env_allocators", "session.set_denormal_as_zero", "session.disable_cpu_ep_fallback",
    "session.use_device_allocator_for_initializers", "session.disable_quant_qdq", "session.disable_double_qdq_remover",
    "session.enable_quant_qdq_cleanup", "session.disable_aot_function_inlining", "session.strict_shape_type_inference",
    "session.allow_released_opsets_only", "session.use_ort_model_bytes_directly",
    "session.force_spinning_stop",
})


def _option_pairs(options, what: str, example: str) -> dict[str, str]:
    """A dict, or text ``"KEY=VALUE,KEY=VALUE"`` (``"default"`` or ``""``: none), as ``{key: str}``."""
    if options is None:
        return {}
    if isinstance(options, str):
        text = options.strip()
        if text in ("", "default"):
            return {}
        pairs = []
        for part in text.split(","):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise InvalidInputError(f"{what} option {part!r} is not KEY=VALUE (e.g. '{example}')")
            pairs.append((key.strip(), value.strip()))
        options = dict(pairs)
    if not isinstance(options, dict):
        raise InvalidTypeError(f"{what} options must be a dict or 'KEY=VALUE,...' text, got {type(options).__name__}")
    return {str(k): str(int(v) if isinstance(v, bool) else v) for k, v in options.items()}


def check_ort_options(options) -> dict[str, str]:
    """ONNX Runtime session options: a dict, or text ``"KEY=VALUE,KEY=VALUE"`` (``"default"`` or
    ``""``: none). Keys: :data:`ORT_OPTIONS`, or an ONNX Runtime config key (``session.*``,
    ``mlas.*``). Returns ``{key: value}`` with string values, in the order given."""
    out = {}
    for key, value in _option_pairs(options, "ONNX Runtime", "opt=extended,spin=0").items():
        if key in ORT_OPTIONS:
            if value not in ORT_OPTIONS[key]:
                raise InvalidInputError(
                    f"ONNX Runtime option {key}={value!r}: choose one of {', '.join(ORT_OPTIONS[key])}")
        elif not key.startswith(("session.", "mlas.")):
            raise InvalidInputError(f"unknown ONNX Runtime option {key!r}; use {', '.join(ORT_OPTIONS)} or an "
                                    "ONNX Runtime config key (session.*, mlas.*)")
        elif key in ORT_FLAG_KEYS and value not in ("0", "1"):
            # ONNX Runtime reads these as flags and silently ignores any other value.
            raise InvalidInputError(f"ONNX Runtime option {key}={value!r}: it is a flag, 0 or 1")
        out[key] = value
    return out


#: ONNX Runtime CUDA provider options a user can set (``Explainer(provider_options=...)``,
#: ``--provider-options``), and their values (None: a non-negative integer). ``use_tf32`` is not
#: among them: ``precision`` decides it (``fp32``: off, ``tf32``: on).
PROVIDER_OPTIONS = {
    "cudnn_conv_algo_search": ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),  # cuDNN's search, once per shape
    "enable_cuda_graph": ("0", "1"),  # replay the session as one CUDA graph (fixed shapes and buffers)
    "arena_extend_strategy": ("kNextPowerOfTwo", "kSameAsRequested"),
    "gpu_mem_limit": None,  # bytes the session's arena may hold
    "device_id": None,
}


def check_provider_options(options, device: str | None = None) -> dict[str, str]:
    """CUDA provider options: a dict or ``"KEY=VALUE,..."`` text (``"default"``: none), keys in
    :data:`PROVIDER_OPTIONS`; none with ``device="cpu"``, where they would do nothing
    (BackendUnavailableError). Returns ``{key: value}`` with string values."""
    out = {}
    for key, value in _option_pairs(options, "CUDA provider", "cudnn_conv_algo_search=HEURISTIC").items():
        if key == "use_tf32":
            raise InvalidInputError("use_tf32 is set by the precision: precision='fp32' (TF32 off, the spec's "
                                    "tolerances) or precision='tf32' (TF32 on)")
        if key not in PROVIDER_OPTIONS:
            raise InvalidInputError(f"unknown CUDA provider option {key!r}; use {', '.join(PROVIDER_OPTIONS)}")
        allowed = PROVIDER_OPTIONS[key]
        if allowed is None and not value.isdigit():
            raise InvalidInputError(f"CUDA provider option {key}={value!r} must be a non-negative integer")
        if allowed is not None and value not in allowed:
            raise InvalidInputError(f"CUDA provider option {key}={value!r}: choose one of {', '.join(allowed)}")
        out[key] = value
    if out and device == "cpu":
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError("CUDA provider options apply to device 'cuda' (or 'tensorrt'); device 'cpu' "
                                      "takes none (leave them out)")
    return out


def check_method(method: str) -> str:
    """A name in the method registry (:data:`unioncam.registry.METHODS`)."""
    return method_info(method).name


def check_torch_device(device: str):
    """The ``torch.device`` the eager reference runs on; ``"cuda"`` needs a CUDA build of torch and a
    GPU (imports torch, so only the torch paths call it)."""
    import torch

    from ..errors import BackendUnavailableError

    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"--device cuda needs a CUDA build of torch and a GPU; this is torch "
                                      f"{torch.__version__} with no CUDA device. Use --device cpu here.")
    return torch.device(device)
