"""Every check of user input, once, for every path (eager reference, runtime, exporter, CLI), with
the same messages; split by what it checks:

- :mod:`.numbers`: theta, counts, ports, durations, sizes, batch sizes, threads, budgets, ceilings;
- :mod:`.runtime_options`: precisions, ONNX Runtime and CUDA provider options, methods, the device;
- :mod:`.arrays`: images and class requests;
- :mod:`.files`: a weights checkpoint.

Torch-free: torch tensors are recognised without importing torch. ``from unioncam.validation
import check_theta`` works as before.
"""
from __future__ import annotations

from .numbers import (  # noqa: F401
    check_theta,
    check_positive_int,
    MAX_DURATION_S,
    MAX_ITERATIONS,
    check_count,
    MAX_PORT,
    check_port,
    check_duration,
    check_gpus_per_worker,
    check_steps,
    MIN_OPSET,
    check_opset,
    MAX_INPUT_SIDE,
    check_input_size,
    check_batch_size,
    THREADS_PER_CORE,
    PASS_PLANES,
    machine_memory,
    check_threads,
    MAX_GRAPH_BATCH,
    check_batch_ceiling,
    check_max_passes,
)
from .runtime_options import (  # noqa: F401
    PRECISION_GRAPH,
    PRECISIONS,
    GRAPH_PRECISIONS,
    BLACK_SCORE_TOLERANCE,
    check_precision,
    ORT_OPTIONS,
    ORT_FLAG_KEYS,
    check_ort_options,
    PROVIDER_OPTIONS,
    check_provider_options,
    check_method,
    check_torch_device,
)
from .arrays import (  # noqa: F401
    check_class_option,
    check_images,
    check_classes,
)
from .files import (  # noqa: F401
    check_weights_file,
)
