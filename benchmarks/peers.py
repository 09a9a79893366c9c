"""Speed side by side with peer libraries, on the same model, layer and photo.

Paths (each in its own child process, so each peak RSS is its own; all in this one invocation):
ours: UnionCAM runtime (ONNX Runtime CPU), UnionCAM eager reference, Score-CAM and Grad-CAM
(runtime); torchcam's ScoreCAM and GradCAM; pytorch-grad-cam's ScoreCAM where it imports (it needs
torchvision; otherwise the reason is recorded). Median seconds per image over ``--repeats`` calls
after one warm-up.

With ``--device cuda`` the torch paths (our eager UnionCAM, torchcam's and pytorch-grad-cam's
methods) run on the GPU, timed with the device synchronised, and report torch's peak GPU memory;
our runtime paths stay on ONNX Runtime's CPU provider (the one the runtime installs with).

    python benchmarks/peers.py [--repeats 5] [--model efficientnet_lite0] [--image PATH] [--device cuda]

Writes benchmarks/results/<date>-<machine>-peers.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, peak_rss_mb, timed, write_results  # noqa: E402

PATHS = ["ours_runtime_unioncam", "ours_eager_unioncam", "ours_runtime_scorecam", "ours_runtime_gradcam",
         "torchcam_scorecam", "torchcam_gradcam", "pytorch_grad_cam_scorecam"]


def child(path: str, args) -> dict:
    import numpy as np

    from unioncam.image_io import read_rgb, sample_image_path, to_model_input
    from unioncam.model_specs import spec

    x = to_model_input(read_rgb(args.image or sample_image_path("chelsea")), spec(args.model).input_size)[None]
    extra = {}
    if path.startswith("ours_runtime"):
        from unioncam.runtime import Explainer

        ex = Explainer(args.artifacts, threads=args.threads)
        method = path.rsplit("_", 1)[1]
        med, times, exp = timed(lambda: ex(x, method=method), args.repeats)
        rss = peak_rss_mb()  # before the eager comparison below loads torch
        if method == "scorecam":  # our Score-CAM map against our eager one (not timed, not in the RSS)
            import torch

            from unioncam import ScoreCAM
            from unioncam.models import load

            model, layer = load(args.model)
            ref = ScoreCAM(model, layer, batch_size=32)(torch.from_numpy(x))
            extra["max_abs_diff_vs_eager_scorecam"] = float(np.abs(ref.cam - exp.cam).max())
        return {"median_s": med, "times_s": times, "peak_rss_mb": rss, **extra}

    import torch

    from unioncam.models import load

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, layer = load(args.model)
    model.to(device)
    xt = torch.from_numpy(x).to(device)
    from unioncam.methods.hooks import resolve_layer

    # The peers look layers up by their full name; a registered model is wrapped in Normalized
    # ("features.29" is "model.features.29" there), so they are given the module itself.
    _, module = resolve_layer(model, layer)

    def timed_on_device(fn):
        def synced():
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out
        return timed(synced, args.repeats)

    if path == "ours_eager_unioncam":
        from unioncam import UnionCAM

        explainer = UnionCAM(model, layer, batch_size=args.batch_size)
        med, times, _ = timed_on_device(lambda: explainer(xt))
    elif path.startswith("torchcam"):
        from torchcam.methods import GradCAM, ScoreCAM

        cls = ScoreCAM if path.endswith("scorecam") else GradCAM
        extractor = cls(model, module, input_shape=tuple(x.shape[1:]))

        def run():
            if cls is GradCAM:
                out = model(xt)
                return extractor(int(out.argmax()), out)
            with torch.no_grad():
                out = model(xt)
            return extractor(int(out.argmax()), out)

        med, times, _ = timed_on_device(run)
        extractor.remove_hooks()
    else:
        try:
            from pytorch_grad_cam import ScoreCAM as PGScoreCAM
        except Exception as e:  # it imports torchvision, whose compiled ops need CUDA here
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            return {"skipped": f"pytorch-grad-cam does not import ({why}); pip install grad-cam, with a torchvision "
                               "whose compiled ops load (on a CPU-only torch here they do not)"}
        cam = PGScoreCAM(model=model, target_layers=[module])
        cam.batch_size = args.batch_size  # its default is 16; the same chunk as ours
        med, times, _ = timed_on_device(lambda: cam(input_tensor=xt, targets=None))  # None: the top class
    gpu = {}
    if device.type == "cuda":
        gpu = {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20, "gpu": torch.cuda.get_device_name(),
               "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32)}
    return {"median_s": med, "times_s": times, "peak_rss_mb": peak_rss_mb(), **gpu}


def _machine_line(args) -> str:
    facts = machine()
    gpu = (facts.get("gpu") or {}).get("name", "the GPU")
    where = (f"torch paths on {gpu} (CUDA), runtime paths on ONNX Runtime's CPU provider"
             if args.device == "cuda" else "no GPU")
    return (f"{facts['cpu']}, {facts['cores']} cores, {where}, {args.threads} threads, "
            f"chunks of {args.batch_size} passes")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--image")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where the torch paths run (the runtime paths use ONNX Runtime's CPU provider)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="masked passes per forward call (ours and pytorch-grad-cam)")
    p.add_argument("--paths", nargs="+", default=PATHS, choices=PATHS)
    p.add_argument("--child")
    p.add_argument("--artifacts")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return

    from unioncam.export import export
    from unioncam.models import load

    tmp = Path(tempfile.mkdtemp(prefix="uc-peers-"))
    model, layer = load(args.model)
    if any(path.startswith("ours_runtime") for path in args.paths):
        export(model, layer, tmp / "art", model_name=args.model)
    rows = {}
    for path in args.paths:
        cmd = [sys.executable, __file__, "--child", path, "--repeats", str(args.repeats), "--model", args.model,
               "--threads", str(args.threads), "--artifacts", str(tmp / "art"), "--device", args.device,
               "--batch-size", str(args.batch_size)]
        if args.image:
            cmd += ["--image", args.image]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            rows[path] = {"skipped": f"failed: {proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else proc.returncode}"}
        else:
            rows[path] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(path, rows[path], flush=True)
    ours = rows.get("ours_runtime_unioncam", {}).get("median_s")
    lines = [f"# Speed vs peers: {args.model} ({layer}), {args.image or 'chelsea.png'}\n",
             f"{_machine_line(args)}; median of {args.repeats} after 1 warm-up; each path in its own process.\n",
             "| path | median s / image | peak RSS MB | peak GPU MB | torchcam Score-CAM time / this |",
             "|---|---|---|---|---|"]
    tc = rows.get("torchcam_scorecam", {}).get("median_s")
    for path, r in rows.items():
        if "skipped" in r:
            lines.append(f"| {path} | skipped: {r['skipped']} | | | |")
        else:
            ratio = f"{tc / r['median_s']:.1f}x" if tc else ""
            gpu = f"{r['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in r else "-"
            lines.append(f"| {path} | {r['median_s']:.3f} | {r['peak_rss_mb']:.0f} | {gpu} | {ratio} |")
    sc = rows.get("ours_runtime_scorecam", {}).get("max_abs_diff_vs_eager_scorecam")
    if sc is not None:
        lines.append(f"\nOur Score-CAM (runtime) vs our eager Score-CAM: max abs difference {sc:.2e}.")
    if ours and tc:
        lines.append(f"\nOur full UnionCAM runtime is **{tc / ours:.1f}x** faster than torchcam's Score-CAM alone on the same layer.")
    payload = {"benchmark": "peers", "model": args.model, "layer": layer, "image": args.image or "chelsea.png",
               "repeats": args.repeats, "device": args.device, "batch_size": args.batch_size,
               "threads": args.threads, "machine": machine(), "results": rows}
    stem = "peers" if args.device == "cpu" and args.model == "efficientnet_lite0" else f"peers-{args.model}-{args.device}"
    j, m = write_results(stem, payload, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {j} and {m}")


if __name__ == "__main__":
    main()
