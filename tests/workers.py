"""Run slow, single-threaded test preparation (model exports: tracing is Python-bound) two jobs at a
time in spawned worker processes, so that a 2-core machine does it in about half the time."""
from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _init(tests_dir: str) -> None:
    sys.path.insert(0, tests_dir)  # the jobs' functions and models may come from test modules
    import torch

    torch.set_num_threads(1)  # two workers share the two cores


def run_jobs(jobs: dict, workers: int = 2) -> dict:
    """``{name: fn(*args)}`` for ``jobs = {name: (fn, args)}``; a job that raised maps to its
    exception, for the test that needs it to raise. Arguments travel pickled (a model arrives with
    exactly the caller's weights)."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    with ProcessPoolExecutor(min(workers, len(jobs)) or 1, mp_context=ctx, initializer=_init,
                             initargs=(str(Path(__file__).parent),)) as pool:
        futures = {name: pool.submit(fn, *args) for name, (fn, args) in jobs.items()}
        results = {}
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except Exception as e:
                results[name] = e
    return results
