"""Throughput of ``unioncam explain`` on a real multi-node Ray cluster of 1, 2 and 3 nodes, against
the serial CLI, with Ray's per-image overhead and a cost model for N machines.

    python benchmarks/scale_out.py [--photos 12] [--model efficientnet_lite0] [--max-passes N] [--nodes 1 2 3]

Every run explains the same photos (scikit-image's and matplotlib's, plus mirrored copies) in this
one invocation, each into a fresh folder. Each cluster is a ``ray.cluster_utils.Cluster`` on
127.0.0.1 in a process of its own (a head with no CPUs, N worker nodes of one CPU each, one explainer
actor per node), and ``unioncam explain --ray-address`` is its driver, also a process of its own, as
on a real cluster. The nodes share this machine's cores, so more nodes cannot be faster here: the
table gives ratios, and the 1-node run (one worker with the serial run's threads) isolates what Ray
costs per image. The model: ``T(n, W) = t_start + n * t_image / (W * e)``. Writes
benchmarks/results/<date>-<machine>-scale_out.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_results
from faithfulness import photos


def dataset(folder: Path, limit: int) -> list[Path]:
    import cv2

    files = photos(folder)
    for f in list(files):
        img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if img is not None:
            flipped = folder / f"{f.stem}-flip.png"
            cv2.imwrite(str(flipped), img[:, ::-1])
            files.append(flipped)
    keep = sorted(files)[:limit]
    for f in set(files) - set(keep):  # the runs are given the folder: only the kept photos may be in it
        f.unlink()
    return keep


def timed_cli(args: list[str], env: dict | None = None) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "unioncam", *args], check=False, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"unioncam {' '.join(args)} failed:\n{r.stderr}")
    return elapsed, r.stderr


def on_cluster(nodes: int, command: list[str]) -> None:
    """(In a process of its own, Ray's loopback switch set.) Starts the cluster, times the driver,
    prints one JSON line."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(nodes):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        wall, err = timed_cli([*command, "--ray-address", cluster.address])
    finally:
        cluster.shutdown()
    print(json.dumps({"wall_s": wall, "stderr": err}), flush=True)


def cluster_run(nodes: int, command: list[str]) -> dict:
    from unioncam.distributed.dataset import LOOPBACK

    env = {**os.environ, **LOOPBACK, "RAY_ADDRESS": ""}
    r = subprocess.run([sys.executable, __file__, "--_cluster", str(nodes), "--", *command], check=False, capture_output=True,
                       text=True, env=env, timeout=3600)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        raise SystemExit(f"the {nodes}-node run failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    out = json.loads(lines[-1])
    line = [ln for ln in out["stderr"].splitlines() if "images explained" in ln][-1]
    elapsed = float(line.split(" workers in ")[1].split(" s")[0])
    start = float(line.split("(Ray start ")[1].split(" s")[0])
    return {"nodes": nodes, "workers": nodes, "wall_s": out["wall_s"], "pipeline_s": elapsed - start,
            "ray_start_s": start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=12)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--max-passes", type=int)
    p.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--_cluster", type=int, help=argparse.SUPPRESS)
    p.add_argument("command", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._cluster:
        return on_cluster(args._cluster, args.command)
    from unioncam.export import export

    from unioncam.models import load

    tmp = Path(tempfile.mkdtemp(prefix="uc-scale-"))
    (tmp / "photos").mkdir()
    files = dataset(tmp / "photos", args.photos)
    model, layer = load(args.model)
    export(model, layer, tmp / "art", model_name=args.model)
    del model
    cores = machine()["cores"]
    common = [str(tmp / "photos"), "--artifacts", str(tmp / "art"), "--no-progress"]
    if args.max_passes:
        common += ["--max-passes", str(args.max_passes)]
    runs = {}
    t, _ = timed_cli(["explain", *common, "--threads", str(cores), "--out", str(tmp / "serial")])
    runs["serial"] = {"nodes": 0, "workers": 0, "threads": cores, "wall_s": t, "pipeline_s": t}
    for nodes in args.nodes:
        # The nodes share the cores: each worker gets its share of them as ONNX Runtime threads.
        threads = max(1, cores // nodes)
        runs[f"{nodes} node{'s' if nodes > 1 else ''}"] = {
            **cluster_run(nodes, ["explain", *common, "--workers", str(nodes), "--threads", str(threads),
                                  "--out", str(tmp / f"nodes{nodes}")]), "threads": threads}
    n = len(files)
    for r in runs.values():
        r["images_per_s"] = n / r["wall_s"]
        r["images_per_s_pipeline"] = n / r["pipeline_s"]
        r["pipeline_s_per_image"] = r["pipeline_s"] / n
    t_image = runs["serial"]["wall_s"] / n
    serial_pipe = runs["serial"]["pipeline_s"] / n
    one = runs.get("1 node")
    # Ray's cost per image: the 1-node run does the serial run's work with the same threads, one image
    # at a time, so its pipeline time per image minus the serial time per image is what Ray adds.
    overhead = None if one is None else one["pipeline_s_per_image"] - serial_pipe
    t_start = None if one is None else one["wall_s"] - one["pipeline_s"]
    e1 = None if one is None else serial_pipe / one["pipeline_s_per_image"]
    predict = None if one is None else (t_start + 50_000 * t_image / (8 * e1)) / 3600
    payload = {"benchmark": "scale_out", "model": args.model, "layer": layer, "photos": n, "machine": machine(),
               "max_passes": args.max_passes, "runs": runs, "t_image_s": t_image,
               "ray_overhead_s_per_image": overhead, "t_start_s": t_start, "efficiency_1_node": e1,
               "prediction_50k_8_cpu_machines_h": predict, "prediction_50k_8_gpus": None,
               "gpu_note": "no GPU was lent: no GPU figure, no GPU prediction"}
    rows = "\n".join(
        f"| {k} | {r['workers'] or 'serial CLI'} | {r['threads']} | {r['wall_s']:.1f} | {r['pipeline_s']:.1f} | "
        f"{r['pipeline_s_per_image']:.2f} | {r['images_per_s_pipeline'] / runs['serial']['images_per_s_pipeline']:.2f}x |"
        for k, r in runs.items())
    budget = "exact" if not args.max_passes else f"max_passes {args.max_passes}"
    md = (f"# Scale-out: `unioncam explain` on a multi-node Ray cluster, {args.model} ({layer}), {n} photos\n\n"
          f"{payload['machine']['cpu']}, {cores} cores, no GPU; {budget}. Each cluster: `ray.cluster_utils.Cluster` "
          "on 127.0.0.1, a head with no CPUs and N worker nodes of 1 CPU each, one explainer per node; the driver "
          "`unioncam explain --ray-address`, a cold process. **All the nodes share these 2 cores**: more nodes "
          "cannot be faster here, so read the ratios, not the speed-up a real cluster would give.\n\n"
          "| run | workers | threads each | wall s (incl. start) | pipeline s (after Ray start) | s per image (pipeline) "
          "| throughput vs serial (pipeline) |\n|---|---|---|---|---|---|---|\n"
          f"{rows}\n\n")
    if one is not None:
        md += (f"**Ray's cost per image**: {overhead * 1e3:+.0f} ms ({overhead / serial_pipe:+.1%} of the serial "
               f"{serial_pipe:.2f} s): the 1-node run does the serial run's work with the same {cores} threads, "
               f"one image at a time. Fixed cost (driver start, imports, joining the cluster, actors' load, "
               f"index): {t_start:.1f} s.\n\n"
               "## Model for N machines\n\n"
               "`T(n, W) = t_start + n * t_image / (W * e)`, with W workers across the machines (one per GPU, or one "
               "per machine's cores), `e` the efficiency of one worker against the serial CLI, `t_start` the fixed "
               "cost above.\n\n"
               f"- 50,000 images on 8 machines like this one (W = 8, t_image = {t_image:.2f} s, e = {e1:.2f}): "
               f"**{predict:.1f} h**, against {50_000 * t_image / 3600:.0f} h on one machine serially.\n"
               "- 50,000 images on 8 GPUs: not predicted; no GPU was lent to measure `t_image` on one.\n")
    j, m = write_results("scale_out", payload, md)
    shutil.rmtree(tmp, ignore_errors=True)
    print(md)
    print(f"wrote {j} and {m}")


if __name__ == "__main__":
    main()
