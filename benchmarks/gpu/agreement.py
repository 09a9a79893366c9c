"""The eager reference on a CUDA GPU against the same reference on the CPU, with TF32 off (the same
float32 function) and on (PyTorch's default for cuDNN convolutions), on every offline photo.

    python benchmarks/gpu/agreement.py [--models efficientnet_lite0 vgg16] [--batch-size 256]

Per model and mode: the largest map difference (cam, region, denoising), the largest beta
difference, Pearson r of the cams, and how often the selected map (AMS) and the class agree.
Writes benchmarks/results/<date>-<machine>-gpu-agreement.{json,md}. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from common import machine, write_results  # noqa: E402
from faithfulness import photos  # noqa: E402


def compare(ref, got) -> dict:
    import numpy as np

    maps = max(float(np.abs(getattr(got, k) - getattr(ref, k)).max()) for k in ("cam", "region", "denoising"))
    betas = max(float(np.abs(getattr(got, k) - getattr(ref, k)).max())
                for k in ("beta_region", "beta_denoising", "beta_de_region"))
    r = float(np.corrcoef(got.cam.ravel(), ref.cam.ravel())[0, 1])
    return {"max_abs_map": maps, "max_abs_beta": betas, "pearson_r_cam": r,
            "same_selection": bool(list(got.selected) == list(ref.selected)),
            "same_class": bool(got.class_idx[0] == ref.class_idx[0])}


def main() -> None:
    import torch

    from unioncam import UnionCAM
    from unioncam.image_io import read_rgb, to_model_input
    from unioncam.model_specs import spec
    from unioncam.models import load

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["efficientnet_lite0", "vgg16"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-photos", type=int, default=12, help="the first N offline photos (the CPU reference is slow)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here")
    tmp = Path(tempfile.mkdtemp(prefix="uc-gpu-agree-"))
    files = photos(tmp)[:args.max_photos]
    rows = {}
    for name in args.models:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # vgg16's seeded weights warn that they are untrained
            model, layer = load(name)
        size = spec(name).input_size
        xs = [torch.from_numpy(to_model_input(read_rgb(f), size)[None]) for f in files]
        refs = [UnionCAM(model, layer, batch_size=64)(x) for x in xs]
        model.to("cuda")
        for tf32 in (False, True):
            with torch.backends.cudnn.flags(enabled=True, allow_tf32=tf32):
                got = [UnionCAM(model, layer, batch_size=args.batch_size)(x.cuda()) for x in xs]
            per = [compare(r, g) for r, g in zip(refs, got)]
            rows[f"{name}/tf32={'on' if tf32 else 'off'}"] = {
                "photos": len(per), "max_abs_map": max(c["max_abs_map"] for c in per),
                "max_abs_beta": max(c["max_abs_beta"] for c in per),
                "min_pearson_r_cam": min(c["pearson_r_cam"] for c in per),
                "same_selection": sum(c["same_selection"] for c in per),
                "same_class": sum(c["same_class"] for c in per), "per_photo": dict(zip([f.name for f in files], per))}
        model.to("cpu")
    gpu = torch.cuda.get_device_name()
    lines = [f"# Eager reference: CUDA ({gpu}) vs CPU", "",
             f"torch {torch.__version__}; {len(files)} offline photos; GPU chunks of {args.batch_size} masked passes, "
             "CPU chunks of 64. TF32 is cuDNN's `allow_tf32` (PyTorch's default: on).", "",
             "| model / TF32 | photos | max abs map diff | max abs beta diff | min Pearson r (cam) | same selection "
             "| same class |",
             "|---|---|---|---|---|---|---|"]
    for k, r in rows.items():
        lines.append(f"| {k} | {r['photos']} | {r['max_abs_map']:.2e} | {r['max_abs_beta']:.2e} | "
                     f"{r['min_pearson_r_cam']:.6f} | {r['same_selection']}/{r['photos']} | "
                     f"{r['same_class']}/{r['photos']} |")
    payload = {"benchmark": "gpu-agreement", "gpu": gpu, "torch": torch.__version__, "machine": machine(),
               "batch_size": args.batch_size, "results": rows}
    j, m = write_results("gpu-agreement", payload, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {j} and {m}")


if __name__ == "__main__":
    main()
