"""The whole of UnionCAM as one ONNX graph: image in, explanation out (``unioncam.onnx``).

Inputs: ``image`` (1, 3, H, W) float32 in [0, 1]; ``class_idx`` (1,) int64, required: -1 means the
arg-max, 0..C-1 a given class. (Required rather than optional with a default: a default is an
initializer named like the input, which ONNX Runtime warns about on every session.)

Outputs: ``cam``, ``denoising``, ``region``, ``de_region`` (1, H, W); ``betas`` (3,) = (beta_den,
beta_reg, beta_dr); ``selected`` (1,) int64 (1 = de_region); ``class`` (1,) int64, the explained
class; ``score`` (1,) float32; ``status`` (1,) int64 (see ``STATUS``); ``passes`` (1,) int64, the
masked passes the explanation needed (distinct non-constant masks + 3 fusion passes).

The graph is three traced parts stitched together (``onnx_compose.py``):

1. ``Front``: input checks, the gradient pass, AMD, and the pass plan: which channels are constant
   (score ``p_c(Ib)``, no pass) and which masks duplicate an earlier channel's
   (``algebra.duplicate_masks``, one pass for all of them); the channels left are compacted into
   rows of ``chunk`` indices.
2. A ``Loop`` over as many rows as there are distinct masks: one masked-forward graph (batch
   ``chunk``) per iteration, its scores scattered into a (K + 1,) vector. Memory is one chunk's
   forward passes, and the work is the passes the runtime runs (plus the last row's padding).
3. ``Back``: scores to every channel, the region map, AMU and AMS, outputs zeroed on bad input.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from unioncam import algebra
from unioncam import graph_identity as gid
from unioncam.artifacts import END_TO_END_CHUNK, sha256_file
from unioncam.errors import ExportError, InvalidInputError, UnwritableError
from unioncam.methods.hooks import eval_mode, resolve_layer
from unioncam.methods.passes import logit_gradient, masked_probs
from unioncam.ownership import claim, record
from unioncam.reshape import parse_reshape
from unioncam.validation import check_input_size, check_opset, check_positive_int, check_theta

from unioncam.settings import DEFAULTS

from .exporter import _probe, forward_flops, graph_stats, model_identity
from .graphs import MaskedForward, trace
from .onnx_export import check_loads, export_onnx, stamp

E2E_ONNX = "unioncam.onnx"
OUTPUTS = ["cam", "denoising", "region", "de_region", "betas", "selected", "class", "score", "status", "passes"]
DEFAULT_CHUNK = END_TO_END_CHUNK

#: Values of the ``status`` output: the graph refuses bad input itself, since a C caller has no
#: Python checks in front of it. Every other output is zero (``class`` -1) when status is not 0.
STATUS = {0: "ok", 1: "the image contains NaN or Inf", 2: "the image is outside [0, 1] (scale pixels by 1/255)",
          3: "class_idx is out of range (give -1 for the arg-max, or 0..C-1)"}

# Names of the tensors between the parts (front outputs = back inputs, plus the loop's).
_FRONT_OUT = ["x", "cls", "checked", "score_c", "A", "L_den", "base", "constant", "rep", "rows", "trips", "n_run"]
_BACK_IN = ["x", "cls", "checked", "score_c", "A", "L_den", "base", "constant", "rep", "n_run", "channel_state"]


def pass_rows(run: torch.Tensor, chunk: int):
    """Compact the channels to run into rows: ((R, chunk) int64 indices, padding = K; trips () int64).

    Static shapes only (cumsum + scatter instead of nonzero), so it traces for both runtimes.
    R = ceil(K / chunk) rows are allocated; the first ``trips`` hold every channel to run.
    """
    K = run.shape[0]
    R = -(-K // chunk)
    pos = torch.cumsum(run.to(torch.int64), 0) - 1
    spare = R * chunk  # one slot past the rows, where the channels not run are scattered
    target = torch.where(run, pos, torch.full_like(pos, spare))
    idx = torch.full((spare + 1,), K, dtype=torch.int64).scatter(0, target, torch.arange(K, dtype=torch.int64))
    n = run.to(torch.int64).sum()
    return idx[:spare].reshape(R, chunk), (n + chunk - 1) // chunk, n


class Front(nn.Module):
    """(image, class_idx) -> the tensors of ``_FRONT_OUT``: checks, gradient pass, AMD, pass plan."""

    def __init__(self, model, layer_name, layer, input_size, theta: float, chunk: int, num_classes: int,
                 black_probs: torch.Tensor, reshape=None):
        super().__init__()
        self.model, self.layer_name, self.layer, self.reshape = model, layer_name, layer, reshape
        self.input_size, self.theta, self.chunk, self.num_classes = tuple(input_size), theta, chunk, num_classes
        # p_c(Ib) for every class: the black image's softmax does not depend on the input.
        self.register_buffer("black_probs", black_probs)

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
        # reaches the network or a Gather; the outputs are zeroed in Back.
        x = torch.where(ok.reshape(1, 1, 1, 1), image, torch.zeros_like(image))
        class_idx = torch.where(ok, class_idx, torch.full_like(class_idx, -1))
        logits, A, G, cls = logit_gradient(self.model, self.layer_name, self.layer, x, class_idx, reshape=self.reshape)
        A, G = A.detach(), G.detach()
        with torch.no_grad():
            score_c = torch.softmax(logits, dim=1).gather(1, cls[:, None])[:, 0]
            base = self.black_probs.gather(0, cls)
            L_den = algebra.denoised_map(A, G, self.theta)
            A = A[0]
            K = A.shape[0]
            constant = algebra.constant_channels(A)
            rep = algebra.duplicate_masks(A)
            run = ~constant & (rep == torch.arange(K))
            rows, trips, n_run = pass_rows(run, self.chunk)
        return x, cls, status, score_c, A, L_den, base, constant, rep, rows, trips, n_run.reshape(1)


class Back(nn.Module):
    """Channel scores -> region map, AMU, AMS, outputs (zeroed on bad input)."""

    def __init__(self, model, input_size):
        super().__init__()
        self.model, self.input_size = model, tuple(input_size)

    def forward(self, x, cls, checked, score_c, A, L_den, base, constant, rep, n_run, channel_state):
        H, W = self.input_size
        c = cls[0]
        # A duplicate channel takes its first equal mask's score, a constant one p_c(Ib) (spec step 3).
        scores = torch.where(constant, base, channel_state[:-1].gather(0, rep))
        L_reg = algebra.region_map(A[None], scores[None])
        f = algebra.union_select(L_den, L_reg, (H, W), base,
                                 lambda _, maps: masked_probs(self.model, x, maps, c.reshape(1).expand(maps.shape[0])))
        betas = torch.cat([f.beta_denoising, f.beta_region, f.beta_de_region])
        ok = checked == 0
        z = lambda t: torch.where(ok.reshape([1] * t.dim()), t, torch.zeros_like(t))  # noqa: E731
        # checked + 0: an output may not be an input of the same graph under another name.
        return (z(f.cam), z(f.denoising), z(f.region), z(f.de_region), z(betas), z(f.selected.to(torch.int64)),
                torch.where(ok, cls, torch.full_like(cls, -1)), z(score_c), checked + 0, z(n_run + 3))


class _Traced(nn.Module):
    """A traced GraphModule as a module the ONNX exporter takes."""

    def __init__(self, gm):
        super().__init__()
        self.gm = gm

    def forward(self, *args):
        return self.gm(*args)


def _trace_and_export(fn: nn.Module, args: tuple, path: Path, input_names, output_names, *, opset, model, layer_name,
                      what: str):
    try:
        gm = trace(fn, args, dynamic=False)
    except (InvalidInputError, ExportError):
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"tracing the end-to-end graph ({what}) failed: {type(e).__name__}: {first}") from None
    export_onnx(_Traced(gm).eval(), args, path, input_names=input_names, output_names=output_names,
                dynamic_shapes=None, opset=opset, model=model, layer_name=layer_name)
    import onnx

    return onnx.load(str(path))


def _stitch(front, body, back, out_path: Path, metadata: dict | None = None) -> None:
    """front + Loop(body) + back -> one checked ONNX file, stamped with ``metadata``."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from .onnx_compose import check_no_functions, opset_imports, renamed_graph_parts, rows_loop, share_initializers
    from .onnx_export import check

    check_no_functions(front, body, back)
    f_nodes, f_inits, f_infos = renamed_graph_parts(front, "front/", {n: n for n in ["image", "class_idx", *_FRONT_OUT]})
    b_nodes, b_inits, b_infos = renamed_graph_parts(back, "back/", {n: n for n in [*_BACK_IN, *OUTPUTS]})
    K = next(d.dim_value for v in front.graph.output if v.name == "A" for d in v.type.tensor_type.shape.dim[:1])
    loop, loop_inits, _ = rows_loop(trips="trips", rows="rows", table="A", state="state0", out="channel_state",
                                    row_model=body, row_inputs={"image": "x", "class_idx": "cls"}, map_input="maps",
                                    score_output="scores")
    nodes = f_nodes + [loop] + b_nodes
    # The loop-carried scores start at 0; slot K collects the padding of the last row.
    inits = share_initializers(nodes, f_inits + b_inits) + loop_inits + [
        numpy_helper.from_array(np.zeros(K + 1, np.float32), "state0")]
    graph = helper.make_graph(nodes, "unioncam", list(front.graph.input), list(back.graph.output),
                              initializer=inits, value_info=f_infos + b_infos)
    model = helper.make_model(graph, opset_imports=opset_imports(front, body, back), producer_name="unioncam")
    model.ir_version = max(front.ir_version, back.ir_version, body.ir_version)
    stamp(model, metadata)
    onnx.save_model(model, str(out_path))
    check(out_path)


def _build(model, layer_name: str, layer, x, path: Path, *, theta, chunk: int, classes: int, channels: int,
           feature: tuple[int, int], reshape, log, opset: int) -> None:
    """The three parts traced and exported beside ``path`` (the gradient pass with the pass plan,
    the masked passes as a loop body, AMU and AMS), then stitched around the loop into ``path``."""
    tmp, (H, W), (h, w), K = path.parent, tuple(x.shape[2:]), feature, channels
    c = torch.tensor([-1], dtype=torch.int64)
    with torch.no_grad():
        black = torch.softmax(model(torch.zeros(1, 3, H, W)), dim=1)[0].detach().float()
    kw = {"opset": opset, "model": model, "layer_name": layer_name}
    log("tracing the gradient pass and the pass plan ...")
    front = _trace_and_export(Front(model, layer_name, layer, (H, W), theta, chunk, classes, black, reshape), (x, c),
                              tmp / "front.onnx", ["image", "class_idx"], _FRONT_OUT, what="gradient pass", **kw)
    log(f"tracing the masked passes (loop body, {chunk} per iteration) ...")
    maps = torch.rand(1, chunk, h, w, generator=torch.Generator().manual_seed(1))
    body = _trace_and_export(MaskedForward(model, (H, W)).eval(), (x, maps, torch.zeros(1, dtype=torch.int64)),
                             tmp / "body.onnx", ["image", "maps", "class_idx"], ["scores"], what="masked passes", **kw)
    log("tracing AMU and AMS ...")
    example = [torch.zeros(1, 3, H, W), torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64),
               torch.zeros(1), torch.rand(K, h, w), torch.rand(1, h, w), torch.zeros(1),
               torch.zeros(K, dtype=torch.bool), torch.arange(K), torch.ones(1, dtype=torch.int64), torch.rand(K + 1)]
    back = _trace_and_export(Back(model, (H, W)), tuple(example), tmp / "back.onnx", _BACK_IN, OUTPUTS,
                             what="fusion", **kw)
    log(f"stitching the parts around a loop of up to {-(-K // chunk)} iterations ...")
    _stitch(front, body, back, path, {**model_identity(model, layer_name, (H, W), reshape, classes),
                                      gid.GRAPH: "end_to_end"})


def export_end_to_end(model: nn.Module, target_layer, out_dir: str | Path, *, input_size=(224, 224),
                      theta: float = DEFAULTS.theta, chunk: int = DEFAULT_CHUNK, opset: int = 18, log=None,
                      model_name: str | None = None, reshape: str | None = None,
                      replace_user_files: bool = False) -> dict:
    """Write ``unioncam.onnx`` and ``unioncam.json`` into ``out_dir``, each atomically, replacing
    only files unioncam wrote (``replace_user_files``: also a user's files of those names).

    ``log``: called with one line per stage (tracing, ONNX conversion, checks) and its elapsed time,
    so a long export is never a silent wait (the CLI prints them).

    Args:
        model: ``nn.Module`` taking RGB in [0, 1] and returning (B, C) logits.
        theta: AMD's percentile, baked into the graph.
        reshape: a transformer's tokens as (B, D, h, w) maps (:mod:`unioncam.reshape`).
        chunk: masked passes per loop iteration (peak memory ~ ``chunk`` forward passes; README,
            "One ONNX file" has the measured table).

    Returns:
        {"path", "bytes", "nodes", "export_s", "channels", "chunk", "forward_flops", "sha256"} (also
        written to ``unioncam.json`` beside the graph, where ``unioncam bench --onnx`` reads them).
    """
    theta = check_theta(theta)
    chunk = check_positive_int(chunk, "chunk")
    layer_name, layer = resolve_layer(model, target_layer)
    reshape = parse_reshape(reshape)
    H, W = check_input_size(input_size, "input_size")
    opset = check_opset(opset)
    t = time.perf_counter()
    out_dir = Path(out_dir)
    claim([out_dir / E2E_ONNX, out_dir / "unioncam.json"], replace_user_files=replace_user_files)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Built in a temporary folder inside out_dir (same file system: the moves are atomic); only
        # the finished, checked files are moved into place.
        work = tempfile.TemporaryDirectory(prefix=".unioncam-e2e-", dir=out_dir)
    except OSError as e:
        raise UnwritableError(f"cannot write into {out_dir}: {e.strerror}; choose a writable --out folder") from None
    with eval_mode(model), work as tmp:
        tmp = Path(tmp)
        _, C, K, (h, w) = _probe(model, layer_name, layer, (H, W), reshape)
        chunk = min(chunk, K)
        x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0))
        path = tmp / E2E_ONNX
        _build(model, layer_name, layer, x, path, theta=theta, chunk=chunk, classes=C, channels=K, feature=(h, w),
               reshape=reshape, log=log or (lambda line: None), opset=opset)
        stats = graph_stats(path)
        (log or (lambda line: None))(f"wrote {stats['nodes']} nodes in {time.perf_counter() - t:.0f} s")
        info = {"model": model_name or type(model).__name__, "bytes": stats["bytes"], "nodes": stats["nodes"],
                "ops": stats["ops"], "channels": K, "chunk": chunk, "theta": theta, "layer": layer_name,
                "input_size": [H, W], "forward_flops": forward_flops(model, x), "export_s": time.perf_counter() - t,
                "sha256": sha256_file(path)}
        check_loads(path)
        (tmp / "unioncam.json").write_text(json.dumps(info, indent=2))
        # The user may have put files there while the export ran: checked again before each move.
        claim([out_dir / E2E_ONNX, out_dir / "unioncam.json"], replace_user_files=replace_user_files)
        for src, name in ((path, E2E_ONNX), (tmp / "unioncam.json", "unioncam.json")):
            record(out_dir / name, sha256_file(src))
            os.replace(src, out_dir / name)
    info["path"] = str(out_dir / E2E_ONNX)
    return info
