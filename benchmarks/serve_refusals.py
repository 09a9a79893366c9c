"""Refusals and health under a full in-flight bound, with real photo bodies (issue 39).

A server with ``--max-inflight 4`` (exact explanations, so its slots stay held); 40 concurrent REST
clients each post a real photo (v2 JSON, base64); a prober asks ``/v2/health/ready`` every 50 ms
meanwhile. Reports p50/p99 of the 503s and of the health answers. ``--checkout DIR`` runs the same
against another checkout's ``unioncam`` (e.g. the last release, for a side-by-side in one run).

    python benchmarks/serve_refusals.py --artifacts lite0/ [--checkout /tmp/old] [--json out.json]
"""
from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from unioncam.bench import summarize


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body() -> bytes:
    import skimage

    data = (Path(skimage.__file__).parent / "data" / "chelsea.png").read_bytes()
    return json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                   "data": [base64.b64encode(data).decode()]}],
                       "parameters": {"max_passes": "exact"}}).encode()


def post(url: str, data: bytes, start: float) -> tuple[int, float]:
    time.sleep(max(0.0, start - time.time()))  # every client at once
    t = time.perf_counter()
    req = urllib.request.Request(f"{url}/v2/models/unioncam/infer", data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            r.read()
            code = r.status
    except urllib.error.HTTPError as e:
        e.read()
        code = e.code
    return code, (time.perf_counter() - t) * 1e3


def probe(url: str, done, out) -> None:
    while not done.is_set():
        t = time.perf_counter()
        try:
            urllib.request.urlopen(f"{url}/v2/health/ready", timeout=10).read()
        except (urllib.error.URLError, OSError):
            pass
        out.append((time.perf_counter() - t) * 1e3)
        time.sleep(0.05)


def run(artifacts: str, checkout: str | None, clients: int = 40) -> dict:
    http, grpc = free_port(), free_port()
    env = dict(os.environ)
    if checkout:
        env["PYTHONPATH"] = checkout
    proc = subprocess.Popen([sys.executable, "-m", "unioncam", "serve", "--artifacts", artifacts, "--host", "127.0.0.1",
                             "--http-port", str(http), "--grpc-port", str(grpc), "--max-inflight", "4",
                             "--max-passes", "8"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
            time.sleep(0.2)
        # Clients and prober in processes of their own: threads of one Python would time their own GIL.
        ctx = multiprocessing.get_context("fork")
        data, done, manager = body(), ctx.Event(), ctx.Manager()
        with ctx.Pool(clients) as pool:
            health = manager.list()
            prober = ctx.Process(target=probe, args=(url, done, health))
            prober.start()
            start = time.time() + 2.0
            pending = [pool.apply_async(post, (url, data, start)) for _ in range(clients)]
            results = [r.get(timeout=900) for r in pending]
            done.set()
            prober.join()
            health = list(health)
        codes = [c for c, _ in results]
        refused = [ms for c, ms in results if c == 503]
        return {"codes": {c: codes.count(c) for c in sorted(set(codes))},
                "refusal_ms": summarize(refused) if refused else {}, "health_ms": summarize(health)}
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", required=True)
    p.add_argument("--checkout", help="another checkout to compare, side by side")
    p.add_argument("--json")
    args = p.parse_args()
    out = {"this": run(args.artifacts, None)}
    if args.checkout:
        out["checkout"] = run(args.artifacts, args.checkout)
    for name, r in out.items():
        print(f"{name:9s} codes {r['codes']}  503 p50 {r['refusal_ms'].get('p50_ms', float('nan')):.1f} ms "
              f"p99 {r['refusal_ms'].get('p99_ms', float('nan')):.1f} ms  health p50 {r['health_ms']['p50_ms']:.1f} ms "
              f"p99 {r['health_ms']['p99_ms']:.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
