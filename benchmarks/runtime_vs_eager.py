"""Eager PyTorch reference vs the torch-free runtime (ONNX Runtime) on the default model.

Each path runs in its own child process, so each peak RSS is its own; both run in this one
invocation, on the same photo, and the maps are compared. Usage:

    python benchmarks/runtime_vs_eager.py [--repeats 5] [--image PATH] [--model efficientnet_lite0]

Writes benchmarks/results/<date>-<machine>-runtime_vs_eager.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import child_result, machine, peak_rss_mb, timed, write_results  # noqa: E402


def child(path: str, args) -> None:
    import numpy as np

    from unioncam.image_io import read_rgb, sample_image_path, to_model_input
    from unioncam.model_specs import spec

    size = spec(args.model).input_size
    x = to_model_input(read_rgb(args.image or sample_image_path("chelsea")), size)[None]
    if path == "eager":
        import torch

        from unioncam import UnionCAM
        from unioncam.models import load

        torch.set_num_threads(args.threads)
        model, layer = load(args.model)
        explainer = UnionCAM(model, layer, batch_size=args.batch_size or 64)
        xt = torch.from_numpy(x)
        med, times, exp = timed(lambda: explainer(xt), args.repeats)
    else:
        from unioncam.runtime import Explainer

        explainer = Explainer(args.artifacts, threads=args.threads, batch_size=args.batch_size)
        med, times, exp = timed(lambda: explainer(x), args.repeats)
    np.savez(args.dump, cam=exp.cam, region=exp.region, denoising=exp.denoising, de_region=exp.de_region,
             betas=np.stack([exp.beta_denoising, exp.beta_region, exp.beta_de_region]), selected=np.array(exp.selected))
    print(json.dumps({"median_s": med, "times_s": times, "peak_rss_mb": peak_rss_mb(), "stats": exp.stats,
                      "class_idx": int(exp.class_idx[0])}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--image")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--child", choices=["eager", "runtime"])
    p.add_argument("--artifacts")
    p.add_argument("--dump")
    args = p.parse_args()
    if args.child:
        return child(args.child, args)

    import numpy as np

    from unioncam.export import export
    from unioncam.models import load

    tmp = Path(tempfile.mkdtemp(prefix="uc-bench-"))
    model, layer = load(args.model)
    export(model, layer, tmp / "art", model_name=args.model)
    rows = {}
    for path in ("eager", "runtime"):
        cmd = [sys.executable, __file__, "--child", path, "--repeats", str(args.repeats), "--model", args.model,
               "--threads", str(args.threads), "--artifacts", str(tmp / "art"), "--dump", str(tmp / f"{path}.npz")]
        if args.image:
            cmd += ["--image", args.image]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        rows[path] = child_result(cmd)
    a, b = np.load(tmp / "eager.npz"), np.load(tmp / "runtime.npz")
    agreement = {k: float(np.abs(a[k] - b[k]).max()) for k in ("cam", "denoising", "region", "de_region", "betas")}
    agreement["same_selection"] = bool((a["selected"] == b["selected"]).all())
    ratio = rows["eager"]["median_s"] / rows["runtime"]["median_s"]
    payload = {"benchmark": "runtime_vs_eager", "model": args.model, "layer": layer, "image": args.image or "chelsea.png",
               "repeats": args.repeats, "threads": args.threads, "machine": machine(), "results": rows,
               "speedup_runtime_over_eager": ratio, "agreement_max_abs": agreement}
    st = rows["runtime"]["stats"]
    md = (f"# Runtime vs eager reference: {args.model} ({layer}), {payload['image']}\n\n"
          f"Machine: {payload['machine']['cores']} cores, no GPU; torch {payload['machine']['versions']['torch']}, "
          f"onnxruntime {payload['machine']['versions']['onnxruntime']}; {args.threads} threads; "
          f"median of {args.repeats} after 1 warm-up.\n\n"
          "| path | median s / image | peak RSS MB | masked passes |\n|---|---|---|---|\n"
          f"| eager PyTorch reference | {rows['eager']['median_s']:.2f} | {rows['eager']['peak_rss_mb']:.0f} | {rows['eager']['stats']['masked_passes']} |\n"
          f"| runtime (onnxruntime CPU) | {rows['runtime']['median_s']:.2f} | {rows['runtime']['peak_rss_mb']:.0f} | {st['masked_passes']} |\n\n"
          f"Speed-up: **{ratio:.1f}x**. Constant channels skipped: {st['constant_channels']} of {st['channels']}. "
          f"Max abs difference: cam {agreement['cam']:.2e}, betas {agreement['betas']:.2e}; same selection: "
          f"{agreement['same_selection']}.\n")
    j, m = write_results("runtime_vs_eager", payload, md)
    print(md)
    print(f"wrote {j} and {m}")


if __name__ == "__main__":
    main()
