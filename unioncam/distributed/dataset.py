"""``explain_dataset``: the driver. It lists the images, skips those a previous run finished, starts
(or joins) Ray, streams the rest through an actor pool of explainers, and writes the index."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import ipaddress
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

from ..artifacts import Manifest
from ..atomic import write_bytes
from ..errors import BackendUnavailableError, InvalidInputError, UnionCAMError, UsageError
from ..progress import progress_bar
from ..outputs import (claim_outputs, collect_images, finished_report, output_paths, output_stems,
                       remove_stale_temporaries)
from ..ownership import consents
from ..settings import RunSettings
from ..validation import MAX_PORT, check_max_passes, check_method, check_port, check_positive_int, check_theta
from ..verbosity import native_stderr, verbose
from .worker import COLUMNS, ExplainWorker, row_from_report

INDEX = "index.parquet"


#: Set before Ray is imported, Ray's own switch for a single-machine instance: every node, the GCS
#: and the workers bind 127.0.0.1, and a loopback address stays loopback (otherwise Ray rewrites
#: 127.0.0.1 to the machine's network address and listens there).
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def import_ray(local: bool = False):
    """The ray module; ``local``: this process starts its own cluster, or joins one whose nodes listen
    on loopback (:func:`is_loopback`), so it must be on loopback too (where Ray is not imported yet:
    a process that already imported it keeps its own settings). Without it, Ray takes the machine's
    network address for the driver's node, finds no node there, and the join waits for ever."""
    if local and "ray" not in sys.modules:
        for key, value in LOOPBACK.items():
            os.environ.setdefault(key, value)
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BackendUnavailableError('explaining on Ray needs the ray extra: pip install "unioncam[ray]"') from None
    return ray


def is_loopback(address: str | None) -> bool:
    """Whether ``--ray-address`` names this machine's loopback (``127.x.x.x``, ``::1``, ``localhost``)."""
    target = parse_address(address) if address else None
    if target is None:
        return False
    host = target[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_settings(artifact_dir: Path, **options) -> dict:
    """The report settings of an explanation of ``artifact_dir`` with ``options`` (theta, method,
    max_passes, class_requested, backend, device, batch_size), as ``unioncam explain --artifacts``
    records them."""
    m = Manifest.load(artifact_dir)
    return RunSettings(model=m.model, weights=f"exported folder {artifact_dir}",
                       weights_sha256=m.extra.get("fingerprint", {}).get("weights_sha256"), layer=m.layer,
                       input_size=list(m.input_size), **options).as_dict()


def _pack(artifact_dir: Path) -> dict:
    return {f.name: f.read_bytes() for f in sorted(artifact_dir.iterdir()) if f.is_file()}


#: Seconds a Ray cluster's address has, in all, to accept a connection and answer as a gRPC server.
CONNECT_TIMEOUT_S = 30.0
#: An HTTP/2 client's connection preface and an empty SETTINGS frame (RFC 9113, 3.4 and 6.5): Ray's
#: GCS (HOST:6379) and Ray Client (ray://HOST:10001) are gRPC servers, which answer with a SETTINGS
#: frame. A port that accepts and never answers is found here, not by a ray.init that waits forever.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def parse_address(address: str) -> tuple[str, int] | None:
    """(host, port) of ``--ray-address`` (None for ``auto``, Ray's own lookup).

    Raises:
        UsageError: not ``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``, or a port outside 1..65535.
    """
    if address == "auto":
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise UsageError(f"--ray-address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")

    try:
        return host, check_port(int(port), f"--ray-address {address!r}: the port")
    except UnionCAMError:
        raise UsageError(f"--ray-address {address!r}: port {int(port)} is outside 1..{MAX_PORT}") from None


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast where ``ray.init(address=...)`` would retry forever: within ``timeout`` s in all,
    the address must accept a TCP connection and answer an HTTP/2 preface as a gRPC server does
    (``"auto"`` is Ray's own lookup, not checked); ``ray://`` needs Ray Client's extra.

    Raises:
        UsageError: a malformed address; BackendUnavailableError: nothing answers, or the extra is missing.
    """
    target = parse_address(address)
    if target is None:
        return
    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise BackendUnavailableError(f"--ray-address {address}: Ray Client needs its extra; pip install "
                                      "\"ray[client]\" (or \"unioncam[ray]\", which includes it)")
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(0.001, deadline - time.monotonic())

    def fail(reason: str):
        return BackendUnavailableError(
            f"cannot reach a Ray cluster at {address} ({reason} within {timeout:.0f} s); check the address and "
            "that `ray start --head` runs there (port 6379, or 10001 for ray://)")

    try:
        with socket.create_connection(target, timeout=left()) as sock:
            sock.settimeout(left())
            sock.sendall(_H2_PREFACE)
            head = b""
            while len(head) < 9:
                sock.settimeout(left())
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    raise fail("it closed the connection without answering as a Ray (gRPC) server")
                head += chunk
    except BackendUnavailableError:
        raise
    except OSError as e:
        reason = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise fail(reason) from None
    if head[3] != 0x04:  # the server's first frame is its SETTINGS
        raise fail("it answered, but not as a Ray (gRPC) server")


def explain_dataset(paths, artifact_dir, out, *, workers: int | None = None, ray_address: str | None = None,
                    settings: dict | None = None, gpus_per_worker: float | None = None, progress: bool = True,
                    log=None, overwrite: bool = False, replace_user_files: bool = False, **options) -> dict:
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
        overwrite: explain every image again (replaces only files unioncam wrote).
        replace_user_files: also replace files with our output names that unioncam did not write
            (default: refused before any work, :class:`unioncam.errors.OutputPathError`).
        options: theta, method, max_passes, class_requested, backend, device, batch_size.

    Returns:
        {"images", "ok", "error", "skipped", "elapsed_s" (including Ray's start), "ray_start_s",
        "images_per_s", "index", "workers"}.
    """
    say = log or (lambda line: print(line, file=sys.stderr))
    ray = import_ray(local=ray_address is None or is_loopback(ray_address))
    artifact_dir, out = Path(artifact_dir), Path(out)
    settings = _checked_settings(artifact_dir, settings, workers, options)
    files, stems, rows, todo = _plan(paths, out, settings, overwrite, replace_user_files, say)
    skipped = len(rows)
    t0 = time.perf_counter()
    n_workers, start_s, stopped = 0, 0.0, None
    if todo:
        try:
            with _ray_session(ray, ray_address):
                start_s = time.perf_counter() - t0
                n_workers = _run(ray, todo, rows, artifact_dir, out, settings, workers, ray_address, gpus_per_worker,
                                 progress)
        except ClusterLostError as e:
            stopped = e  # the index of what finished is written first; a rerun resumes the rest
    elapsed = time.perf_counter() - t0
    table = _write_index(out, [rows[s] for s in stems if s in rows])
    if stopped is not None:
        raise stopped
    return {"images": len(files), "ok": int((table["status"] == "ok").sum()),
            "error": int((table["status"] == "error").sum()), "skipped": skipped, "elapsed_s": elapsed,
            "ray_start_s": start_s, "images_per_s": (len(todo) / elapsed) if todo and elapsed > 0 else None,
            "index": str(out / INDEX), "workers": n_workers}


def _checked_settings(artifact_dir: Path, settings: dict | None, workers, options: dict) -> dict:
    """The run's settings, every one checked on the driver (not once per actor)."""
    manifest = Manifest.load(artifact_dir)
    manifest.verify(artifact_dir)
    settings = dict(settings or default_settings(artifact_dir, **options))
    manifest.masked_graph(artifact_dir, settings.get("precision") or "fp32")  # a missing variant: refused here
    check_theta(settings["theta"])
    check_method(settings["method"])
    check_max_passes(settings.get("max_passes"))
    if workers is not None:
        check_positive_int(workers, "workers")
    return settings


def _plan(paths, out: Path, settings: dict, overwrite: bool, replace_user_files: bool, say):
    """(files, their output stems, the rows a previous run finished, the images left): the outputs
    claimed before any work, the temporaries a killed run left removed."""
    files = collect_images(paths)
    if not files:
        raise InvalidInputError("no image files found in the given paths")
    stems = output_stems(files, out)
    claim_outputs(out, stems, replace_user_files=replace_user_files, extra=[out / INDEX])  # before any work
    out.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(out)
    if stale:
        say(f"unioncam: removed {stale} temporary files an interrupted run left in {out}")
    rows, todo = _resume(files, stems, out, settings, overwrite)
    if rows:
        say(f"unioncam: {len(rows)} of {len(files)} images already explained in {out} (same settings); "
            f"explaining the other {len(todo)}")
    return files, stems, rows, todo


def _resume(files, stems, out: Path, settings: dict, overwrite: bool) -> tuple[dict, list]:
    """(rows of the images a previous run finished with these settings, the images left to explain)."""
    rows: dict[str, dict] = {}
    todo = []
    for f, stem in zip(files, stems):
        rep = None if overwrite else finished_report(out, stem, f, settings)
        if rep is not None:
            rows[stem] = row_from_report(rep, stem, output_paths(out, stem), "ok")
        else:
            # abspath, not resolve(): a symlink loop among the inputs is that image's error row, not a crash
            todo.append({"image": str(f), "path": os.path.abspath(f), "stem": stem})
    return rows, todo


def _write_index(out: Path, rows: list[dict]):
    """``index.parquet`` of the rows, written atomically; the table."""
    import pandas as pd

    table = pd.DataFrame(rows, columns=list(COLUMNS))
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    write_bytes(out / INDEX, buf.getvalue(), own=True)
    return table


@contextlib.contextmanager
def _ray_session(ray, ray_address: str | None):
    """Ray joined (``ray_address``, checked to answer first) or started locally unless already
    initialised, and shut down after if started here. Ray's own lines (its C++ core worker's notes
    on runs that succeed, the token notice) are captured and shown with ``--verbose`` or when the
    run fails; unioncam's lines and the progress bar still reach the terminal."""
    failed, interrupted, said = True, False, []
    # Ray's driver installs its own SIGTERM handler, which prints a C++ stack and kills the process
    # without running any ``finally``: the CLI's is put back after ray.init.
    sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        with native_stderr(python_to_terminal=True) as said:
            started = not ray.is_initialized()
            if started:
                _start(ray, ray_address)
                if callable(sigterm):
                    signal.signal(signal.SIGTERM, sigterm)
            try:
                yield
            except KeyboardInterrupt:
                interrupted = True  # Ctrl-C or SIGTERM: Ray's lines about its killed actors are no news
                if not verbose():
                    # Nor are Ray Data's: its executor thread logs the shutdown under it as an error.
                    for name in list(logging.root.manager.loggerDict):
                        if name == "ray" or name.startswith("ray."):
                            logging.getLogger(name).disabled = True
                raise
            finally:
                if started:
                    ray.shutdown()
            failed = False
    finally:
        if said and said[0].strip() and (verbose() or (failed and not interrupted)):
            print(said[0].rstrip(), file=sys.stderr)


def _start(ray, ray_address: str | None) -> None:
    """Ray joined at ``ray_address`` (checked to answer first), or started on this machine."""
    quiet = {"log_to_driver": verbose(), "logging_level": logging.INFO if verbose() else logging.WARNING}
    if not verbose():
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        # "SIGTERM handler is not set because current thread is not the main thread": the
        # row reader's thread (the CLI's handler is in place).
        logging.getLogger("ray._private.worker").setLevel(logging.ERROR)
    if not ray_address:
        # A cluster of our own, on this machine only (loopback: import_ray(local=True));
        # address="local": a new instance, never a stale one that a file in Ray's temp folder names.
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **quiet)
        return
    check_reachable(ray_address)
    try:
        _join(ray, ray_address, quiet)
    except ConnectionError as e:  # "auto" with no cluster here, or a token the cluster refused
        token = "" if os.environ.get("RAY_AUTH_MODE") == "token" else (
            "; a cluster from `ray start --head` asks for its token: set RAY_AUTH_MODE=token (the "
            "token comes from ~/.ray/auth_token or RAY_AUTH_TOKEN)")
        raise BackendUnavailableError(
            f"--ray-address {ray_address}: {str(e).splitlines()[0] if str(e) else 'no cluster'}; "
            "start one with `ray start --head`, or leave out --ray-address to start Ray here"
            + (token if ray_address != "auto" else "")) from None


#: Seconds ``ray.init`` has to join a cluster that answered (``UNIONCAM_RAY_JOIN_S`` overrides it).
JOIN_TIMEOUT_S = 60.0


def _join(ray, address: str, options: dict) -> None:
    """``ray.init(address=...)`` within :data:`JOIN_TIMEOUT_S` s. Ray's join waits without end where
    this machine is none of the cluster's nodes (it looks for a node at the machine's own address);
    here it runs in a daemon thread, abandoned at the deadline, and the run stops with the cause.

    Raises:
        BackendUnavailableError: not joined in time (naming the fixes); ConnectionError: Ray's own.
    """
    timeout = float(os.environ.get("UNIONCAM_RAY_JOIN_S") or JOIN_TIMEOUT_S)
    box: dict = {}

    def join():
        try:
            ray.init(address=address, **options)
            box["ok"] = True
        except BaseException as e:  # noqa: BLE001 - raised again in the driver's thread
            box["error"] = e

    thread = threading.Thread(target=join, name="unioncam-ray-join", daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" in box:
        raise box["error"]
    if "ok" not in box:

        raise BackendUnavailableError(
            f"--ray-address {address}: the cluster answered but this driver could not join it within {timeout:.0f} s "
            f"(Ray looks for a node of the cluster at this machine's own address, {socket.gethostname()}'s, and "
            "finds none); run the driver on a node of the cluster, or join this machine first (`ray start "
            f"--address {address}`), or use Ray Client (ray://HOST:10001)")


#: Restarts of one explainer actor after its process or node died (Ray's ``max_restarts``).
ACTOR_RESTARTS = 3
#: Retries of the image an actor held when it died (Ray's ``max_task_retries``).
TASK_RETRIES = 3
#: Seconds the cluster may have no room for even one explainer (its nodes lost) before the run stops
#: (``UNIONCAM_RAY_LOST_S`` overrides it): long enough for a node to rejoin, never for ever. A run
#: with room for one explainer goes on however slow its images are.
LOST_GRACE_S = 60.0


class ClusterLostError(BackendUnavailableError):
    """A Ray run stopped because its cluster lost the nodes its explainers need, or Ray gave up on
    an image after its retries; the finished images are in the index and a rerun resumes the rest."""
    def __init__(self, message: str, left: list[str]):
        super().__init__(message)
        self.left = left


def _room_for_one(ray, per_worker: dict) -> dict:
    """{resource: have} for each resource the alive nodes have less of, in all, than one explainer
    needs (``per_worker``); empty while one can run. Ray's own state: the resources of the nodes it
    holds alive, not the time since the last image."""
    try:
        have = ray.cluster_resources()
    except Exception:  # noqa: BLE001 - the head itself is gone
        have = {}
    return {k: have.get(k, 0.0) for k, v in per_worker.items() if v and have.get(k, 0.0) < v}


def _rows_while_the_cluster_can_run(ray, results, per_worker: dict, todo: list, rows: dict):
    """The rows of ``results`` as they come, from a reader thread, until the run finishes, or the
    cluster has had no room for one explainer (``per_worker``: ``{"CPU": cpus, "GPU": gpus}``) for
    :data:`LOST_GRACE_S` s. A lost node's worker is restarted by Ray where there is room; where there
    is none, its image would wait for ever.

    Raises:
        ClusterLostError: the loss above, or Ray's retries exhausted; naming the images left.
    """
    grace = float(os.environ.get("UNIONCAM_RAY_LOST_S") or LOST_GRACE_S)
    box: queue.Queue = queue.Queue()
    done = object()

    def read():
        try:
            for row in results.iter_rows():
                box.put(row)
            box.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the driver's thread, which raises it typed
            box.put(e)

    # A daemon thread: with its nodes gone, Ray's iterator may never return, and the run must.
    threading.Thread(target=read, name="unioncam-ray-rows", daemon=True).start()

    def lost(reason: str):
        images = [t["image"] for t in todo if t["stem"] not in rows]
        shown = ", ".join(images[:5]) + (f" and {len(images) - 5} more" if len(images) > 5 else "")
        return ClusterLostError(f"the Ray run stopped: {reason}; {len(images)} images left ({shown}); the finished "
                                "ones are in the index, and the same command resumes the rest", images)

    short_since = None
    while True:
        try:
            item = box.get(timeout=1.0)
        except queue.Empty:
            short = _room_for_one(ray, per_worker)
            if not short:
                short_since = None
                continue
            short_since = short_since or time.monotonic()
            if time.monotonic() - short_since < grace:
                continue
            what = ", ".join(f"{have:g} of the {per_worker[k]:g} {k}s one explainer needs" for k, have in short.items())
            raise lost(f"for {grace:.0f} s the cluster has had {what}: its nodes were lost") from None
        if item is done:
            return
        if isinstance(item, BaseException):
            first = (str(item).strip().splitlines() or [type(item).__name__])[0][:300]
            raise lost(f"Ray gave up on the work ({type(item).__name__}: {first})") from None
        yield item


def _map(ray, ds, worker, n, num_cpus, num_gpus, artifact_dir, packed, out, settings, threads):
    """The explainer actor pool over ``ds``: ``n`` actors, one image a call."""
    return ds.map_batches(
        worker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=n), num_cpus=num_cpus,
        num_gpus=num_gpus or None, max_restarts=ACTOR_RESTARTS, max_task_retries=TASK_RETRIES,
        fn_constructor_kwargs={"artifacts": str(artifact_dir.resolve()), "packed": packed, "out": str(out.resolve()),
                               "settings": settings, "threads": threads, "consents": consents()})


def _run(ray, todo, rows, artifact_dir, out, settings, workers, ray_address, gpus_per_worker, progress) -> int:

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

    # Our progress bar counts images; Ray Data's own bars and execution logs would interleave with it.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.from_items(todo, override_num_blocks=min(len(todo), 4 * n * 8))
    # Ray's own fault tolerance, bounded: a worker whose process or node died is restarted (on the
    # nodes that remain) up to ACTOR_RESTARTS times, and the image it held is retried up to
    # TASK_RETRIES times. Ray Data's defaults are unbounded (-1): with the node gone and no room
    # left for the actor, the job waited for ever.

    with warnings.catch_warnings():
        # Ray 2.60 takes max_restarts and max_task_retries only as extra keyword arguments, which it
        # calls deprecated (to be removed in 2.64; pyproject.toml caps Ray below it).
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        results = _map(ray, ds, ExplainWorker, n, num_cpus, num_gpus, artifact_dir, packed, out, settings, threads)
    bar = None
    if progress:

        bar = progress_bar(total=len(todo), desc=f"explain ({n} workers)", unit="image")
    try:
        per_worker = {"CPU": num_cpus, "GPU": num_gpus or 0}
        for row in _rows_while_the_cluster_can_run(ray, results, per_worker, todo, rows):
            rows[row["stem"]] = dict(row)
            if bar is not None:
                bar.update(1)
                if row["status"] == "error":
                    bar.write(f"unioncam: error: {row['image']}: {row['error']}")
    finally:
        if bar is not None:
            bar.close()
    return n
