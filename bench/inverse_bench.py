"""Benchmark of the inverse map (cupyortho.inverse): time per n, success rate, reach.

Run:  .venv/bin/python bench/inverse_bench.py [--sizes 4,8,12,16,24,32] [--seeds 3] [--limit 300]
                                              [--large 64,128,256] [--large-limit 600]

Rows:
* ``haar``: Haar-random targets (scipy.stats.special_ortho_group, seeds 0..S-1), default solver
  (dense pseudo-arclength continuation), per solve wall time capped by ``--limit`` seconds.
* ``near``: targets ``matrix(theta0)`` with ``theta0 ~ N(0, 0.05^2)`` (a fine-tuned rotation near I),
  matrix-free Levenberg-Marquardt, for the large sizes.
* ``haar-mf``: one Haar target per large size with the matrix-free solver (expected to stall in a
  local minimum: reported with its final error).

Times are wall-clock seconds on this machine and, to compare across machines, divided by the time of
one forward ``cupyortho.matrix`` call of the same size and schedule.
"""

from __future__ import annotations

import argparse
import re
import signal
import time

import numpy as np
from scipy.stats import special_ortho_group

import cupyortho as co
from cupyortho import inverse as inv


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def _forward_time(n, kind):
    theta = np.zeros(co.num_angles(n))
    t0 = time.perf_counter()
    reps = 0
    while time.perf_counter() - t0 < 0.2 or reps < 3:
        co.matrix(theta, schedule=kind)
        reps += 1
    return (time.perf_counter() - t0) / reps


def _solve(U, kind, limit, **kw):
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(limit))
    t0 = time.perf_counter()
    try:
        th = inv.angles_from_matrix(U, schedule=kind, **kw)
        err = float(np.abs(co.matrix(th, schedule=kind) - U).max())
        status = "ok" if err <= 1e-10 else "inaccurate"
    except _Timeout:
        status, err = "timeout", np.nan
    except inv.InverseMapError as exc:
        status, err = "failed", np.nan
        found = re.search(r"best error ([0-9.e+-]+)", str(exc))
        err = float(found.group(1)) if found else np.nan
    finally:
        signal.alarm(0)
    return status, err, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="4,8,12,16,24,32")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--limit", type=float, default=300)
    ap.add_argument("--large", default="64,128,256")
    ap.add_argument("--large-limit", type=float, default=600)
    ap.add_argument("--kinds", default="circle,team")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    print(f"{'row':8s} {'kind':6s} {'n':>4s} {'seed':>4s} {'status':>10s} {'max-abs err':>11s} "
          f"{'seconds':>8s} {'/forward':>9s}")
    for n in [int(v) for v in args.sizes.split(",") if v]:
        for kind in kinds:
            fwd = _forward_time(n, kind)
            for seed in range(args.seeds):
                U = special_ortho_group.rvs(n, random_state=seed)
                status, err, dt = _solve(U, kind, args.limit)
                print(f"{'haar':8s} {kind:6s} {n:4d} {seed:4d} {status:>10s} {err:11.1e} {dt:8.2f} {dt / fwd:9.0f}",
                      flush=True)
    for n in [int(v) for v in args.large.split(",") if v]:
        for kind in kinds:
            fwd = _forward_time(n, kind)
            theta0 = np.random.default_rng(0).normal(0.0, 0.05, co.num_angles(n))
            U = co.matrix(theta0, schedule=kind)
            status, err, dt = _solve(U, kind, args.large_limit, method="matrix-free", restarts=0)
            print(f"{'near':8s} {kind:6s} {n:4d} {0:4d} {status:>10s} {err:11.1e} {dt:8.2f} {dt / fwd:9.0f}",
                  flush=True)
            U = special_ortho_group.rvs(n, random_state=0)
            status, err, dt = _solve(U, kind, args.large_limit, method="matrix-free", restarts=0)
            print(f"{'haar-mf':8s} {kind:6s} {n:4d} {0:4d} {status:>10s} {err:11.1e} {dt:8.2f} {dt / fwd:9.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
