"""``python -m cupyortho``: version, backends, the engine's JIT cost, and timings on this machine.

The compiled CPU engine's first call per pass (``--engine-dtypes``, default float32): a compile on a
fresh install (then cached by Numba), a cache load afterwards; then one apply forward+backward at
n = 1024, k = 32 as a ratio to one matmul.

For n = 256 and 1024 (float32, default schedule): the orthogonality error max|U^T U - I|, the time of
the forward pass (U from angles) and of forward + backward (U and the angle gradient for a cotangent),
each also as a ratio to one n x n matmul timed in the same run.  ``--sizes`` and ``--schedule`` change
what is measured.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import cupyortho as co
from cupyortho.schedule import DEFAULT_SCHEDULE


def _best_time(fn, repeat=3, min_time=0.2):
    """Best-of-``repeat`` seconds per call (each repeat runs until ``min_time`` has passed)."""
    fn()  # warm up
    best = np.inf
    for _ in range(repeat):
        count, start = 0, time.perf_counter()
        while True:
            fn()
            count += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        best = min(best, elapsed / count)
    return best


def _engine_report(dtypes):
    """First-call cost of every engine pass for ``dtypes`` (compile or cache load), then one apply."""
    from . import _strategy

    if not _strategy.engine_available():
        print("\nengine: numba is not installed; the CPU passes run on the NumPy paths")
        return
    import numba

    from .backends import engine
    from .backends.engine import kernels

    t0 = time.perf_counter()
    times = engine.warm_up(dtypes)
    total = time.perf_counter() - t0
    misses = sum(sum(d.stats.cache_misses.values()) for d in vars(kernels).values()
                 if isinstance(d, numba.core.dispatcher.Dispatcher))
    state = "compiled now (first run; cached for the next process)" if misses else "loaded from Numba's cache"
    print(f"\nengine (numba {numba.__version__}, {numba.get_num_threads()} threads, layer "
          f"{numba.threading_layer()}): first call per pass, {state}, {total:.1f} s in all")
    for (op, dt), sec in times.items():
        print(f"  {op:18s} {dt:10s} {sec:6.2f} s")
    rng = np.random.default_rng(0)
    n, k = 1024, 32
    theta = rng.uniform(-np.pi, np.pi, co.num_angles(n)).astype(np.float32)
    x = rng.standard_normal((n, k)).astype(np.float32)
    a = rng.standard_normal((n, n)).astype(np.float32)
    t_mm = _best_time(lambda: a @ a)
    t_ap = _best_time(lambda: co.apply_vjp(theta, x, x, output=co.apply(theta, x)), repeat=2, min_time=0.0)
    print(f"  apply fwd+bwd n={n} k={k} float32: {t_ap * 1e3:.1f} ms = {t_ap / t_mm:.2f}x one matmul "
          f"({_strategy.cpu_impl('apply', co.get_schedule(None, n), np.float32, k)})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cupyortho", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--schedule", default=None, help="circle or team (default: the library default)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--engine-dtypes", nargs="*", default=["float32"],
                        choices=["float32", "float64", "complex64", "complex128"])
    args = parser.parse_args(argv)

    print(f"cupyortho {co.__version__}")
    print("backends:")
    for name, state in co.available_backends().items():
        print(f"  {name:6s} {'available' if state is True else state}")
    _engine_report(args.engine_dtypes)
    schedule = args.schedule or DEFAULT_SCHEDULE
    dtype = np.dtype(args.dtype)
    print(f"\nmaterialize U(theta), {dtype.name}, schedule={schedule!r}, numpy backend")
    head = f"{'n':>6} {'max|UtU-I|':>12} {'matmul':>10} {'forward':>10} {'x matmul':>9} {'fwd+bwd':>10} {'x matmul':>9}"
    print(head)
    rng = np.random.default_rng(0)
    for n in args.sizes:
        theta = rng.uniform(-np.pi, np.pi, co.num_angles(n)).astype(dtype)
        g = rng.standard_normal((n, n)).astype(dtype)
        a = rng.standard_normal((n, n)).astype(dtype)
        u = co.matrix(theta, schedule=schedule)
        u64 = u.astype(np.float64)
        err = np.abs(u64.T @ u64 - np.eye(n)).max()
        t_mm = _best_time(lambda: a @ g)
        t_fwd = _best_time(lambda: co.matrix(theta, schedule=schedule), repeat=2, min_time=0.0)

        def fwd_bwd():
            co.matrix(theta, schedule=schedule)
            co.matrix_vjp(theta, g, schedule=schedule)

        t_fb = _best_time(fwd_bwd, repeat=2, min_time=0.0)
        print(f"{n:>6} {err:>12.2e} {t_mm * 1e3:>8.2f}ms {t_fwd * 1e3:>8.1f}ms {t_fwd / t_mm:>8.1f}x "
              f"{t_fb * 1e3:>8.1f}ms {t_fb / t_mm:>8.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
