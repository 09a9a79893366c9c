"""Load on ``unioncam serve``: latency, throughput, errors and memory from 1, 2, 4 and 8 concurrent
clients over REST and gRPC, beside the in-process ``Explainer`` on the same photos, in one run.

    python benchmarks/serve_load.py [--model efficientnet_lite0] [--requests 24] [--memory-requests 500]

The server is the real one (``python -m unioncam serve``), on 127.0.0.1, in a process of its own;
the clients are tritonclient's (HTTP with binary tensors, and gRPC), one per thread, each sending
encoded photos (scikit-image's and the bundled ones, in turn). The in-process baseline does what a
caller without a server does with the same bytes: decode, resize, explain, on the same number of
ONNX Runtime threads. Every cell counts its errors and lost requests (sent, never answered).

Cells: at 64 passes, 1/2/4/8 clients x REST/gRPC, ``--requests`` each; exact, 1 client, a few
requests; memory: the server's RSS after warm-up and after ``--memory-requests`` more; refusals:
a second server with ``--max-inflight 1``, held busy, answering 503 (REST) / UNAVAILABLE (gRPC).
Writes benchmarks/results/<date>-<machine>-serve_load.{json,md}.
"""
from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photos() -> list[bytes]:
    import skimage

    root = Path(skimage.__file__).parent / "data"
    names = ["astronaut.png", "chelsea.png", "coffee.png", "horse.png", "motorcycle_left.png", "rocket.jpg"]
    return [(root / n).read_bytes() for n in names if (root / n).is_file()]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")) / 1024


class Server:
    def __init__(self, artifacts: Path, *extra: str, max_passes: int | None = 64):
        self.http, self.grpc = free_port(), free_port()
        args = [sys.executable, "-m", "unioncam", "serve", "--artifacts", str(artifacts), "--host", "127.0.0.1",
                "--http-port", str(self.http), "--grpc-port", str(self.grpc), *extra]
        if max_passes:
            args += ["--max-passes", str(max_passes)]
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log)
        t = time.perf_counter()
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited:\n{Path(self.log.name).read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.05)
        self.ready_s = time.perf_counter() - t

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


def client(protocol: str, server: Server):
    if protocol == "rest":
        import tritonclient.http as mod

        return mod, mod.InferenceServerClient(f"127.0.0.1:{server.http}", network_timeout=600,
                                              connection_timeout=600)
    import tritonclient.grpc as mod

    return mod, mod.InferenceServerClient(f"127.0.0.1:{server.grpc}")


def one_request(mod, c, data: bytes, parameters: dict | None = None):
    tensor = mod.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=object))
    return c.infer("unioncam", [tensor], parameters=parameters or None)


def load_cell(server: Server, protocol: str, clients: int, requests: int, images: list[bytes],
              parameters: dict | None = None) -> dict:
    """``requests`` in all, shared among ``clients`` threads, each as fast as its answers come."""
    times, errors, answered = [], [], [0]
    lock = threading.Lock()
    todo = list(range(requests))

    def worker():
        mod, c = client(protocol, server)
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            t = time.perf_counter()
            try:
                one_request(mod, c, images[i % len(images)], parameters).as_numpy("cam")
                with lock:
                    times.append((time.perf_counter() - t) * 1e3)
                    answered[0] += 1
            except Exception as e:  # noqa: BLE001 - counted, with the first message kept
                with lock:
                    errors.append(str(e)[:200])
                    answered[0] += 1

    t = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    from unioncam.bench import summarize

    return {"protocol": protocol, "clients": clients, "sent": requests, "answered": answered[0],
            "lost": requests - answered[0], "errors": len(errors), "first_error": errors[0] if errors else None,
            "wall_s": wall, "throughput_per_s": len(times) / wall, **(summarize(times) if times else {})}


def in_process(artifacts: Path, images: list[bytes], requests: int, max_passes: int | None,
               device: str = "cpu") -> dict:
    """What a caller without a server does with the same bytes: decode, resize, explain."""
    from unioncam.runtime import Explainer

    from unioncam.bench import summarize
    from unioncam.image_io import decode_rgb, to_model_input

    with Explainer(artifacts, max_passes=max_passes, device=device) as e:
        size = tuple(e.manifest.input_size)
        e(to_model_input(decode_rgb(images[0]), size)[None])  # warm-up, as the server's
        times = []
        t0 = time.perf_counter()
        for i in range(requests):
            t = time.perf_counter()
            e(to_model_input(decode_rgb(images[i % len(images)]), size)[None]).cam  # noqa: B018
            times.append((time.perf_counter() - t) * 1e3)
        wall = time.perf_counter() - t0
    return {"protocol": "in-process", "clients": 1, "sent": requests, "answered": requests, "lost": 0, "errors": 0,
            "wall_s": wall, "throughput_per_s": requests / wall, **summarize(times)}


def interleaved(server: Server, artifacts: Path, images: list[bytes], rounds: int, max_passes: int | None,
                device: str = "cpu") -> dict:
    """One client, the overhead measured fairly: each round sends the same photo through the
    in-process Explainer, REST and gRPC in turn, so that drift and the photos' sizes hit all three
    alike. Also the server's own explanation time (the answer's timings), to split the overhead."""
    import json

    from unioncam.runtime import Explainer

    from unioncam.bench import summarize
    from unioncam.image_io import decode_rgb, to_model_input

    paths = {"rest": client("rest", server), "grpc": client("grpc", server)}
    times = {"in-process": [], "rest": [], "grpc": []}
    inside = {"rest": [], "grpc": []}
    params = None if max_passes == 64 else {"max_passes": "exact" if max_passes is None else max_passes}
    with Explainer(artifacts, max_passes=max_passes, device=device) as e:
        size = tuple(e.manifest.input_size)
        e(to_model_input(decode_rgb(images[0]), size)[None])
        for i in range(rounds):
            data = images[i % len(images)]
            t = time.perf_counter()
            e(to_model_input(decode_rgb(data), size)[None]).cam  # noqa: B018
            times["in-process"].append((time.perf_counter() - t) * 1e3)
            for name, (mod, c) in paths.items():
                t = time.perf_counter()
                answer = one_request(mod, c, data, params)
                answer.as_numpy("cam")
                times[name].append((time.perf_counter() - t) * 1e3)
                raw = answer.get_response()
                p = raw["parameters"] if isinstance(raw, dict) else {k: v.string_param for k, v in raw.parameters.items()}
                inside[name].append(json.loads(p["timings_ms"])["total"])
    out = {k: summarize(v) for k, v in times.items()}
    for name, spent in inside.items():
        out[name]["explain_p50_ms"] = float(np.median(spent))
        out[name]["ratio_p50"] = out[name]["p50_ms"] / out["in-process"]["p50_ms"]
        # Per round: the server's time over the in-process time of the same photo in the same round.
        out[name]["ratio_median_paired"] = float(np.median(np.array(times[name]) / np.array(times["in-process"])))
    return out


def refusals(artifacts: Path, images: list[bytes], n: int = 20) -> dict:
    """A server with --max-inflight 1 held busy by an exact explanation: the latency of its 503s."""
    from unioncam.bench import summarize

    server = Server(artifacts, "--max-inflight", "1", max_passes=None)
    out = {}
    try:
        busy = threading.Thread(target=lambda: one_request(*client("grpc", server), images[0]))
        busy.start()
        time.sleep(0.5)
        for protocol in ("rest", "grpc"):
            mod, c = client(protocol, server)
            times, codes = [], []
            for _ in range(n):
                t = time.perf_counter()
                try:
                    one_request(mod, c, images[1])
                    codes.append("answered")
                except Exception as e:  # noqa: BLE001 - the refusal is the point
                    codes.append(str(getattr(e, "status", lambda: "?")()))
                times.append((time.perf_counter() - t) * 1e3)
            out[protocol] = {"codes": sorted(set(codes)), **summarize(times)}
        busy.join()
    finally:
        server.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--requests", type=int, default=24, help="requests per concurrency cell (64 passes)")
    p.add_argument("--exact-requests", type=int, default=4)
    p.add_argument("--memory-requests", type=int, default=500)
    p.add_argument("--device", default="cpu", help="the server's and the in-process explainer's device")
    args = p.parse_args()
    from unioncam.export import export

    from unioncam.models import load

    tmp = Path(tempfile.mkdtemp(prefix="uc-serve-"))
    model, layer = load(args.model)
    export(model, layer, tmp / "art", model_name=args.model)
    del model
    art = tmp / "art"
    images = photos()
    cells = []
    baseline64 = in_process(art, images, args.requests, 64, args.device)
    baseline_exact = in_process(art, images, args.exact_requests, None, args.device)
    server = Server(art, "--max-inflight", "64", "--device", args.device)
    try:
        for protocol in ("rest", "grpc"):  # warm-up: each protocol's first calls
            load_cell(server, protocol, 1, 2, images)
        rss_start = rss_mb(server.proc.pid)
        paired = {"64": interleaved(server, art, images, args.requests, 64, args.device),
                  "exact": interleaved(server, art, images, args.exact_requests, None, args.device)}
        print("paired", {k: {p: round(v[p].get("ratio_median_paired", 1), 3) for p in v} for k, v in paired.items()},
              flush=True)
        for clients in (1, 2, 4, 8):
            for protocol in ("rest", "grpc"):
                cells.append({"budget": 64, **load_cell(server, protocol, clients, args.requests, images)})
                print(cells[-1]["protocol"], clients, f"{cells[-1].get('p50_ms', 0):.0f} ms", flush=True)
        for protocol in ("rest", "grpc"):
            cells.append({"budget": "exact", **load_cell(server, protocol, 1, args.exact_requests, images,
                                                         {"max_passes": "exact"})})
        rss_warm = rss_mb(server.proc.pid)
        memory = load_cell(server, "grpc", 2, args.memory_requests, images)
        rss_end = rss_mb(server.proc.pid)
        print("memory", memory["answered"], f"{rss_warm:.0f} -> {rss_end:.0f} MB", flush=True)
    finally:
        code = server.stop()
    refused = refusals(art, images)
    payload = {"benchmark": "serve_load", "model": args.model, "device": args.device, "layer": layer, "machine": machine(),
               "ready_s": server.ready_s, "in_process": {"64": baseline64, "exact": baseline_exact}, "cells": cells,
               "memory": {"requests": args.memory_requests, "answered": memory["answered"],
                          "errors": memory["errors"], "rss_start_mb": rss_start, "rss_warm_mb": rss_warm,
                          "rss_end_mb": rss_end, "growth": rss_end / rss_warm - 1},
               "refusals": refused, "exit_code_after_sigterm": code, "paired": paired}
    write_md(payload)


def write_md(payload: dict) -> None:
    m = payload["machine"]
    base = payload["in_process"]
    rows = []
    for c in payload["cells"]:
        ref = base["64" if c["budget"] == 64 else "exact"]
        rows.append(f"| {c['budget']} | {c['protocol']} | {c['clients']} | {c.get('n', 0)} | {c.get('p50_ms', 0):.0f} | "
                    f"{c.get('p90_ms', 0):.0f} | {c.get('p99_ms', 0):.0f} | {c.get('p50_ms', 0) / ref['p50_ms']:.3f}x | "
                    f"{c['throughput_per_s']:.2f} | {c['throughput_per_s'] / ref['throughput_per_s']:.2f}x | "
                    f"{c['errors']} | {c['lost']} |")
    for key, ref in (("64", base["64"]), ("exact", base["exact"])):
        rows.append(f"| {key} | **in-process** | 1 | {ref['n']} | {ref['p50_ms']:.0f} | {ref['p90_ms']:.0f} | "
                    f"{ref['p99_ms']:.0f} | 1.000x | {ref['throughput_per_s']:.2f} | 1.00x | 0 | 0 |")
    mem = payload["memory"]
    ref = payload["refusals"]
    paired_rows = "\n".join(
        f"| {budget} | {path} | {v['n']} | {v['p50_ms']:.0f} | {v.get('explain_p50_ms', v['p50_ms']):.0f} | "
        f"{v.get('ratio_p50', 1.0):.3f}x | {v.get('ratio_median_paired', 1.0):.3f}x |"
        for budget, cells in payload["paired"].items() for path, v in cells.items())
    md = (f"# `unioncam serve` under load: {payload['model']} ({payload['layer']}), {m['cores']} cores\n\n"
          f"{m['cpu']}, device {payload['device']}. The real server (`python -m unioncam serve`, KServe's REST and gRPC servers) on "
          "127.0.0.1 in a process of its own; tritonclient's clients (HTTP with binary tensors, gRPC), one per "
          "thread, sending encoded photos (scikit-image's six, in turn); beside it, in this same run, the "
          "in-process `Explainer` decoding and explaining the same bytes with the same ONNX Runtime threads "
          f"(all {m['cores']} cores). Server ready {payload['ready_s']:.1f} s after start (load and warm-up). "
          "Latencies are per request, client side, ms; ratios are against the in-process row of the same "
          "budget.\n\n"
          "| budget | path | clients | n | p50 | p90 | p99 | p50 vs in-process | req/s | vs in-process | errors | lost |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
          "**One client, side by side**: each round sends the same photo through the in-process `Explainer`, "
          "REST and gRPC in turn (drift and photo sizes hit all three alike). *explain p50*: the server's own "
          "explanation time from the answer's timings; the rest of a request's time is decoding, transport "
          "and encoding. *paired*: the median over rounds of (server time / in-process time of the same photo "
          "in the same round).\n\n"
          "| budget | path | n | p50 ms | explain p50 ms | p50 vs in-process | paired |\n|---|---|---|---|---|---|---|\n"
          + paired_rows + "\n\n"
          f"**Memory**: the server's RSS {mem['rss_warm_mb']:.0f} MB after the cells above, "
          f"{mem['rss_end_mb']:.0f} MB after {mem['answered']} more requests ({mem['errors']} errors): "
          f"{mem['growth']:+.1%} (started at {mem['rss_start_mb']:.0f} MB after warm-up).\n\n"
          f"**Past the in-flight bound** (a second server, `--max-inflight 1`, held by an exact explanation): "
          f"REST {ref['rest']['codes']} p50 {ref['rest']['p50_ms']:.1f} ms, p99 {ref['rest']['p99_ms']:.1f} ms; "
          f"gRPC {ref['grpc']['codes']} p50 {ref['grpc']['p50_ms']:.1f} ms, p99 {ref['grpc']['p99_ms']:.1f} ms "
          f"(n = {ref['rest']['n']} each).\n\n"
          f"SIGTERM after the run: exit code {payload['exit_code_after_sigterm']}.\n")
    j, path = write_results("serve_load", payload, md)
    print(md)
    print(f"wrote {j} and {path}")


if __name__ == "__main__":
    main()
