"""Arrays and class requests: images (B, 3, H, W) in [0, 1], finite, of any array library (torch
recognised without importing it), and the classes asked for."""
from __future__ import annotations


import numpy as np
from array_api_compat import array_namespace, is_array_api_obj, is_numpy_array, is_torch_array

from ..errors import InvalidInputError, InvalidTypeError, UsageError


def check_class_option(class_idx: int | None, num_classes: int | None, *, by_name: bool = False) -> None:
    """``--class`` against the model's class count (None: not known yet, nothing checked); a class
    given by name needs an ImageNet-1k model."""
    if class_idx is None or num_classes is None:
        return
    if by_name and num_classes != 1000:
        raise UsageError(f"--class by name means an ImageNet class; this model has {num_classes} classes: give an "
                         f"index 0..{num_classes - 1}")
    if not 0 <= class_idx < num_classes:
        raise UsageError(f"--class {class_idx} is out of range: the model has {num_classes} classes "
                         f"(0..{num_classes - 1})")


def check_images(images, *, library: str, size: tuple[int, int] | None = None):
    """Validate a non-empty (B, 3, H, W) floating array in [0, 1] with finite values.

    Args:
        images: the batch, a NumPy array (``library="numpy"``) or a torch tensor (``"torch"``).
        library: what this path takes; anything else is refused with the type it should be.
        size: (H, W) the path is specialised to (an export), or None for any size.

    Returns:
        ``images`` (unchanged; NumPy float64/float16 becomes C-contiguous float32).

    Raises:
        InvalidTypeError (also a TypeError): not an array of the expected library.
        InvalidInputError: wrong rank, shape, dtype or range; NaN or Inf.
    """
    want = {"numpy": "a NumPy array", "torch": "a torch.Tensor"}[library]
    is_ok = is_numpy_array(images) if library == "numpy" else is_torch_array(images)
    shape_hint = f"(B, 3, {size[0]}, {size[1]})" if size else "(B, 3, H, W)"
    if not is_ok:
        raise InvalidTypeError(f"images must be {want} {shape_hint}, got {type(images).__name__}")
    shape = tuple(images.shape)
    if len(shape) == 3:
        raise InvalidInputError(f"images must be {shape_hint}; got {shape}: add a batch dim with images[None]")
    if len(shape) != 4 or shape[0] == 0 or shape[1] != 3 or (size is not None and shape[2:] != tuple(size)):
        raise InvalidInputError(f"images must have shape {shape_hint}" + (" for this export" if size else "")
                                + f", got {shape}")
    xp = array_namespace(images)
    if not xp.isdtype(images.dtype, "real floating"):
        dtype = str(images.dtype).removeprefix("torch.")
        raise InvalidInputError(f"images must be floating point (float32) in [0, 1], got {dtype}; divide uint8 by 255")
    if library == "numpy" and images.dtype != np.float32:
        images = images.astype(np.float32)
    if library == "numpy":
        images = np.ascontiguousarray(images)
    if not bool(xp.all(xp.isfinite(images))):
        raise InvalidInputError("images contain NaN or Inf; clean the input before explaining it")
    lo, hi = float(xp.min(images)), float(xp.max(images))
    if lo < 0.0 or hi > 1.0:
        # Refused, never clipped: every path refuses the same input.
        raise InvalidInputError(
            f"images must lie in [0, 1] (normalisation is part of the model), got range [{lo:.4g}, {hi:.4g}]")
    return images


def check_classes(class_idx, batch: int, num_classes: int | None = None) -> np.ndarray | None:
    """``class_idx`` as (B,) NumPy int64, or None for the arg-max of each image.

    Accepts None, an int (the same class for all images), or one int per image (a sequence, a NumPy
    array or a torch tensor). With ``num_classes`` the range is checked too. Only None means
    arg-max: a negative index is out of range.
    """
    if class_idx is None:
        return None
    if isinstance(class_idx, (bool, np.bool_)):
        raise InvalidTypeError("class_idx must be None, an int or a sequence of ints, not a bool")
    if is_torch_array(class_idx):
        class_idx = class_idx.detach().cpu().numpy()
    if is_array_api_obj(class_idx) and np.ndim(class_idx) == 0:
        class_idx = np.asarray(class_idx).item()
    if isinstance(class_idx, (int, np.integer)):
        values = [int(class_idx)] * batch
    elif isinstance(class_idx, (float, complex, str, bytes)) or not hasattr(class_idx, "__len__"):
        raise InvalidTypeError(
            f"class_idx must be None, an int or a sequence of ints, got {type(class_idx).__name__} {class_idx!r}")
    else:
        arr = np.asarray(class_idx, dtype=object) if not is_array_api_obj(class_idx) else np.asarray(class_idx)
        if arr.ndim != 1 or arr.shape[0] != batch:
            raise InvalidInputError(f"class_idx has shape {arr.shape}; give one class per image (B={batch})")
        if arr.dtype.kind in "iu":
            values = [int(v) for v in arr]
        else:
            bad = [v for v in arr.tolist() if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
            if bad or arr.dtype.kind not in "O":
                what = type(bad[0]).__name__ if bad else str(arr.dtype)
                raise InvalidTypeError(f"class_idx must hold integers, got {what}")
            values = [int(v) for v in arr.tolist()]
    # Range first, in Python ints: a huge index is out of range, not an overflow.
    limit = num_classes if num_classes is not None else 2**63
    for v in values:
        if not 0 <= v < limit:
            hint = f": the model has {num_classes} classes (0..{num_classes - 1})" if num_classes else ""
            raise InvalidInputError(f"class index {v} out of range{hint}")
    return np.asarray(values, dtype=np.int64)
