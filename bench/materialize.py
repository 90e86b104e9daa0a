"""Materialize U(theta) forward and forward+backward, both schedules, as ratios to one n x n matmul.

    python bench/materialize.py [--sizes 256 512 1024] [--dtype float32]

Every figure in a row is measured in the same run as its matmul, so the ratios survive a noisy
machine; absolute times are printed for reference only.
"""

import argparse
import os
import time

import numpy as np

import cupyortho as co


def best(fn, repeat=3):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    print(f"# {dtype.name}, load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cpus")
    print("| schedule | n | matmul (ms) | forward (ms) | fwd / matmul | fwd+bwd (ms) | fwd+bwd / matmul |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        theta = rng.uniform(-np.pi, np.pi, co.num_angles(n)).astype(dtype)
        g = rng.standard_normal((n, n)).astype(dtype)
        a = rng.standard_normal((n, n)).astype(dtype)
        for kind in ("circle", "team"):
            t_mm = best(lambda: a @ g, repeat=max(args.repeat, 5))
            t_f = best(lambda: co.matrix(theta, schedule=kind), args.repeat)
            t_fb = best(lambda: (co.matrix(theta, schedule=kind), co.matrix_vjp(theta, g, schedule=kind)), args.repeat)
            print(f"| {kind} | {n} | {t_mm * 1e3:.2f} | {t_f * 1e3:.1f} | {t_f / t_mm:.1f} | "
                  f"{t_fb * 1e3:.1f} | {t_fb / t_mm:.1f} |", flush=True)


if __name__ == "__main__":
    main()
