"""Which array library an array belongs to, and the way back to NumPy. Torch-free."""
from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace, is_cupy_array, is_numpy_array, is_torch_array


def namespace(*arrays):
    """The array-API namespace (``array_api_compat.numpy``, ``.torch``, ``.cupy``) of ``arrays``."""
    return array_namespace(*arrays)


def to_numpy(x) -> np.ndarray:
    """A host NumPy copy (or view) of a NumPy, torch or CuPy array, whatever its device."""
    if is_numpy_array(x):
        return x
    if is_torch_array(x):
        return x.detach().cpu().numpy()
    if is_cupy_array(x):
        return x.get()
    return np.asarray(x)


def is_concrete(*sizes) -> bool:
    """Whether sizes are plain ints. A traced dynamic size (torch.SymInt) is not: branching on it
    would make the exporter specialise the graph to the example's shape."""
    return all(type(s) is int for s in sizes)
