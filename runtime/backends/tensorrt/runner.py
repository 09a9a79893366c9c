"""TensorRT backend: runs the engines ``unioncam export --engine`` built, through the standard
``tensorrt`` Python API (``tensorrt_rtx`` where that is the module installed).

The engine comes from an :class:`~unioncam.runtime.loaders.EngineFromFile` loader, which refuses a
stale or foreign engine before deserialising it. Device buffers come from
:mod:`.device_memory` (cuda-python by default; torch only when asked or already imported) and are
freed on ``deactivate()``. An execution context is not thread-safe: calls are serialised with a lock.
"""
from __future__ import annotations

import threading

import numpy as np

from unioncam.errors import BackendUnavailableError, InvalidInputError

from ..base import Runner
from .device_memory import BufferPool, cuda_memory
from .loader import EngineFromFile


class _Resident:
    """An input the explainer reuses across calls (the image of all its masked passes)."""

    def __init__(self, array: np.ndarray):
        self.array = np.ascontiguousarray(array)
        self.shape, self.dtype, self.nbytes = self.array.shape, self.array.dtype, self.array.nbytes


class TensorRTRunner(Runner):
    """One engine (``gradient.engine`` or ``masked_forward.engine``) from ``engine_loader``.

    Args:
        engine_loader: an :class:`EngineFromFile` (its header gives the profile's ``max_batch``).
        buffers: ``"auto"``, ``"cuda-python"`` or ``"torch"`` (see :func:`.device_memory.cuda_memory`).
    """

    def __init__(self, engine_loader: EngineFromFile, *, buffers: str = "auto"):
        super().__init__()
        self.loader = engine_loader
        self.trt = engine_loader.trt
        self.name = f"tensorrt:{getattr(engine_loader, 'path', 'engine')}"
        self.memory = cuda_memory(buffers)  # fails at construction, not at the first call
        self.max_batch = int(engine_loader.header.get("max_batch", 1))
        self._lock = threading.Lock()
        self.pool: BufferPool | None = None

    def activate_impl(self) -> None:
        trt = self.trt
        self.engine = self.loader()
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.inputs = {}
        for n in self.input_names:
            dt = "int64" if self.engine.get_tensor_dtype(n) == trt.DataType.INT64 else "float32"
            self.inputs[n] = (dt, tuple(None if d < 0 else d for d in self.engine.get_tensor_shape(n)))
        self.pool = BufferPool(self.memory)
        self._resident: dict[str, _Resident | None] = {}

    def deactivate_impl(self) -> None:
        try:
            if self.pool is not None:
                self.pool.free_all()
        finally:
            self.pool, self._resident = None, {}
            self.context = self.engine = None

    def to_device_impl(self, array: np.ndarray):
        return _Resident(array)

    def infer_impl(self, feeds: dict) -> dict[str, np.ndarray]:
        # The explainer chunks to max_batch; this guards direct callers.
        n = feeds["maps"].shape[1] if "maps" in feeds else feeds["image"].shape[0]
        if n > self.max_batch:
            raise InvalidInputError(f"{self.name}: {n} exceeds the engine's profile ({self.max_batch}); split the call")
        with self._lock:
            for name, value in feeds.items():
                self.context.set_input_shape(name, tuple(value.shape))
                buf, new = self.pool.get(name, value.nbytes)
                # A resident input already in this buffer is not copied again.
                if new or not (isinstance(value, _Resident) and self._resident.get(name) is value):
                    buf.upload(value.array if isinstance(value, _Resident) else value)
                    self._resident[name] = value if isinstance(value, _Resident) else None
                self.context.set_tensor_address(name, buf.ptr)
            outs = {}
            for name in self.output_names:
                arr = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=np.float32)
                outs[name] = arr
                self.context.set_tensor_address(name, self.pool.get(name, arr.nbytes)[0].ptr)
            if not self.context.execute_async_v3(self.memory.stream()):
                raise BackendUnavailableError(f"{self.name}: TensorRT execution failed")
            self.memory.synchronize()
            for name, arr in outs.items():
                self.pool.buffers[name].download(arr)
        return outs
