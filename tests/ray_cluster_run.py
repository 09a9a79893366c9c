"""One scenario of the multi-node tests (tests/test_multinode.py), in a process of its own: a real
``ray.cluster_utils.Cluster`` on 127.0.0.1 (a head with no CPUs and worker nodes with one CPU each),
and ``unioncam explain`` as its driver, which joins it by address.

    python ray_cluster_run.py SCENARIO OUT ARTIFACTS IMAGE...

SCENARIO: ``all`` (the nodes stay), ``lose-one`` (one of two worker nodes is removed once the first
image is written), ``lose-all`` (every worker node is removed then). ``resume``: one worker node, the
run as it is. Prints one JSON line: {"rc", "seconds_after_loss", "removed"}. The environment must set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
before Ray is imported (everything on loopback)."""
from __future__ import annotations

import json
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

    if scenario in ("lose-one", "lose-all"):
        threading.Thread(target=lose_nodes, daemon=True).start()
    rc = cli(["explain", *images, "--artifacts", artifacts, "--workers", str(len(nodes)), "--ray-address",
              cluster.address, "--max-passes", "32", "--out", str(out), "--no-progress"])
    lost_at = state["lost_at"]
    print(json.dumps({"rc": rc, "removed": state["removed"],
                      "seconds_after_loss": None if lost_at is None else time.monotonic() - lost_at}), flush=True)
    cluster.shutdown()


if __name__ == "__main__":
    main()
