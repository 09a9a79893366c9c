"""Runners the Polygraphy way (state checked by the base class), device buffers that are freed,
and the torch-free boundary of the runtime: every module imports with torch blocked."""
import pkgutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tiny import tiny_images
from unioncam import BackendUnavailableError, RunnerStateError
from unioncam.runtime import Explainer
from unioncam.runtime.backends.tensorrt.device_memory import BufferPool, DeviceBuffer, cuda_memory
from unioncam.runtime.backends.onnxruntime.runner import OnnxRuntimeRunner
from unioncam.runtime.backends.onnxruntime.loader import SessionFromOnnx

BLOCK_TORCH = """
import builtins, sys
real_import = builtins.__import__
def guard(name, *a, **k):
    if name == "torch" or name.startswith("torch.") or name == "cupy":
        raise ImportError(name + " is blocked in this test")
    return real_import(name, *a, **k)
builtins.__import__ = guard
"""


def runtime_modules():
    import unioncam.runtime

    names = ["unioncam.runtime", "unioncam.algebra", "unioncam.validation", "unioncam.explanation",
             "unioncam.artifacts", "unioncam.runtime.backends.tensorrt.engine_file", "unioncam.errors"]
    for info in pkgutil.walk_packages(unioncam.runtime.__path__, "unioncam.runtime."):
        names.append(info.name)
    return names


def test_every_runtime_module_imports_without_torch():
    names = runtime_modules()
    assert "unioncam.runtime.backends.tensorrt.runner" in names and "unioncam.runtime.backends.onnxruntime.loader" in names
    code = BLOCK_TORCH + textwrap.dedent(f"""
        import importlib
        for name in {names!r}:
            importlib.import_module(name)
        bad = [m for m in sys.modules if m == "torch" or m.startswith("torch.") or m.startswith("unioncam.export")]
        assert not bad, bad
        print("ok", len({names!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr


def test_runtime_source_never_imports_the_exporter_or_torch():
    import re
    from pathlib import Path

    import unioncam.runtime

    for path in Path(unioncam.runtime.__file__).parent.rglob("*.py"):
        text = path.read_text()
        assert "unioncam.export" not in text, path
        assert not re.search(r"^\s*(import torch|from torch)", text, re.M), path


def test_runner_state_is_checked_by_the_base(tiny_art):
    _, art = tiny_art
    runner = OnnxRuntimeRunner(SessionFromOnnx(art / "gradient.onnx"))
    feeds = {"image": tiny_images(1).numpy(), "class_idx": np.array([-1], np.int64)}
    with pytest.raises(RunnerStateError, match="inactive runner; call activate"):
        runner.infer(feeds)
    with runner:
        assert runner.is_active
        out = runner.infer(feeds)
        assert out["logits"].shape == (1, 5)
    assert not runner.is_active and runner.session is None
    with pytest.raises(RunnerStateError, match="after deactivate"):
        runner.infer(feeds)
    runner.deactivate()  # idempotent


def test_closed_explainer_says_so(tiny_art):
    _, art = tiny_art
    x = tiny_images(1).numpy()
    with Explainer(art) as ex:
        cam = ex(x).cam
        assert np.isfinite(cam).all()
    with pytest.raises(RunnerStateError, match="was closed"):
        ex(x)
    with pytest.raises(RunnerStateError, match="was closed"):
        ex.probabilities(x)
    ex.close()  # idempotent


class HostBuffer(DeviceBuffer):
    """DeviceBuffer's contract on host memory, recording every allocation and release."""

    log = []

    def _alloc(self, nbytes):
        self.data = np.zeros(nbytes, np.uint8)
        HostBuffer.log.append(("alloc", id(self), nbytes))
        return self.data.ctypes.data

    def _free(self):
        HostBuffer.log.append(("free", id(self), self.nbytes))
        self.data = None

    def _upload(self, host):
        self.data[: host.nbytes] = host.reshape(-1).view(np.uint8)

    def _download(self, host):
        host.reshape(-1).view(np.uint8)[:] = self.data[: host.nbytes]


class HostMemory:
    name = "host"

    def buffer(self, nbytes):
        return HostBuffer(nbytes)


def test_buffer_pool_frees_replaced_and_remaining_buffers():
    HostBuffer.log.clear()
    pool = BufferPool(HostMemory())
    a, new = pool.get("image", 100)
    assert new
    a.upload(np.arange(25, dtype=np.float32))
    out = np.empty(25, np.float32)
    a.download(out)
    np.testing.assert_array_equal(out, np.arange(25))
    assert pool.get("image", 80) == (a, False)  # big enough: reused
    b, new = pool.get("image", 400)  # grows: the old buffer is freed at once
    assert new and a.freed and not b.freed
    c, _ = pool.get("scores", 16)
    pool.free_all()
    assert b.freed and c.freed and pool.buffers == {}
    allocs = [e for e in HostBuffer.log if e[0] == "alloc"]
    frees = [e for e in HostBuffer.log if e[0] == "free"]
    assert len(allocs) == 3 and sorted(f[1] for f in frees) == sorted(x[1] for x in allocs)  # each freed once
    b.free()
    assert len([e for e in HostBuffer.log if e[0] == "free"]) == 3  # free() is idempotent
    with pytest.raises(BackendUnavailableError, match="after free"):
        b.upload(np.zeros(4, np.uint8))


def test_buffers_need_cuda_and_say_what_to_install():
    from unioncam import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match="unknown buffers"):
        cuda_memory("pinned")
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        with pytest.raises(BackendUnavailableError, match="torch"):
            cuda_memory("torch")


def _cuda_free_bytes():
    from unioncam.runtime.backends.tensorrt.device_memory import _cudart

    cudart = _cudart()
    err, free, total = cudart.cudaMemGetInfo()
    return int(free)


@pytest.mark.gpu
def test_gpu_buffers_are_released():
    """On a CUDA machine: 256 MiB allocated and freed through cuda-python return to the driver.
    Skipped only where cuda-python or a GPU is absent; any other failure fails."""
    import importlib.util

    from unioncam.runtime.backends.tensorrt.engine_file import current_gpu

    if importlib.util.find_spec("cuda") is None:
        pytest.skip("cuda-python is not installed here (pip install cuda-python)")
    if current_gpu() is None:
        pytest.skip("no CUDA device here")
    memory = cuda_memory("cuda-python")
    before = _cuda_free_bytes()
    pool = BufferPool(memory)
    buf, _ = pool.get("x", 256 << 20)
    buf.upload(np.ones(1024, np.float32))
    out = np.empty(1024, np.float32)
    buf.download(out)
    assert (out == 1).all()
    assert _cuda_free_bytes() <= before - (256 << 20)
    pool.free_all()
    assert _cuda_free_bytes() >= before - (8 << 20)


def test_bound_buffers_give_the_same_values_and_are_reused(tiny_art):
    """The GPU path (I/O binding, one buffer per input made at the first shape and refilled in place,
    outputs rebound) run on the CPU device: the same scores as plain session.run, call after call,
    and the same buffer objects across calls of one shape."""
    import numpy as np

    from tiny import tiny_images

    _, art = tiny_art
    plain = OnnxRuntimeRunner(SessionFromOnnx(art / "masked_forward.onnx")).activate()
    bound = OnnxRuntimeRunner(SessionFromOnnx(art / "masked_forward.onnx"), bind=True).activate()
    image = tiny_images(1, seed=2).numpy()
    handle = bound.to_device(image)
    g = np.random.default_rng(0)
    first = None
    for step in range(4):
        maps = g.random((1, 5, 8, 8), dtype=np.float32)
        feeds = {"maps": maps, "class_idx": np.array([step % 5], np.int64)}
        want = plain.infer({"image": image, **feeds})["scores"]
        got = bound.infer({"image": handle, **feeds})["scores"]
        np.testing.assert_array_equal(got, want)
        ids = {k: id(v[0]) for k, v in bound._buffers.items()}
        first = first or ids
        assert ids == first  # refilled in place, not reallocated
    np.testing.assert_array_equal(
        bound.infer({"image": handle, "maps": maps[:, :2], "class_idx": np.array([1], np.int64)})["scores"],
        plain.infer({"image": image, "maps": maps[:, :2], "class_idx": np.array([1], np.int64)})["scores"])
    bound.deactivate()
    assert bound._buffers == {}


def test_bound_buffers_never_write_into_the_callers_arrays(tiny_art):
    import numpy as np

    from tiny import tiny_images

    _, art = tiny_art
    bound = OnnxRuntimeRunner(SessionFromOnnx(art / "gradient.onnx"), bind=True).activate()
    images = tiny_images(2, seed=4).numpy()
    before = images.copy()
    for b in range(2):
        bound.infer({"image": images[b:b + 1], "class_idx": np.array([-1], np.int64)})
    np.testing.assert_array_equal(images, before)
