"""The runtime's backends: one registry (after OpenVINO XAI's and Polygraphy's backends).

An entry says what the CLI, the bench, ``--list`` and :class:`unioncam.runtime.Explainer` need to
know: the backend's name, its devices, the default masked passes per call on each, whether it
runs engines built ahead of time, and how to make a runner for one graph. Adding a backend is one
folder with a runner and one :func:`register_backend` call (docs/layout.md, "Layout").
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from unioncam.errors import BackendUnavailableError


@dataclass(frozen=True)
class BackendInfo:
    """One backend.

    Attributes:
        name: ``Explainer(backend=...)``, ``--backend``.
        devices: the devices it runs on, first the default.
        default_batch: masked passes per call on each device when the user gives none.
        needs_engines: runs engines built by ``unioncam export --engine`` (not the ONNX files).
        runner: ``"module:function"`` or a callable, ``(path, *, device, manifest, graph, threads, buffers,
            session_options) -> Runner`` for one graph; imported only when a runner is made.
        available: ``() -> str | None``: None where it can run here, else why not.
        summary: one line for ``--list``.
        eager: the eager PyTorch reference (no runners: ``unioncam.UnionCAM`` and its baselines).
    """

    name: str
    devices: tuple[str, ...]
    default_batch: dict = field(default_factory=dict)
    needs_engines: bool = False
    runner: str | Callable = ""
    available: Callable[[], str | None] = lambda: None
    summary: str = ""
    eager: bool = False

    def make_runner(self, directory: Path, graph: str, *, device: str, manifest, **options):
        """A runner (not yet activated) for ``graph`` (an ONNX file name of the export)."""
        if device not in self.devices:
            raise BackendUnavailableError(f"backend {self.name!r} runs on device {' or '.join(map(repr, self.devices))}, "
                                          f"not {device!r}")
        if self.eager:
            raise BackendUnavailableError(f"backend {self.name!r} is the eager reference, which runs no exported graph; "
                                          "use unioncam.UnionCAM (or --backend torch on the CLI)")
        factory = self.runner
        if isinstance(factory, str):
            module, _, fn = factory.partition(":")
            factory = getattr(importlib.import_module(module), fn)
        return factory(Path(directory), graph, device=device, manifest=manifest, **options)


BACKENDS: dict[str, BackendInfo] = {}


def register_backend(info: BackendInfo) -> BackendInfo:
    """Add (or replace) a backend."""
    BACKENDS[info.name] = info
    return info


def unregister_backend(name: str) -> None:
    BACKENDS.pop(name, None)


def backend_info(name: str) -> BackendInfo:
    """The registered backend, or BackendUnavailableError listing the names."""
    try:
        return BACKENDS[name]
    except (KeyError, TypeError):
        raise BackendUnavailableError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}") from None


def devices() -> list[str]:
    """Every device some backend runs on, in registration order."""
    return list(dict.fromkeys(d for info in BACKENDS.values() for d in info.devices))
