"""The Ray Data actor: one runtime ``Explainer`` per actor, loaded once, explaining a batch of
image paths and writing each image's outputs atomically. Every failure becomes a row with status
``error`` and a one-line reason: one bad image never stops the pipeline."""
from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import numpy as np

from ..explain_files import explain_file, failure_message

#: Index columns, in order (docs/ray.md, "Whole data sets").
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

    def __init__(self, artifacts: str, packed, out: str, settings: dict, threads: int | None,
                 consents: dict | None = None):
        from ..ownership import grant
        from ..runtime import Explainer

        grant(consents)  # the user's files the driver was allowed to replace, as they were then
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
        from ..ownership import writing_as

        row = empty_row(image, stem)
        row["worker"] = self.worker
        with writing_as("explain"):
            return self._explain_one(row, image, path, stem)

    def _explain_one(self, row: dict, image: str, path: str, stem: str) -> dict:
        try:
            rep, paths, write_ms = explain_file(
                path, stem, self.out, explain=lambda x: self.explainer(x, self.settings.get("class_requested")),
                settings=self.settings, size=tuple(self.settings["input_size"]), name=image,
                lenient=bool(self.settings.get("lenient")))
            row = row_from_report(rep, stem, paths, "ok", self.worker)
            row["write_ms"] = write_ms
        except Exception as e:  # noqa: BLE001 - any fault of one image is that image's row, not a crash
            row.update(status="error", error=failure_message(e))
        return row
