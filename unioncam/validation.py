"""Every check of user input, once, for every path (eager reference, runtime, exporter, CLI), with
the same messages. Torch-free: torch tensors are recognised without importing torch."""
from __future__ import annotations

import math
import os

import numpy as np
from array_api_compat import array_namespace, is_array_api_obj, is_numpy_array, is_torch_array

from .errors import InvalidInputError, InvalidTypeError, UsageError
from .registry import method_info


def check_theta(theta) -> float:
    """AMD's percentile must be a finite number in [0, 100]."""
    try:
        value = float(theta)
    except (TypeError, ValueError):
        raise InvalidTypeError(f"theta must be a number in [0, 100], got {theta!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise InvalidInputError(f"theta is a percentile and must lie in [0, 100], got {value}")
    return value


def check_positive_int(value, name: str):
    """A positive int (not a bool); returns it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_class_option(class_idx: int | None, num_classes: int | None, *, by_name: bool = False) -> None:
    """``--class`` against the model's class count (None: not known yet, nothing checked); a class
    given by name needs an ImageNet-1k model."""
    if class_idx is None or num_classes is None:
        return
    if by_name and num_classes != 1000:
        raise UsageError(f"--class by name means an ImageNet class; this model has {num_classes} classes: give an "
                         f"index 0..{num_classes - 1}")
    if not 0 <= class_idx < num_classes:
        raise UsageError(f"--class {class_idx} is out of range: the model has {num_classes} classes "
                         f"(0..{num_classes - 1})")


def check_weights_file(path) -> None:
    """A checkpoint path must name a regular, non-empty file (not a folder, a device, a pipe).

    Raises:
        WeightsError: saying which of these it is.
    """
    import stat
    from pathlib import Path

    from .errors import WeightsError

    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {p}") from None
    except OSError as e:
        raise WeightsError(f"cannot read the weights file {p}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise WeightsError(f"--weights {p} is a folder; give the checkpoint file inside it")
    if not stat.S_ISREG(st.st_mode):
        raise WeightsError(f"--weights {p} is not a regular file (a device, pipe or socket); give a checkpoint file")
    if st.st_size == 0:
        raise WeightsError(f"--weights {p} is empty (0 bytes); give a checkpoint file")


#: The longest one bench cell may be timed, in seconds (a sweep runs several cells; an hour each
#: is past any latency measurement's need, and ``inf`` would never end).
MAX_DURATION_S = 3600.0
#: The most timed or warm-up explanations of one bench cell.
MAX_ITERATIONS = 100_000


def check_count(value, name: str, ceiling: int, *, minimum: int = 1) -> int:
    """An int in [minimum, ceiling] (not a bool), for counts that would otherwise never end."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidTypeError(f"{name} must be an integer, got {value!r}")
    if not minimum <= value <= ceiling:
        raise InvalidInputError(f"{name} must be in {minimum}..{ceiling}, got {value}")
    return int(value)


#: The last TCP port number.
MAX_PORT = 65535


def check_port(port, name: str) -> int:
    """A TCP port, 1..65535 (an address's, or one a server listens on)."""
    return check_count(port, name, MAX_PORT)


def check_duration(seconds, name: str = "--duration") -> float:
    """Seconds to time for: finite, above 0, at most :data:`MAX_DURATION_S`."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise InvalidTypeError(f"{name} must be a number of seconds, got {seconds!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= MAX_DURATION_S):
        raise InvalidInputError(f"{name} must be above 0 and at most {MAX_DURATION_S:.0f} seconds, got {seconds}")
    return value


def check_gpus_per_worker(gpus) -> float:
    """GPUs one Ray actor reserves: a fraction in (0, 1] (actors sharing a GPU) or a whole number
    (Ray refuses fractions above 1)."""
    try:
        value = float(gpus)
    except (TypeError, ValueError):
        raise InvalidTypeError(f"--gpus-per-worker must be a number, got {gpus!r}") from None
    if not (math.isfinite(value) and value > 0 and (value <= 1 or value.is_integer())):
        raise InvalidInputError(f"--gpus-per-worker must be a fraction in (0, 1] or a whole number of GPUs, got {gpus}")
    return value


def check_steps(steps, input_size) -> int:
    """Insertion/deletion steps: 1 to H*W, the pixels of the input (each step reveals or removes at
    least one pixel; more steps than pixels measure nothing new)."""
    H, W = input_size
    return check_count(steps, "steps", H * W)


#: The oldest ONNX opset the exporter writes (torch's dynamo exporter starts at 18: asked for less it
#: writes 18 anyway, so a manifest would claim an opset its graphs do not have).
MIN_OPSET = 18


def check_opset(opset) -> int:
    """An ONNX opset the exporter can write: from :data:`MIN_OPSET` to the installed onnx's newest."""
    import onnx

    if isinstance(opset, (bool, np.bool_)) or not isinstance(opset, (int, np.integer)):
        raise InvalidTypeError(f"opset must be an int, got {opset!r}")
    value = int(opset)
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= value <= newest:
        raise UsageError(f"--opset {value} is not one the exporter writes: choose {MIN_OPSET} to {newest} (the "
                         f"installed onnx {onnx.__version__}'s newest); leave it out for the default, 18")
    return value


#: The largest input side a model may have (an exported folder's manifest, or --input-size): a
#: (1, 3, H, W) float32 input and its masked passes must fit a machine.
MAX_INPUT_SIDE = 8192


def check_input_size(size, where: str = "--input-size") -> tuple[int, int]:
    """(H, W) of a model's input: one or two positive ints, each at most :data:`MAX_INPUT_SIDE`."""
    size = tuple(size)
    if len(size) not in (1, 2):
        raise UsageError(f"{where} takes H or H W, got {list(size)}")
    for v in size:
        check_positive_int(v, where)
        if v > MAX_INPUT_SIDE:
            raise UsageError(f"{where} {v} is above {MAX_INPUT_SIDE} pixels a side; models take at most that")
    return (int(size[0]), int(size[-1]))


def check_batch_size(batch_size) -> int:
    """Masked passes per call: a positive int."""
    return check_positive_int(batch_size, "batch_size")


#: Threads per core above which more intra-op threads only add memory and contention.
THREADS_PER_CORE = 4
#: Bytes one masked pass may need, in float32 planes of the input size: an early layer of 64
#: channels at full resolution (VGG's first block), the widest the zoo and the registry have.
PASS_PLANES = 64


def machine_memory() -> int:
    """Physical memory of this machine in bytes (a cgroup's limit where it is lower)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def check_threads(threads) -> int:
    """Intra-op threads: a positive int, at most :data:`THREADS_PER_CORE` per core of this machine."""
    value = check_positive_int(threads, "threads")
    limit = THREADS_PER_CORE * (os.cpu_count() or 1)
    if value > limit:
        raise InvalidInputError(f"threads={value} is more than {THREADS_PER_CORE} per core of this machine "
                                f"({os.cpu_count()} cores, limit {limit}); leave it out to use every core")
    return value


#: The largest batch (images, or maps per call) the exported graphs declare.
MAX_GRAPH_BATCH = 4096


def check_batch_ceiling(batch_size: int, input_size: tuple[int, int], device: str) -> int:
    """A CPU batch of masked passes must fit half this machine's memory (``PASS_PLANES`` float32
    planes of the input per pass); on a GPU, the graphs' largest batch (4096)."""
    H, W = input_size
    if device == "cpu":
        per_pass = PASS_PLANES * H * W * 4
        limit = max(1, min(MAX_GRAPH_BATCH, machine_memory() // 2 // per_pass))
        where = f"half of this machine's {machine_memory() / 2**30:.0f} GiB at ~{per_pass / 2**20:.0f} MB per pass"
    else:
        limit, where = MAX_GRAPH_BATCH, "the exported graphs' largest batch"
    if batch_size > limit:
        raise InvalidInputError(f"batch_size={batch_size} is above {limit} masked passes per call ({where}); "
                                "leave it out for the measured default")
    return batch_size


def check_max_passes(max_passes, *, skip_constant: bool = True) -> int | None:
    """The region map's pass budget: None (exact) or a positive int of masked passes per image."""
    if max_passes is None:
        return None
    value = check_positive_int(max_passes, "max_passes")
    if not skip_constant:
        raise InvalidInputError("max_passes needs skip_constant=True (the budget counts the non-constant channels)")
    return value


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
        from .errors import BackendUnavailableError

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
#: another value is ignored without a word, so it is refused here.
ORT_FLAG_KEYS = frozenset({
    "session.intra_op.allow_spinning", "session.inter_op.allow_spinning", "session.disable_prepacking",
    "session.use_env_allocators", "session.set_denormal_as_zero", "session.disable_cpu_ep_fallback",
    "session.use_device_allocator_for_initializers", "session.disable_quant_qdq", "session.disable_double_qdq_remover",
    "session.enable_quant_qdq_cleanup", "session.disable_aot_function_inlining", "session.strict_shape_type_inference",
    "session.allow_released_opsets_only", "session.use_ort_model_bytes_directly", "session.disable_synchronize_execution_providers",
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
        from .errors import BackendUnavailableError

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

    from .errors import BackendUnavailableError

    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"--device cuda needs a CUDA build of torch and a GPU; this is torch "
                                      f"{torch.__version__} with no CUDA device. Use --device cpu here.")
    return torch.device(device)


def check_images(images, *, library: str, size: tuple[int, int] | None = None):
    """Validate a non-empty (B, 3, H, W) floating array in [0, 1] with finite values.

    Args:
        images: the batch, a NumPy array (``library="numpy"``) or a torch tensor (``"torch"``).
        library: what this path takes; anything else is refused with the type it should be.
        size: (H, W) the path is specialised to (an export), or None for any size.

    Returns:
        ``images`` (unchanged; NumPy float64/float16 becomes C-contiguous float32).

    Raises:
        InvalidTypeError (also a TypeError): not an array of the expected library.
        InvalidInputError: wrong rank, shape, dtype or range; NaN or Inf.
    """
    want = {"numpy": "a NumPy array", "torch": "a torch.Tensor"}[library]
    is_ok = is_numpy_array(images) if library == "numpy" else is_torch_array(images)
    shape_hint = f"(B, 3, {size[0]}, {size[1]})" if size else "(B, 3, H, W)"
    if not is_ok:
        raise InvalidTypeError(f"images must be {want} {shape_hint}, got {type(images).__name__}")
    shape = tuple(images.shape)
    if len(shape) == 3:
        raise InvalidInputError(f"images must be {shape_hint}; got {shape}: add a batch dim with images[None]")
    if len(shape) != 4 or shape[0] == 0 or shape[1] != 3 or (size is not None and shape[2:] != tuple(size)):
        raise InvalidInputError(f"images must have shape {shape_hint}" + (" for this export" if size else "")
                                + f", got {shape}")
    xp = array_namespace(images)
    if not xp.isdtype(images.dtype, "real floating"):
        dtype = str(images.dtype).removeprefix("torch.")
        raise InvalidInputError(f"images must be floating point (float32) in [0, 1], got {dtype}; divide uint8 by 255")
    if library == "numpy" and images.dtype != np.float32:
        images = images.astype(np.float32)
    if library == "numpy":
        images = np.ascontiguousarray(images)
    if not bool(xp.all(xp.isfinite(images))):
        raise InvalidInputError("images contain NaN or Inf; clean the input before explaining it")
    lo, hi = float(xp.min(images)), float(xp.max(images))
    if lo < 0.0 or hi > 1.0:
        # Refused, never clipped: every path refuses the same input.
        raise InvalidInputError(
            f"images must lie in [0, 1] (normalisation is part of the model), got range [{lo:.4g}, {hi:.4g}]")
    return images


def check_classes(class_idx, batch: int, num_classes: int | None = None) -> np.ndarray | None:
    """``class_idx`` as (B,) NumPy int64, or None for the arg-max of each image.

    Accepts None, an int (the same class for all images), or one int per image (a sequence, a NumPy
    array or a torch tensor). With ``num_classes`` the range is checked too. Only None means
    arg-max: a negative index is out of range.
    """
    if class_idx is None:
        return None
    if isinstance(class_idx, (bool, np.bool_)):
        raise InvalidTypeError("class_idx must be None, an int or a sequence of ints, not a bool")
    if is_torch_array(class_idx):
        class_idx = class_idx.detach().cpu().numpy()
    if is_array_api_obj(class_idx) and np.ndim(class_idx) == 0:
        class_idx = np.asarray(class_idx).item()
    if isinstance(class_idx, (int, np.integer)):
        values = [int(class_idx)] * batch
    elif isinstance(class_idx, (float, complex, str, bytes)) or not hasattr(class_idx, "__len__"):
        raise InvalidTypeError(
            f"class_idx must be None, an int or a sequence of ints, got {type(class_idx).__name__} {class_idx!r}")
    else:
        arr = np.asarray(class_idx, dtype=object) if not is_array_api_obj(class_idx) else np.asarray(class_idx)
        if arr.ndim != 1 or arr.shape[0] != batch:
            raise InvalidInputError(f"class_idx has shape {arr.shape}; give one class per image (B={batch})")
        if arr.dtype.kind in "iu":
            values = [int(v) for v in arr]
        else:
            bad = [v for v in arr.tolist() if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
            if bad or arr.dtype.kind not in "O":
                what = type(bad[0]).__name__ if bad else str(arr.dtype)
                raise InvalidTypeError(f"class_idx must hold integers, got {what}")
            values = [int(v) for v in arr.tolist()]
    # Range first, in Python ints: a huge index is out of range, not an overflow.
    limit = num_classes if num_classes is not None else 2**63
    for v in values:
        if not 0 <= v < limit:
            hint = f": the model has {num_classes} classes (0..{num_classes - 1})" if num_classes else ""
            raise InvalidInputError(f"class index {v} out of range{hint}")
    return np.asarray(values, dtype=np.int64)
