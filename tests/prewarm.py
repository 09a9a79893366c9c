"""The suite's slow exports, as jobs that run in spawned worker processes (``workers.py``).

An export is single-threaded Python (tracing) for most of its time, so in the main process it
leaves one of a 2-core machine's cores idle. Two kinds of job:

- :data:`BACKGROUND`: the real-model exports that tests all through the session share. They are
  queued when the session begins, in the order the selected tests first need them, in one worker
  beside the tests that run meanwhile. A test that needs one the worker has not started yet takes
  it back and runs it itself, so nothing waits behind the queue.
- :data:`ON_DEMAND`: one job per parametrised model (the architecture zoo, the registry models),
  run two at a time when their tests begin: these already keep both cores busy, and queued in the
  background they only contended with the tests running meanwhile (measured: the suite no faster,
  640 s against 610-640 s, and 2.7 CPU-minutes more).

A failed export raises in the fixture or test that needs it, with the exporter's own error.
"""
from __future__ import annotations

import multiprocessing
import os
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

TESTS = Path(__file__).parent
EXAMPLES = TESTS.parent / "examples"


# --- the jobs (run in the worker, or in the main process when taken back) ---------------------------

def lite0_artifacts(out: str) -> Path:
    """efficientnet_lite0 (bundled weights) exported at its default layer into ``out``."""
    from unioncam.export import export
    from unioncam.models import load

    model, layer = load("efficientnet_lite0")
    export(model, layer, out, input_size=(224, 224), model_name="efficientnet_lite0")
    return Path(out)


def lite0_e2e(out: str) -> Path:
    """efficientnet_lite0 as one end-to-end graph, default settings; returns the .onnx path."""
    from unioncam.export.end_to_end import export_end_to_end
    from unioncam.models import load

    model, layer = load("efficientnet_lite0")
    export_end_to_end(model, layer, out)
    return Path(out) / "unioncam.onnx"


def lite0_stem_cache(cache: str) -> Path:
    """The CLI's cache entry for ``unioncam explain --layer stem`` (the default model), made by the
    export cache the CLI calls, so that its key is the one the CLI tests look up."""
    os.environ["UNIONCAM_CACHE"] = cache
    from unioncam.export_cache import ModelRequest, exported
    from unioncam.model_specs import spec

    return exported(ModelRequest("efficientnet_lite0", spec("efficientnet_lite0"), layer="stem"))[0]


def hybrid_vit_cache(cache: str) -> Path:
    """The CLI's cache entry for ``unioncam explain --model hybrid_vit:build`` (examples/hybrid_vit.py),
    its layer and reshape found as the CLI finds them, so that the CLI test finds it."""
    import sys

    os.environ["UNIONCAM_CACHE"] = cache
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    from unioncam.export_cache import ModelRequest, exported
    from unioncam.model_specs import spec

    return exported(ModelRequest("hybrid_vit:build", spec("hybrid_vit:build")), say=lambda line: None)[0]


def registry_exports(name: str, out: str):
    """(model, layer, folder): a registered model (seeded weights) exported at 64x64. The model
    comes back with the export, so the test compares against exactly the exported weights."""
    from unioncam.export import export
    from unioncam.models import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, layer = load(name)
    # 64x64 keeps the test quick; for vgg16 it also exercises the adaptive-pool backward that
    # upsamples (2x2 -> 7x7), and the 2x2 max-pool after features.29.
    export(model, layer, out, input_size=(64, 64))
    return model, layer, Path(out)


def zoo_exports(name: str, out: str):
    """((model, early, late), folder): one zoo family built and exported (``zoo.export_family``)."""
    from zoo import build, export_family

    model, early, late = build(name)
    return (model, early, late), export_family(model, early, late, out)


def vit_exports(name: str, out: str):
    """(model, layer, reshape, folder, one graph): a transformer family (``zoo_vit.py``) exported at its
    block input, as the runtime's graphs and as one graph."""
    from zoo_vit import build

    from unioncam.export import export
    from unioncam.export.end_to_end import export_end_to_end

    model, layer, reshape = build(name)
    out = Path(out)
    export(model, layer, out / "art", input_size=(32, 32), reshape=reshape)
    info = export_end_to_end(model, layer, out / "e2e", input_size=(32, 32), reshape=reshape, chunk=8)
    return model, layer, reshape, out / "art", Path(info["path"])


BACKGROUND = ("lite0_artifacts", "lite0_stem_cache", "lite0_e2e", "hybrid_vit_cache")
ON_DEMAND = ("registry_exports", "zoo_exports", "vit_exports")


# --- the queue ---------------------------------------------------------------------------------------

def job(key: str, where) -> tuple:
    """(function, args) of ``key``: a fixture's name, or ``fixture:param`` for :data:`ON_DEMAND`."""
    fixture, _, param = key.partition(":")
    return globals()[fixture], ((param,) if param else ()) + (str(where(key)),)


def plan(items, where) -> dict:
    """``{key: (function, args)}`` of the :data:`BACKGROUND` jobs, in the order the selected ``items``
    first need them; ``where(key)`` is the folder a job writes into."""
    jobs = {}
    for item in items:
        for key in BACKGROUND:
            if key in getattr(item, "fixturenames", ()) and key not in jobs:
                jobs[key] = job(key, where)
    return jobs


class Queue:
    """The planned jobs, submitted at once to one spawned worker; any other job is run when asked for."""

    def __init__(self, jobs: dict, where):
        from workers import _init

        self.jobs, self.where = jobs, where
        self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_init,
                                        initargs=(str(TESTS),)) if jobs else None
        self.futures: dict[str, Future] = {k: self.pool.submit(fn, *args) for k, (fn, args) in jobs.items()}

    def _take_back(self, key: str) -> bool:
        """True when ``key`` is not (or no longer) queued, so the caller runs it itself."""
        if key not in self.futures:  # an on-demand job, or a fixture only asked for at run time
            self.jobs[key] = job(key, self.where)
            return True
        return self.futures[key].cancel()

    def result(self, key: str):
        """The job's result (its exception raises here); a job not started yet runs here instead."""
        if self._take_back(key):
            fn, args = self.jobs[key]
            return fn(*args)
        return self.futures[key].result()

    def results(self, keys) -> dict:
        """``{key: result or exception}``; jobs not started yet are taken back and run two at a time."""
        from workers import run_jobs

        taken = [k for k in keys if self._take_back(k)]
        out = run_jobs({k: self.jobs[k] for k in taken}) if taken else {}
        for k in keys:
            if k not in out:
                try:
                    out[k] = self.futures[k].result()
                except Exception as e:
                    out[k] = e
        return out

    def for_module(self, request, fixture: str) -> dict:
        """``{param: result or exception}`` of an :data:`ON_DEMAND` fixture, for the parameters the
        selected tests of ``request``'s module use."""
        params = sorted({item.callspec.params["name"] for item in request.session.items
                         if item.module is request.module and fixture in item.fixturenames})
        done = self.results([f"{fixture}:{p}" for p in params])
        return {p: done[f"{fixture}:{p}"] for p in params}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
