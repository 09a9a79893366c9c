"""Speed side by side with peer libraries, on the same model, layer and photo.

Paths (each in its own child process, so each peak RSS is its own; all in this one invocation):
ours: UnionCAM runtime (ONNX Runtime CPU), UnionCAM eager reference, Score-CAM and Grad-CAM
(runtime); torchcam's ScoreCAM and GradCAM; pytorch-grad-cam's ScoreCAM where it imports (it needs
torchvision; otherwise the reason is recorded). Median seconds per image over ``--repeats`` calls
after one warm-up.

    python benchmarks/peers.py [--repeats 5] [--model efficientnet_lite0] [--image PATH]

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
    model, layer = load(args.model)
    xt = torch.from_numpy(x)
    if path == "ours_eager_unioncam":
        from unioncam import UnionCAM

        explainer = UnionCAM(model, layer, batch_size=64)
        med, times, _ = timed(lambda: explainer(xt), args.repeats)
    elif path.startswith("torchcam"):
        from torchcam.methods import GradCAM, ScoreCAM

        cls = ScoreCAM if path.endswith("scorecam") else GradCAM
        extractor = cls(model, layer, input_shape=tuple(x.shape[1:]))

        def run():
            if cls is GradCAM:
                out = model(xt)
                return extractor(int(out.argmax()), out)
            with torch.no_grad():
                out = model(xt)
            return extractor(int(out.argmax()), out)

        med, times, _ = timed(run, args.repeats)
        extractor.remove_hooks()
    else:
        try:
            from pytorch_grad_cam import ScoreCAM as PGScoreCAM
        except Exception as e:  # it imports torchvision, whose compiled ops need CUDA here
            return {"skipped": f"pytorch-grad-cam does not import ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                               "it needs torchvision, whose compiled ops do not load on this CPU-only machine "
                               "(torchvision 0.29.2 with torch 2.13.0+cpu: 'operator torchvision::nms does not exist')"}
        cam = PGScoreCAM(model=model, target_layers=[dict(model.named_modules())[layer]])
        med, times, _ = timed(lambda: cam(input_tensor=xt), args.repeats)
    return {"median_s": med, "times_s": times, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--image")
    p.add_argument("--threads", type=int, default=2)
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
    export(model, layer, tmp / "art", model_name=args.model)
    rows = {}
    for path in args.paths:
        cmd = [sys.executable, __file__, "--child", path, "--repeats", str(args.repeats), "--model", args.model,
               "--threads", str(args.threads), "--artifacts", str(tmp / "art")]
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
             f"2 CPU cores, no GPU, {args.threads} threads; median of {args.repeats} after 1 warm-up; "
             "each path in its own process.\n",
             "| path | median s / image | peak RSS MB | torchcam Score-CAM time / this |", "|---|---|---|---|"]
    tc = rows.get("torchcam_scorecam", {}).get("median_s")
    for path, r in rows.items():
        if "skipped" in r:
            lines.append(f"| {path} | skipped: {r['skipped']} | | |")
        else:
            ratio = f"{tc / r['median_s']:.1f}x" if tc else ""
            lines.append(f"| {path} | {r['median_s']:.2f} | {r['peak_rss_mb']:.0f} | {ratio} |")
    sc = rows.get("ours_runtime_scorecam", {}).get("max_abs_diff_vs_eager_scorecam")
    if sc is not None:
        lines.append(f"\nOur Score-CAM (runtime) vs our eager Score-CAM: max abs difference {sc:.2e}.")
    if ours and tc:
        lines.append(f"\nOur full UnionCAM runtime is **{tc / ours:.1f}x** faster than torchcam's Score-CAM alone on the same layer.")
    payload = {"benchmark": "peers", "model": args.model, "layer": layer, "image": args.image or "chelsea.png",
               "repeats": args.repeats, "machine": machine(), "results": rows}
    j, m = write_results("peers", payload, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {j} and {m}")


if __name__ == "__main__":
    main()
