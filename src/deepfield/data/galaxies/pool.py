"""The worker pool that makes batches of stamps (simulated galaxies, imported real ones): spawned
processes, each with its own batch maker, batches returned in order so the store is the same for
any worker count."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from deepfield.data.galaxies.parameters import galaxy_parameters
from deepfield.data.galaxies.rendering import _StampRenderer
from deepfield.errors import InputError


class _BatchMaker:
    """Draws the parameters of objects lo ... hi - 1 and renders them: catalog columns (with the
    measured S/N) and stamps. One per worker process, so the parent needs no GalSim."""

    def __init__(self, survey: dict, render: dict):
        self.survey = survey
        self.renderer = _StampRenderer(**render)

    def __call__(self, lo: int, hi: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        params = galaxy_parameters(hi - lo, start=lo, **self.survey)
        arrays = self.renderer.render(params)
        catalog = params.catalog()  # carries noise_sigma_<band>: the parent makes ivar from it
        snr = arrays.pop("snr")
        catalog["snr"] = snr[:, params.reference_index]
        for c, band in enumerate(params.bands):
            catalog[f"snr_{band}"] = snr[:, c]
        return catalog, arrays


_WORKER = None  # this worker process's batch maker


def _init_worker(make: type, args: tuple) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    global _WORKER
    _WORKER = make(*args)


def _make_in_worker(lo: int, hi: int):
    assert _WORKER is not None
    return _WORKER(lo, hi)


@contextmanager
def _single_threaded_children():
    """Spawned workers inherit OMP_NUM_THREADS=1 (GalSim's OpenMP must not oversubscribe)."""
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


def ordered_batches(make: type, args: tuple, batches, workers: int) -> Iterator:
    """Yield ``make(*args)(lo, hi)`` for each (lo, hi) in `batches`, in order.

    `make` is a picklable class (module level) whose instances turn a row range into a batch;
    each worker process builds one. With workers > 1 a spawn pool makes up to 2 batches per
    worker ahead of the caller, so a writer consuming them in order writes the same store for
    any worker count.
    """
    if workers == 1:
        maker = make(*args)
        for lo, hi in batches:
            yield maker(lo, hi)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    if getattr(mp.current_process(), "_inheriting", False):
        # this is a worker process re-running the user's script as it starts (spawn imports the main module):
        # without a __main__ guard it would start workers of its own, for ever
        raise InputError(REIMPORTED_MAIN)
    # spawn, never fork: GalSim's bundled OpenMP runtime deadlocks in forked children. An executor, not a
    # multiprocessing.Pool: a worker that dies as it starts breaks it (a Pool would start another, for ever)
    with _single_threaded_children():
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                   initargs=(make, args))
    try:
        todo = iter(batches)
        pending: deque = deque()

        def submit() -> None:
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(_make_in_worker, *nxt))

        for _ in range(2 * workers):
            submit()
        while pending:
            try:
                made = pending.popleft().result()
            except BrokenProcessPool:
                raise InputError(f"a worker process ended before making its batch. {REIMPORTED_MAIN}; if it does, "
                                 "the machine may have run out of memory: use fewer workers") from None
            submit()
            yield made
    finally:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()  # at once, as on Ctrl-C: their batches are no longer wanted
        pool.shutdown(wait=True, cancel_futures=True)


#: what to do when worker processes re-run a script (they import its main module as they start)
REIMPORTED_MAIN = ("worker processes start by importing the script that started them, so its top-level code ran "
                   "again in each: put the script's code under `if __name__ == \"__main__\":` (Python's rule "
                   "for scripts that start processes), or pass workers=1")


def _made_batches(batches, survey: dict, render: dict, workers: int) -> Iterator:
    """Yield (catalog, arrays) of simulated galaxies for each (lo, hi) batch, in order."""
    return ordered_batches(_BatchMaker, (survey, render), batches, workers)
