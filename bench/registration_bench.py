"""Registration time of an orthogonal parametrization on nn.Linear(n, n): cupyortho vs torch.

``register_parametrization(lin, "weight", cupyortho.torch.OrthogonalParametrization(n))`` (base design:
one QR of the current weight, theta = 0, then torch's check forward) beside
``torch.nn.utils.parametrizations.orthogonal(lin)`` (torch's default map for square weights, also one
QR plus a forward), and the first ``lin.weight`` after each.  Everything in one run, reported as
ratios to one n x n float32 matmul and to torch's registration, with the load average (the machine is
shared: bare seconds mean little).

    python bench/registration_bench.py [--sizes 256 1024 4096] [--repeat 3]
"""

import argparse
import os
import time

import torch
from torch.nn.utils import parametrize

import cupyortho.torch as ct


def _best(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--repeat", type=int, default=3, help="best of this many (1 for n >= 4096)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, loadavg {os.getloadavg()}")
    print(f"{'n':>6} {'matmul s':>9} {'cupyortho reg':>14} {'torch reg':>10} {'ratio reg':>10} "
          f"{'co/matmul':>10} {'torch/matmul':>12} {'co 1st W':>9} {'torch 1st W':>11}")
    warm = torch.nn.Linear(64, 64)  # first calls (imports, schedule tables) are not registration time
    parametrize.register_parametrization(warm, "weight", ct.OrthogonalParametrization(64))
    torch.nn.utils.parametrizations.orthogonal(torch.nn.Linear(64, 64))
    for n in args.sizes:
        repeat = 1 if n >= 4096 else args.repeat
        a = torch.randn(n, n)
        mm = _best(lambda: a @ a, 3)

        def make():
            torch.manual_seed(0)
            return torch.nn.Linear(n, n, bias=False)

        def co_reg():
            lin = make()
            t0 = time.perf_counter()
            parametrize.register_parametrization(lin, "weight", ct.OrthogonalParametrization(n))
            t1 = time.perf_counter()
            lin.weight
            return t1 - t0, time.perf_counter() - t1

        def torch_reg():
            lin = make()
            t0 = time.perf_counter()
            torch.nn.utils.parametrizations.orthogonal(lin)
            t1 = time.perf_counter()
            lin.weight
            return t1 - t0, time.perf_counter() - t1

        co = min((co_reg() for _ in range(repeat)), key=lambda r: r[0])
        th = min((torch_reg() for _ in range(repeat)), key=lambda r: r[0])
        print(f"{n:>6} {mm:>9.4f} {co[0]:>14.3f} {th[0]:>10.3f} {co[0] / th[0]:>10.2f} "
              f"{co[0] / mm:>10.1f} {th[0] / mm:>12.1f} {co[1]:>9.3f} {th[1]:>11.3f}", flush=True)
    print(f"loadavg after {os.getloadavg()}")


if __name__ == "__main__":
    main()
