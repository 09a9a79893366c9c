"""Numbers a user gives: theta, counts, ports, durations, sizes, batch sizes, threads, pass budgets,
and the ceilings they are held to."""
from __future__ import annotations

import math
import os

import numpy as np

from ..errors import InvalidInputError, InvalidTypeError, UsageError


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
