"""Typed exceptions. Every error a user can cause is one of these, with a message that says what to do.

Torch-free: the runtime imports this module.
"""
from __future__ import annotations


class UnionCAMError(Exception):
    """Base class of every error unioncam raises on purpose."""


class InvalidInputError(UnionCAMError, ValueError):
    """An image, tensor, class index or parameter is malformed (shape, dtype, range, NaN)."""


class InvalidTypeError(InvalidInputError, TypeError):
    """An argument has the wrong type (a list where an array is needed, a bool as a class index);
    also a ``TypeError``, so ``except TypeError`` keeps working."""


class ImageReadError(UnionCAMError, ValueError):
    """An image file is missing, unreadable or not an image."""


class LayerNotFoundError(UnionCAMError, KeyError):
    """The target layer name does not exist in the model, or the layer is unusable as a target."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelNotFoundError(UnionCAMError, KeyError):
    """An unknown model name was asked of the registry."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ModelLoadError(UnionCAMError, RuntimeError):
    """A model factory raised, or cannot be called without arguments."""


class WeightsError(UnionCAMError, ValueError):
    """A weights file is missing, unreadable or does not fit the model."""


class ExportError(UnionCAMError, RuntimeError):
    """A model or layer cannot be exported (unsupported op, bad output, unwritable directory)."""


class UnsupportedOpError(ExportError):
    """The model has an op with no ONNX translation or decomposition in the exporter."""


class ArtifactError(UnionCAMError, RuntimeError):
    """An exported artifact directory or engine is missing, corrupt, stale or foreign."""


class UnwritableError(ArtifactError):
    """An output folder cannot be created or written (permissions, a read-only or full disk)."""


class BackendUnavailableError(UnionCAMError, RuntimeError):
    """The requested backend or device is not available on this machine."""


class RunnerStateError(UnionCAMError, RuntimeError):
    """A runner or explainer was used while not active (before ``activate()`` or after ``close()``)."""


class UsageError(UnionCAMError, ValueError):
    """A command-line flag has a bad value; the CLI exits 2, as argparse does."""


class OutputPathError(UsageError):
    """An output path holds something unioncam did not write (a file, a folder with the user's own
    files, the current folder): refused, never replaced; the CLI exits 2."""
