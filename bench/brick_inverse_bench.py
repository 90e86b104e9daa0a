"""Exact brick inverses (cupyortho/_nulling.py) and per-angle Haar draws: round-trip errors and times.

    python bench/brick_inverse_bench.py [n ...]      (default 64 256 1024)

For each n: angles_from_matrix (SO(n)), params_from_unitary (U(n)), angles_from_frame at m = 1, 16 and
n/2 (brick's St(n, m) band), haar_angles(per_angle=True); max-abs round-trip error against the Haar
target, best of 3 wall times (the first call, which loads the numba cache, is not timed), and each
time as a ratio to one n x n float64 matmul timed in the same run.  Prints os.getloadavg().
"""

import os
import sys
import time

import numpy as np

import cupyortho as co


def best(f, reps=3):
    f()
    out = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        f()
        out = min(out, time.perf_counter() - t)
    return out


def main(sizes):
    print("load average", os.getloadavg())
    for n in sizes:
        a = np.random.default_rng(0).standard_normal((n, n))
        mm = best(lambda: a @ a)
        U = co.haar_matrix(n, rng=1)
        V = co.haar_unitary_matrix(n, rng=2)
        rows = []
        th = co.angles_from_matrix(U, schedule="brick")
        rows.append(("SO(n) angles_from_matrix", np.abs(co.matrix(th, schedule="brick") - U).max(),
                     best(lambda: co.angles_from_matrix(U, schedule="brick"))))
        p = co.params_from_unitary(V, schedule="brick")
        rows.append(("U(n) params_from_unitary", np.abs(co.unitary(p, schedule="brick") - V).max(),
                     best(lambda: co.params_from_unitary(V, schedule="brick"))))
        for m in sorted({1, 16, n // 2}):
            Q = U[:, :m]
            t = co.angles_from_frame(Q, m, schedule="brick")
            rows.append((f"St(n, {m}) angles_from_frame", np.abs(co.frame(t, n, m, schedule="brick") - Q).max(),
                         best(lambda: co.angles_from_frame(Q, m, schedule="brick"))))
        rows.append(("haar_angles(per_angle=True)", float("nan"),
                     best(lambda: co.haar_angles(n, schedule="brick", per_angle=True, rng=3))))
        print(f"n = {n}: one n x n matmul {mm * 1e3:.2f} ms")
        for name, err, t in rows:
            print(f"  {name:30s} error {err:8.2e}  time {t * 1e3:10.2f} ms  = {t / mm:8.1f} x matmul")
    print("load average", os.getloadavg())


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [64, 256, 1024])
