"""Costly or optional modules, declared at the top of the module that uses them and imported on
first use (Polygraphy's ``mod.lazy_import``): the structure stays visible to readers and tools, and
a command pays only for what it runs (torch and the exporter, Ray, KServe, TensorRT, matplotlib).

    torch = lazy_import("torch", extra="torch")
    ...
    torch.zeros(3)  # imported here, once

A missing optional package is :class:`unioncam.errors.BackendUnavailableError` naming the extra
that installs it, at the first use, not a ``ModuleNotFoundError`` at import.
"""
from __future__ import annotations

import importlib
import types

from .errors import BackendUnavailableError


class LazyModule(types.ModuleType):
    """A module imported at its first attribute access."""

    def __init__(self, name: str, extra: str | None = None):
        super().__init__(name)
        self._lazy_extra = extra
        self._lazy_module = None

    def _load(self):
        if self._lazy_module is None:
            try:
                self._lazy_module = importlib.import_module(self.__name__)
            except ModuleNotFoundError as e:
                if self._lazy_extra is None or (e.name or "unioncam").startswith("unioncam"):
                    raise
                raise BackendUnavailableError(f"{self.__name__} needs {e.name}, which is not installed; pip install "
                                              f"\"unioncam[{self._lazy_extra}]\"") from None
        return self._lazy_module

    def __getattr__(self, attr: str):
        if attr.startswith("_lazy_"):
            raise AttributeError(attr)
        return getattr(self._load(), attr)

    def __dir__(self):
        return dir(self._load())


def lazy_import(name: str, extra: str | None = None) -> LazyModule:
    """``name``, imported at its first use.

    Example:
        >>> json = lazy_import("json")
        >>> json.dumps([1])
        '[1]'
    """
    return LazyModule(name, extra)
