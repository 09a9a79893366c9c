"""The TensorRT backend's lazy loader (after Polygraphy's ``EngineFromBytes``): the engine file's
header is checked at construction, the engine deserialised when called."""
from __future__ import annotations

from pathlib import Path

from unioncam.errors import ArtifactError, BackendUnavailableError

from .engine_file import check_header, current_gpu, import_tensorrt, read_engine


class EngineFromFile:
    """``EngineFromFile(path, onnx_sha256=...)()`` -> a deserialised TensorRT ``ICudaEngine``.

    The engine's header is checked at construction (cheap: the header only): a stale engine (built
    from another ONNX), or one built by another TensorRT version or for another GPU, is refused with
    the command that rebuilds it. ``header`` holds the profile's ``max_batch``.
    """

    def __init__(self, path: str | Path, *, onnx_sha256: str):
        self.path = Path(path)
        self.trt, self.flavour = import_tensorrt()
        if self.trt is None:
            raise BackendUnavailableError(
                "backend 'tensorrt' needs NVIDIA's tensorrt Python package on a CUDA machine; available here: onnxruntime"
            )
        self.header, _ = read_engine(self.path, header_only=True)
        gpu = current_gpu()
        if gpu is None:
            # Without the GPU's identity the compute-capability check cannot run; an engine has no
            # use without a GPU anyway, so say so here instead of skipping the check.
            raise BackendUnavailableError(
                "a TensorRT engine runs on an NVIDIA GPU, and none was found (or cuda-python is missing: "
                "pip install cuda-python); use backend 'onnxruntime' on this machine")
        check_header(self.path, self.header, onnx_sha256=onnx_sha256, trt_version=str(self.trt.__version__), gpu=gpu)
        self.logger = self.runtime = None

    def __call__(self):
        trt = self.trt
        _, blob = read_engine(self.path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        # Held by the loader: a TensorRT runtime must outlive the engines it deserialised.
        self.runtime = trt.Runtime(self.logger)
        engine = self.runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise ArtifactError(f"TensorRT could not deserialize {self.path}; rebuild it with `unioncam export ... --engine`")
        return engine
