"""Benchmark of the compiled CPU engine against torch materialize-then-matmul, as ratios in one run.

    python bench/engine_bench.py [--n 2048] [--ks 1 32 256] [--un 1024] [--uk 32] [--impl engine] [--one-thread]

* apply, float32, ``Y = U X`` forward+backward (``dL/dtheta``, ``dL/dX`` for a cotangent ``G``) at
  ``n``, ``k`` in ``--ks``: cupyortho's public ``apply`` + ``apply_vjp(output=Y)`` (default schedule,
  ``method="auto"``) against torch's ``orthogonal`` parametrization with ``orthogonal_map="cayley"``
  (``W`` materialized, then ``W @ X``, then ``backward(G)``).  Targets (issue 12): >= 10x (k = 1),
  >= 20x (k = 32), >= 3x (k = 256).
* unitary apply, complex64, n = ``--un``, k = ``--uk``: ``unitary_apply`` + ``unitary_apply_vjp``
  against torch's complex ``matrix_exp`` parametrization materialize-then-matmul.  Target >= 25x.

Every figure is a ratio taken in the same run (to one ``n x n`` float32 matmul and to torch), with
the load average printed next to it.  ``--one-thread`` runs everything on one thread and times CPU
time (``time.process_time``): the figure to trust on a shared machine.  Each forward gets a new
angle vector (two are used in turn), as in training.  ``--crossover 256 1024 2048`` instead measures the strategy's
team ``U(theta)`` crossover (engine against blocked stages, one thread each, CPU time per one-thread
matmul), the numbers behind ``_strategy.ENGINE_MATRIX_MAX_N``.  ``--impl`` forces the CPU
implementation of the apply passes (``engine``, ``blocked``, ``reference``) through
``cupyortho._strategy.FORCE`` to compare them.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cupyortho as co  # noqa: E402
from _timing import best_of  # noqa: E402


CLOCK = time.perf_counter  # time.process_time under --one-thread


def best(fn, repeat=5, min_time=0.5):
    """Minimum seconds of ``fn()`` over at least 2 and at most ``repeat`` calls after a warm-up."""
    fn()
    times, total = [], 0.0
    while len(times) < 2 or (total < min_time and len(times) < repeat):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
        total += times[-1]
    return min(times)


def torch_apply(n, k, kind, dtype, rng):
    """forward+backward closure: torch orthogonal parametrization of an n x n weight, then W @ X."""
    import torch

    lin = torch.nn.Linear(n, n, bias=False, dtype=dtype)
    torch.nn.utils.parametrizations.orthogonal(lin, "weight", orthogonal_map=kind)
    shape = (n, k)
    if dtype.is_complex:
        x = torch.randn(*shape, dtype=dtype)
        g = torch.randn(*shape, dtype=dtype)
    else:
        x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
        g = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    x.requires_grad_(True)

    def fwd_bwd():
        lin.zero_grad(set_to_none=True)
        x.grad = None
        (lin.weight @ x).backward(g)

    return fwd_bwd


def crossover_child(n):
    """One-thread CPU time of team matrix / matrix_vjp(output=U), engine and blocked, per matmul."""
    from cupyortho import schedule as S
    from cupyortho.backends import blocked, engine

    def cpu(fn, repeat=2):
        return best_of(fn, repeat, clock=time.process_time)

    rng = np.random.default_rng(0)
    sch = S.team_schedule(n)
    th = rng.uniform(-np.pi, np.pi, sch.num_angles).astype(np.float32)
    a = rng.standard_normal((n, n)).astype(np.float32)
    t_mm = cpu(lambda: a @ a, 5)
    u = blocked.matrix(th, sch)
    for name, mod in (("engine", engine), ("blocked", blocked)):
        tf = cpu(lambda: mod.matrix(th, sch))
        tb = cpu(lambda: mod.matrix_vjp(th, a, sch, output=u))
        print(f"n={n:5d} {name:8s} matrix {tf / t_mm:6.2f} mm   matrix_vjp(output=U) {tb / t_mm:6.2f} mm   "
              f"load {os.getloadavg()[0]:.1f}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 32, 256])
    ap.add_argument("--un", type=int, default=1024)
    ap.add_argument("--uk", type=int, default=32)
    ap.add_argument("--impl", default=None, choices=[None, "engine", "blocked", "reference"])
    ap.add_argument("--skip-unitary", action="store_true")
    ap.add_argument("--crossover", type=int, nargs="*", default=None)
    ap.add_argument("--crossover-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--one-thread", action="store_true",
                    help="one thread everywhere (numba, BLAS, torch), CPU time instead of wall time")
    ap.add_argument("--one-thread-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one_thread:
        import subprocess

        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
                   MKL_NUM_THREADS="1")
        rest = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--one-thread"]
        return subprocess.run([sys.executable, __file__, "--one-thread-child"] + rest, env=env).returncode
    if args.one_thread_child:
        global CLOCK
        CLOCK = time.process_time
    if args.crossover_child:
        return crossover_child(args.crossover_child)
    if args.crossover is not None:
        import subprocess

        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
        print("team U(theta), one thread, CPU time per one-thread matmul (float32)")
        for n in args.crossover or [256, 1024, 2048]:
            subprocess.run([sys.executable, __file__, "--crossover-child", str(n)], env=env, check=True)
        return 0
    import torch

    from cupyortho import _strategy

    if args.impl:
        _strategy.FORCE = args.impl
    if args.one_thread_child:
        torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    clock = "CPU time, one thread" if args.one_thread_child else "wall time"
    print(f"torch {torch.__version__} threads {torch.get_num_threads()}; {clock}; load {os.getloadavg()}")
    n = args.n
    a = rng.standard_normal((n, n)).astype(np.float32)
    # two angle vectors used in turn: like a training step, every forward sees new angles (the
    # backward reuses its forward's cos/sin, see docs/engine.md)
    thetas = [rng.uniform(-np.pi, np.pi, co.num_angles(n)).astype(np.float32) for _ in range(2)]
    print(f"\napply, float32, n = {n}, forward+backward")
    print(f"{'k':>5} {'cupyortho/mm':>13} {'cayley/mm':>10} {'speedup':>8}  target  load")
    targets = {1: 10, 32: 20, 256: 3}
    for k in args.ks:
        x = rng.standard_normal((n, k)).astype(np.float32)
        g = rng.standard_normal((n, k)).astype(np.float32)

        def ours():
            thetas.reverse()
            y = co.apply(thetas[0], x)
            return co.apply_vjp(thetas[0], x, g, output=y)

        t_mm = best(lambda: a @ a)
        t_ours = best(ours)
        t_cay = best(torch_apply(n, k, "cayley", torch.float32, rng), repeat=3)
        t_mm = min(t_mm, best(lambda: a @ a))
        tgt = targets.get(k)
        print(f"{k:>5} {t_ours / t_mm:>13.3f} {t_cay / t_mm:>10.2f} {t_cay / t_ours:>7.1f}x "
              f"{'>= %dx' % tgt if tgt else '':>7} {os.getloadavg()[0]:5.1f}", flush=True)
    if args.skip_unitary:
        return 0
    n, k = args.un, args.uk
    print(f"\nunitary apply, complex64, n = {n}, k = {k}, forward+backward")
    ps = [rng.uniform(-np.pi, np.pi, n * n).astype(np.float32) for _ in range(2)]
    z = (rng.standard_normal((n, k)) + 1j * rng.standard_normal((n, k))).astype(np.complex64)
    gz = (rng.standard_normal((n, k)) + 1j * rng.standard_normal((n, k))).astype(np.complex64)
    a = rng.standard_normal((n, n)).astype(np.float32)

    def ours_u():
        ps.reverse()
        y = co.unitary_apply(ps[0], z)
        return co.unitary_apply_vjp(ps[0], z, gz, output=y)

    t_mm = best(lambda: a @ a)
    t_ours = best(ours_u)
    t_exp = best(torch_apply(n, k, "matrix_exp", torch.complex64, rng), repeat=2)
    print(f"cupyortho {t_ours / t_mm:.3f} mm, torch complex matrix_exp {t_exp / t_mm:.1f} mm: "
          f"{t_exp / t_ours:.1f}x faster (target >= 25x); load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
