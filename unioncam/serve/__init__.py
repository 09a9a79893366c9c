"""Serving explanations over the network: ``unioncam serve`` (KServe's model server: v1 ``:predict``
and ``:explain``, v2 ``/infer`` over REST and gRPC) and its client, ``unioncam explain --server``.

:mod:`.protocol` (the tensors, torch- and KServe-free), :mod:`.admission` (slots, deadlines,
cancellation), :mod:`.network` (the host and ports, checked), :mod:`.asgi` (the REST middleware:
admission, limits, disconnects, access lines), :mod:`.model` (the KServe model on its hooks),
:mod:`.server` (the REST and gRPC servers, SIGTERM), :mod:`.client`.
"""
from __future__ import annotations

import sys


def import_kserve():
    """``kserve``, imported with an empty command line: its ``model_server`` module parses
    ``sys.argv`` when imported, and would read ``unioncam serve``'s options as its own."""
    if "kserve" in sys.modules:
        return sys.modules["kserve"]
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        import kserve
    except ImportError as e:
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError(f"unioncam serve needs KServe's model server ({e}); install it with "
                                      "pip install \"unioncam[serve]\"") from None
    finally:
        sys.argv = argv
    return kserve
