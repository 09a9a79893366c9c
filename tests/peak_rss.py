"""Peak RSS growth of the per-image path (read, model input, overlay with its key, PNG bytes) for one
photo, in a process of its own: `python peak_rss.py PHOTO` prints "BYTES PIXELS" (tests/test_memory_ceiling.py)."""
import resource, sys
import numpy as np, cv2
from unioncam.image_io import read_rgb, to_model_input, overlay, with_key, encode_image
path = sys.argv[1]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rgb = read_rgb(path)
x = to_model_input(rgb, (224, 224))
cam = np.random.default_rng(0).random((224, 224), dtype=np.float32)
png = encode_image("x.png", with_key(overlay(rgb, cam), "class 1, p=0.5"))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024, rgb.shape[0] * rgb.shape[1])
