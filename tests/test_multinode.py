"""Ray beyond one node (issues 33 and 38): a real ``ray.cluster_utils.Cluster`` on 127.0.0.1 in a
Ray temp folder of its own, ``unioncam explain --ray-address`` as its driver, a process of its own
with no Ray environment variable (as users start it). Generated over the cluster's shape (a head
with or without CPUs, 1-3 worker nodes) and the moment nodes are lost (before the driver joins,
while its actors start, mid-image, after the last image). The property (docs/ray.md): the run ends
within its bound; with room left for one explainer it finishes, with none it stops with one line
naming the images left; the resume (one node added) equals the serial run, each image once.

No bound here depends on this machine's speed: the stop counts from the moment the cluster has no
room for one explainer, not from the last finished image."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("ray", reason='needs the ray extra: pip install "unioncam[ray]"')

from generated import examples
from unioncam.cli import main
from unioncam.distributed.dataset import LOOPBACK

# Four photos, 8 passes each: "mid-image" leaves three to do, and each scenario stays short.
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
#: Seconds with no room for one explainer before the run stops (the product's default is 60). Short on
#: purpose: a run with room for one explainer must never stop, however slow its images or short this.
GRACE_S = 2


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
    assert main(["explain", *map(str, photos), "--artifacts", str(lite0_artifacts), "--max-passes", "8",
                 "--out", str(out), "--no-progress"]) == 0
    return out


def scenario(spec: dict, out: Path, artifacts: Path, photos) -> dict:
    """One cluster and its driver(s) (tests/ray_cluster_run.py), in a Ray temp folder of its own."""
    tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # None of this process's Ray variables: a Ray started in-process by another test module (its auth
    # token, its address) must not make this cluster another user's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({**LOOPBACK, "UNIONCAM_RAY_LOST_S": str(GRACE_S), "RAY_TMPDIR": tmp})
    try:
        # The timeout is the test's bound on a hang: the product must stop well within it.
        proc = subprocess.run(check=False, args=[sys.executable, str(Path(__file__).parent / "ray_cluster_run.py"),
                                                 json.dumps(spec), str(out), str(artifacts), *map(str, photos)],
                              capture_output=True, text=True, timeout=500, env=env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(lines[-1])


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


def our_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("unioncam: error:")]


@st.composite
def clusters(draw):
    nodes = draw(st.integers(1, 3))
    return {"head_cpus": draw(st.sampled_from((0, 1))), "nodes": nodes, "lose": draw(st.integers(0, nodes)),
            "when": draw(st.sampled_from(("before-join", "starting", "mid-image", "after-last")))}


@examples(3)
@given(spec=clusters())
def test_any_cluster_event_ends_in_bounded_time_and_resumes_to_the_serial_maps(spec, photos, lite0_artifacts, serial,
                                                                                tmp_path_factory):
    out = tmp_path_factory.mktemp("ray") / "out"
    result = scenario(spec, out, lite0_artifacts, photos)
    room_left = spec["head_cpus"] + spec["nodes"] - spec["lose"] > 0
    errors = our_lines(result["stderr"])
    if result["rc"] != 0:
        # Stopped: only where no room for one explainer was left, in one line naming what is left.
        assert not room_left or spec["when"] == "after-last", (spec, result["stderr"][-3000:])
        assert result["rc"] == 1 and len(errors) == 1, (spec, result["stderr"][-3000:])
        assert "the Ray run stopped" in errors[0] and "images left" in errors[0] and "resumes" in errors[0]
        assert (out / "index.parquet").is_file()  # what finished is indexed before the run stops
        assert result["rc_resume"] == 0, result["stderr_resume"]
    assert "killed after" not in result["stderr"]
    same_as_serial(out, serial)


def test_a_node_lost_mid_run_is_survived_and_equals_serial(photos, lite0_artifacts, serial, tmp_path):
    """One of two worker nodes lost after the first photo: the other has room for an explainer, and
    the run finishes in one go however slow its images are."""
    out = tmp_path / "out"
    result = scenario({"nodes": 2, "lose": 1, "when": "mid-image"}, out, lite0_artifacts, photos)
    assert result["removed"] == 1 and result["rc"] == 0, result["stderr"][-3000:]
    same_as_serial(out, serial)


def test_every_node_lost_stops_in_bounded_time_and_resumes(photos, lite0_artifacts, serial, tmp_path):
    out = tmp_path / "out"
    result = scenario({"nodes": 2, "lose": 2, "when": "mid-image"}, out, lite0_artifacts, photos)
    assert result["rc"] == 1 and result["removed"] == 2, result["stderr"][-3000:]
    stop = our_lines(result["stderr"])
    assert len(stop) == 1 and "the Ray run stopped" in stop[0] and "images left" in stop[0], result["stderr"][-2000:]
    assert result["rc_resume"] == 0, result["stderr_resume"]
    same_as_serial(out, serial)


def test_a_driver_that_cannot_join_ends_within_its_bound_in_one_line(photos, lite0_artifacts, tmp_path):
    """Ray told to take this machine's network address for the driver's node, where no node of the
    loopback cluster is: its join would wait for ever; the driver stops at its bound, in one line."""
    out = tmp_path / "out"
    result = scenario({"nodes": 1, "resume": False, "driver_env": {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
                                                                   "UNIONCAM_RAY_JOIN_S": "5"}},
                      out, lite0_artifacts, photos)
    errors = our_lines(result["stderr"])
    assert result["rc"] == 1 and len(errors) == 1, result["stderr"][-3000:]
    assert "could not join it within 5 s" in errors[0] and "run the driver on a node" in errors[0]
    assert "killed after" not in result["stderr"]


def test_a_signal_to_the_driver_of_a_multinode_run_stops_it_as_on_one_node(photos, lite0_artifacts, serial, tmp_path):
    """SIGTERM to the driver of a run on a real two-node cluster: one line, exit 143, Ray's own lines
    kept out, nothing half-written; the same command resumes to the serial run's results. (SIGINT
    takes the same path in the CLI; tests/test_distributed.py sends both on one node.)"""
    out = tmp_path / "out"
    result = scenario({"nodes": 2, "signal": "SIGTERM"}, out, lite0_artifacts, photos)
    lines = [ln for ln in result["stderr"].splitlines() if ln.strip()]
    assert result["rc"] == 143, result["stderr"][-3000:]
    assert result["seconds_after_signal"] < 60
    assert lines[-1].startswith("unioncam: ") and "resumes" in lines[-1], lines
    assert not [ln for ln in lines if "Traceback" in ln or "(raylet)" in ln or ln.startswith("[")], lines
    assert result["rc_resume"] == 0, result["stderr_resume"]
    same_as_serial(out, serial)
