"""Depth-limited (truncated) schedules against PEFT-style block-diagonal Cayley (OFT), CPU.

Forward + backward of ``y = U x`` for ``x`` of shape ``(n, tokens)``, ``n = 4096``, ``512`` tokens:

* cupyortho: ``schedule.truncate(k)`` of the default schedule, ``k`` in {4, 16, 64} rounds
  (``k * n/2`` angles), through the NumPy API (``apply`` + ``apply_vjp``) and through the torch
  adapter (autograd);
* OFT-style: ``n / 32`` blocks of ``32 x 32``, ``Q_b = (I - S_b)^{-1} (I + S_b)`` with ``S_b``
  skew-symmetric from ``32*31/2`` parameters, ``y = blockdiag(Q) x``, torch autograd.

Reported as ratios taken in one run: time / (one ``n x n`` by ``n x tokens`` matmul) and
time / (OFT Cayley), with ``os.getloadavg()``.  Run: ``python bench/truncated_bench.py``.
"""

from __future__ import annotations

import os

import numpy as np

from _timing import best_of as _best


def main(n=4096, tokens=512, depths=(4, 16, 64), block=32, repeats=3):
    import torch

    import cupyortho as co
    import cupyortho.torch as ct

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, tokens))
    g = rng.standard_normal((n, tokens))
    a = rng.standard_normal((n, n))
    t_mm = _best(lambda: a @ x, repeats)

    # OFT-style block-diagonal Cayley in torch
    nb_, iu = n // block, torch.triu_indices(block, block, 1)
    p = torch.zeros(nb_, iu.shape[1], dtype=torch.float64, requires_grad=True)
    xt, gt = torch.tensor(x), torch.tensor(g)
    eye = torch.eye(block, dtype=torch.float64)

    def cayley():
        s = torch.zeros(nb_, block, block, dtype=torch.float64)
        s[:, iu[0], iu[1]] = p
        s = s - s.transpose(-1, -2)
        q = torch.linalg.solve(eye - s, eye + s)
        y = torch.bmm(q, xt.reshape(nb_, block, tokens)).reshape(n, tokens)
        (y * gt).sum().backward()

    t_oft = _best(cayley, repeats)
    base = co.get_schedule(None, n)
    print(f"n = {n}, tokens = {tokens}, float64, load average {os.getloadavg()}")
    print(f"one n x n @ n x tokens matmul: {t_mm * 1e3:.1f} ms;  OFT Cayley (block {block}) fwd+bwd: "
          f"{t_oft / t_mm:.2f} x matmul")
    print(f"{'k':>4} {'angles':>8} {'numpy fwd+bwd':>22} {'torch fwd+bwd':>22}")
    for k in depths:
        s = base.truncate(k)
        theta = rng.uniform(-np.pi, np.pi, s.num_angles)

        def numpy_path():
            y = co.apply(theta, x, schedule=s, method="rounds")
            co.apply_vjp(theta, x, g, schedule=s, output=y, method="rounds")

        tt = torch.tensor(theta, requires_grad=True)

        def torch_path():
            y = ct.apply(tt, xt, schedule=s)
            (y * gt).sum().backward()

        t_np, t_t = _best(numpy_path, repeats), _best(torch_path, repeats)
        print(f"{k:>4} {s.num_angles:>8} {t_np / t_mm:>8.2f} x mm {t_np / t_oft:>6.2f} x OFT"
              f" {t_t / t_mm:>8.2f} x mm {t_t / t_oft:>6.2f} x OFT")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
