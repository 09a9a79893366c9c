"""Explain one image file into an output folder: read, explain, report, write. The one sequence
behind ``unioncam explain`` and the Ray workers (:mod:`unioncam.distributed.worker`).

Images are decoded one at a time, as they are explained: a run over many large photos holds one.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from .errors import UnionCAMError
from .image_io import read_rgb, to_model_input
from .outputs import image_digest, report, write_outputs


def explain_file(path: str | Path, stem: str, out: Path, *, explain: Callable, settings: dict | Callable[[], dict],
                 size: tuple[int, int], name: str | None = None, lenient: bool = False,
                 timings: Callable[[], dict] | None = None) -> tuple[dict, dict, float]:
    """Explain ``path`` and write ``out/<stem>.png``, ``_cam.npy`` and ``.json``.

    Args:
        explain: ``(x (1, 3, H, W) float32 in [0, 1]) -> Explanation``; called after the image is read.
        settings: the run's report settings, or a callable giving them after ``explain`` ran (a
            layer the explainer chose at load is known only then).
        size: (H, W) of the model input.
        name: the image as the user gave it, for the report (default: ``path``).
        timings: ``() -> {stage: ms}``, extra report timings, e.g. the explainer's load time.

    Returns:
        (report dict, {kind: written path}, write time in ms).

    Raises:
        UnionCAMError (a bad image, a refused input), OSError (reading or writing): the caller
        reports the file and goes on with the next (:func:`failure_message`).
    """
    t = time.perf_counter()
    rgb = read_rgb(path, lenient=lenient)
    x = to_model_input(rgb, tuple(size))[None]
    read_ms = (time.perf_counter() - t) * 1e3
    exp = explain(x)
    if callable(settings):
        settings = settings()
    rep = report(settings, str(name or path), rgb, exp, {**(timings() if timings else {}), "read": read_ms},
                 digest=image_digest(path))
    t = time.perf_counter()
    paths = write_outputs(out, stem, rgb, exp.cam[0], rep, plain=bool(settings.get("plain")))
    return rep, paths, (time.perf_counter() - t) * 1e3


def failure_message(error: BaseException) -> str:
    """One line saying why a file was not explained, for an error row or the CLI's stderr."""
    if isinstance(error, UnionCAMError):
        text = str(error)
    elif isinstance(error, OSError):
        where = f" {error.filename}" if getattr(error, "filename", None) else ""
        text = f"cannot read or write{where}: {error.strerror or error}"
    else:
        text = f"internal error {type(error).__name__}: {error} (rerun with --debug for a traceback and report it)"
    return " ".join(text.split())[:500]


class LazyExplainer:
    """``make() -> (explain, layer)`` run at the first call, so that a run whose every image is bad
    never loads (or exports) a model; ``load_ms`` is the time ``make`` took. A failure of ``make``
    is kept in ``load_error``: it concerns the run, not the image (the caller stops)."""

    def __init__(self, make: Callable):
        self._make, self._explain, self.layer, self.load_ms = make, None, None, 0.0
        self.load_error: BaseException | None = None

    def __call__(self, x):
        if self._explain is None:
            t = time.perf_counter()
            try:
                self._explain, self.layer = self._make()
            except BaseException as e:
                self.load_error = e
                raise
            self.load_ms = (time.perf_counter() - t) * 1e3
        return self._explain(x)
