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
#: Peak bytes per pixel of the whole per-image path at the photo's own resolution (read, model input,
#: overlay with its key, PNG bytes), with margin: tests/test_memory_ceiling.py measures the slope of
#: the peak between two sizes in a fresh process (11 B/px on 2026-12-08, 64 before the overlay was
#: blended in bands) and fails where it exceeds this.
BYTES_PER_PIXEL = 32
#: Pixels the overlay blends at a time (its float32 temporaries: about 70 bytes each).
OVERLAY_BAND_PIXELS = 1 << 20


def pixel_ceiling() -> int:
    """Most pixels a photo may have: OpenCV's limit, and the peak of reading it within half of this
    machine's memory (:data:`BYTES_PER_PIXEL`)."""
    from .validation import machine_memory

    return int(min(MAX_PIXELS, machine_memory() // 2 // BYTES_PER_PIXEL))


def header_size(source) -> tuple[int, int] | None:
    """(width, height) from the header of a file (a path) or of encoded bytes, nothing decoded; None
    where the format is not one ``imagesize`` reads (OpenCV's own limit still applies when decoding)."""
    import io

    import imagesize

    if isinstance(source, (bytes, bytearray, memoryview, np.ndarray)):
        source = io.BytesIO(bytes(source[:1 << 20]))  # the header lies in the first MiB of every format read
    try:
        w, h = imagesize.get(source if isinstance(source, io.BytesIO) else str(source))
    except (OSError, ValueError, struct_error):
        return None
    return (int(w), int(h)) if w > 0 and h > 0 else None

#: The most bytes a file can store per pixel: 4 channels of float64 (TIFF), the deepest OpenCV reads.
MAX_STORED_BYTES_PER_PIXEL = 32
#: Room for what a file holds besides its pixels (EXIF, ICC profiles, thumbnails, text chunks).
METADATA_ROOM = 64 << 20
#: Leading bytes of the formats whose header gives the picture's size: such a file whose header
#: gives none is damaged, and is refused before it is read.
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"BM", b"II*\x00", b"MM\x00*", b"GIF8")


def byte_ceiling(path: Path, size: tuple[int, int] | None) -> int:
    """The most bytes ``path`` may have: its header's pixels (else :func:`pixel_ceiling`'s), each
    stored uncompressed at the deepest pixel any format holds, plus :data:`METADATA_ROOM`. No
    encoding of those pixels is larger, so a larger file is refused unread.

    Raises:
        ImageReadError: a PNG, JPEG, BMP, TIFF or GIF whose header gives no size.
    """
    if size is None:
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError as e:
            raise ImageReadError(f"cannot read {path}: {e.strerror or e}") from None
        if head.startswith(_SIGNATURES) and path.stat().st_size > METADATA_ROOM:
            raise ImageReadError(f"{path} starts as an image file but its header gives no picture size (damaged or "
                                 "not an image); repair or re-export it")
    return byte_limit(size)


def byte_limit(size: tuple[int, int] | None) -> int:
    """The most bytes an encoded picture of ``size`` (width, height; None: unknown, the pixel
    ceiling's) can take: each pixel stored uncompressed at the deepest depth, plus metadata room."""
    pixels = min(size[0] * size[1], pixel_ceiling()) if size else pixel_ceiling()
    return pixels * MAX_STORED_BYTES_PER_PIXEL + METADATA_ROOM


def _read_bounded(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """The file's bytes, refused by its size before a byte is read where it exceeds :func:`byte_ceiling`
    (a 2 GiB sparse file behind a PNG signature), and read with that bound (a file that grows)."""
    limit = byte_ceiling(path, size)
    try:
        with open(path, "rb") as f:
            length = os.fstat(f.fileno()).st_size
            if length > limit:
                raise ImageReadError(f"{path} is {length:,} bytes, more than any image of its size can hold "
                                     f"({limit:,}); it is damaged or not an image file")
            data = np.frombuffer(f.read(limit + 1), dtype=np.uint8)
    except OSError as e:
        raise ImageReadError(f"cannot read {path}: {e.strerror or e}") from None
    if data.size > limit:
        raise ImageReadError(f"{path} grew past {limit:,} bytes while it was read; it is not an image file")
    return data


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


def _flags_within_ceiling(path: Path, data: np.ndarray, size: tuple[int, int] | None) -> int:
    """Decode flags for ``path``, its size read from the header first: above :func:`pixel_ceiling` a
    JPEG is decoded at 1/8 of each side (the codec does it while decoding, as a thumbnail would be;
    the model needs only its input size), anything else is refused before a byte is decoded."""
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
    size = header_size(path)
    try:
        data = _read_bounded(path, size)
    except MemoryError:
        raise ImageReadError(f"{path}: not enough free memory to read it; free memory") from None
    return decode_rgb(data, str(path), lenient=lenient, size=size)


def decode_rgb(data, name: str = "the image", *, lenient: bool = False, size: tuple[int, int] | None = None,
               max_pixels: int | None = None) -> np.ndarray:
    """Decode an encoded image (the bytes of a file, or of a request) as RGB, upright, by the rules of
    :func:`read_rgb`: the header's size checked against the pixel ceiling before a byte is decoded,
    bytes beyond what such a picture can hold refused, EXIF orientation applied, grey, alpha, 16-bit
    and float pixels converted, damaged data refused unless ``lenient``.

    Args:
        data: the encoded bytes (``bytes`` or a uint8 array).
        name: what the messages call it (a path, or "the request's image 0").
        size: (width, height) from the header where the caller read it already.
        max_pixels: a stricter ceiling than the machine's (a server's per request): a picture whose
            header declares more pixels, or gives no size, is refused before a byte is decoded.

    Returns:
        (h, w, 3) uint8 array, RGB order.

    Raises:
        ImageReadError: empty, not an image, damaged, above the ceilings, or float pixels outside [0, 1].

    Example:
        >>> import numpy as np, cv2
        >>> png = cv2.imencode(".png", np.zeros((2, 3), np.uint8))[1].tobytes()
        >>> decode_rgb(png).shape
        (2, 3, 3)
    """
    data = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    label = Path(name)
    try:
        size = size if size is not None else header_size(data)
        _check_declared(name, data, size, max_pixels)
        try:
            img = _decode(data, label, lenient=lenient, flags=_flags_within_ceiling(label, data, size))
        except ImageReadError:
            img = _tiff_second_opinion(label, data)  # a TIFF layout OpenCV lacks (float16, planar), else re-raised
            if img is None:
                raise
    except MemoryError:
        raise ImageReadError(f"{name}: not enough free memory to decode it (its header says "
                             f"{'x'.join(map(str, size)) if size else 'no size'}); downscale it, or free memory") from None
    return _as_rgb(label, _as_uint8(label, img, data))


def _check_declared(name: str, data: np.ndarray, size, max_pixels: int | None) -> None:
    """What the header declares, before a byte is decoded: within ``max_pixels``, and bytes no more
    than a picture of that size can hold."""
    if max_pixels is not None:
        if size is None:
            raise ImageReadError(f"{name}: its header gives no picture size (not a JPEG, PNG or other format "
                                 "whose size can be read before decoding); send a JPEG or PNG")
        if size[0] * size[1] > max_pixels:
            raise ImageReadError(f"{name} declares {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, above this "
                                 f"server's limit of {max_pixels:,}; downscale it first (the model needs only its "
                                 "input size)")
    if size is None and data[:8].tobytes().startswith(_SIGNATURES) and data.size > METADATA_ROOM:
        raise ImageReadError(f"{name} starts as an image but its header gives no picture size (damaged or not an "
                             "image)")
    limit = byte_limit(size)
    if data.size > limit:
        raise ImageReadError(f"{name} is {data.size:,} bytes, more than any image of its size can hold ({limit:,}); "
                             "it is damaged or not an image")


def _as_uint8(path: Path, img: np.ndarray, data: np.ndarray) -> np.ndarray:
    """16-bit and float pixels as 8-bit; float pixels must be finite and in [0, 1]."""
    if img.dtype == np.uint16:
        return (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    if img.dtype in (np.float32, np.float64):
        img = _float_pixels(path, img, data)
        if not np.isfinite(img).all():
            raise ImageReadError(f"{path} has NaN or Inf pixels; clean the image before explaining it")
        lo, hi = float(img.min()), float(img.max())
        if max(abs(lo), abs(hi)) > 1e6:
            # No photo holds such values: the decoder read the layout wrong, the file is not to blame.
            raise ImageReadError(f"{path}: OpenCV decodes this float TIFF to values in [{lo:.3g}, {hi:.3g}], which no "
                                 "image holds: it cannot read this file's layout (tiles, a predictor or a sample "
                                 "format it lacks); save it as an 8- or 16-bit TIFF or PNG"
                                 + ("" if _has_tifffile() else ", or install tifffile"))
        if lo < 0.0 or hi > 1.0:
            # Refused, never clipped: the same rule as for arrays (docs/guarantees.md, "Guarantees under bad input and faults").
            raise ImageReadError(f"{path} holds float pixels in [{lo:.4g}, {hi:.4g}]; a float image must lie in "
                                 "[0, 1] (divide 0-255 data by 255, or save it as 8-bit)")
        return (img * 255.0).round().astype(np.uint8)
    if img.dtype != np.uint8:
        raise ImageReadError(f"unsupported pixel type {img.dtype} in {path}; convert it to 8-bit RGB")
    return img


def _as_rgb(path: Path, img: np.ndarray) -> np.ndarray:
    """Grey, BGR and BGRA as RGB."""
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


def _has_tifffile() -> bool:
    import importlib.util

    return importlib.util.find_spec("tifffile") is not None


def _tiff_second_opinion(path: Path, data: np.ndarray) -> np.ndarray | None:
    """A TIFF read by ``tifffile`` (where installed) in OpenCV's layout: (h, w) or (h, w, 3|4) BGR,
    float32 for float samples; None where it is no TIFF or tifffile cannot read it either. OpenCV
    lacks some layouts TIFF allows: float16 samples, planar channels, some predictors."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        import io

        import tifffile

        # key=0: the first page, as OpenCV reads a multipage TIFF
        arr = np.asarray(tifffile.imread(io.BytesIO(data.tobytes()), key=0))
    except Exception:  # noqa: BLE001 - a second opinion only: OpenCV's verdict stands
        return None
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar: (channels, h, w)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        return None
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., [2, 1, 0] + ([3] if arr.shape[2] == 4 else [])]
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
    elif arr.dtype not in (np.uint8, np.uint16):
        return None
    return np.ascontiguousarray(arr)


def _float_pixels(path: Path, img: np.ndarray, data: np.ndarray) -> np.ndarray:
    """A float image as the file holds it: where OpenCV's decode is not finite or holds values no image
    has (a layout it misreads), the TIFF is read again by :func:`_tiff_second_opinion`."""
    with np.errstate(all="ignore"):
        sane = np.isfinite(img).all() and float(np.abs(img).max()) <= 1e6
    if sane:
        return img
    other = _tiff_second_opinion(path, data)
    return other if other is not None and other.dtype == np.float32 else img


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
    """Blend a heatmap over an image at the image's own resolution, each pixel's heat weighted by
    its map value: where the map is 0 the photo shows as it is (a uniform blend would tint it all
    blue), where it is 1 the colormap's colour is blended at ``alpha``.

    Args:
        rgb: (h, w, 3) uint8 RGB image.
        cam: (H, W) float map in [0, 1] (any resolution; resized bilinearly to (h, w)).
        alpha: weight of the heatmap where the map is 1, in [0, 1].

    Returns:
        (h, w, 3) uint8 image in BGR order, ready for ``cv2.imwrite``; pixel-aligned with ``rgb``.
    """
    h, w = rgb.shape[:2]
    cam = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    cam = cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
    out = np.empty((h, w, 3), np.uint8)
    # Blended in bands of rows: the float32 temporaries of a whole 144 Mpx photo would need 9 GB.
    step = max(1, OVERLAY_BAND_PIXELS // max(w, 1))
    for top in range(0, h, step):
        c = cam[top:top + step]
        heat = cv2.applyColorMap((c * 255.0).round().astype(np.uint8), colormap).astype(np.float32)
        bgr = cv2.cvtColor(rgb[top:top + step], cv2.COLOR_RGB2BGR).astype(np.float32)
        weight = (alpha * c)[..., None]
        out[top:top + step] = (heat * weight + bgr * (1.0 - weight)).round().clip(0, 255).astype(np.uint8)
    return out


def with_key(bgr: np.ndarray, caption: str, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """An overlay with its key, as a reader of a figure expects: a caption strip above (class,
    score, method, and "approximate" where budgeted) and a thin colour bar at the right, 1 at its
    top and 0 at its bottom.

    Args:
        bgr: (h, w, 3) uint8 overlay (:func:`overlay`).
        caption: one line; cut to fit the width.

    Returns:
        (h + strip, w + bar, 3) uint8 BGR: the overlay itself is unchanged at the top left of the
        area below the strip.
    """
    h, w = bgr.shape[:2]
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, 1
    size = max(0.35, min(0.8, w / 1000))  # text scale: legible from thumbnails to large photos
    text_h = cv2.getTextSize("0", font, size, thick)[0][1]
    strip, bar_w = text_h + 12, max(8, w // 50)
    margin = cv2.getTextSize("1", font, size, thick)[0][0] + 10
    canvas = np.full((h + strip, w + 4 + bar_w + margin, 3), 255, np.uint8)
    canvas[strip:, :w] = bgr
    ramp = np.linspace(255, 0, h).round().astype(np.uint8)[:, None].repeat(bar_w, axis=1)
    canvas[strip:, w + 4:w + 4 + bar_w] = cv2.applyColorMap(ramp, colormap)
    for text, y in (("1", strip + text_h + 1), ("0", strip + h - 2)):
        cv2.putText(canvas, text, (w + 8 + bar_w, y), font, size, (0, 0, 0), thick, cv2.LINE_AA)
    fit = caption
    while len(fit) > 4 and cv2.getTextSize(fit, font, size, thick)[0][0] > canvas.shape[1] - 8:
        fit = fit[:-4] + "..."
    cv2.putText(canvas, fit, (4, strip - 6), font, size, (0, 0, 0), thick, cv2.LINE_AA)
    return canvas


def caption(report: dict) -> str:
    """The key's line for a report (:func:`unioncam.outputs.report`): class, score, method, and
    whether the map is approximate (a pass budget that estimated some channels)."""
    text = f"{report['class_name']} (class {report['class_idx']}), p={report['score']:.3f}, {report['method']}"
    if approximate(report):
        text += f", approximate ({report['max_passes']} passes)"
    return text


def approximate(report: dict) -> bool:
    """A budgeted map that estimated at least one channel's score."""
    estimated = (report.get("stats") or {}).get("estimated_channels")
    return bool(report.get("max_passes")) and bool(estimated)


def encode_image(path: str | Path, bgr: np.ndarray) -> bytes:
    """A BGR image's bytes in the format ``path``'s suffix names (PNG without one)."""
    ok, buf = cv2.imencode(Path(path).suffix or ".png", bgr)
    if not ok:
        raise ImageReadError(f"cannot encode an image for {path}")
    return buf.tobytes()


def write_image(path: str | Path, bgr: np.ndarray, *, own: bool = False) -> None:
    """Write a BGR image atomically; the format follows the file suffix. ``own``: recorded as
    unioncam's output (:mod:`unioncam.ownership`)."""
    from .atomic import write_bytes

    write_bytes(path, encode_image(path, bgr), own=own)
