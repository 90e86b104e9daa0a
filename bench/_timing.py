"""Timing helper shared by the bench scripts (run as ``python bench/<script>.py``: this folder is on
``sys.path``)."""

import time


def best_of(fn, repeat=3, clock=time.perf_counter):
    """Minimum of ``repeat`` timed calls of ``fn()`` after one warm-up call, measured with ``clock``
    (``time.perf_counter`` for wall time, ``time.process_time`` for CPU time)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best
