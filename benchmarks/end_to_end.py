"""The end-to-end graph (``unioncam.onnx``) under ONNX Runtime vs the Python runtime, same photo.

    python benchmarks/end_to_end.py [--repeats 5] [--chunk 64]

Each path runs in its own child process (median seconds per image after one warm-up, peak RSS);
the maps are compared. Also estimates, for each registered model at 224x224, the activation memory
one masked pass needs (sum of every module's output, an upper bound on what is live at once), and
so what one chunk of the graph needs. Writes benchmarks/results/<date>-<machine>-end_to_end.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import child_result, machine, peak_rss_mb, timed, write_results  # noqa: E402


def child(path: str, args) -> None:
    import numpy as np

    from unioncam.image_io import read_rgb, sample_image_path, to_model_input

    x = to_model_input(read_rgb(sample_image_path("chelsea")), (224, 224))[None]
    if path == "e2e":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = args.threads
        s = ort.InferenceSession(args.graph, so, providers=["CPUExecutionProvider"])
        names = [o.name for o in s.get_outputs()]
        med, times, out = timed(lambda: dict(zip(names, s.run(None, {"image": x}))), args.repeats)
        cam, betas = out["cam"][0], out["betas"]
    else:
        from unioncam.runtime import Explainer

        ex = Explainer(args.artifacts, threads=args.threads)
        med, times, exp = timed(lambda: ex(x), args.repeats)
        cam, betas = exp.cam[0], np.array([exp.beta_denoising[0], exp.beta_region[0], exp.beta_de_region[0]])
    np.savez(args.dump, cam=cam, betas=betas)
    print(json.dumps({"median_s": med, "times_s": times, "peak_rss_mb": peak_rss_mb()}))


def activation_mb(name: str) -> dict:
    """Sum of module outputs of one forward pass at 224x224 (MB), and the target layer's K."""
    import torch

    from unioncam.models import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, layer = load(name)
    total = [0]
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda m, i, o: total.__setitem__(0, total[0] + o.numel() * 4)) for m in leaves]
    store = {}
    from unioncam.methods.hooks import resolve_layer

    def keep_k(_m, _i, out):
        store["k"] = out.shape[1]  # returns None: a hook's return value would replace the output

    hooks.append(resolve_layer(model, layer)[1].register_forward_hook(keep_k))
    with torch.no_grad():
        model(torch.rand(1, 3, 224, 224))
    for hk in hooks:
        hk.remove()
    return {"per_pass_mb": total[0] / 1e6, "K": int(store["k"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child")
    p.add_argument("--graph")
    p.add_argument("--artifacts")
    p.add_argument("--dump")
    args = p.parse_args()
    if args.child:
        return child(args.child, args)

    import numpy as np

    from unioncam.export import export, graph_stats
    from unioncam.export.end_to_end import export_end_to_end
    from unioncam.models import load

    tmp = Path(tempfile.mkdtemp(prefix="uc-e2e-"))
    model, layer = load("efficientnet_lite0")
    info = export_end_to_end(model, layer, tmp / "e2e", chunk=args.chunk)
    export(model, layer, tmp / "art", model_name="efficientnet_lite0")
    rows = {}
    for path in ("e2e", "runtime"):
        cmd = [sys.executable, __file__, "--child", path, "--repeats", str(args.repeats), "--threads", str(args.threads),
               "--graph", info["path"], "--artifacts", str(tmp / "art"), "--dump", str(tmp / f"{path}.npz")]
        rows[path] = child_result(cmd)
    a, b = np.load(tmp / "e2e.npz"), np.load(tmp / "runtime.npz")
    agreement = {"cam": float(np.abs(a["cam"] - b["cam"]).max()), "betas": float(np.abs(a["betas"] - b["betas"]).max())}
    memory = {name: activation_mb(name) for name in ("efficientnet_lite0", "vgg16", "resnet50")}
    stats = graph_stats(info["path"])
    lines = [f"# End-to-end graph vs Python runtime: efficientnet_lite0 (head), chelsea.png, chunk {info['chunk']}\n",
             f"2 CPU cores, no GPU, {args.threads} threads; median of {args.repeats} after 1 warm-up; each path in its own process.\n",
             f"`unioncam.onnx`: {stats['bytes'] / 1e6:.1f} MB, {stats['nodes']} nodes, exported in {info['export_s']:.0f} s; "
             f"{info['channels']} masked passes in chunks of {info['chunk']} (no skipping: constant channels are masked).\n",
             "| path | median s / image | peak RSS MB |", "|---|---|---|",
             f"| unioncam.onnx (ONNX Runtime CPU) | {rows['e2e']['median_s']:.2f} | {rows['e2e']['peak_rss_mb']:.0f} |",
             f"| Python runtime (ONNX Runtime CPU, skips constant channels) | {rows['runtime']['median_s']:.2f} | "
             f"{rows['runtime']['peak_rss_mb']:.0f} |",
             f"\nMax abs difference: cam {agreement['cam']:.2e}, betas {agreement['betas']:.2e}.\n",
             "Activation memory of one masked pass at 224x224 (sum of every module's output, an upper bound), "
             f"and of one chunk of {args.chunk} passes:\n", "| model | K | MB per pass | MB per chunk |", "|---|---|---|---|"]
    for name, m in memory.items():
        lines.append(f"| {name} | {m['K']} | {m['per_pass_mb']:.1f} | {m['per_pass_mb'] * args.chunk:.0f} |")
    payload = {"benchmark": "end_to_end", "chunk": info["chunk"], "graph": {k: v for k, v in info.items() if k != "ops"},
               "ops": stats["ops"], "machine": machine(), "results": rows, "agreement_max_abs": agreement,
               "activation_memory": memory}
    j, m = write_results("end_to_end", payload, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {j} and {m}")


if __name__ == "__main__":
    main()
