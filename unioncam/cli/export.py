"""``unioncam export``: ONNX graphs (+ TensorRT engines) for a registered model."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..artifacts import END_TO_END_CHUNK, Manifest, check_replaceable
from ..errors import UsageError
from ..export.triton import model_config, repository_paths, write_repository
from ..model_specs import spec
from ..ownership import claim
from ..reshape import parse_reshape
from ..settings import DEFAULTS
from ..validation import GRAPH_PRECISIONS
from ..validation import MAX_GRAPH_BATCH as MAX_BATCH
from ..validation import check_input_size, check_opset, check_positive_int, check_theta
from .common import add_replace_option, as_usage_error, check_out_folder

from ..lazy import lazy_import

# The exporter and the models need torch (the torch extra) and seconds to import: declared here,
# imported when `unioncam export` runs.
exporter = lazy_import("unioncam.export.exporter", extra="torch")
end_to_end = lazy_import("unioncam.export.end_to_end", extra="torch")
precision_graphs = lazy_import("unioncam.export.precision", extra="torch")
export_cache = lazy_import("unioncam.export_cache", extra="torch")
models = lazy_import("unioncam.models", extra="torch")
trt_builder = lazy_import("unioncam.runtime.backends.tensorrt.builder", extra="tensorrt")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export gradient.onnx, masked_forward.onnx, manifest.json (and TensorRT engines)",
        description="Export a registered model around a target layer into a folder the runtime loads.",
    )
    p.add_argument("--model", default="efficientnet_lite0", help="registered model name (default: efficientnet_lite0)")
    p.add_argument("--weights", type=Path, help="checkpoint file (torchvision state_dict for vgg16/resnet50)")
    p.add_argument("--layer", help="target layer (default: the model's documented default)")
    p.add_argument("--reshape", help="a vision transformer's layer output as maps: tokens, tokens:C:HxW or bhwc "
                                     "(default: found with the layer)")
    p.add_argument("--input-size", type=int, nargs="+", help="H [W] of the input (default: the model's)")
    p.add_argument("--out", type=Path, required=True, help="artifact folder to write: a new or empty folder, or a previous export (replaced atomically); "
                        "anything else is refused")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--engine", action="store_true", help="also build TensorRT engines")
    p.add_argument("--fp16", action="store_true", help="allow FP16 kernels in the engines (standard TensorRT)")
    p.add_argument("--max-batch", type=int, default=64, help="engine profile: max batch / maps per call (default 64)")
    p.add_argument("--compute-capability", help="TensorRT-RTX: build ahead of time for SM80/SM86/SM89 (no GPU needed)")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=GRAPH_PRECISIONS,
                   help="also write masked_forward.fp16.onnx / masked_forward.int8.onnx, the cheaper masked passes "
                        "(docs/budgets.md, \"Latency budgets\"); fp32 is always written")
    p.add_argument("--end-to-end", action="store_true",
                   help="write unioncam.onnx instead: the whole method in one graph (image in, explanation out)")
    p.add_argument("--theta", type=float,
                   help=f"--end-to-end: AMD percentile baked into the graph (default {DEFAULTS.theta:g})")
    add_replace_option(p)
    p.add_argument("--chunk", type=int, default=END_TO_END_CHUNK,
                   help="--end-to-end: masked passes per loop iteration inside the graph (peak memory ~ chunk "
                        "forward passes; docs/one-graph.md, \"One graph, no Python\", has the measured table)")
    triton = p.add_argument_group("a Triton model repository for the one graph (docs/serve.md, \"Triton\")")
    triton.add_argument("--triton", type=Path, metavar="DIR",
                        help="--end-to-end: also write DIR/NAME/config.pbtxt and DIR/NAME/1/model.onnx (platform "
                             "onnxruntime_onnx, inputs and outputs from the graph)")
    triton.add_argument("--triton-name", default="unioncam", metavar="NAME", help="the model's name (default unioncam)")
    triton.add_argument("--triton-device", choices=("cpu", "gpu"), default="cpu",
                        help="the instance group's kind (default cpu)")
    triton.add_argument("--triton-tensorrt", choices=("FP32", "FP16"),
                        help="with --triton-device gpu: ONNX Runtime's TensorRT accelerator at this precision")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    s = spec(args.model)
    size = _check_options(args, s)  # every option before the model loads (a minute for the larger ones)
    model, default_layer = models.load(args.model, args.weights)
    layer, reshape = export_cache.choose_layer(args.layer or default_layer, args.model, model, size, args.reshape)
    layer = args.layer or layer
    if args.end_to_end:
        _export_one_graph(args, model, layer, size, reshape)
        return 0
    t = time.perf_counter()
    manifest = exporter.export(model, layer, args.out, input_size=size, opset=args.opset, model_name=args.model, mean=s.mean,
                      std=s.std, reshape=reshape)
    print(f"exported {args.model} layer {manifest.layer} (K={manifest.channels}, {manifest.feature_size[0]}x"
          f"{manifest.feature_size[1]}) to {args.out} in {time.perf_counter() - t:.1f} s")
    for precision in dict.fromkeys(args.precision):
        if precision != "fp32":
            t = time.perf_counter()
            path = precision_graphs.add_precision(args.out, precision)
            print(f"  {precision} masked passes: {path.name} in {time.perf_counter() - t:.1f} s")
    manifest = Manifest.load(args.out)
    for name in manifest.files:
        st = exporter.graph_stats(args.out / name)
        print(f"  {name}: {st['bytes'] / 1e6:.1f} MB, {st['nodes']} nodes")
    if args.engine:
        for name in manifest.files:
            header = trt_builder.build_engine(args.out / name, fp16=args.fp16, max_batch=args.max_batch,
                                  compute_capability=args.compute_capability)
            print(f"  {Path(name).with_suffix('.engine')}: {header['trt_module']} {header['trt_version']}, "
                  f"{header['gpu_name']}, {header['engine_bytes'] / 1e6:.1f} MB, built in {header['build_seconds']:.1f} s")
    return 0


def _check_options(args: argparse.Namespace, s) -> tuple[int, int]:
    """Every option's value (a bad one is exit 2) and every output's claim; the input size."""
    with as_usage_error("--theta"):
        check_theta(args.theta)
    with as_usage_error("--chunk"):
        check_positive_int(args.chunk, "--chunk")
    with as_usage_error("--max-batch"):
        check_positive_int(args.max_batch, "--max-batch")
        if args.max_batch > MAX_BATCH:
            raise UsageError(f"--max-batch {args.max_batch} is above the graphs' largest batch, {MAX_BATCH}")
    with as_usage_error("--reshape"):
        parse_reshape(args.reshape)
    check_opset(args.opset)
    with as_usage_error():
        size = check_input_size(args.input_size) if args.input_size else s.input_size
    check_out_folder(args.out)
    if args.triton is not None:
        if not args.end_to_end:
            raise UsageError("--triton writes a model repository for the one graph; add --end-to-end")
        with as_usage_error("--triton"):
            model_config(args.triton_name, [], [], kind=args.triton_device, tensorrt=args.triton_tensorrt)
            check_out_folder(args.triton)
        claim(list(repository_paths(args.triton, args.triton_name)), replace_user_files=args.replace_user_files,
              elsewhere="choose another --triton folder")
    if args.end_to_end:
        claim([args.out / "unioncam.onnx", args.out / "unioncam.json"], replace_user_files=args.replace_user_files)
    else:
        check_replaceable(args.out)
    return size


def _export_one_graph(args: argparse.Namespace, model, layer: str, size, reshape) -> None:
    """``--end-to-end``: unioncam.onnx, and the Triton repository and TensorRT's parse where asked."""
    info = end_to_end.export_end_to_end(model, layer, args.out, input_size=size, theta=args.theta, chunk=args.chunk,
                             opset=args.opset, model_name=args.model, reshape=reshape,
                             replace_user_files=args.replace_user_files,
                             log=lambda line: print(f"unioncam: {line}", file=sys.stderr, flush=True))
    print(f"exported {args.model} layer {info['layer']} end to end to {info['path']}: {info['bytes'] / 1e6:.1f} MB, "
          f"{info['nodes']} nodes, up to {info['channels']} masked passes in chunks of {info['chunk']}, "
          f"{info['export_s']:.0f} s")
    if args.triton is not None:
        repo = write_repository(info["path"], args.triton, name=args.triton_name, kind=args.triton_device,
                                tensorrt=args.triton_tensorrt, replace_user_files=args.replace_user_files)
        print(f"  Triton model repository: {repo['config']} and {repo['model']} ({len(repo['inputs'])} inputs, "
              f"{len(repo['outputs'])} outputs, {args.triton_device}"
              f"{', TensorRT ' + args.triton_tensorrt if args.triton_tensorrt else ''})")
    if args.engine:
        print(f"  TensorRT: {trt_builder.parse_check(info['path'], compute_capability=args.compute_capability)}")
