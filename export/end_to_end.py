"""The whole of UnionCAM as one ONNX graph: image in, explanation out (``unioncam.onnx``).

Inputs: ``image`` (1, 3, H, W) float32 in [0, 1]; ``class_idx`` (1,) int64, optional (it has a
default of -1 in the graph: absent or negative = arg-max). Outputs: ``cam``, ``denoising``,
``region``, ``de_region`` (1, H, W); ``betas`` (3,) = (beta_den, beta_reg, beta_dr); ``selected``
(1,) int64 (1 = de_region); ``class`` (1,) int64, the explained class (not ``class_idx``: ONNX
names are unique and the input has that name); ``score`` (1,) float32.

Every step of the spec is inside: the gradient pass (traced as in ``graphs.py``), the per-channel
percentile (Sort + linear interpolation), AMD, the region map's K masked passes, AMU and AMS (Where).
The K masked passes run in ``chunk``-sized batches, unrolled in the graph: ONNX Runtime frees each
chunk's intermediates before the next, so peak memory is that of ``chunk`` forward passes. Constant
channels are not skipped but masked: their mask is exactly zero and their score is replaced by
``p_c(Ib)``, so the maps match the runtime's.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from unioncam import algebra
from unioncam.artifacts import atomic_directory, sha256_file
from unioncam.errors import ExportError, InvalidInputError
from unioncam.methods.hooks import eval_mode, resolve_layer
from unioncam.validation import check_positive_int, check_theta

from .graphs import logit_gradient
from .onnx_export import export_onnx

E2E_ONNX = "unioncam.onnx"
OUTPUTS = ["cam", "denoising", "region", "de_region", "betas", "selected", "class", "score", "status"]

#: Values of the ``status`` output: the graph refuses bad input itself, since a C caller has no
#: Python checks in front of it. Every other output is zero (``class`` -1) when status is not 0.
STATUS = {0: "ok", 1: "the image contains NaN or Inf", 2: "the image is outside [0, 1] (scale pixels by 1/255)",
          3: "class_idx is out of range (give -1 for the arg-max, or 0..C-1)"}


class EndToEnd(nn.Module):
    """UnionCAM for one image, every step in PyTorch ops that trace and export."""

    def __init__(self, model: nn.Module, layer_name: str, layer: nn.Module, input_size, channels: int,
                 theta: float, chunk: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.model = model
        self.layer_name, self.layer = layer_name, layer
        self.input_size = tuple(input_size)
        self.channels, self.theta, self.chunk = channels, theta, chunk

    def _p(self, image, masks, cls):
        """p_c(mask * image) for (m, H, W) masks."""
        probs = torch.softmax(self.model(image * masks[:, None]), dim=1)
        # gather, not probs[:, cls]: indexing by a tensor would need its value at trace time.
        return probs.gather(1, cls.reshape(1, 1).expand(probs.shape[0], 1))[:, 0]

    def _status(self, image: torch.Tensor, class_idx: torch.Tensor) -> torch.Tensor:
        """(1,) int64, see ``STATUS``; the first failing check wins."""
        finite = torch.isfinite(image).all()
        clean = torch.where(torch.isfinite(image), image, torch.zeros_like(image))
        in_range = (clean.reshape(-1).amin(dim=0) >= 0) & (clean.reshape(-1).amax(dim=0) <= 1)
        cls_ok = ((class_idx == -1) | ((class_idx >= 0) & (class_idx < self.num_classes))).all()
        zero = torch.zeros(1, dtype=torch.int64)
        return torch.where(~finite, zero + 1, torch.where(~in_range, zero + 2, torch.where(~cls_ok, zero + 3, zero)))

    def forward(self, image: torch.Tensor, class_idx: torch.Tensor):
        status = self._status(image, class_idx)
        ok = status == 0
        # Bad input runs on a black image and the arg-max, so nothing non-finite or out of range
        # reaches the network or a Gather; the outputs are zeroed at the end.
        image = torch.where(ok.reshape(1, 1, 1, 1), image, torch.zeros_like(image))
        class_idx = torch.where(ok, class_idx, torch.full_like(class_idx, -1))
        outs = self._explain(image, class_idx)
        cam, D, R, DR, betas, selected, cls_t, score_c = outs
        z = lambda t: torch.where(ok.reshape([1] * t.dim()), t, torch.zeros_like(t))  # noqa: E731
        return (z(cam), z(D), z(R), z(DR), z(betas), z(selected), torch.where(ok, cls_t, torch.full_like(cls_t, -1)),
                z(score_c), status)

    def _explain(self, image: torch.Tensor, class_idx: torch.Tensor):
        logits, A, G, cls_t = logit_gradient(self.model, self.layer_name, self.layer, image, class_idx)
        A, cls = A.detach(), cls_t[0]
        H, W = self.input_size
        with torch.no_grad():
            base = self._p(image, torch.zeros_like(image[:, 0]), cls)  # (1,)

            def score(image_index, maps):
                # Unrolled chunks: ONNX Runtime frees each chunk's intermediates before the next.
                return torch.cat([self._p(image, algebra.saliency_masks(maps[s:s + self.chunk], (H, W)), cls)
                                  for s in range(0, maps.shape[0], self.chunk)])

            # No data-dependent skipping in a static graph: every channel runs, constant ones get p_c(Ib).
            cs = algebra.channel_scores(A, base, score, skip_constant=False)
            L_reg = algebra.region_map(A, cs.scores)
            L_den = algebra.denoised_map(A, G, self.theta)
            f = algebra.union_select(L_den, L_reg, (H, W), base, score)
            score_c = torch.softmax(logits, dim=1).gather(1, cls_t[:, None])[:, 0]
        betas = torch.cat([f.beta_denoising, f.beta_region, f.beta_de_region])
        return (f.cam, f.denoising, f.region, f.de_region, betas, f.selected.to(torch.int64), cls_t, score_c)


def _default_class_input(path: Path) -> None:
    """Give ``class_idx`` a default of -1: an initializer with the input's name makes it optional."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    import numpy as np

    m.graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "class_idx"))
    onnx.save_model(m, str(path))


def export_end_to_end(model: nn.Module, target_layer, out_dir: str | Path, *, input_size=(224, 224),
                      theta: float = 10.0, chunk: int = 64, opset: int = 18, log=None) -> dict:
    """Write ``unioncam.onnx`` into ``out_dir`` (atomically, replacing the folder).

    ``log``: called with one line per stage (tracing, ONNX conversion, checks) and its elapsed time,
    so a long export is never a silent wait (the CLI prints them).

    Args:
        model: ``nn.Module`` taking RGB in [0, 1] and returning (B, C) logits.
        theta: AMD's percentile, baked into the graph.
        chunk: masked passes per batch inside the graph (peak memory ~ ``chunk`` forward passes).

    Returns:
        {"path", "bytes", "nodes", "export_s", "channels", "chunk", "sha256"}.
    """
    from .exporter import _Call, _probe

    theta = check_theta(theta)
    chunk = check_positive_int(chunk, "chunk")
    layer_name, layer = resolve_layer(model, target_layer)
    H, W = int(input_size[0]), int(input_size[1])
    t = time.perf_counter()
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot write into {out_dir}: {e.strerror}; choose a writable --out folder") from None
    # Built in a temporary sibling folder; only the finished, checked file is moved into out_dir.
    with eval_mode(model), atomic_directory(out_dir / ".unioncam-e2e") as tmp:
        _, C, K, _ = _probe(model, layer_name, layer, (H, W))
        fn = EndToEnd(model, layer_name, layer, (H, W), K, theta, min(chunk, K), C)
        say = log or (lambda line: None)
        n_chunks = -(-K // min(chunk, K))
        say(f"tracing UnionCAM with {K} masked passes in {n_chunks} chunks of {min(chunk, K)} "
            f"(fewer chunks trace faster) ...")
        x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0))
        c = torch.tensor([-1], dtype=torch.int64)
        try:
            from torch.fx.experimental.proxy_tensor import make_fx

            from .decompositions import decomposition_table

            gm = make_fx(fn, decomposition_table=decomposition_table(), tracing_mode="fake",
                         _allow_non_fake_inputs=True)(x, c)
        except (InvalidInputError, ExportError):
            raise
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"tracing the end-to-end graph failed: {type(e).__name__}: {first}") from None
        say(f"traced in {time.perf_counter() - t:.0f} s; converting to ONNX and checking it ...")
        path = tmp / E2E_ONNX
        export_onnx(_Call(gm).eval(), (x, c), path, input_names=["image", "class_idx"], output_names=OUTPUTS,
                    dynamic_shapes=None, opset=opset, model=model, layer_name=layer_name)
        _default_class_input(path)
        from .exporter import graph_stats

        stats = graph_stats(path)
        say(f"wrote {stats['nodes']} nodes in {time.perf_counter() - t:.0f} s")
        info = {"bytes": stats["bytes"], "nodes": stats["nodes"], "ops": stats["ops"], "channels": K,
                "chunk": min(chunk, K), "theta": theta, "layer": layer_name, "input_size": [H, W],
                "export_s": time.perf_counter() - t, "sha256": sha256_file(path)}
        import json
        import os

        (tmp / "unioncam.json").write_text(json.dumps(info, indent=2))
        os.replace(path, out_dir / E2E_ONNX)
        os.replace(tmp / "unioncam.json", out_dir / "unioncam.json")
    import shutil

    shutil.rmtree(out_dir / ".unioncam-e2e", ignore_errors=True)
    info["path"] = str(out_dir / E2E_ONNX)
    return info
