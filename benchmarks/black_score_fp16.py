"""The black image's score in the FP16 masked-forward graph against the FP32 gradient graph, every class, on the
real EfficientNet-Lite0/1/2 weights: the measurement behind ``unioncam.validation.BLACK_SCORE_TOLERANCE["fp16"]``.

Run: ``python benchmarks/black_score_fp16.py`` (about 2 minutes on 2 cores; the export cache is a temporary folder).
"""
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from unioncam.models import load
from unioncam.export import export, add_precision
from unioncam.model_specs import spec
res = {}
for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
    s = spec(name); model, layer = load(name, None)
    d = Path(tempfile.mkdtemp()) / "a"
    export(model, layer, d, input_size=s.input_size, model_name=name, mean=s.mean, std=s.std)
    add_precision(d, "fp16")
    H, W = s.input_size
    g = ort.InferenceSession(str(d / "gradient.onnx"), providers=["CPUExecutionProvider"])
    logits = g.run(["logits"], {"image": np.zeros((1, 3, H, W), np.float32), "class_idx": np.array([-1])})[0][0]
    p = np.exp(logits - logits.max()); p /= p.sum()
    out = {}
    for graph in ("masked_forward.onnx", "masked_forward.fp16.onnx"):
        m = ort.InferenceSession(str(d / graph), providers=["CPUExecutionProvider"])
        h, w = json.loads((d / "manifest.json").read_text())["feature_size"]
        diffs = []
        for c in range(len(p)):
            sc = m.run(["scores"], {"image": np.zeros((1, 3, H, W), np.float32), "maps": np.zeros((1, 1, h, w), np.float32), "class_idx": np.array([c])})[0][0, 0]
            diffs.append(abs(float(sc) - float(p[c])))
        out[graph] = max(diffs)
    res[name] = out; print(name, out, flush=True)
print(json.dumps(res))
