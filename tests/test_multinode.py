"""Ray beyond one node (issue 33): a real ``ray.cluster_utils.Cluster`` on 127.0.0.1 (a head with no
CPUs, worker nodes with one CPU each), ``unioncam explain --ray-address`` as its driver. A node lost
mid-run is survived (its worker restarted on the nodes that remain, its image retried: Ray's own
``max_restarts``/``max_task_retries``, bounded); every node lost stops the run within its bound,
exit 1, with a resumable index; the resumed run equals the serial one, nothing missing or duplicated.

Each scenario runs in a process of its own (tests/ray_cluster_run.py): Ray must be imported with
its loopback switch set, which a test process that already imported Ray cannot change."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray", reason='needs the ray extra: pip install "unioncam[ray]"')

from unioncam.cli import main
from unioncam.distributed.dataset import LOOPBACK

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "horse.png", "motorcycle_left.png", "rocket.jpg")
#: Seconds without a finished image, with the nodes gone, before the run stops (the product's default is 60).
GRACE_S = 8


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    import skimage

    root = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        shutil.copy(Path(skimage.__file__).parent / "data" / name, root / name)
    return sorted(root.iterdir())


@pytest.fixture(scope="module")
def serial(photos, lite0_artifacts, tmp_path_factory):
    """The serial CLI's outputs of the same photos and settings: the oracle of every Ray run."""
    out = tmp_path_factory.mktemp("serial")
    assert main(["explain", *map(str, photos), "--artifacts", str(lite0_artifacts), "--max-passes", "32",
                 "--out", str(out), "--no-progress"]) == 0
    return out


def scenario(name: str, out: Path, artifacts: Path, photos) -> tuple[dict, str]:
    env = {**os.environ, **LOOPBACK, "UNIONCAM_RAY_LOST_S": str(GRACE_S), "RAY_ADDRESS": ""}
    # The timeout is the test's bound on a hang: the product must stop well within it.
    proc = subprocess.run(check=False, args=[sys.executable, str(Path(__file__).parent / "ray_cluster_run.py"), name, str(out),
                           str(artifacts), *map(str, photos)], capture_output=True, text=True, timeout=240, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(lines[-1]), proc.stderr


def same_as_serial(out: Path, serial: Path) -> None:
    """Every photo's map and report equal the serial run's; the index lists each photo once."""
    import pandas as pd

    index = pd.read_parquet(out / "index.parquet")
    assert sorted(index["stem"]) == sorted(Path(p).stem for p in PHOTOS) and index["stem"].is_unique
    assert (index["status"] == "ok").all()
    for stem in index["stem"]:
        np.testing.assert_array_equal(np.load(out / f"{stem}_cam.npy"), np.load(serial / f"{stem}_cam.npy"))
        a, b = (json.loads((d / f"{stem}.json").read_text()) for d in (out, serial))
        for key in ("class_idx", "selected", "beta_denoising", "beta_region", "beta_de_region", "score"):
            assert a[key] == b[key], (stem, key)
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_a_node_lost_mid_run_is_survived_and_equals_serial(photos, lite0_artifacts, serial, tmp_path):
    out = tmp_path / "out"
    result, err = scenario("lose-one", out, lite0_artifacts, photos)
    # The remaining node has room for the lost worker (0.75 CPU each): Ray restarts it there and
    # retries its image, and the run finishes in one go.
    assert result["removed"] == 1 and result["rc"] == 0, err[-2000:]
    same_as_serial(out, serial)


def test_every_node_lost_stops_in_bounded_time_and_resumes(photos, lite0_artifacts, serial, tmp_path):
    out = tmp_path / "out"
    result, err = scenario("lose-all", out, lite0_artifacts, photos)
    assert result["rc"] == 1 and result["removed"] == 2, err[-2000:]
    stop = [ln for ln in err.splitlines() if ln.startswith("unioncam: error: the Ray run stopped")]
    assert len(stop) == 1 and "images left" in stop[0] and "resumes" in stop[0], err[-2000:]
    assert (out / "index.parquet").is_file()  # what finished is indexed before the run stops
    result, err = scenario("resume", out, lite0_artifacts, photos)
    assert result["rc"] == 0, err[-2000:]
    same_as_serial(out, serial)


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143)])
def test_a_signal_to_the_driver_of_a_multinode_run_stops_it_as_on_one_node(sig, code, photos, lite0_artifacts,
                                                                          serial, tmp_path):
    """SIGTERM to the driver of a run on a real two-node cluster: one line, exit 143, Ray's own lines
    kept out, nothing half-written; the same command resumes to the serial run's results. (SIGINT
    takes the same path in the CLI; tests/test_distributed.py sends both on one node.)"""
    out = tmp_path / "out"
    result, _ = scenario(sig, out, lite0_artifacts, photos)
    lines = [ln for ln in result["stderr"].splitlines() if ln.strip()]
    assert result["rc"] == code, result["stderr"][-3000:]
    assert result["seconds_after_signal"] < 30
    assert lines[-1].startswith("unioncam: ") and "resumes" in lines[-1], lines
    assert not [ln for ln in lines if "Traceback" in ln or "(raylet)" in ln or ln.startswith("[")], lines
    assert result["rc_resume"] == 0, result["stderr_resume"]
    same_as_serial(out, serial)
