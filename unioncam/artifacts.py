"""The artifact directory that ``unioncam export`` writes and the runtime loads. Torch-free.

Files: ``gradient.onnx``, ``masked_forward.onnx``, ``manifest.json`` (and optionally
``*.engine`` TensorRT engines). The manifest records everything the runtime needs.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import default_mode
from .digests import sha256_file  # noqa: F401 - re-exported: the manifest checks and older callers
from .errors import ArtifactError, OutputPathError, UnwritableError

MANIFEST = "manifest.json"
#: Masked passes per loop iteration of ``unioncam.onnx`` by default: chosen from the README's measured
#: chunk/memory/speed table (speed is flat from 8 up on a CPU; memory grows with the chunk).
END_TO_END_CHUNK = 16
GRADIENT_ONNX = "gradient.onnx"
MASKED_ONNX = "masked_forward.onnx"
FORMAT_VERSION = 1
#: Graphs every artifact folder holds; the manifest must list a SHA-256 for each.
REQUIRED_FILES = (GRADIENT_ONNX, MASKED_ONNX)


def _positive_ints(v, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(type(x) is int and x > 0 for x in v)


def _schema_problem(d: dict) -> str | None:
    """What is wrong with a manifest's fields, or None. Checked before any field is used."""
    import re

    from .validation import MAX_INPUT_SIDE

    checks = [
        ("model", lambda v: isinstance(v, str)),
        ("layer", lambda v: isinstance(v, str) and v != ""),
        ("input_size", lambda v: _positive_ints(v, 2) and max(v) <= MAX_INPUT_SIDE),
        ("feature_size", lambda v: _positive_ints(v, 2)),
        ("channels", lambda v: type(v) is int and v > 0),
        ("num_classes", lambda v: type(v) is int and v > 1),
        ("opset", lambda v: type(v) is int and v > 0),
        ("mean", lambda v: v is None or (isinstance(v, list) and all(isinstance(x, (int, float)) for x in v))),
        ("std", lambda v: v is None or (isinstance(v, list) and all(isinstance(x, (int, float)) and x > 0 for x in v))),
        ("files", lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(h, str)
                                                        and re.fullmatch(r"[0-9a-f]{64}", h) for k, h in v.items())),
        ("exporter_version", lambda v: isinstance(v, str)),
        ("torch_version", lambda v: isinstance(v, str)),
        ("extra", lambda v: isinstance(v, dict) and isinstance(v.get("precisions", {}), dict)
                   and all(isinstance(k, str) and isinstance(f, str) for k, f in v.get("precisions", {}).items())),
    ]
    for key, ok in checks:
        if key not in d and key != "extra":
            return f"field {key!r} is missing"
        if key in d and not ok(d[key]):
            return f"field {key!r} has an invalid value {d[key]!r:.80}"
    missing = [f for f in REQUIRED_FILES if f not in d["files"]]
    if missing:
        return f"'files' lists no SHA-256 for {', '.join(missing)}"
    return None


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
            if Path(directory).is_dir() and any(Path(directory).iterdir()):
                # Not "export --out <that path>": that folder holds other files, which export refuses to replace.
                raise ArtifactError(f"{directory} is not a unioncam export (no {MANIFEST}); export the model into a "
                                    "new folder with `unioncam export --out NEW_FOLDER` and give that folder")
            raise ArtifactError(f"no {MANIFEST} in {directory}: export the model first with `unioncam export --out {directory}`")
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ArtifactError(f"{path} is corrupt ({type(e).__name__}: {e}); re-export the model") from None
        if not isinstance(d, dict):
            raise ArtifactError(f"{path} is corrupt (not a JSON object); re-export the model")
        if d.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{path} has format_version {d.get('format_version')}, this unioncam reads {FORMAT_VERSION}: re-export the model"
            )
        problem = _schema_problem(d)
        if problem:
            raise ArtifactError(f"{path} is corrupt ({problem}); re-export the model")
        d["input_size"] = tuple(d["input_size"])
        d["feature_size"] = tuple(d["feature_size"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def masked_graph(self, directory: str | Path, precision: str = "fp32") -> str:
        """File name of the masked-forward graph ``precision`` runs (:data:`unioncam.validation.PRECISION_GRAPH`);
        ArtifactError if the folder lacks it."""
        from .validation import PRECISION_GRAPH

        precision = PRECISION_GRAPH.get(precision, precision)
        if precision == "fp32":
            return MASKED_ONNX
        name = self.extra.get("precisions", {}).get(precision)
        if name is None:
            raise ArtifactError(f"{directory} has no {precision} masked-forward graph; add it by exporting with "
                                f"`unioncam export ... --out DIR --precision {precision}` (fp32 is always written)")
        return name

    def verify(self, directory: str | Path, names: list[str] | None = None) -> None:
        """Check that each graph (by default both required ones and every other listed file) exists
        and its SHA-256 matches the manifest."""
        for name in names or sorted(set(REQUIRED_FILES) | set(self.files)):
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


#: Files an export folder may hold besides those its manifest lists: written by ``unioncam export``
#: (engines, the one graph and its report), so replacing such a folder deletes nothing of the user's.
_EXPORT_EXTRAS = (MANIFEST, "unioncam.onnx", "unioncam.json")


def check_replaceable(final: str | Path) -> None:
    """Refuse to replace ``final`` unless it is absent, an empty folder, or a previous export whose
    every file is the export's own (listed in its valid manifest, an engine, the one graph).

    Raises:
        OutputPathError: a file, the current folder (or one above it), a folder that is not an
            export, or an export folder holding other files; the message names the path.
    """
    final = Path(final)
    if not final.exists() and not final.is_symlink():
        return
    if not final.is_dir() or final.is_symlink():
        raise OutputPathError(f"{final} exists and is not a folder; unioncam will not replace it: "
                              "give --out a new folder")
    here = Path.cwd().resolve()
    if final.resolve() == here or final.resolve() in here.parents:
        raise OutputPathError(f"{final} is the current folder (or holds it); give --out a new folder, e.g. {final}/unioncam_export")
    entries = sorted(p.name for p in final.iterdir())
    if not entries:
        return
    try:
        manifest = Manifest.load(final)
    except ArtifactError:
        raise OutputPathError(f"{final} is not empty and is not a unioncam export (it holds {_listing(entries)}); "
                              "unioncam will not replace it: give --out a new or empty folder") from None
    own = set(manifest.files) | set(_EXPORT_EXTRAS)
    foreign = [n for n in entries if n not in own and not n.endswith(".engine")]
    if foreign:
        raise OutputPathError(f"{final} is an export folder that also holds other files ({_listing(foreign)}); "
                              "unioncam will not replace it: move them out, or give --out a new folder")


def _listing(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def atomic_directory(final: str | Path, owned: bool = False):
    """Context manager yielding a temporary sibling folder that replaces ``final`` only on success.

    A crash or error leaves ``final`` as it was (absent or the previous export): a runtime never
    loads a half-written artifact. Only an absent or empty folder or a previous export is ever
    replaced (:func:`check_replaceable`, checked before any work and again before the swap), or with
    ``owned`` any folder (an entry of the export cache, which no user file lives in).
    """
    import contextlib
    import shutil

    final = Path(final)

    def check():
        if not owned:
            check_replaceable(final)
        elif final.exists() and not final.is_dir():
            raise OutputPathError(f"{final} is not a folder; unioncam will not replace it")

    check()

    @contextlib.contextmanager
    def _cm():
        parent = final.parent if str(final.parent) else Path(".")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
            os.chmod(tmp, default_mode(directory=True))
        except OSError as e:
            raise UnwritableError(f"cannot write into {parent}: {e.strerror}; choose a writable --out folder") from None
        try:
            yield tmp
            check()  # the user may have put files there while the export ran
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=parent))
                os.replace(final, old / final.name)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except OSError as e:  # a full disk while the graphs were written: say where
            shutil.rmtree(tmp, ignore_errors=True)
            from .atomic import write_error

            raise write_error(e, final) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    return _cm()
