"""Faithfulness of every method on all the real photos available offline (``unioncam eval``).

    python benchmarks/faithfulness.py [--model efficientnet_lite0] [--steps 32]

Photos: scikit-image's bundled photos and matplotlib's grace_hopper.jpg (see benchmarks/README.md
for sources and licences). Writes benchmarks/results/<date>-<machine>-faithfulness.{json,md} and
the per-image CSV and grid PNG beside them.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write_results  # noqa: E402

SKIMAGE = ["astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "horse.png",
           "hubble_deep_field.jpg", "moon.png", "motorcycle_left.png", "rocket.jpg"]


def photos(folder: Path) -> list[Path]:
    """Copy every available photo into ``folder``; returns the copies."""
    out = []
    try:
        import skimage

        data = Path(skimage.__file__).parent / "data"
        for name in SKIMAGE:
            if (data / name).is_file():
                out.append(Path(shutil.copy(data / name, folder / name)))
    except ImportError:
        pass
    try:
        import matplotlib

        gh = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if gh.is_file():
            out.append(Path(shutil.copy(gh, folder / gh.name)))
    except ImportError:
        pass
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--steps", type=int, default=32)
    args = p.parse_args()
    from unioncam.cli import main as cli

    tmp = Path(tempfile.mkdtemp(prefix="uc-faith-"))
    (tmp / "photos").mkdir()
    files = photos(tmp / "photos")
    rc = cli(["eval", str(tmp / "photos"), "--model", args.model, "--steps", str(args.steps), "--out", str(tmp / "out")])
    if rc != 0:
        raise SystemExit(rc)
    with open(tmp / "out" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    md = (tmp / "out" / "metrics.md").read_text()
    md += "\nPhotos: " + ", ".join(f.name for f in files) + ".\n"
    payload = {"benchmark": "faithfulness", "model": args.model, "steps": args.steps, "photos": [f.name for f in files],
               "machine": machine(), "rows": rows}
    j, m = write_results("faithfulness", payload, md)
    shutil.copy(tmp / "out" / "grid.png", m.with_suffix(".png"))
    print(md)
    print(f"wrote {j}, {m} and {m.with_suffix('.png')}")


if __name__ == "__main__":
    main()
