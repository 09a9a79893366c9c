"""TensorRT engines from the exported ONNX graphs, through TensorRT's ONNX parser.

Written against the standard ``tensorrt`` Python API; ``tensorrt_rtx`` (TensorRT for RTX, whose API
is close) is used when it is the one installed. TensorRT-RTX can build ahead of time for a given
compute capability (``compute_capability="SM86"``) on a machine without a GPU: CI uses that to prove
that both graphs parse and build. Imports no torch.
"""
from __future__ import annotations

import datetime
import time
from pathlib import Path

from unioncam.artifacts import GRADIENT_ONNX, MASKED_ONNX, Manifest, sha256_file
from unioncam.errors import BackendUnavailableError, ExportError

from .engine_file import current_gpu, import_tensorrt, write_engine


def _profiles(onnx_name: str, manifest: Manifest, max_batch: int) -> dict[str, tuple[tuple, tuple, tuple]]:
    """(min, opt, max) shapes of each input.

    gradient: batch 1..max_batch. masked_forward: one image per call (B = 1) with 1..max_batch maps
    from (h, w) activations up to (H, W) full-size maps; the runtime calls it that way, which keeps
    the engine's activation memory to ``max_batch`` forward passes.
    """
    H, W = manifest.input_size
    h, w = manifest.feature_size
    opt = max(1, max_batch // 2)
    if onnx_name == GRADIENT_ONNX:
        return {
            "image": ((1, 3, H, W), (1, 3, H, W), (max_batch, 3, H, W)),
            "class_idx": ((1,), (1,), (max_batch,)),
        }
    return {
        "image": ((1, 3, H, W), (1, 3, H, W), (1, 3, H, W)),
        "maps": ((1, 1, min(h, H), min(w, W)), (1, opt, h, w), (1, max_batch, max(h, H), max(w, W))),
        "class_idx": ((1,), (1,), (1,)),
    }


def build_engine(onnx_path: str | Path, engine_path: str | Path | None = None, *, fp16: bool = False,
                 max_batch: int = 64, compute_capability: str | None = None, timing_cache: str | Path | None = None,
                 workspace_bytes: int | None = None) -> dict:
    """Build a TensorRT engine from ``gradient.onnx`` or ``masked_forward.onnx``.

    Args:
        onnx_path: an ONNX file inside an artifact folder written by ``unioncam export`` (or the exporter's ``export()``).
        engine_path: output file (default: ``<onnx stem>.engine`` beside it), written atomically with
            a header recording the TensorRT version, the GPU and the ONNX SHA-256.
        fp16: allow FP16 kernels (standard TensorRT; TensorRT-RTX is strongly typed and refuses).
        max_batch: largest batch (gradient) or number of maps per call (masked forward).
        compute_capability: TensorRT-RTX only: build ahead of time for e.g. ``"SM86"`` (no GPU needed).
        timing_cache: timing-cache file to read and update (standard TensorRT; default beside the ONNX).

    Returns:
        The header written (dict).
    """
    trt, flavour = _tensorrt()
    onnx_path = Path(onnx_path)
    folder = onnx_path.parent
    manifest = _checked_graph(onnx_path, max_batch)
    engine_path = Path(engine_path) if engine_path else onnx_path.with_suffix(".engine")
    builder, network, _parser = _parsed(trt, flavour, onnx_path)  # the parser holds the weights: keep it
    gpu = current_gpu()
    config, target_cc = _config(trt, flavour, builder, gpu, fp16=fp16, compute_capability=compute_capability,
                                workspace_bytes=workspace_bytes)
    # TensorRT-RTX ignores timing caches (no-ops, deprecated)
    cache_path = (Path(timing_cache) if timing_cache else folder / "timing.cache") if flavour == "tensorrt" else None
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    shapes = _profiles(onnx_path.name, manifest, max_batch)
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    t = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path.name} (see the TensorRT log above)")
    build_s = time.perf_counter() - t
    if cache_path is not None:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    engine = bytes(serialized)
    header = {
        "trt_module": flavour, "trt_version": str(trt.__version__),
        "gpu_name": gpu["name"] if gpu and not compute_capability else f"ahead-of-time {compute_capability}",
        "compute_capability": target_cc, "onnx_file": onnx_path.name, "onnx_sha256": sha256_file(onnx_path),
        "fp16": bool(fp16), "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
        "max_batch": int(max_batch), "engine_bytes": len(engine), "build_seconds": round(build_s, 3),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_engine(engine_path, header, engine)
    return header


def _config(trt, flavour: str, builder, gpu, *, fp16: bool, compute_capability: str | None, workspace_bytes):
    """The builder config (workspace, FP16, target) and the compute capability built for."""
    config = builder.create_builder_config()
    if workspace_bytes and hasattr(trt, "MemoryPoolType"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise ExportError(
                f"{flavour} builds strongly typed networks and has no FP16 flag; build FP16 engines with NVIDIA's "
                "standard 'tensorrt' package"
            )
        config.set_flag(trt.BuilderFlag.FP16)
    return config, _target(trt, flavour, config, gpu, compute_capability)


def _checked_graph(onnx_path: Path, max_batch: int) -> Manifest:
    """The manifest of ``onnx_path``'s folder, the graph one of the two it lists, verified."""
    manifest = Manifest.load(onnx_path.parent)
    manifest.verify(onnx_path.parent, [onnx_path.name])
    if onnx_path.name not in (GRADIENT_ONNX, MASKED_ONNX):
        raise ExportError(f"build_engine takes {GRADIENT_ONNX} or {MASKED_ONNX}, got {onnx_path.name}")
    if max_batch < 1:
        raise ExportError(f"max_batch must be >= 1, got {max_batch}")
    return manifest


def _tensorrt():
    trt, flavour = import_tensorrt()
    if trt is None:
        raise BackendUnavailableError(
            "no TensorRT Python module: install NVIDIA's 'tensorrt' (GPU machines, Jetson) or 'tensorrt-rtx-cu13' "
            "(pip install 'unioncam[tensorrt]')"
        )
    return trt, flavour


def _parsed(trt, flavour: str, onnx_path: Path):
    """(builder, network, parser) with ``onnx_path`` parsed by TensorRT's ONNX parser."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if flavour == "tensorrt" and int(str(trt.__version__).split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser rejects {onnx_path.name}: {errors}")
    return builder, network, parser


def _target(trt, flavour: str, config, gpu: dict | None, compute_capability: str | None) -> str | None:
    """The compute capability the engine is built for: an ahead-of-time target (TensorRT-RTX), or
    this GPU's."""
    if compute_capability:
        if flavour != "tensorrt_rtx":
            raise ExportError("compute_capability (ahead-of-time builds) needs TensorRT-RTX; standard TensorRT builds for this GPU")
        cc = getattr(trt.ComputeCapability, compute_capability.upper(), None)
        if cc is None:
            names = [n for n in trt.ComputeCapability.__members__ if n.startswith("SM")]
            raise ExportError(f"unknown compute capability {compute_capability!r}; choose one of {names}")
        config.num_compute_capabilities = 1
        config.set_compute_capability(cc, 0)
        return f"{compute_capability.upper()[2:-1]}.{compute_capability[-1]}"
    if gpu is None and flavour == "tensorrt_rtx":
        raise ExportError("no GPU found: pass compute_capability='SM86' (or SM80/SM89) to build ahead of time")
    return gpu["compute_capability"] if gpu else None


def parse_check(onnx_path: str | Path, *, compute_capability: str | None = None) -> str:
    """Parse an ONNX file with TensorRT's parser and build it (static shapes, no profile needed).

    For graphs outside an artifact folder (``unioncam.onnx``): proves TensorRT accepts every op.
    Returns a one-line summary; raises ExportError naming what the parser rejects.
    """
    trt, flavour = import_tensorrt()
    if trt is None:
        raise BackendUnavailableError("no TensorRT Python module: pip install 'unioncam[tensorrt]'")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser rejects {Path(onnx_path).name}: {errors}")
    config = builder.create_builder_config()
    if compute_capability or flavour == "tensorrt_rtx":
        cc = getattr(trt.ComputeCapability, (compute_capability or "SM86").upper(), None)
        if cc is None:
            raise ExportError(f"unknown compute capability {compute_capability!r}")
        config.num_compute_capabilities = 1
        config.set_compute_capability(cc, 0)
    t = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT could not build {Path(onnx_path).name}")
    return (f"{flavour} {trt.__version__} parsed {network.num_layers} layers and built a "
            f"{len(bytes(serialized)) / 1e6:.1f} MB engine in {time.perf_counter() - t:.1f} s")
