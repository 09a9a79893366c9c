"""One multi-node scenario (tests/test_multinode.py), in a process of its own: a real
``ray.cluster_utils.Cluster`` on 127.0.0.1 in its own Ray temp folder, and ``unioncam explain
--ray-address`` as its driver, a process of its own started as users start it: with no Ray
environment variable at all.

    python ray_cluster_run.py SPEC_JSON OUT ARTIFACTS IMAGE...

SPEC: {"head_cpus": 0 or 1, "nodes": worker nodes (one CPU each), "lose": how many are removed,
"when": "before-join" | "starting" (once the driver runs) | "mid-image" (once the first report is
written) | "after-last" (once every report is written) | "never", "signal": null or "SIGTERM" (sent
to the driver once the first report is written), "driver_env": extra environment of the driver}.
After the run, if it did not finish, one node is added and the same command is run again (the resume).

Prints one JSON line: {"rc", "stderr", "removed", "rc_resume", "stderr_resume", "seconds_after_signal"}.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

#: The driver's bound in the tests: a run must end well within it, whatever the scenario.
DRIVER_TIMEOUT_S = 200


def driver_env(extra: dict) -> dict:
    """The environment a user's shell gives: none of Ray's variables (the cluster's process set them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, **extra}


def run_driver(command: list[str], env: dict, on_start=None) -> tuple[subprocess.Popen, str]:
    driver = subprocess.Popen([sys.executable, "-m", "unioncam", *command], stderr=subprocess.PIPE, text=True, env=env)
    if on_start:
        threading.Thread(target=on_start, args=(driver,), daemon=True).start()
    try:
        _, err = driver.communicate(timeout=DRIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired:  # the test's failure (a hang), not this script's
        driver.kill()
        _, err = driver.communicate()
        err += f"\n[ray_cluster_run: the driver was killed after {DRIVER_TIMEOUT_S} s]"
    return driver, err


def main() -> None:
    spec, out, artifacts, *images = sys.argv[1:]
    spec, out = json.loads(spec), Path(out)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": spec.get("head_cpus", 0),
                                                            "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(spec.get("nodes", 1))]
    state = {"removed": 0, "signal_at": None}
    when = spec.get("when", "never")

    def lose():
        for node in nodes[: spec.get("lose", 0)]:
            cluster.remove_node(node)
            state["removed"] += 1

    def reports(n):
        while len(list(out.glob("*.json"))) < n:
            time.sleep(0.05)

    def during(driver):
        if when == "starting":
            time.sleep(1.0)  # the driver has started; its actors have not
        elif when in ("mid-image", "after-last"):
            reports(1 if when == "mid-image" else len(images))
        if spec.get("signal"):
            reports(1)
            state["signal_at"] = time.monotonic()
            driver.send_signal(getattr(signal, spec["signal"]))
        if when in ("starting", "mid-image", "after-last"):
            lose()

    command = ["explain", *images, "--artifacts", artifacts, "--workers", str(max(1, len(nodes))), "--ray-address",
               cluster.address, "--max-passes", "8", "--out", str(out), "--no-progress"]
    if when == "before-join":
        lose()
    env = driver_env(spec.get("driver_env", {}))
    driver, err = run_driver(command, env, on_start=during)
    result = {"rc": driver.returncode, "stderr": err, "removed": state["removed"],
              "seconds_after_signal": None if state["signal_at"] is None else time.monotonic() - state["signal_at"]}
    if spec.get("resume", True) and driver.returncode != 0:
        cluster.add_node(num_cpus=1)
        again, err = run_driver(command, driver_env({}))
        result.update(rc_resume=again.returncode, stderr_resume=err[-3000:])
    print(json.dumps(result), flush=True)
    cluster.shutdown()


if __name__ == "__main__":
    main()
