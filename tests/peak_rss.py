"""Peak RSS of the per-image path (read, model input, overlay with its key, PNG bytes) for one photo,
in a process of its own: `python peak_rss.py PHOTO` prints "BYTES PIXELS" (tests/test_memory_ceiling.py)."""
import sys
from pathlib import Path

import numpy as np

from unioncam.image_io import encode_image, overlay, read_rgb, to_model_input, with_key

path = sys.argv[1]
rgb = read_rgb(path)
x = to_model_input(rgb, (224, 224))
cam = np.random.default_rng(0).random((224, 224), dtype=np.float32)
png = encode_image("x.png", with_key(overlay(rgb, cam), "class 1, p=0.5"))
# This process's own high-water mark (VmHWM): ru_maxrss keeps the parent's across fork and exec, so a
# large test process would hide the path's peak.
hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
           if line.startswith("VmHWM:"))
print(hwm * 1024, rgb.shape[0] * rgb.shape[1])
