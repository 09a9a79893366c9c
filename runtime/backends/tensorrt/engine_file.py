"""TensorRT engine files with a header: what built them, for which GPU, from which ONNX. Torch-free.

Layout: ``MAGIC`` (16 bytes), header length (uint32 little-endian), UTF-8 JSON header, then the
serialized engine exactly as TensorRT wrote it. A plain ``trtexec`` engine has no header and is
refused as foreign: without one we cannot tell whether it matches the ONNX graph it claims to run.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from unioncam.atomic import atomic_file
from unioncam.errors import ArtifactError, BackendUnavailableError

MAGIC = b"UNIONCAM-TRT\x00v1\x00"
assert len(MAGIC) == 16


def import_tensorrt():
    """The installed TensorRT Python module: standard ``tensorrt`` first, else ``tensorrt_rtx``.

    Returns:
        (module, flavour) where flavour is ``"tensorrt"`` or ``"tensorrt_rtx"``; (None, None) if neither
        is installed.

    Raises:
        BackendUnavailableError: a TensorRT module is installed but fails to import (a broken install
        must not look like an absent one).
    """
    for name in ("tensorrt", "tensorrt_rtx"):
        try:
            module = __import__(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise BackendUnavailableError(f"{name} is installed but cannot import {e.name}: reinstall it") from None
        except Exception as e:
            raise BackendUnavailableError(
                f"{name} is installed but fails to import ({type(e).__name__}: {e}): reinstall it") from None
        if not hasattr(module, "Builder"):  # the PyPI 'tensorrt' placeholder package has no API
            continue
        return module, name
    return None, None


def current_gpu() -> dict | None:
    """Name and compute capability ("8.6") of CUDA device 0, or None without a GPU or cuda-python."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except Exception:
        try:
            from cuda import cudart  # older cuda-python
        except Exception:
            return None
    try:
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) != 0:
            return None
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return {"name": name.strip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}
    except Exception:
        return None


def write_engine(path: str | Path, header: dict, engine: bytes) -> None:
    """Write header + engine atomically (temporary file, then rename)."""
    blob = json.dumps(header, sort_keys=True).encode()
    with atomic_file(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<I", len(blob)))
        f.write(blob)
        f.write(engine)


def read_engine(path: str | Path, *, header_only: bool = False) -> tuple[dict, bytes | None]:
    """Read (header, engine bytes). Raises ArtifactError for a missing, foreign or truncated file."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"engine {path} not found; build it with `unioncam export ... --engine`")
    with open(path, "rb") as f:
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
            raise ArtifactError(
                f"{path} is not a unioncam engine (no unioncam header): rebuild it with `unioncam export ... --engine`"
            )
        raw = f.read(4)
        if len(raw) != 4:
            raise ArtifactError(f"{path} is truncated; rebuild it with `unioncam export ... --engine`")
        (n,) = struct.unpack("<I", raw)
        blob = f.read(n)
        try:
            header = json.loads(blob.decode())
        except (UnicodeDecodeError, ValueError):
            raise ArtifactError(f"{path} has a corrupt header; rebuild it with `unioncam export ... --engine`") from None
        engine = None if header_only else f.read()
    if engine is not None and len(engine) != header.get("engine_bytes", len(engine)):
        raise ArtifactError(f"{path} is truncated ({len(engine)} of {header['engine_bytes']} engine bytes); rebuild it")
    return header, engine


def check_header(path, header: dict, *, onnx_sha256: str, trt_version: str, gpu: dict | None) -> None:
    """Refuse a stale engine (other ONNX), or a foreign one (other TensorRT version or GPU)."""
    rebuild = "rebuild it with `unioncam export ... --engine` on this machine"
    if header.get("onnx_sha256") != onnx_sha256:
        raise ArtifactError(f"{path} was built from another ONNX graph than the one in its folder (stale engine); {rebuild}")
    if header.get("trt_version") != trt_version:
        raise ArtifactError(
            f"{path} was built with TensorRT {header.get('trt_version')}, this machine has {trt_version}; {rebuild}"
        )
    built_for = header.get("compute_capability")
    if gpu is not None and built_for and built_for != gpu.get("compute_capability"):
        raise ArtifactError(
            f"{path} was built for compute capability {built_for} ({header.get('gpu_name')}), this GPU is "
            f"{gpu.get('name')} ({gpu.get('compute_capability')}); {rebuild}"
        )
