"""The ONNX Runtime backend's lazy loader (after Polygraphy's ``SessionFromOnnx``): cheap to create,
it checks what can be checked at once and loads when called. A runner takes a loader, so the way a
session is made is separate from the way it is run."""
from __future__ import annotations

import os
from pathlib import Path

from unioncam.errors import ArtifactError, BackendUnavailableError
from unioncam.validation import check_ort_options, check_provider_options

from ...devices import ORT_PROVIDERS

#: ``opt=`` values -> ONNX Runtime's graph optimisation levels (names, so no import at module load).
_OPT_LEVELS_NAMES = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                     "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}

def providers_for(device: str) -> list[str]:
    """Execution providers for a device, or BackendUnavailableError listing what this onnxruntime has."""
    import onnxruntime as ort

    wanted = ORT_PROVIDERS.get(device)
    if wanted is None:
        raise BackendUnavailableError(f"unknown device {device!r} for onnxruntime; choose one of {tuple(ORT_PROVIDERS)}")
    available = ort.get_available_providers()
    if wanted[0] not in available:
        raise BackendUnavailableError(
            f"onnxruntime has no {wanted[0]} here (available: {', '.join(available)}); "
            + ("install onnxruntime-gpu on a CUDA machine" if device != "cpu" else "reinstall onnxruntime")
        )
    return [p for p in wanted if p in available]


class SessionFromOnnx:
    """``SessionFromOnnx(path, device=...)()`` -> ``onnxruntime.InferenceSession``.

    The device's providers are checked at construction, so an unavailable device fails before any
    file is read.
    """

    def __init__(self, path: str | Path, *, device: str = "cpu", threads: int | None = None,
                 options: dict | str | None = None, provider_options: dict | str | None = None, tf32: bool = False):
        """``provider_options``: the CUDA provider's (:func:`unioncam.validation.check_provider_options`);
        ``tf32``: TensorFloat-32 convolutions on a GPU (off by default: the spec's tolerances)."""
        self.path = Path(path)
        self.device = device
        self.providers = providers_for(device)
        self.threads = threads
        self.options = check_ort_options(options)
        self.provider_options = check_provider_options(provider_options, device)
        if device == "cpu" and tf32:
            raise BackendUnavailableError("TF32 applies to device 'cuda' (or 'tensorrt'); device 'cpu' takes none")
        self.tf32 = bool(tf32)

    def provider_list(self) -> list:
        """The providers with their options: the CUDA provider gets ``use_tf32`` and the user's options."""
        cuda = {"use_tf32": "1" if self.tf32 else "0", **self.provider_options}
        return [(p, cuda) if p == "CUDAExecutionProvider" else p for p in self.providers]

    def __call__(self):
        import onnxruntime as ort

        so = ort.SessionOptions()
        opts = dict(self.options)
        level = _OPT_LEVELS_NAMES[opts.pop("opt", "all")]
        if not hasattr(ort.GraphOptimizationLevel, level):
            raise BackendUnavailableError(f"this onnxruntime ({ort.__version__}) has no {level}; upgrade onnxruntime")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        so.intra_op_num_threads = self.threads or (os.cpu_count() or 1)
        so.log_severity_level = 3
        if "mem_pattern" in opts:
            so.enable_mem_pattern = opts.pop("mem_pattern") == "1"
        if "arena" in opts:
            so.enable_cpu_mem_arena = opts.pop("arena") == "1"
        if "spin" in opts:
            so.add_session_config_entry("session.intra_op.allow_spinning", opts.pop("spin"))
        for key, value in opts.items():
            so.add_session_config_entry(key, value)
        try:
            return ort.InferenceSession(str(self.path), so, providers=self.provider_list())
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ArtifactError(f"onnxruntime cannot load {self.path}: {str(e).splitlines()[0]}; re-export the model") from None
