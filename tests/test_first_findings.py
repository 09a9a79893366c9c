"""The hostile run's and the newcomer's findings of issues 31 and 32, each as the rule it breaks:
every wait has an end, every read a bound, every usage error is exit 2 before any model loads,
every input that can fail gets its own typed one-line error, and no noise the README says is hidden."""
from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from unioncam.cli import main
from unioncam.errors import BackendUnavailableError, ImageReadError, InvalidInputError, WeightsError

TINY = ["--model", "factories:tiny", "--input-size", "32", "--no-progress"]
TESTS = Path(__file__).parent


def cli(*argv, check_torch: bool = False, env=None, **kw) -> subprocess.CompletedProcess:
    """``unioncam ARGV`` in a fresh interpreter; with ``check_torch`` it prints whether torch was imported."""
    code = ("import sys; from unioncam.cli import main; rc = main(sys.argv[1:]); "
            + ("print('TORCH', 'torch' in sys.modules); " if check_torch else "") + "sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}, **kw)


# --- every wait has an end ---------------------------------------------------------------------

def test_a_port_that_accepts_and_never_answers_fails_within_the_bound():
    from unioncam.distributed.dataset import check_reachable

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts (the kernel's backlog) and never answers
    port = server.getsockname()[1]
    result = []

    def probe():
        try:
            check_reachable(f"127.0.0.1:{port}", timeout=2.0)
            result.append(None)
        except BackendUnavailableError as e:
            result.append(e)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(30)
    server.close()
    assert not t.is_alive(), "the address check waited past its deadline"
    assert isinstance(result[0], BackendUnavailableError) and f"127.0.0.1:{port}" in str(result[0])


def test_a_port_that_answers_but_not_as_grpc_is_refused():
    from unioncam.distributed.dataset import check_reachable

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer():
        conn, _ = server.accept()
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    with pytest.raises(BackendUnavailableError, match="not as a Ray"):
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}", timeout=5.0)
    server.close()


def test_ray_address_auto_without_a_cluster_is_one_line(tmp_path):
    pytest.importorskip("ray")
    import psutil

    # "auto" joins any Ray that runs on this machine (Ray finds its GCS among the processes).
    if any("gcs_server" in (p.info["name"] or "") for p in psutil.process_iter(["name"])):
        pytest.skip("a Ray cluster runs on this machine, so 'auto' finds one")
    src = tmp_path / "a.png"
    cv2.imwrite(str(src), np.zeros((8, 8, 3), np.uint8))
    proc = cli("explain", src, "--out", tmp_path / "out", *TINY, "--ray-address", "auto",
               env={"RAY_ADDRESS": "", "RAY_TMPDIR": str(tmp_path)}, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "unexpected" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "ray start --head" in proc.stderr


# --- every read has a bound ----------------------------------------------------------------------

def test_a_sparse_file_behind_a_png_signature_is_refused_unread(tmp_path):
    big = tmp_path / "huge.png"
    with open(big, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(2 << 30)  # 2 GiB, sparse
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from unioncam.image_io import read_rgb

    with pytest.raises(ImageReadError, match="huge.png"):
        read_rgb(big)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 256, f"reading the refused file grew the peak memory by {grown_mb:.0f} MB"


def test_a_file_larger_than_its_header_allows_is_refused_unread(tmp_path):
    from unioncam.image_io import METADATA_ROOM, read_rgb

    path = tmp_path / "tiny_but_long.png"
    ok, buf = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    with open(path, "wb") as f:
        f.write(buf.tobytes())
        f.truncate(METADATA_ROOM + 10_000)  # 16 pixels cannot need that much
    with pytest.raises(ImageReadError, match="more than any image of its size"):
        read_rgb(path)


def test_running_out_of_memory_is_that_images_typed_error(tmp_path):
    """Under an address-space limit, a file too large for the memory left is an ImageReadError naming it."""
    big = tmp_path / "big.tif"
    with open(big, "wb") as f:
        f.write(b"NOTANIMAGEHEADER")
        f.truncate(3 << 30)
    code = ("import resource, sys\n"
            "from unioncam.image_io import read_rgb\n"
            "from unioncam.errors import ImageReadError\n"
            "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            f"try:\n    read_rgb({str(big)!r})\nexcept ImageReadError as e:\n    print('TYPED', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "TYPED" in proc.stdout and "big.tif" in proc.stdout, proc.stdout + proc.stderr


# --- usage errors: exit 2, before any model loads ----------------------------------------------------

@pytest.mark.parametrize("argv, says", [
    (["explain", "--provider-options", "gpu_mem_limit=1"], "'cpu' takes none"),
    (["explain", "--reshape", "tokens:0:0x0"], "--reshape"),
    (["explain", "--reshape", "tokens:-1"], "--reshape"),
    (["explain", "--reshape", "bhwc:1"], "--reshape"),
    (["explain", "--reshape", ""], "--reshape"),
    (["explain", "--ray-address", "127.0.0.1:99999"], "65535"),
    (["explain", "--class", "crane"], "517"),
    (["export", "--out", "X", "--chunk", "0"], "--chunk"),
    (["export", "--out", "X", "--theta", "nan"], "--theta"),
    (["export", "--out", "X", "--max-batch", "-5"], "--max-batch"),
    (["export", "--out", "X", "--input-size", "0"], "--input-size"),
    (["export", "--out", "X", "--reshape", "bhwc:1"], "--reshape"),
    (["eval", "IMG", "--steps", "100000000"], "--steps"),
    (["bench", "--duration", "inf"], "--duration"),
    (["bench", "--iterations", "100000000"], "--iterations"),
])
def test_usage_errors_exit_2_before_any_model_loads(tmp_path, argv, says):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.zeros((8, 8, 3), np.uint8))
    argv = [str(img) if a == "IMG" else str(tmp_path / "x") if a == "X" else a for a in argv]
    proc = cli(*argv, check_torch=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "unexpected" not in proc.stderr, proc.stderr
    assert "TORCH False" in proc.stdout, f"torch was imported before the usage error: {argv}"


def test_artifacts_with_a_layer_or_the_eager_backend_is_usage(tiny_art, capsys):
    for extra in (["--layer", "features.3"], ["--backend", "torch"], ["--reshape", "tokens"]):
        assert main(["explain", "--artifacts", str(tiny_art[1]), *extra]) == 2, extra
        assert "--artifacts" in capsys.readouterr().err


def test_out_naming_a_file_or_below_one_says_what_to_do(tmp_path, capsys):
    f = tmp_path / "out.txt"
    f.write_text("mine")
    for out in (f, f / "sub"):
        for cmd in (["explain", *TINY], ["export", "--end-to-end"], ["export"]):
            assert main([*cmd, "--out", str(out)]) == 2, (cmd, out)
            err = capsys.readouterr().err
            assert "file" in err and "--out" in err and "unexpected" not in err, err
    assert f.read_text() == "mine"


def test_ambiguous_class_names_name_every_class():
    from unioncam.classes import class_index
    from unioncam.errors import UsageError

    for name in ("crane", "cardigan"):
        with pytest.raises(UsageError) as e:
            class_index(name)
        assert str(e.value).count("(") >= 2
    assert class_index("tabby") == 281


# --- one typed error per cause ----------------------------------------------------------------------

def test_weights_that_are_no_checkpoint(tmp_path):
    import torch

    from unioncam.models.state_dicts import read_state_dict

    with pytest.raises(WeightsError, match="not a regular file"):
        read_state_dict("/dev/zero")
    with pytest.raises(WeightsError, match="is a folder"):
        read_state_dict(tmp_path)
    pickled = tmp_path / "model.pt"
    torch.save({"layer": torch.nn.Linear(2, 2)}, pickled)  # a pickled module, not a state_dict
    with pytest.raises(WeightsError) as e:
        read_state_dict(pickled)
    assert "weights_only" not in str(e.value) and "state_dict" in str(e.value)


def test_a_path_like_model_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "net.py").write_text("def build():\n    raise SystemExit\n")
    assert main(["explain", "--model", f"{tmp_path}/net.py:build", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "not a module name" in err and "unexpected" not in err, err


def test_an_unknown_model_lists_every_way_to_name_one(capsys):
    assert main(["explain", "--model", "nope"]) == 2  # the option's fault: a usage error
    err = capsys.readouterr().err
    assert "pkg.module:factory" in err and "timm:" in err and "torchvision:" in err


def test_bench_onnx_with_a_damaged_report_beside_it(tmp_path, capsys):
    graph = tmp_path / "unioncam.onnx"
    graph.write_bytes(b"\x08\x07")
    for text in ("{not json", '{"model": "x"}', '{"input_size": "big"}'):
        (tmp_path / "unioncam.json").write_text(text)
        assert main(["bench", "--onnx", str(graph), "--no-ceiling", "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert "unioncam.json" in err and "unexpected" not in err, err


def test_fifos_and_broken_links_in_a_folder_are_error_rows(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "good.png"), (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    os.mkfifo(folder / "pipe.png")
    (folder / "dangling.jpg").symlink_to(folder / "gone.jpg")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    proc = cli("explain", folder, "--out", tmp_path / "out", *TINY)
    assert proc.returncode == 1, proc.stderr
    for name in ("pipe.png", "dangling.jpg", "loop.png"):
        assert name in proc.stderr, (name, proc.stderr)
    assert (tmp_path / "out" / "good.json").is_file()


def test_a_reshape_that_fits_no_grid_is_refused_before_export_and_never_cached(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UNIONCAM_CACHE", str(tmp_path / "cache"))
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.zeros((32, 32, 3), np.uint8))
    assert main(["explain", str(img), *TINY, "--reshape", "bhwc", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "(2, 6, 8, 8)" in err and "no grid" in err, err
    assert not any((tmp_path / "cache").glob("*/manifest.json")), "a failed export was cached"


def test_a_token_grid_that_is_no_grid_over_the_input_is_refused(tmp_path):
    sys.path.insert(0, str(TESTS))
    from zoo_vit import build

    from unioncam.errors import InvalidInputError as Bad
    from unioncam.export import export

    model, layer, _ = build("vit")
    with pytest.raises(Bad, match="1x64"):
        export(model, layer, tmp_path / "a", input_size=(32, 32), reshape="tokens:1:1x64")
    assert not (tmp_path / "a").exists()


def test_session_options_that_ort_would_ignore_are_refused():
    from unioncam.validation import check_ort_options

    with pytest.raises(InvalidInputError, match="flag"):
        check_ort_options("session.intra_op.allow_spinning=banana")
    assert check_ort_options("session.intra_op.allow_spinning=0") == {"session.intra_op.allow_spinning": "0"}


# --- no noise, no waits for small things -------------------------------------------------------

def test_bench_list_imports_no_torch():
    proc = cli("bench", "--list", check_torch=True)
    assert proc.returncode == 0 and "TORCH False" in proc.stdout, proc.stdout + proc.stderr


def test_int8_export_says_nothing_of_the_quantisers_advice(tiny_art, tmp_path, capfd):
    import shutil

    from tiny import tiny_images
    from unioncam.export import add_precision

    d = tmp_path / "art"
    shutil.copytree(tiny_art[1], d)
    add_precision(d, "int8", calibration_images=tiny_images(2, seed=8).numpy())
    out, err = capfd.readouterr()
    assert "pre-processing" not in out + err and "WARNING:root" not in out + err


def test_progress_to_a_file_leaves_no_blank_lines(tmp_path):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8))
    log = tmp_path / "stderr.txt"
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-c", "import sys; from unioncam.cli import main; sys.exit(main(sys.argv[1:]))",
                               "explain", str(img), "--out", str(tmp_path / "o"), "--model", "factories:tiny",
                               "--input-size", "32"], stderr=f, stdout=subprocess.PIPE, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(TESTS)})
    assert proc.returncode == 0
    text = log.read_text()
    assert not [ln for ln in text.replace("\r", "\n").split("\n")[:-1] if not ln.strip()], repr(text)
    assert "\r" not in text
    assert json.loads((tmp_path / "o" / "a.json").read_text())["plain"] is False


@pytest.mark.parametrize("layout", ["float16", "planar"])
def test_tiff_layouts_opencv_lacks_are_read_as_written(tmp_path, layout):
    """float16 samples and planar channels: OpenCV decodes nothing; the pixels come back as written."""
    tifffile = pytest.importorskip("tifffile")
    from unioncam.image_io import read_rgb

    rgb = np.random.default_rng(2).random((20, 24, 3)).astype(np.float32)
    path = tmp_path / f"{layout}.tif"
    if layout == "float16":
        tifffile.imwrite(path, rgb.astype(np.float16))
    else:
        tifffile.imwrite(path, rgb, planarconfig="separate")
    got = read_rgb(path)
    want = (rgb.astype(np.float16).astype(np.float32) * 255).round().astype(np.uint8)
    assert got.shape == (20, 24, 3) and np.abs(got.astype(int) - want.astype(int)).max() <= 1
