"""Reading images and drawing heatmaps with OpenCV. Torch-free (the runtime and the CLI share it)."""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from struct import error as struct_error

import cv2
import numpy as np

from .errors import ImageReadError, InvalidInputError
from .verbosity import native_stderr, verbose

#: OpenCV's default decode limit (2**30 pixels), unless OPENCV_IO_MAX_IMAGE_PIXELS says otherwise.
MAX_PIXELS = 1 << 30
#: Peak bytes per pixel of reading, resizing and drawing one photo at its own resolution (decode 3-4,
#: RGB copy 3, float32 copy 12, the overlay's map, colours and blend 13): 20000x20000 measured 6.5 GB.
BYTES_PER_PIXEL = 32


def pixel_ceiling() -> int:
    """Most pixels a photo may have: OpenCV's limit, and the peak of reading it within half of this
    machine's memory (:data:`BYTES_PER_PIXEL`)."""
    from .validation import machine_memory

    return int(min(MAX_PIXELS, machine_memory() // 2 // BYTES_PER_PIXEL))


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, nothing decoded; None where the format is not one
    ``imagesize`` reads (OpenCV's own limit still applies when decoding)."""
    import imagesize

    try:
        w, h = imagesize.get(str(path))
    except (OSError, ValueError, struct_error):
        return None
    return (int(w), int(h)) if w > 0 and h > 0 else None

#: Real photos bundled with the package (CC0, from scikit-image's data folder).
SAMPLE_IMAGES = {"chelsea": "chelsea.png", "coffee": "coffee.png"}


def sample_image_path(name: str = "chelsea") -> Path:
    """Path of a bundled real photo: ``"chelsea"`` (a cat, the default) or ``"coffee"`` (an espresso)."""
    if name not in SAMPLE_IMAGES:
        raise InvalidInputError(f"unknown sample image {name!r}; choose one of {sorted(SAMPLE_IMAGES)}")
    return Path(str(resources.files("unioncam") / "data" / SAMPLE_IMAGES[name]))


#: What the codecs (libjpeg, libpng, libtiff) write to the process's stderr about damaged data: the
#: picture they return then is not what the file was meant to hold.
CORRUPTION_SIGNS = ("corrupt jpeg data", "premature end", "bogus marker", "libpng error", "crc error", "read error")

#: Decode flags: any depth and colour format (16-bit, float and grey stay as they are; alpha is
#: dropped), and the EXIF orientation applied, as browsers and phones show the photo.
_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


def _decode(data: np.ndarray, path: Path, *, lenient: bool = False, flags: int = _FLAGS) -> np.ndarray:
    """Decode bytes with OpenCV, its own log and the codecs' messages captured (they would print
    "libpng error: ..." lines that say less than our message). Damaged data the codec reports makes
    an ImageReadError unless ``lenient``. A picture above OpenCV's pixel limit is decoded at 1/8 size
    where the codec can (JPEG), else refused with the limit."""
    if data.size == 0:
        raise ImageReadError(f"{path} is empty (0 bytes); give an image file")
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        with native_stderr() as messages:
            try:
                img = cv2.imdecode(data, flags)
            except cv2.error as e:
                if "pixels" not in str(e):
                    raise ImageReadError(f"cannot decode {path}: {_first_line(e)}") from None
                try:
                    img = cv2.imdecode(data, cv2.IMREAD_REDUCED_COLOR_8)
                except cv2.error:
                    raise ImageReadError(
                        f"{path} is too large to decode: above OpenCV's limit of {MAX_PIXELS:,} pixels "
                        "(OPENCV_IO_MAX_IMAGE_PIXELS); downscale it first (the model needs only its input size)"
                    ) from None
    finally:
        cv2.utils.logging.setLogLevel(level)
    if img is None or img.size == 0:
        raise ImageReadError(f"cannot decode {path} as an image (corrupt, truncated or not an image file)")
    said = [ln.strip() for ln in "".join(messages).splitlines() if ln.strip()]
    if said and verbose():
        import sys

        print("\n".join(f"unioncam: {path}: decoder: {ln}" for ln in said), file=sys.stderr)
    damaged = [ln for ln in said if any(sign in ln.lower() for sign in CORRUPTION_SIGNS)]
    if damaged and not lenient:
        raise ImageReadError(f"{path} is damaged: the decoder reported \"{damaged[0]}\"; the picture it gives is "
                             "not the photo (repair or re-export the file, or pass --lenient to explain it anyway)")
    return img


def _flags_within_ceiling(path: Path, data: np.ndarray) -> int:
    """Decode flags for ``path``, its size read from the header first: above :func:`pixel_ceiling` a
    JPEG is decoded at 1/8 of each side (the codec does it while decoding, as a thumbnail would be;
    the model needs only its input size), anything else is refused before a byte is decoded."""
    size = _header_size(path)
    limit = pixel_ceiling()
    if size is None or size[0] * size[1] <= limit:
        return _FLAGS
    w, h = size
    if data[:2].tobytes() == b"\xff\xd8" and (w // 8) * (h // 8) <= limit:
        return cv2.IMREAD_REDUCED_COLOR_8
    raise ImageReadError(f"{path} is too large to decode: {w}x{h} = {w * h:,} pixels, above this machine's limit of "
                         f"{limit:,} (OpenCV's limit, and half the memory at {BYTES_PER_PIXEL} bytes a pixel); "
                         "downscale it first (the model needs only its input size)")


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def read_rgb(path: str | Path, *, lenient: bool = False) -> np.ndarray:
    """Read an image file as RGB, upright.

    Any format and size OpenCV reads; the EXIF orientation is applied (as browsers do); grayscale
    is replicated to 3 channels, an alpha channel is dropped, 16-bit images are scaled to 8 bits,
    float images must hold finite values in [0, 1] (the rule for arrays) and are scaled to 8 bits.
    Data the decoder reports as damaged is refused unless ``lenient``.

    Returns:
        (h, w, 3) uint8 array, RGB order.

    Raises:
        ImageReadError: the file is missing, empty, not an image, damaged, decodes to nothing, or
            holds float pixels outside [0, 1] or not finite.
    """
    path = Path(path)
    if path.is_dir():
        try:
            with os.scandir(path) as entries:
                next(entries, None)
        except OSError as e:
            raise ImageReadError(f"cannot list the folder {path}: {e.strerror or e} (check its permissions)") from None
        raise ImageReadError(f"{path} is a folder with no image files in it (give image files, a folder of them, "
                             "or a glob)")
    if path.is_symlink() and not path.exists():
        raise ImageReadError(f"{path} is a broken symlink or a symlink loop; point it at an image file")
    if not path.exists():
        raise ImageReadError(f"image not found: {path} (give the path of an existing image file)")
    if not path.is_file():
        raise ImageReadError(f"{path} is not a regular file (a device, pipe or socket); give an image file")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise ImageReadError(f"cannot read {path}: {e.strerror or e}") from None
    img = _decode(data, path, lenient=lenient, flags=_flags_within_ceiling(path, data))
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        if not np.isfinite(img).all():
            raise ImageReadError(f"{path} has NaN or Inf pixels; clean the image before explaining it")
        lo, hi = float(img.min()), float(img.max())
        if lo < 0.0 or hi > 1.0:
            # Refused, never clipped: the same rule as for arrays (README, "Guarantees under bad input and faults").
            raise ImageReadError(f"{path} holds float pixels in [{lo:.4g}, {hi:.4g}]; a float image must lie in "
                                 "[0, 1] (divide 0-255 data by 255, or save it as 8-bit)")
        img = (img * 255.0).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageReadError(f"unsupported pixel type {img.dtype} in {path}; convert it to 8-bit RGB")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise ImageReadError(f"{path} has {channels} channels; expected 1 (grey), 3 (colour) or 4 (with alpha)")


def to_model_input(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB image to the model's input and scale it to [0, 1].

    The whole image is resized (no crop), bilinear with half-pixel centres, so a map at the model's
    resolution lies over the whole photo. Pixels are scaled to [0, 1] first and interpolated in
    float32 (OpenCV's 8-bit path rounds to fixed point), so the C example and any other
    implementation of the same formula get the same input.

    Args:
        rgb: (h, w, 3) uint8.
        size: (H, W) of the model input.

    Returns:
        (3, H, W) float32 in [0, 1].
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InvalidInputError(f"expected an (h, w, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    H, W = size
    scaled = rgb.astype(np.float32) / np.float32(255.0)
    resized = cv2.resize(scaled, (W, H), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(np.clip(resized, 0.0, 1.0).transpose(2, 0, 1), dtype=np.float32)


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.5, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Blend a heatmap over an image at the image's own resolution.

    Args:
        rgb: (h, w, 3) uint8 RGB image.
        cam: (H, W) float map in [0, 1] (any resolution; resized bilinearly to (h, w)).
        alpha: weight of the heatmap in the blend, in [0, 1].

    Returns:
        (h, w, 3) uint8 image in BGR order, ready for ``cv2.imwrite``.
    """
    h, w = rgb.shape[:2]
    cam = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    cam = cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap((cam * 255.0).round().astype(np.uint8), colormap)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    return cv2.addWeighted(heat, alpha, bgr, 1.0 - alpha, 0.0)


def write_image(path: str | Path, bgr: np.ndarray) -> None:
    """Write a BGR image atomically; the format follows the file suffix."""
    path = Path(path)
    from .atomic import write_bytes

    ok, buf = cv2.imencode(path.suffix or ".png", bgr)
    if not ok:
        raise ImageReadError(f"cannot encode an image for {path}")
    write_bytes(path, buf.tobytes())
