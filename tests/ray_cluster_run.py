"""One scenario of the multi-node tests (tests/test_multinode.py), in a process of its own: a real
``ray.cluster_utils.Cluster`` on 127.0.0.1 (a head with no CPUs and worker nodes with one CPU each),
and ``unioncam explain`` as its driver, which joins it by address.

    python ray_cluster_run.py SCENARIO OUT ARTIFACTS IMAGE...

SCENARIO: ``all`` (the nodes stay), ``lose-one`` (one of two worker nodes is removed once the first
image is written), ``lose-all`` (every worker node is removed then). ``resume``: one worker node, the
run as it is. ``SIGTERM``/``SIGINT``: the driver is a process of its own, sent that signal once the
first image is written; then the same command is run again on the same cluster.
Prints one JSON line: {"rc", "seconds_after_loss", "removed"} (signals: {"rc", "stderr", "rc_resume",
"seconds_after_signal"}). The environment must set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
before Ray is imported (everything on loopback)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def main() -> None:
    scenario, out, artifacts, *images = sys.argv[1:]
    out = Path(out)
    from ray.cluster_utils import Cluster

    from unioncam.cli import main as cli

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2 if scenario != "resume" else 1)]
    state = {"removed": 0, "lost_at": None}

    def lose_nodes():
        while not list(out.glob("*.json")):
            time.sleep(0.1)
        for node in nodes[1:] if scenario == "lose-one" else nodes:
            cluster.remove_node(node)
            state["removed"] += 1
        state["lost_at"] = time.monotonic()

    command = ["explain", *images, "--artifacts", artifacts, "--workers", str(len(nodes)), "--ray-address",
               cluster.address, "--max-passes", "32", "--out", str(out), "--no-progress"]
    if scenario.startswith("SIG"):
        print(json.dumps(interrupted(getattr(signal, scenario), command, out)), flush=True)
        cluster.shutdown()
        return
    if scenario in ("lose-one", "lose-all"):
        threading.Thread(target=lose_nodes, daemon=True).start()
    rc = cli(command)
    lost_at = state["lost_at"]
    print(json.dumps({"rc": rc, "removed": state["removed"],
                      "seconds_after_loss": None if lost_at is None else time.monotonic() - lost_at}), flush=True)
    cluster.shutdown()


def interrupted(sig: int, command: list[str], out: Path) -> dict:
    """Runs the driver as a process of its own, sends it ``sig`` once the first image is written, then
    runs the same command again (the resume) on the same cluster."""
    driver = subprocess.Popen([sys.executable, "-m", "unioncam", *command], stderr=subprocess.PIPE, text=True,
                              env=os.environ)
    while not list(out.glob("*.json")) and driver.poll() is None:
        time.sleep(0.05)
    sent = time.monotonic()
    driver.send_signal(sig)
    try:
        _, err = driver.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # the test's failure, not this script's hang
        driver.kill()
        _, err = driver.communicate()
    after = time.monotonic() - sent
    resumed = subprocess.run(check=False, args=[sys.executable, "-m", "unioncam", *command], stderr=subprocess.PIPE, text=True,
                             env=os.environ, timeout=180)
    return {"rc": driver.returncode, "stderr": err, "seconds_after_signal": after, "rc_resume": resumed.returncode,
            "stderr_resume": resumed.stderr[-3000:]}


if __name__ == "__main__":
    main()
