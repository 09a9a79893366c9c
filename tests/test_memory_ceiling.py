"""The pixel ceiling comes from a measured peak (issue 38): the peak memory of the whole per-image
path (read, model input, overlay with its key, PNG bytes) grows per pixel by no more than
``BYTES_PER_PIXEL``, the figure ``pixel_ceiling`` divides the memory by. Measured as the slope of the
peak RSS of a fresh process between a 9 and a 36 Mpx photo (both peaks above the imports' own), so a step that gets costlier (planted:
the overlay blended whole in float32, 64 bytes a pixel) fails here instead of on a user's machine."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from unioncam.image_io import BYTES_PER_PIXEL


def peak(path: Path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, str(Path(__file__).parent / "peak_rss.py"), str(path)], capture_output=True,
                         text=True, check=True, timeout=300).stdout.split()
    return int(out[0]), int(out[1])


def test_the_peak_per_pixel_of_one_photo_is_within_the_ceilings_figure(tmp_path):
    sizes = []
    for side in (3000, 6000):
        rgb = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
        rgb[::2] = 128  # compressible, as photos are: the file is not the measure
        cv2.imwrite(str(tmp_path / f"p{side}.png"), rgb)
        sizes.append(peak(tmp_path / f"p{side}.png"))
    (small, small_px), (large, large_px) = sizes
    slope = (large - small) / (large_px - small_px)
    print(f"peak growth {slope:.1f} bytes a pixel (ceiling's figure {BYTES_PER_PIXEL})")
    assert 0 < slope <= BYTES_PER_PIXEL, slope
