"""The Ray Data actor: one runtime ``Explainer`` per actor, loaded once, explaining a batch of
image paths and writing each image's outputs atomically. Every failure becomes a row with status
``error`` and a one-line reason: one bad image never stops the pipeline."""
from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

#: Index columns, in order (README, "Whole data sets").
COLUMNS = ("image", "stem", "status", "error", "class_idx", "class_name", "score", "selected",
           "beta_denoising", "beta_region", "beta_de_region", "masked_passes", "read_ms", "explain_ms", "write_ms",
           "png", "npy", "json", "worker")


def empty_row(image: str, stem: str) -> dict:
    return {"image": image, "stem": stem, "status": "", "error": "", "class_idx": -1, "class_name": "",
            "score": float("nan"), "selected": "", "beta_denoising": float("nan"), "beta_region": float("nan"),
            "beta_de_region": float("nan"), "masked_passes": -1, "read_ms": 0.0, "explain_ms": 0.0, "write_ms": 0.0,
            "png": "", "npy": "", "json": "", "worker": ""}


def row_from_report(rep: dict, stem: str, paths: dict, status: str, worker: str = "") -> dict:
    row = empty_row(rep["image"], stem)
    t = rep.get("timings_ms", {})
    row.update(status=status, class_idx=int(rep["class_idx"]), class_name=rep["class_name"], score=float(rep["score"]),
               selected=rep.get("selected") or "", masked_passes=int(rep.get("stats", {}).get("masked_passes", -1)),
               read_ms=float(t.get("read", 0.0)), explain_ms=float(t.get("total", 0.0)), worker=worker,
               **{k: str(v) for k, v in paths.items()})
    for k in ("beta_denoising", "beta_region", "beta_de_region"):
        row[k] = float(rep[k]) if rep.get(k) is not None else float("nan")
    return row


def unpack_artifacts(packed: dict) -> Path:
    """Write an artifact folder shipped through the object store ({name: bytes}) to local disk,
    once per node (keyed by the manifest's hash), and return it."""
    import hashlib

    from ..atomic import write_bytes

    key = hashlib.sha256(packed["manifest.json"]).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"unioncam-artifacts-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in packed.items():
        target = folder / name
        if not target.is_file() or target.stat().st_size != len(data):
            write_bytes(target, data)
    return folder


class ExplainWorker:
    """``map_batches`` callable class: {"image": [...], "stem": [...]} -> index rows."""

    def __init__(self, artifacts: str, packed, out: str, settings: dict, threads: int | None):
        from ..runtime import Explainer

        folder = Path(artifacts)
        if packed is not None and not (folder / "manifest.json").is_file():
            folder = unpack_artifacts(packed)  # a node that does not share the driver's disk
        self.out = Path(out)
        self.settings = settings
        self.explainer = Explainer.from_settings(folder, settings, threads=threads)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict) -> dict:
        rows = [self.explain_one(str(image), str(path), str(stem))
                for image, path, stem in zip(batch["image"], batch["path"], batch["stem"])]
        return {c: np.array([r[c] for r in rows], dtype=object if isinstance(rows[0][c], str) else None)
                for c in COLUMNS}

    def explain_one(self, image: str, path: str, stem: str) -> dict:
        """``image`` as the user gave it (the report's name), ``path`` absolute (a worker's working
        directory is not the driver's)."""
        from ..errors import UnionCAMError
        from ..image_io import read_rgb, to_model_input
        from ..outputs import report, write_outputs

        row = empty_row(image, stem)
        row["worker"] = self.worker
        try:
            t = time.perf_counter()
            rgb = read_rgb(path, lenient=bool(self.settings.get("lenient")))
            x = to_model_input(rgb, tuple(self.settings["input_size"]))[None]
            read_ms = (time.perf_counter() - t) * 1e3
            exp = self.explainer(x, self.settings.get("class_requested"))
            rep = report(self.settings, image, rgb, exp, {"read": read_ms})
            t = time.perf_counter()
            paths = write_outputs(self.out, stem, rgb, exp.cam[0], rep)
            row = row_from_report(rep, stem, paths, "ok", self.worker)
            row["write_ms"] = (time.perf_counter() - t) * 1e3
        except UnionCAMError as e:
            row.update(status="error", error=_one_line(str(e)))
        except OSError as e:
            row.update(status="error", error=_one_line(f"cannot read or write: {e.strerror or e}"))
        except Exception as e:  # noqa: BLE001 - any fault of one image is that image's row, not a crash
            row.update(status="error", error=_one_line(f"internal error {type(e).__name__}: {e}"))
        return row


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]
