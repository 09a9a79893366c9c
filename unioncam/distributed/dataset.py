"""``explain_dataset``: the driver. It lists the images, skips those a previous run finished, starts
(or joins) Ray, streams the rest through an actor pool of explainers, and writes the index."""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from ..errors import BackendUnavailableError, InvalidInputError, UsageError

INDEX = "index.parquet"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BackendUnavailableError('explaining on Ray needs the ray extra: pip install "unioncam[ray]"') from None
    return ray


def default_settings(artifact_dir: Path, **options) -> dict:
    """The report settings of an explanation of ``artifact_dir`` with ``options`` (theta, method,
    max_passes, class_requested, backend, device, batch_size), as ``unioncam explain --artifacts``
    records them."""
    from ..artifacts import Manifest

    m = Manifest.load(artifact_dir)
    return {"model": m.model, "weights": f"exported folder {artifact_dir}", "layer": m.layer,
            "input_size": list(m.input_size), "theta": 10.0, "method": "unioncam", "max_passes": None, "precision": "fp32",
            "class_requested": None, "backend": "onnxruntime", "device": "cpu", "batch_size": None, **options}


def _pack(artifact_dir: Path) -> dict:
    return {f.name: f.read_bytes() for f in sorted(artifact_dir.iterdir()) if f.is_file()}


#: Seconds to wait for a Ray cluster's address to answer before saying what to check.
CONNECT_TIMEOUT_S = 30.0


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast where ``ray.init(address=...)`` would retry forever: the address must accept a TCP
    connection within ``timeout`` s (``"auto"`` is Ray's own lookup, not checked), and ``ray://``
    needs Ray Client's extra.

    Raises:
        UsageError: a malformed address; BackendUnavailableError: nothing answers, or the extra is missing.
    """
    import importlib.util
    import socket

    if address == "auto":
        return
    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise BackendUnavailableError(f"--ray-address {address}: Ray Client needs its extra; pip install "
                                      "\"ray[client]\" (or \"unioncam[ray]\", which includes it)")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray-address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise BackendUnavailableError(
            f"cannot reach a Ray cluster at {address} ({reason} within {timeout:.0f} s); check the address and "
            "that `ray start --head` runs there (port 6379, or 10001 for ray://)") from None


def explain_dataset(paths, artifact_dir, out, *, workers: int | None = None, ray_address: str | None = None,
                    settings: dict | None = None, gpus_per_worker: float | None = None, progress: bool = True,
                    log=None, **options) -> dict:
    """Explain every image of ``paths`` on Ray Data; per-image outputs as ``unioncam explain`` writes
    them, plus ``out/index.parquet``.

    Resumable: an image whose outputs a previous run completed with the same settings is not
    explained again (its index row is rebuilt from its report); temporary files a killed run left
    are removed. A bad image is a row with status ``error`` and a one-line reason.

    Args:
        paths: image files, folders or globs. artifact_dir: an exported folder (``unioncam export``);
            the driver never exports, workers never re-export. out: the output folder.
        workers: explainer actors (default: one per 2 CPUs of the cluster, at least 1).
        ray_address: None starts a local Ray; ``"auto"``, ``"ray://host:10001"`` or ``"host:6379"``
            joins a cluster (the artifacts then travel through the object store).
        settings: the run's report settings (the CLI passes its own); default from the manifest.
        gpus_per_worker: GPUs per actor with device ``cuda``/``tensorrt`` (default 1).
        options: theta, method, max_passes, class_requested, backend, device, batch_size.

    Returns:
        {"images", "ok", "error", "skipped", "elapsed_s" (including Ray's start), "ray_start_s",
        "images_per_s", "index", "workers"}.
    """
    from ..atomic import write_bytes
    from ..outputs import collect_images, finished_report, output_paths, output_stems, remove_stale_temporaries
    from ..validation import check_max_passes, check_method, check_positive_int, check_theta
    from .worker import COLUMNS, row_from_report

    say = log or (lambda line: print(line, file=sys.stderr))
    ray = import_ray()
    artifact_dir, out = Path(artifact_dir), Path(out)
    from ..artifacts import Manifest

    manifest = Manifest.load(artifact_dir)
    manifest.verify(artifact_dir)  # refused here, not once per actor
    settings = dict(settings or default_settings(artifact_dir, **options))
    manifest.masked_graph(artifact_dir, settings.get("precision") or "fp32")  # a missing variant: refused here
    check_theta(settings["theta"])
    check_method(settings["method"])
    check_max_passes(settings.get("max_passes"))
    if workers is not None:
        check_positive_int(workers, "workers")
    files = collect_images(paths)
    if not files:
        raise InvalidInputError("no image files found in the given paths")
    out.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(out)
    if stale:
        say(f"unioncam: removed {stale} temporary files an interrupted run left in {out}")
    stems = output_stems(files, out)
    rows: dict[str, dict] = {}
    todo = []
    for f, stem in zip(files, stems):
        rep = finished_report(out, stem, f, settings)
        if rep is not None:
            rows[stem] = row_from_report(rep, stem, output_paths(out, stem), "ok")
        else:
            todo.append({"image": str(f), "path": str(Path(f).resolve()), "stem": stem})
    skipped = len(rows)
    if skipped:
        say(f"unioncam: {skipped} of {len(files)} images already explained in {out} (same settings); "
            f"explaining the other {len(todo)}")

    t0 = time.perf_counter()
    n_workers, start_s = 0, 0.0
    if todo:
        with _ray_session(ray, ray_address):
            start_s = time.perf_counter() - t0
            n_workers = _run(ray, todo, rows, artifact_dir, out, settings, workers, ray_address, gpus_per_worker,
                             progress)
    elapsed = time.perf_counter() - t0

    import io

    import pandas as pd

    table = pd.DataFrame([rows[s] for s in stems if s in rows], columns=list(COLUMNS))
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    write_bytes(out / INDEX, buf.getvalue())
    n_ok = int((table["status"] == "ok").sum())
    return {"images": len(files), "ok": n_ok, "error": int((table["status"] == "error").sum()), "skipped": skipped,
            "elapsed_s": elapsed, "ray_start_s": start_s,
            "images_per_s": (len(todo) / elapsed) if todo and elapsed > 0 else None,
            "index": str(out / INDEX), "workers": n_workers}


@contextlib.contextmanager
def _ray_session(ray, ray_address: str | None):
    """Ray joined (``ray_address``, checked to answer first) or started locally unless already
    initialised, and shut down after if started here. Ray's own lines (its C++ core worker's notes
    on runs that succeed, the token notice) are captured and shown with ``--verbose`` or when the
    run fails; unioncam's lines and the progress bar still reach the terminal."""
    import logging

    from ..verbosity import native_stderr, verbose

    failed, said = True, []
    try:
        with native_stderr(python_to_terminal=True) as said:
            started = False
            if not ray.is_initialized():
                quiet = {"log_to_driver": verbose(), "logging_level": logging.INFO if verbose() else logging.WARNING}
                if not verbose():
                    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
                if ray_address:
                    check_reachable(ray_address)
                    ray.init(address=ray_address, **quiet)
                else:
                    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
                started = True
            try:
                yield
            finally:
                if started:
                    ray.shutdown()
            failed = False
    finally:
        if said and said[0].strip() and (verbose() or failed):
            print(said[0].rstrip(), file=sys.stderr)


def _run(ray, todo, rows, artifact_dir, out, settings, workers, ray_address, gpus_per_worker, progress) -> int:
    from .worker import ExplainWorker

    cluster_cpus = float(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    n = workers or max(1, int(cluster_cpus // 2))
    n = min(n, len(todo))
    gpu = settings["device"] != "cpu"
    num_gpus = (gpus_per_worker if gpus_per_worker is not None else 1.0) if gpu else 0
    # Fractional CPUs: whole-CPU actors on a small machine leave none for Ray Data's own tasks and
    # the pipeline stalls. The actors' ONNX Runtime threads share the cores instead.
    num_cpus = max(0.25, min(1.0, (cluster_cpus - 0.5) / n))
    threads = settings.get("threads") or (None if ray_address else max(1, int((os.cpu_count() or 1) // n)))
    packed = ray.put(_pack(artifact_dir)) if ray_address else None
    import logging

    # Our progress bar counts images; Ray Data's own bars and execution logs would interleave with it.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.from_items(todo, override_num_blocks=min(len(todo), 4 * n * 8))
    results = ds.map_batches(
        ExplainWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=n), num_cpus=num_cpus,
        num_gpus=num_gpus or None,
        fn_constructor_kwargs={"artifacts": str(artifact_dir.resolve()), "packed": packed, "out": str(out.resolve()),
                               "settings": settings, "threads": threads})
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"explain ({n} workers)", unit="image", file=sys.stderr)
    try:
        for row in results.iter_rows():
            rows[row["stem"]] = dict(row)
            if bar is not None:
                bar.update(1)
                if row["status"] == "error":
                    bar.write(f"unioncam: error: {row['image']}: {row['error']}")
    finally:
        if bar is not None:
            bar.close()
    return n
