"""The artifact directory that ``unioncam export`` writes and the runtime loads. Torch-free.

Files: ``gradient.onnx``, ``masked_forward.onnx``, ``manifest.json`` (and optionally
``*.engine`` TensorRT engines). The manifest records everything the runtime needs.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ArtifactError

MANIFEST = "manifest.json"
GRADIENT_ONNX = "gradient.onnx"
MASKED_ONNX = "masked_forward.onnx"
FORMAT_VERSION = 1


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


@dataclass
class Manifest:
    """What an artifact directory holds. Shapes: image (B, 3, H, W); activations (B, K, h, w)."""

    model: str
    layer: str
    input_size: tuple[int, int]
    channels: int
    feature_size: tuple[int, int]
    num_classes: int
    mean: list[float] | None
    std: list[float] | None
    opset: int
    files: dict[str, str]  # file name -> SHA-256
    exporter_version: str
    torch_version: str
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["feature_size"] = list(self.feature_size)
        return json.dumps(d, indent=2)

    @classmethod
    def load(cls, directory: str | Path) -> "Manifest":
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise ArtifactError(f"no {MANIFEST} in {directory}: export the model first with `unioncam export --out {directory}`")
        try:
            d = json.loads(path.read_text())
            if d.get("format_version") != FORMAT_VERSION:
                raise ArtifactError(
                    f"{path} has format_version {d.get('format_version')}, this unioncam reads {FORMAT_VERSION}: re-export the model"
                )
            d["input_size"] = tuple(d["input_size"])
            d["feature_size"] = tuple(d["feature_size"])
            return cls(**d)
        except ArtifactError:
            raise
        except (ValueError, TypeError, KeyError) as e:
            raise ArtifactError(f"{path} is corrupt ({type(e).__name__}: {e}); re-export the model") from None

    def verify(self, directory: str | Path, names: list[str] | None = None) -> None:
        """Check that each listed file exists and its SHA-256 matches the manifest."""
        for name in names or list(self.files):
            path = Path(directory) / name
            if name not in self.files:
                raise ArtifactError(f"{name} is not listed in {Path(directory) / MANIFEST}; re-export the model")
            if not path.is_file():
                raise ArtifactError(f"{path} is missing; re-export the model with `unioncam export`")
            digest = sha256_file(path)
            if digest != self.files[name]:
                raise ArtifactError(
                    f"{path} does not match its manifest (SHA-256 {digest[:12]}... vs {self.files[name][:12]}...): "
                    "the file was changed or is corrupt; re-export the model"
                )


def atomic_directory(final: str | Path):
    """Context manager yielding a temporary sibling folder that replaces ``final`` only on success.

    A crash or error leaves ``final`` as it was (absent or the previous export): a runtime never
    loads a half-written artifact.
    """
    import contextlib
    import shutil

    final = Path(final)

    @contextlib.contextmanager
    def _cm():
        parent = final.parent if str(final.parent) else Path(".")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
        except OSError as e:
            raise ArtifactError(f"cannot write into {parent}: {e.strerror}; choose a writable --out folder") from None
        try:
            yield tmp
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=parent))
                os.replace(final, old / final.name)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    return _cm()
