"""A Triton model repository for the one graph (``unioncam export --end-to-end --triton DIR``):
``DIR/<name>/config.pbtxt`` and ``DIR/<name>/1/model.onnx``, the path with no Python at all.

The config is Triton's ``ModelConfig`` in protobuf text format: platform ``onnxruntime_onnx``, every
input and output named, typed and shaped from the graph itself (never from a list kept here), no
Triton batching (the graph's batch of 1 is part of its shapes), one instance group on the CPU or the
GPU, and optionally ONNX Runtime's TensorRT execution accelerator. Tests parse it with Triton's own
schema (``tritonclient.grpc.model_config_pb2``).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from unioncam.errors import InvalidInputError

#: ONNX TensorProto element types -> Triton data types (those an exported graph can hold).
TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32", 7: "TYPE_INT64",
                9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64",
                16: "TYPE_BF16"}
#: Instance kinds: where Triton runs the model.
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
#: TensorRT precisions ONNX Runtime's accelerator takes in a Triton config.
TRT_PRECISIONS = ("FP32", "FP16")


def graph_io(onnx_path: str | Path) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of an ONNX graph: ``{"name", "data_type", "dims"}`` each, -1 for a
    dimension with no fixed size; initializers listed as inputs (old IR) are left out."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}

    def describe(values):
        out = []
        for v in values:
            if v.name in weights:
                continue
            t = v.type.tensor_type
            if t.elem_type not in TRITON_TYPES:
                raise InvalidInputError(f"{onnx_path}: {v.name} has ONNX element type {t.elem_type}, which Triton "
                                        "has no type for")
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out.append({"name": v.name, "data_type": TRITON_TYPES[t.elem_type], "dims": dims})
        return out

    return describe(model.graph.input), describe(model.graph.output)


def model_config(name: str, inputs: list[dict], outputs: list[dict], *, kind: str = "cpu", count: int = 1,
                 tensorrt: str | None = None) -> str:
    """Triton's ``config.pbtxt`` text for the one graph.

    Args:
        name: the model's name (its folder's name, as Triton requires).
        inputs, outputs: :func:`graph_io`'s lists.
        kind: ``"cpu"`` or ``"gpu"``: the instance group.
        count: instances of the model.
        tensorrt: None, or ``"FP32"``/``"FP16"``: ONNX Runtime's TensorRT accelerator (GPU only).

    Example:
        >>> print(model_config("m", [{"name": "x", "data_type": "TYPE_FP32", "dims": [1, 3]}], []).splitlines()[1])
        platform: "onnxruntime_onnx"
    """
    check_model_name(name)
    if kind not in KINDS:
        raise InvalidInputError(f"instance kind {kind!r}: choose {' or '.join(KINDS)}")
    if tensorrt is not None and (kind != "gpu" or tensorrt not in TRT_PRECISIONS):
        raise InvalidInputError(f"TensorRT acceleration runs on a GPU instance with precision "
                                f"{' or '.join(TRT_PRECISIONS)}; got kind {kind!r}, precision {tensorrt!r}")

    def tensors(label: str, items: list[dict]) -> str:
        body = ",\n".join(f'  {{\n    name: "{t["name"]}"\n    data_type: {t["data_type"]}\n'
                          f'    dims: [ {", ".join(str(d) for d in t["dims"])} ]\n  }}' for t in items)
        return f"{label} [\n{body}\n]\n"

    # max_batch_size 0: Triton passes the shapes as they are; the graph's batch of 1 is in its dims.
    text = f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
    text += tensors("input", inputs) + tensors("output", outputs)
    text += f"instance_group [\n  {{\n    count: {count}\n    kind: {KINDS[kind]}\n  }}\n]\n"
    if tensorrt:
        text += ("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n      {\n"
                 '        name: "tensorrt"\n'
                 f'        parameters {{ key: "precision_mode" value: "{tensorrt}" }}\n'
                 '        parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n'
                 "      }\n    ]\n  }\n}\n")
    return text


def check_model_name(name: str) -> str:
    """A Triton model name: a folder name of letters, digits, '-', '_' and '.' (not '.' or '..')."""
    if not name or name in (".", "..") or not all(c.isalnum() or c in "-_." for c in name):
        raise InvalidInputError(f"Triton model name {name!r}: use letters, digits, '-', '_' and '.'")
    return name


def repository_paths(repo: str | Path, name: str) -> tuple[Path, Path]:
    """(config.pbtxt, 1/model.onnx) of model ``name`` in repository ``repo``."""
    folder = Path(repo) / check_model_name(name)
    return folder / "config.pbtxt", folder / "1" / "model.onnx"


def write_repository(onnx_path: str | Path, repo: str | Path, *, name: str = "unioncam", kind: str = "cpu",
                     tensorrt: str | None = None, replace_user_files: bool = False) -> dict:
    """Writes the model repository for ``onnx_path`` (the one graph) into ``repo``; only files this
    package wrote are replaced (:mod:`unioncam.ownership`). Returns ``{"config", "model", "inputs",
    "outputs"}``."""
    from unioncam.atomic import atomic_file, write_text
    from unioncam.ownership import claim

    config_path, model_path = repository_paths(repo, name)
    claim([config_path, model_path], replace_user_files=replace_user_files, flag="--replace-user-files",
          elsewhere="choose another --triton folder")
    inputs, outputs = graph_io(onnx_path)
    text = model_config(name, inputs, outputs, kind=kind, tensorrt=tensorrt)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with open(onnx_path, "rb") as src, atomic_file(model_path, own=True) as dst:
        shutil.copyfileobj(src, dst, 16 << 20)
    write_text(config_path, text, own=True)  # last: a repository with a config is a complete one
    return {"config": config_path, "model": model_path, "inputs": inputs, "outputs": outputs}
