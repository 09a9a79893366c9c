"""Whole data sets on a real local Ray (2 CPUs): the same outputs as the serial CLI, error rows,
stem collisions, a killed driver resumed with no duplicates and no partial files."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason='needs the ray extra: pip install "unioncam[ray]"')

from unioncam.cli import main  # noqa: E402

SKIMAGE = ("astronaut.png", "chelsea.png", "coffee.png", "horse.png", "motorcycle_left.png", "rocket.jpg")
# A budget keeps each explanation well under a second; the settings are the same on both paths.
BUDGET = ["--max-passes", "32"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """6 real photos, one corrupt file, and a second ``chelsea.png`` in a subfolder (a stem collision)."""
    import skimage

    root = tmp_path_factory.mktemp("dataset")
    data = Path(skimage.__file__).parent / "data"
    for name in SKIMAGE:
        shutil.copy(data / name, root / name)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    (root / "sub").mkdir()
    shutil.copy(data / "chelsea.png", root / "sub" / "chelsea.png")
    return root


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray cluster (2 CPUs) for the in-process runs, as a user's own ``ray.init`` would give:
    explain_dataset uses a running cluster and leaves it running (starting one costs seconds per run).
    The killed-driver test runs the CLI as its own process, which starts and stops its own."""
    import logging

    import ray

    # address="local": a new instance, never one that a file in Ray's temp folder names.
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    yield
    ray.shutdown()


def _outputs(folder: Path) -> dict:
    return {p.name: p for p in folder.iterdir() if not p.name.startswith("index") and p.name != ".unioncam-written"}


def test_ray_equals_serial_with_error_rows_and_collisions(dataset, lite0_artifacts, ray_local, tmp_path):
    import pandas as pd

    args = [str(dataset), str(dataset / "sub"), "--artifacts", str(lite0_artifacts), *BUDGET, "--no-progress"]
    assert main(["explain", *args, "--out", str(tmp_path / "serial")]) == 1  # the corrupt file fails
    assert main(["explain", *args, "--workers", "2", "--out", str(tmp_path / "ray")]) == 1

    index = pd.read_parquet(tmp_path / "ray" / "index.parquet")
    assert len(index) == 8 and index["stem"].is_unique
    bad = index[index["status"] == "error"]
    assert list(bad["image"]) == [str(dataset / "broken.png")]
    assert "cannot decode" in bad["error"].iloc[0] and "\n" not in bad["error"].iloc[0]
    ok = index[index["status"] == "ok"]
    assert len(ok) == 7 and {"chelsea.png", "chelsea.png-2"} <= set(ok["stem"])
    assert (ok["masked_passes"] <= 32 + 3).all() and ok["worker"].nunique() >= 1

    serial, ray = _outputs(tmp_path / "serial"), _outputs(tmp_path / "ray")
    assert set(serial) == set(ray) and len(serial) == 7 * 3
    for name in serial:
        if name.endswith("_cam.npy"):
            a, b = np.load(serial[name]), np.load(ray[name])
            assert a.shape == b.shape == (224, 224) and np.abs(a - b).max() <= 1e-6, name
        elif name.endswith(".json"):
            a, b = json.loads(serial[name].read_text()), json.loads(ray[name].read_text())
            for key in ("image", "class_idx", "selected", "max_passes", "layer"):
                assert a[key] == b[key], (name, key)
            for key in ("beta_denoising", "beta_region", "beta_de_region", "score"):
                assert abs(a[key] - b[key]) <= 1e-6, (name, key)
            row = ok[ok["json"].str.endswith(name)].iloc[0]
            assert row["class_idx"] == a["class_idx"] and row["selected"] == a["selected"]


def test_killed_driver_resumes_without_duplicates_or_partial_files(dataset, lite0_artifacts, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "unioncam", "explain", str(dataset), str(dataset / "sub"), "--artifacts",
           str(lite0_artifacts), "--workers", "2", *BUDGET, "--out", str(out), "--no-progress"]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(out.glob("*.json"))) < 2:
        assert driver.poll() is None, driver.communicate()
        time.sleep(0.2)
    finished_before = {p.name for p in out.glob("*.json")}
    assert 2 <= len(finished_before) < 7, "the run finished before it could be killed"
    os.kill(driver.pid, signal.SIGKILL)  # the driver only
    driver.wait()
    time.sleep(2)
    try:  # Ray's agents outlive a SIGKILLed driver (README: `ray stop`); they are not ours to leak
        os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # the corrupt file still fails, the others complete
    assert "from a previous run" in done.stderr
    # Ray's own lines (its core worker's notes, the token notice) stay behind --verbose.
    foreign = [ln for ln in done.stderr.splitlines()
               if ln.strip() and not ln.startswith("unioncam:") and " images explained (" not in ln]
    assert foreign == [], foreign
    import pandas as pd

    index = pd.read_parquet(out / "index.parquet")
    assert len(index) == 8 and index["stem"].is_unique and (index["status"] == "ok").sum() == 7
    names = sorted(p.name for p in out.iterdir() if p.name != ".unioncam-written")  # the ledger of what we wrote
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")], names
    stems = set(index[index["status"] == "ok"]["stem"])
    assert names == sorted([f"{s}{x}" for s in stems for x in (".json", ".png", "_cam.npy")] + ["index.parquet"])
    for s in stems:
        cam = np.load(out / f"{s}_cam.npy")
        assert cam.dtype == np.float32 and cam.shape == (224, 224) and np.isfinite(cam).all()
        assert json.loads((out / f"{s}.json").read_text())["max_passes"] == 32
    # The images finished before the kill were not explained again.
    for name in finished_before:
        assert index[index["json"].str.endswith(name)]["worker"].iloc[0] == ""


def test_changed_settings_are_not_reused(dataset, lite0_artifacts, ray_local, tmp_path):
    """A resumed run reuses an output only if it was made with the same settings."""
    from unioncam.distributed import explain_dataset

    one = [dataset / "coffee.png"]
    first = explain_dataset(one, lite0_artifacts, tmp_path, workers=1, progress=False, max_passes=16)
    again = explain_dataset(one, lite0_artifacts, tmp_path, workers=1, progress=False, max_passes=16)
    other = explain_dataset(one, lite0_artifacts, tmp_path, workers=1, progress=False, max_passes=24)
    assert (first["skipped"], again["skipped"], other["skipped"]) == (0, 1, 0)
    assert json.loads((tmp_path / "coffee.json").read_text())["max_passes"] == 24


def test_without_ray_the_error_names_the_extra(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["ray"] = None  # as if the extra were not installed
        from unioncam.cli import main
        sys.exit(main(["explain", "--workers", "2", "--out", {str(tmp_path)!r}]))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ['unioncam: error: explaining on Ray needs the ray extra: '
                                             'pip install "unioncam[ray]"']


def test_an_address_nothing_answers_fails_fast_with_what_to_check(tmp_path, capsys):
    """--ray-address 127.0.0.1:1 retried forever before; now one line within the timeout, exit 1."""
    import time as _time

    from unioncam import BackendUnavailableError, UsageError
    from unioncam.distributed.dataset import check_reachable

    t = _time.perf_counter()
    with pytest.raises(BackendUnavailableError, match="cannot reach a Ray cluster at 127.0.0.1:1.*ray start --head"):
        check_reachable("127.0.0.1:1", timeout=5)
    assert _time.perf_counter() - t < 10
    with pytest.raises(UsageError, match="HOST:PORT"):
        check_reachable("nowhere")
    check_reachable("auto")  # Ray's own lookup


def test_a_symlink_loop_among_the_inputs_is_its_error_row(dataset, lite0_artifacts, ray_local, tmp_path):
    """A loop among a Ray run's inputs is that input's error row; the other images are explained
    (it aborted the whole run, issue 31)."""
    import pandas as pd

    from unioncam.distributed import explain_dataset

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(dataset / "coffee.png", inputs / "coffee.png")
    (inputs / "loop.png").symlink_to(inputs / "loop.png")
    summary = explain_dataset([inputs], lite0_artifacts, tmp_path / "out", workers=1, progress=False,
                              max_passes=8)
    index = pd.read_parquet(tmp_path / "out" / "index.parquet").set_index("stem")
    assert summary["ok"] == 1 and summary["error"] == 1
    assert index.loc["coffee", "status"] == "ok" and index.loc["loop", "status"] == "error"
    assert "loop" in index.loc["loop", "error"]


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_sigterm_and_ctrl_c_stop_a_ray_run_quietly_and_it_resumes(dataset, lite0_artifacts, tmp_path, sig, code, word):
    """SIGTERM as Ctrl-C: every ``finally`` runs (Ray is shut down), one line of ours and none of
    Ray's C++ stack or its killed-actor notes, exit 143 (130 for Ctrl-C); the same command resumes."""
    out = tmp_path / "out"
    photos = [str(dataset / n) for n in ("astronaut.png", "chelsea.png", "coffee.png", "horse.png")]
    # 64 passes: the three photos after the first take seconds, so the signal lands mid-run.
    cmd = [sys.executable, "-m", "unioncam", "explain", *photos, "--artifacts", str(lite0_artifacts), "--workers", "1",
           "--max-passes", "64", "--out", str(out), "--no-progress"]
    # Ctrl-C's default restored in the child: a suite started in the background (nohup, `cmd &`)
    # passes SIGINT down ignored, and Python keeps an ignored SIGINT ignored, as a shell's job expects.
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("*.json")) and driver.poll() is None:
        time.sleep(0.1)
    assert driver.poll() is None, "the run finished before the signal"
    driver.send_signal(sig)
    _, err = driver.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert driver.returncode == code, err
    assert lines == [f"unioncam: {word}; the same command resumes the run"], err
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "images explained" in done.stderr, done.stderr
    assert len(list(out.glob("*.json"))) == 4
