"""What ``unioncam explain`` writes for one image, the same on one machine and on a Ray cluster:
``<stem>.png`` (heatmap over the photo), ``<stem>_cam.npy`` (float32 (H, W) map in [0, 1]) and
``<stem>.json`` (the report), each written atomically and the JSON last, so a report on disk means
its map and heatmap are complete. Also: which images a folder or glob holds, distinct output stems,
and whether an image's outputs are already complete (for resuming a killed run)."""
from __future__ import annotations

import glob
import io
import json
import os
from pathlib import Path

import numpy as np

from . import ownership
from .digests import sha256_bytes, sha256_file
from .errors import InvalidInputError, UnionCAMError
from .settings import RESUME_KEYS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
#: The report keys that must match for a finished output to be reused by a resumed run.
SETTINGS = RESUME_KEYS


def collect_images(paths) -> list[Path]:
    """Files as given; folders expanded to their image files and globs (``"photos/*.jpg"``, quoted
    so the shell leaves them) to their matches, each sorted. A pattern matching nothing is an error;
    a folder with no image files is kept as is, and reading it is that input's error."""
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            try:
                # Not only regular files: a FIFO, a dangling symlink or a symlink loop with an image's
                # name is kept, and the reader makes it an error row rather than skipping it unsaid.
                found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.is_dir())
            except OSError:
                found = []  # unreadable: kept, so the reader reports it as that input's error row
            # A folder without images stays in the list, so the reader reports it as that input's error.
            out += found or [p]
        elif not p.exists() and glob.has_magic(str(p)):
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
            if not matches:
                raise InvalidInputError(f"no files match {p}")
            out += matches
        else:
            out.append(p)
    return out


def output_stems(paths: list[Path], out: Path) -> list[str]:
    """One distinct output stem per input, such that no output replaces an input.

    The stem is the file's stem (``photo``); where two inputs share it, or an output
    (``<stem>.png``, ``<stem>_cam.npy``, ``<stem>.json``) would be an input file, the whole name is
    used (``photo.tif`` -> ``photo.tif.png``), then a counter (``x-2``) for same-named files in
    different folders. Deterministic in the order of ``paths``, so a resumed run names alike.
    """
    inputs = {os.path.realpath(p) for p in paths}
    name_max = _name_max(out)

    def clashes_with_input(stem: str) -> bool:
        return any(os.path.realpath(out / f"{stem}{suffix}") in inputs for suffix in (".png", "_cam.npy", ".json"))

    stems = [_fitting(Path(p).stem, name_max) for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    chosen, taken = [], set()
    for p, s in zip(paths, stems):
        stem = s if counts[s] == 1 and not clashes_with_input(s) else _fitting(Path(p).name, name_max)
        base, n = stem, 1
        while stem in taken or clashes_with_input(stem):
            n += 1
            stem = f"{base}-{n}"
        taken.add(stem)
        chosen.append(stem)
    return chosen


#: The longest suffix an output adds to its stem (``_cam.npy``), and a counter's room (``-99``).
_SUFFIX_ROOM = len("_cam.npy") + 3


def _name_max(folder: Path) -> int:
    """The longest file name the folder's file system takes, in bytes (255 where it cannot say)."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return int(os.pathconf(probe, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def _fitting(stem: str, name_max: int) -> str:
    """``stem`` itself, or where its outputs' names would be too long for the file system, its start
    and a hash of the whole (``<start>~<8 hex>``): distinct and deterministic, so a resumed run
    finds them."""
    import hashlib

    raw = os.fsencode(stem)
    if len(raw) + _SUFFIX_ROOM <= name_max:
        return stem
    keep = raw[: name_max - _SUFFIX_ROOM - 9]
    return os.fsdecode(keep).rstrip("\udcff") + "~" + hashlib.sha256(raw).hexdigest()[:8]


def _softmax64(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z - z.max())
    return p / p.sum()


def top5(logits: np.ndarray, names) -> list[dict]:
    """The 5 most probable classes of (C,) logits: index, name, softmax probability (float64)."""
    p = _softmax64(logits)
    order = np.argsort(-p, kind="stable")[:5]
    return [{"index": int(i), "name": names(int(i)), "probability": float(p[i])} for i in order]


def top5_probability(logits: np.ndarray, index: int) -> float:
    """Class ``index``'s probability by :func:`top5`'s softmax."""
    return float(_softmax64(logits)[index])


def report(settings: dict, path, rgb: np.ndarray, exp, timings_ms: dict, digest: str | None = None) -> dict:
    """The JSON report of one explained image.

    Args:
        settings: model, weights, layer, theta, method, max_passes, class_requested, input_size,
            backend, device (the run's options).
        path: the image file; rgb: its (h, w, 3) uint8 pixels; exp: its 1-image Explanation;
        timings_ms: extra stage times (load, read) put before the explanation's own.
        digest: the file's SHA-256 (:func:`image_digest`), which a resumed run compares.
    """
    from .classes import class_name

    from .algebra.budget import PER_IMAGE_STATS

    e0 = exp[0]
    num_classes = exp.logits.shape[1]
    best = top5(exp.logits[0], lambda i: class_name(i, num_classes))
    # The score as the top-5 lists it (one softmax, float64), so the two never differ in a digit.
    score = next((t["probability"] for t in best if t["index"] == e0["class_idx"]), None)
    if score is None:
        score = top5_probability(exp.logits[0], e0["class_idx"])
    stats = {k: (v[0] if k in PER_IMAGE_STATS and isinstance(v, list) else v) for k, v in exp.stats.items()}
    return {
        "image": str(path),
        "image_sha256": digest,
        "image_size": [int(rgb.shape[0]), int(rgb.shape[1])],
        **{k: settings.get(k) for k in ("input_size", "model", "method", "weights", "weights_sha256", "layer",
                                         "theta", "max_passes", "precision", "class_requested")},
        "plain": bool(settings.get("plain")),
        "lenient": bool(settings.get("lenient")),
        "class_idx": e0["class_idx"],
        "class_name": class_name(e0["class_idx"], num_classes),
        "score": score,
        "top5": best,
        "selected": e0["selected"],
        "beta_denoising": e0["beta_denoising"],
        "beta_region": e0["beta_region"],
        "beta_de_region": e0["beta_de_region"],
        "backend": settings.get("backend"),
        "device": settings.get("device"),
        "stats": stats,
        "timings_ms": {**timings_ms, **exp.timings_ms},
    }


def write_outputs(out: Path, stem: str, rgb: np.ndarray, cam: np.ndarray, report: dict, *, plain: bool = False) -> dict:
    """The three outputs of one image, each written atomically, the JSON last, holding the SHA-256
    of the map and the overlay as written (``outputs_sha256``): a report on disk describes exactly
    the files beside it, and a resume trusts only what those digests confirm. Returns their paths.

    The PNG is the overlay with its key (:func:`unioncam.image_io.with_key`), or with ``plain`` the
    overlay alone, pixel-aligned with the photo (for pipelines)."""
    from . import atomic
    from .image_io import caption, encode_image, overlay, with_key

    cam = np.asarray(cam, dtype=np.float32)
    if not (np.isfinite(cam).all() and cam.min() >= 0.0 and cam.max() <= 1.0):
        raise UnionCAMError(f"the map is not finite in [0, 1] (range {cam.min()}..{cam.max()}); nothing written")
    paths = output_paths(out, stem)
    buf = io.BytesIO()
    np.save(buf, cam)
    npy = buf.getvalue()
    picture = overlay(rgb, cam)
    png = encode_image(paths["png"], picture if plain else with_key(picture, caption(report)))
    report = {**report, "outputs_sha256": {"npy": sha256_bytes(npy), "png": sha256_bytes(png)}}
    atomic.write_bytes(paths["npy"], npy, own=True)
    atomic.write_bytes(paths["png"], png, own=True)
    atomic.write_text(paths["json"], json.dumps(report, indent=2), own=True)
    return {k: str(v) for k, v in paths.items()}


def output_paths(out: Path, stem: str) -> dict:
    return {"png": out / f"{stem}.png", "npy": out / f"{stem}_cam.npy", "json": out / f"{stem}.json"}


def claim_outputs(out: Path, stems, *, replace_user_files: bool = False, extra=()) -> None:
    """Before any work: refuse (:class:`unioncam.errors.OutputPathError`) if an output of ``stems``
    in ``out``, or a file of ``extra`` (an index), is not ours to replace; the folder's ledger is
    compacted first where it has grown (:func:`unioncam.ownership.compact`)."""
    if Path(out).is_dir():
        ownership.compact(out)
    ownership.claim([p for s in stems for p in output_paths(out, s).values()] + [Path(e) for e in extra],
                    replace_user_files=replace_user_files)


def finished_report(out: Path, stem: str, image, settings: dict) -> dict | None:
    """The report of a previous run's complete, valid outputs for ``image`` with the same settings,
    else None (the image is explained again). Trusted only as far as digests confirm it: the JSON
    parses and names this image (its SHA-256) and these settings (the weights' SHA-256, leniency
    included); the map and the overlay hash to the digests the report recorded; unioncam wrote all
    three as they are (a user's file of that name is never taken as done); the map is a finite
    float32 array in [0, 1] of the input size."""
    paths = output_paths(out, stem)
    led = ownership.ledger(out)
    try:
        if not all(p.is_file() and led.owns(p) for p in paths.values()):
            return None
        rep = json.loads(paths["json"].read_text())
        # A key the caller leaves out (a layer chosen only at load) is not compared.
        if rep.get("image") != str(image) or any(rep.get(k) != settings[k] for k in SETTINGS if k in settings):
            return None
        # The same name is not the same photo: a file replaced in place is explained again.
        if rep.get("image_sha256") != image_digest(image):
            return None
        recorded = rep.get("outputs_sha256") or {}
        if any(recorded.get(k) != sha256_file(paths[k]) for k in ("npy", "png")):
            return None  # a map or overlay of another run (killed, or a full disk, between the writes)
        cam = np.load(paths["npy"], allow_pickle=False)
        if (cam.dtype != np.float32 or list(cam.shape) != list(settings.get("input_size") or cam.shape)
                or not np.isfinite(cam).all() or cam.min() < 0 or cam.max() > 1):
            return None
    except (OSError, ValueError, TypeError, AttributeError, UnionCAMError):
        return None
    return rep


def remove_stale_temporaries(out: Path) -> int:
    """Delete the temporary files a killed run of this host left in ``out`` (only unioncam's own,
    whose writer is gone: :func:`unioncam.atomic.remove_stale_temporaries`); returns how many."""
    from .atomic import remove_stale_temporaries as remove

    return remove(out)


def image_digest(path) -> str:
    """SHA-256 of an image file's bytes: a report names the content it explained."""
    return sha256_file(path)


def own_outputs(paths: list[Path]) -> set[Path]:
    """The inputs that are images an earlier run of any command wrote (overlays, ``eval``'s grid:
    recorded in their folder's ledger, bytes unchanged): ``explain DIR --out DIR`` run twice, or
    ``eval`` over ``explain``'s folder, must not explain our own pictures. A user's PNG with an
    overlay's name is an input like any other."""
    own = set()
    for p in paths:
        p = Path(p)
        if p.suffix.lower() != ".png" or not p.is_file():
            continue
        try:
            led = ownership.ledger(p.parent)
        except UnionCAMError:
            continue  # an unreadable ledger claims nothing; the outputs' check says why
        if led.recorded(p):
            own.add(p)
    return own
