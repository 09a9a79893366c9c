"""``unioncam.onnx`` (ONNX Runtime, Python and the C example) vs the Python runtime: time, peak RSS
and agreement on the same photo, and peak RSS against the graph's ``--chunk``.

    python benchmarks/end_to_end.py [--models efficientnet_lite0 vgg16 resnet50] [--chunks 4 8 16 32 64]
                                    [--repeats 5] [--large-repeats 2] [--photo coffee]

Every measurement runs in its own child process (peak RSS is the process's high-water mark): one
warm-up run, then the median of ``--repeats`` runs (``--large-repeats`` for models other than
efficientnet_lite0, whose passes take minutes). ``--chunks`` are swept on every model; the C
example runs at the default chunk. vgg16 and resnet50 are architectures with seeded random weights
(no ImageNet weights ship offline), so their constant-channel counts are not those of trained
models; lite0 has its real weights. Writes benchmarks/results/<date>-<machine>-end_to_end.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import child_result, machine, peak_rss_mb, timed, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
C_BINARY = ROOT / "examples" / "c" / "build" / "unioncam_explain"


def photo(name: str, size):
    from unioncam.image_io import read_rgb, sample_image_path, to_model_input

    return to_model_input(read_rgb(sample_image_path(name)), size)[None]


def child(args) -> None:
    import numpy as np

    x = photo(args.photo, tuple(args.size))
    if args.child == "graph":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.enable_cpu_mem_arena = not args.no_arena
        s = ort.InferenceSession(args.graph, so, providers=["CPUExecutionProvider"])
        names = [o.name for o in s.get_outputs()]
        feeds = {"image": x, "class_idx": np.array([-1], np.int64)}
        med, times, out = timed(lambda: dict(zip(names, s.run(None, feeds))), args.repeats, args.warmup)
        cam, betas, passes = out["cam"][0], out["betas"], int(out["passes"][0])
    else:
        from unioncam.runtime import Explainer

        ex = Explainer(args.artifacts, threads=args.threads)
        med, times, exp = timed(lambda: ex(x), args.repeats, args.warmup)
        cam, betas = exp.cam[0], np.array([exp.beta_denoising[0], exp.beta_region[0], exp.beta_de_region[0]])
        passes = exp.stats["masked_passes"]
    np.savez(args.dump, cam=cam, betas=betas)
    print(json.dumps({"median_s": med, "times_s": times, "peak_rss_mb": peak_rss_mb(), "passes": passes}))


def run_c(graph: str, ppm: Path, out: Path, repeats: int) -> dict:
    """The C example with --runs; peak RSS of that process from wait4."""
    proc = subprocess.Popen([str(C_BINARY), "--runs", str(repeats + 1), graph, str(ppm), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"C example failed: {stderr}")
    printed = dict(line.split(" ", 1) for line in stdout.strip().splitlines())
    # communicate() reaped the child; its rusage is in RUSAGE_CHILDREN only as a maximum over all
    # children, so the C example is run first (before any other child of this process).
    import resource

    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"median_s": float(printed["median_run_s"]), "first_s": float(printed["first_run_s"]),
            "peak_rss_mb": rss, "passes": int(printed["masked_passes"]), "printed": printed}


def read_pgm16(path):
    import numpy as np

    parts = Path(path).read_bytes().split(b"\n", 3)
    w, h = map(int, parts[1].split())
    return np.frombuffer(parts[3], dtype=">u2").reshape(h, w).astype(np.float32) / 65535.0


def c_child(args) -> None:
    """Runs in its own process so that RUSAGE_CHILDREN holds the C example alone."""
    r = run_c(args.graph, Path(args.ppm), Path(args.dump), args.repeats)
    print(json.dumps(r))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["efficientnet_lite0", "vgg16", "resnet50"])
    p.add_argument("--chunks", nargs="+", type=int, default=[4, 8, 16, 32, 64])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--large-repeats", type=int, default=1)
    p.add_argument("--large-chunks", nargs="+", type=int, default=[8, 16, 32])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--photo", default="coffee")
    p.add_argument("--stem", default="end_to_end", help="results file name: <date>-<machine>-<stem>.{json,md}")
    p.add_argument("--child")
    p.add_argument("--graph")
    p.add_argument("--artifacts")
    p.add_argument("--dump")
    p.add_argument("--ppm")
    p.add_argument("--size", nargs=2, type=int, default=[224, 224])
    p.add_argument("--no-arena", action="store_true")
    args = p.parse_args()
    if args.child == "c":
        return c_child(args)
    if args.child:
        return child(args)

    import cv2
    import numpy as np

    from unioncam.artifacts import END_TO_END_CHUNK
    from unioncam.export import export
    from unioncam.export.end_to_end import export_end_to_end
    from unioncam.image_io import sample_image_path
    from unioncam.models import load

    if not C_BINARY.exists():
        env = dict(os.environ, PYTHON=sys.executable)
        subprocess.run(["bash", str(C_BINARY.parent.parent / "setup.sh")], check=True, env=env)
        subprocess.run(["make", "-C", str(C_BINARY.parent.parent)], check=True, env=env)
    tmp = Path(tempfile.mkdtemp(prefix="uc-e2e-"))
    ppm = tmp / "photo.ppm"
    cv2.imwrite(str(ppm), cv2.imread(str(sample_image_path(args.photo))))
    results = []
    for name in args.models:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, layer = load(name)
        small = name == "efficientnet_lite0"
        repeats = args.repeats if small else args.large_repeats
        warmup = args.warmup if small else 0  # a pass over all channels takes minutes on these
        art = tmp / name / "art"
        export(model, layer, art, model_name=name)
        graphs = {}
        for chunk in sorted(set(args.chunks if small else args.large_chunks) | {END_TO_END_CHUNK}):
            info = export_end_to_end(model, layer, tmp / name / f"e2e{chunk}", chunk=chunk)
            graphs[chunk] = info
            print(f"{name}: exported chunk {chunk} in {info['export_s']:.0f} s ({info['bytes'] / 1e6:.0f} MB)", flush=True)
        del model

        def run(kind, **kw):
            dump = tmp / name / f"{kind}-{kw.get('chunk', '')}-{kw.get('no_arena', False)}.npz"
            cmd = [sys.executable, __file__, "--child", kind, "--repeats", str(repeats), "--warmup", str(warmup),
                   "--threads", str(args.threads),
                   "--photo", args.photo, "--artifacts", str(art), "--dump", str(dump)]
            if kind != "runtime":
                cmd += ["--graph", graphs[kw["chunk"]]["path"]]
            if kind == "c":
                cmd += ["--ppm", str(ppm), "--dump", str(dump.with_suffix(".pgm"))]
            if kw.get("no_arena"):
                cmd.append("--no-arena")
            r = child_result(cmd)
            cam = read_pgm16(dump.with_suffix(".pgm")) if kind == "c" else np.load(dump)["cam"]
            r.pop("printed", None)
            return r, cam

        ref, ref_cam = run("runtime")
        rows = [{"model": name, "path": "Python runtime", "chunk": None, **ref, "cam_max_abs": 0.0}]
        print(f"{name}: runtime {ref['median_s']:.2f} s, {ref['peak_rss_mb']:.0f} MB", flush=True)
        for chunk in graphs:
            r, cam = run("graph", chunk=chunk)
            rows.append({"model": name, "path": "unioncam.onnx", "chunk": chunk, **r,
                         "cam_max_abs": float(np.abs(cam - ref_cam).max())})
            print(f"{name}: graph chunk {chunk}: {r['median_s']:.2f} s, {r['peak_rss_mb']:.0f} MB", flush=True)
        if small:
            r, cam = run("graph", chunk=END_TO_END_CHUNK, no_arena=True)
            rows.append({"model": name, "path": "unioncam.onnx, arena off", "chunk": END_TO_END_CHUNK, **r,
                         "cam_max_abs": float(np.abs(cam - ref_cam).max())})
        r, cam = run("c", chunk=END_TO_END_CHUNK)
        # The C example resizes the PPM itself (the same bilinear rule), so its map is compared too.
        rows.append({"model": name, "path": "C example", "chunk": END_TO_END_CHUNK, **r,
                     "cam_max_abs": float(np.abs(cam - ref_cam).max())})
        print(f"{name}: C example {r['median_s']:.2f} s, {r['peak_rss_mb']:.0f} MB", flush=True)
        for row in rows:
            row["vs_runtime"] = row["median_s"] / ref["median_s"]
        results += rows
        shutil.rmtree(tmp / name, ignore_errors=True)  # vgg16's graphs are GBs

    lines = [f"# `unioncam.onnx` vs the Python runtime, {args.photo}.png, 224x224\n",
             f"2 CPU cores, no GPU, {args.threads} ONNX Runtime threads. Each row is its own process: one warm-up "
             f"run, then the median of {args.repeats} runs for efficientnet_lite0; for the others, whose "
             f"passes take minutes, {args.large_repeats} run without warm-up. Peak RSS is the process's high-water mark (VmHWM / ru_maxrss), session "
             "loading included. `cam max abs`: against the Python runtime's map. vgg16 and resnet50 have seeded "
             "random weights (architectures only); efficientnet_lite0 has its ImageNet weights.\n",
             "| model | path | chunk | median s | vs runtime | peak RSS MB | masked passes | cam max abs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['path']} | {r['chunk'] or ''} | {r['median_s']:.2f} | "
                     f"{r['vs_runtime']:.2f}x | {r['peak_rss_mb']:.0f} | {r['passes']} | {r['cam_max_abs']:.1e} |")
    payload = {"benchmark": "end_to_end", "machine": machine(), "photo": args.photo, "repeats": args.repeats,
               "large_repeats": args.large_repeats, "threads": args.threads, "default_chunk": END_TO_END_CHUNK,
               "results": results}
    j, m = write_results(args.stem, payload, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {j} and {m}")


if __name__ == "__main__":
    main()
