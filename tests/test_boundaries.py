"""Every range check at its boundary: the last valid value is accepted and the first invalid one is
refused (issue 32: an off-by-one that admits its first invalid value survived tests that used only
values far outside each range). Floats step by one ulp (``np.nextafter``)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from unioncam import validation as v
from unioncam.errors import UnionCAMError, UsageError

up = lambda x: float(np.nextafter(x, math.inf))  # noqa: E731
down = lambda x: float(np.nextafter(x, -math.inf))  # noqa: E731


def ok(fn, *args, **kw):
    return fn(*args, **kw)


def bad(fn, *args, **kw):
    with pytest.raises(UnionCAMError):
        fn(*args, **kw)


def test_theta():
    for t in (0.0, 100.0, 50):
        ok(v.check_theta, t)
    for t in (down(0.0), up(100.0), math.nan, math.inf):
        bad(v.check_theta, t)


def test_class_option_and_runtime_classes():
    ok(v.check_class_option, 4, 5)
    ok(v.check_class_option, 0, 5)
    bad(v.check_class_option, 5, 5)
    bad(v.check_class_option, -1, 5)
    assert v.check_classes([0, 4], 2, 5).tolist() == [0, 4]
    bad(v.check_classes, [0, 5], 2, 5)
    bad(v.check_classes, [-1, 4], 2, 5)


def test_class_by_index_text():
    from unioncam.classes import class_index

    assert class_index("0") == 0 and class_index("999") == 999  # the model's count is checked later
    bad(class_index, "-1")


def test_input_size():
    ok(v.check_input_size, [v.MAX_INPUT_SIDE])
    ok(v.check_input_size, [1, 1])
    bad(v.check_input_size, [v.MAX_INPUT_SIDE + 1])
    bad(v.check_input_size, [0])
    bad(v.check_input_size, [32, v.MAX_INPUT_SIDE + 1])


def test_opset():
    import onnx

    newest = onnx.defs.onnx_opset_version()
    ok(v.check_opset, v.MIN_OPSET)
    ok(v.check_opset, newest)
    bad(v.check_opset, v.MIN_OPSET - 1)
    bad(v.check_opset, newest + 1)


def test_thread_ceiling():
    limit = v.THREADS_PER_CORE * (os.cpu_count() or 1)
    ok(v.check_threads, limit)
    ok(v.check_threads, 1)
    bad(v.check_threads, limit + 1)
    bad(v.check_threads, 0)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_batch_ceiling(device):
    size = (224, 224)
    if device == "cpu":
        limit = max(1, min(v.MAX_GRAPH_BATCH, v.machine_memory() // 2 // (v.PASS_PLANES * 224 * 224 * 4)))
    else:
        limit = v.MAX_GRAPH_BATCH
    ok(v.check_batch_ceiling, limit, size, device)
    bad(v.check_batch_ceiling, limit + 1, size, device)
    ok(v.check_batch_size, 1)
    bad(v.check_batch_size, 0)


def test_budget():
    ok(v.check_max_passes, 1)
    assert v.check_max_passes(None) is None
    bad(v.check_max_passes, 0)


def test_bench_counts_and_duration():
    ok(v.check_count, v.MAX_ITERATIONS, "--iterations", v.MAX_ITERATIONS)
    bad(v.check_count, v.MAX_ITERATIONS + 1, "--iterations", v.MAX_ITERATIONS)
    ok(v.check_count, 0, "--warmup", v.MAX_ITERATIONS, minimum=0)
    bad(v.check_count, -1, "--warmup", v.MAX_ITERATIONS, minimum=0)
    ok(v.check_duration, v.MAX_DURATION_S)
    ok(v.check_duration, 5e-324)
    for d in (up(v.MAX_DURATION_S), 0.0, math.inf, math.nan, -1.0):
        bad(v.check_duration, d)


def test_insertion_deletion_steps():
    ok(v.check_steps, 32 * 32, (32, 32))
    ok(v.check_steps, 1, (32, 32))
    bad(v.check_steps, 32 * 32 + 1, (32, 32))
    bad(v.check_steps, 0, (32, 32))


def test_gpus_per_worker():
    for g in (1.0, 5e-324, 2.0, 8):
        ok(v.check_gpus_per_worker, g)
    for g in (up(1.0), 1.5, 0.0, -0.5, math.inf, math.nan):
        bad(v.check_gpus_per_worker, g)


def test_ray_address_ports():
    from unioncam.distributed.dataset import parse_address

    assert parse_address("127.0.0.1:65535") == ("127.0.0.1", 65535)
    assert parse_address("ray://h:1") == ("h", 1)
    for a in ("127.0.0.1:65536", "127.0.0.1:0", "127.0.0.1:99999"):
        with pytest.raises(UsageError):
            parse_address(a)


def test_provider_option_integers():
    ok(v.check_provider_options, "gpu_mem_limit=0", "cuda")
    bad(v.check_provider_options, "gpu_mem_limit=-1", "cuda")
    ok(v.check_provider_options, None, "cpu")
    bad(v.check_provider_options, "gpu_mem_limit=0", "cpu")


def test_manifest_fields(tiny_art, tmp_path):
    """The manifest's bounds: input side up to MAX_INPUT_SIDE, at least 2 classes."""
    import json
    import shutil

    from unioncam import ArtifactError
    from unioncam.artifacts import MANIFEST, Manifest

    for field, good, wrong in (("input_size", [v.MAX_INPUT_SIDE, 1], [v.MAX_INPUT_SIDE + 1, 1]),
                               ("num_classes", 2, 1)):
        d = tmp_path / field
        shutil.copytree(tiny_art[1], d)
        m = json.loads((d / MANIFEST).read_text())
        m[field] = good
        (d / MANIFEST).write_text(json.dumps(m))
        Manifest.load(d)
        m[field] = wrong
        (d / MANIFEST).write_text(json.dumps(m))
        with pytest.raises(ArtifactError, match=field):
            Manifest.load(d)


def test_pixel_and_byte_ceilings(tmp_path, monkeypatch):
    """An image of exactly the pixel ceiling decodes; one pixel more is refused from its header. A file
    of exactly the byte ceiling is read; one byte more is refused unread."""
    import cv2

    from unioncam import image_io
    from unioncam.errors import ImageReadError

    monkeypatch.setattr(image_io, "pixel_ceiling", lambda: 120)
    at, over = tmp_path / "at.png", tmp_path / "over.png"
    cv2.imwrite(str(at), np.zeros((10, 12, 3), np.uint8))
    cv2.imwrite(str(over), np.zeros((11, 11, 3), np.uint8))
    assert image_io.read_rgb(at).shape == (10, 12, 3)
    with pytest.raises(ImageReadError, match="too large"):
        image_io.read_rgb(over)
    size = at.stat().st_size
    limit = 120 * image_io.MAX_STORED_BYTES_PER_PIXEL
    monkeypatch.setattr(image_io, "METADATA_ROOM", size - limit)  # the ceiling is now exactly this file
    assert image_io.read_rgb(at).shape == (10, 12, 3)
    with open(at, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ImageReadError, match="more than any image of its size"):
        image_io.read_rgb(at)


def test_one_graph_status_codes_at_their_boundaries(tiny_e2e):
    """Classes C-1 and -1 run (status 0); C and -2 are status 3. Pixels exactly 0 and 1 run; one ulp
    outside is status 2. The graph checks these itself: a C caller has no Python in front of it."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tiny_e2e[1]), providers=["CPUExecutionProvider"])
    image = np.full((1, 3, 32, 32), 0.5, np.float32)

    def status(img, c):
        return int(sess.run(["status"], {"image": img, "class_idx": np.array([c], np.int64)})[0][0])

    assert [status(image, c) for c in (4, -1, 0)] == [0, 0, 0]
    assert [status(image, c) for c in (5, -2)] == [3, 3]
    edge = image.copy()
    edge[0, 0, 0, :2] = (0.0, 1.0)
    assert status(edge, -1) == 0
    for value in (np.nextafter(np.float32(1), np.float32(2)), np.nextafter(np.float32(0), np.float32(-1))):
        img = image.copy()
        img[0, 0, 0, 0] = value
        assert status(img, -1) == 2


def test_cli_boundaries_are_usage_errors(capsys):
    """Through the CLI: the first invalid value of each bounded option is exit 2, before any model loads."""
    from unioncam.cli import main

    cases = [
        ["explain", "--theta", str(up(100.0))],
        ["explain", "--class", "1000"],
        ["explain", "--threads", str(v.THREADS_PER_CORE * (os.cpu_count() or 1) + 1)],
        ["export", "--out", "/nonexistent/x", "--max-batch", str(v.MAX_GRAPH_BATCH + 1)],
        ["export", "--out", "/nonexistent/x", "--chunk", "0"],
        ["export", "--out", "/nonexistent/x", "--input-size", str(v.MAX_INPUT_SIDE + 1)],
        ["bench", "--iterations", str(v.MAX_ITERATIONS + 1)],
        ["bench", "--duration", "inf"],
        ["explain", "--ray-address", "127.0.0.1:65536"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "unexpected" not in err and "Traceback" not in err, (argv, err)
