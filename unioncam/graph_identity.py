"""Which model a graph was exported from: the fingerprint every exported ONNX file carries in its
``metadata_props``, read without loading the graph. Torch-free (the runtime checks it).

Keys (all strings):

- ``unioncam.weights_sha256``: SHA-256 of the model's weights (:func:`unioncam.export.fingerprint.weights_sha256`);
- ``unioncam.layer``, ``unioncam.input_size`` (``"HxW"``), ``unioncam.reshape`` (``""`` for a CNN),
  ``unioncam.num_classes``;
- ``unioncam.graph``: ``gradient``, ``masked_forward`` or ``end_to_end``;
- a precision variant of the masked-forward graph also has ``unioncam.precision`` and
  ``unioncam.source_sha256``, the SHA-256 of the FP32 graph file it was made from.

A fine-tuned copy of a model has other weights, so its graphs carry another fingerprint: a set of
graphs mixing the two is refused by name, whatever its numbers look like (a fine-tuned graph's
black-image score can differ from the original's by less than any sound tolerance).
"""
from __future__ import annotations

from pathlib import Path

from .errors import ArtifactError

PREFIX = "unioncam."
WEIGHTS, LAYER, INPUT_SIZE, RESHAPE, NUM_CLASSES = (PREFIX + k for k in
                                                    ("weights_sha256", "layer", "input_size", "reshape", "num_classes"))
GRAPH, PRECISION, SOURCE = PREFIX + "graph", PREFIX + "precision", PREFIX + "source_sha256"
#: What every graph of one export must agree on.
IDENTITY = (WEIGHTS, LAYER, INPUT_SIZE, RESHAPE, NUM_CLASSES)
_METADATA_FIELD = 14  # ModelProto.metadata_props


class _Damaged(ArtifactError):
    """The bytes are no protobuf message (raised while walking; :func:`read_metadata` names the file)."""


def _varint(f) -> int | None:
    shift = result = 0
    while True:
        b = f.read(1)
        if not b:
            return None if shift == 0 else -1
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            return -1


def _entry(data: bytes) -> tuple[str, str]:
    import io

    f, key, value = io.BytesIO(data), "", ""
    while (tag := _varint(f)) is not None:
        if tag < 0 or tag & 7 != 2:
            raise _Damaged("metadata entry is not two strings")
        n = _varint(f)
        if n is None or n < 0:
            raise _Damaged("truncated metadata entry")
        text = f.read(n).decode("utf-8", "replace")
        if tag >> 3 == 1:
            key = text
        elif tag >> 3 == 2:
            value = text
    return key, value


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, read by walking the top-level protobuf fields and
    seeking past the rest (the graph is not read: VGG16's 550 MB cost a seek).

    Raises:
        ArtifactError: the file is unreadable or not a protobuf message.
    """
    path = Path(path)
    props: dict[str, str] = {}
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            while (tag := _varint(f)) is not None:
                if tag < 0:
                    raise _Damaged("bad field tag")
                field, wire = tag >> 3, tag & 7
                if wire == 0:
                    if _varint(f) is None:
                        raise _Damaged("truncated varint")
                elif wire == 1:
                    f.seek(8, 1)
                elif wire == 5:
                    f.seek(4, 1)
                elif wire == 2:
                    n = _varint(f)
                    if n is None or n < 0 or f.tell() + n > size:
                        raise _Damaged("a field runs past the end of the file")
                    if field == _METADATA_FIELD:
                        key, value = _entry(f.read(n))
                        props[key] = value
                    else:
                        f.seek(n, 1)
                else:
                    raise _Damaged(f"wire type {wire}")
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror}; re-export the model") from None
    except _Damaged as e:
        raise ArtifactError(f"{path} is not an ONNX file ({e}); re-export the model") from None
    return props


def fingerprint(path: str | Path) -> dict[str, str]:
    """The unioncam keys of ``path``'s metadata (empty for a graph unioncam did not export)."""
    return {k: v for k, v in read_metadata(path).items() if k.startswith(PREFIX)}


def check_export(directory: str | Path, manifest, graphs) -> None:
    """Every graph of ``graphs`` (file names in ``directory``) carries a fingerprint, and they all
    agree with each other and with the manifest: one model, one layer, one input size, one reshape,
    one class count; a precision variant was made from this folder's FP32 masked-forward graph.

    Raises:
        ArtifactError: naming the graphs that differ and what differs; "re-export the model".
    """
    directory = Path(directory)
    prints = {name: fingerprint(directory / name) for name in dict.fromkeys(graphs)}
    blank = [n for n, p in prints.items() if WEIGHTS not in p]
    if blank:
        raise ArtifactError(f"{', '.join(blank)} carries no model fingerprint (not exported by this unioncam, or "
                            "by a version before fingerprints); re-export the model")
    H, W = manifest.input_size
    expected = {LAYER: manifest.layer, INPUT_SIZE: f"{H}x{W}", RESHAPE: manifest.extra.get("reshape") or "",
                NUM_CLASSES: str(manifest.num_classes)}
    recorded = manifest.extra.get("fingerprint", {}).get("weights_sha256")
    first, *rest = prints
    for key in IDENTITY:
        values = {n: prints[n].get(key) for n in prints}
        if len(set(values.values())) > 1:
            differ = ", ".join(f"{n} has {v!r:.24}" for n, v in values.items())
            raise ArtifactError(f"the graphs come from different models ({key.removeprefix(PREFIX)}: {differ}); "
                                "re-export the model")
        want = recorded if key == WEIGHTS else expected[key]
        if want is not None and values[first] != want:
            raise ArtifactError(f"{first} was exported with {key.removeprefix(PREFIX)} {values[first]!r:.24}, the "
                                f"manifest says {want!r:.24}; re-export the model")
    fp32 = manifest.files.get("masked_forward.onnx")
    for name, p in prints.items():
        if PRECISION in p:
            record = manifest.extra.get("variants", {}).get(p[PRECISION], {})
            if p.get(SOURCE) != fp32 or record.get("source_sha256") != fp32:
                raise ArtifactError(f"{name} was not made from this folder's masked_forward.onnx (its source "
                                    f"SHA-256 {str(p.get(SOURCE))[:12]}..., the manifest's record "
                                    f"{str(record.get('source_sha256'))[:12]}..., the graph "
                                    f"{str(fp32)[:12]}...); re-export the model with --precision {p[PRECISION]}")
