"""Orthogonal RNN on the copying-memory task: cupyortho against geotorch and torch's orthogonal
parametrization on a real training loop (issue 17, item 5).

    python bench/rnn_copying.py [--sizes 190 512 1024] [--iters 12] [--warmup 2] [--profile]
                                [--threads T] [--tag NAME] [--out bench/results]

The task (Arjovsky et al.'s copying memory; setup as in geotorch's example, written here): a
sequence of K = 10 symbols from {1, ..., 8}, L = 100 blanks, a marker, K - 1 blanks; the network
must output blanks until the marker and then the K symbols.  One-hot inputs (10 classes), a hidden
state of size n with the modReLU nonlinearity, ``h_t = modrelu(W_in x_t + W h_{t-1})``, a linear
readout to 9 classes and cross entropy over all ``L + 2K = 120`` steps; batch 128, float32, RMSprop
(lr 1e-3, the orthogonal parameters 2e-4).  The recurrent kernel ``W`` is made orthogonal by

* ``geotorch``: ``geotorch.orthogonal`` (its default, the matrix exponential), under
  ``geotorch.parametrize.cached()``;
* ``torch``: ``torch.nn.utils.parametrizations.orthogonal`` (matrix exponential), under
  ``torch.nn.utils.parametrize.cached()``;
* ``cupyortho``: ``cupyortho.torch.OrthogonalParametrization`` under ``parametrize.cached()``;
* ``cupyortho-layer``: the ``cupyortho.torch.Orthogonal`` layer as the recurrent map, under
  ``cupyortho.torch.cached()`` (when that exists) so U is formed once per forward;
* ``cupyortho-nobudget``: the parametrization with the torch adapter's thread budget switched off
  (cupyortho's CPU pools then run beside torch's: what the thread wiring removes).

Every variant starts from the same weights (one seeded torus start, geotorch's block-diagonal
rotation init with angles ~ U(-pi, pi), copied into each parametrization; the other layers seeded
identically) and sees the same batches (seeded per iteration).  The variants are stepped round robin
(iteration i of every variant, then i + 1), so load changes on a shared machine hit all alike.

Reports per n: median seconds per iteration (after ``--warmup`` iterations), the ratio to the faster
of geotorch and torch and to one n x n float32 matmul measured in the same run, the median CPU
seconds per iteration (all threads: idle pools that spin show up here), the final loss and
``max |W^T W - I|``; the load average at start and end.  Writes ``rnn_copying[_TAG].csv`` (every
iteration's loss and time), ``rnn_copying[_TAG].md`` and ``rnn_copying[_TAG].png`` (loss curves and
s/iter) under ``--out``.  ``--profile`` adds a torch-profiler table of one step of each cupyortho
variant (``rnn_copying_profile[_TAG].txt``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import pathlib
import resource
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402

import cupyortho as co  # noqa: E402
import cupyortho.torch as ct  # noqa: E402
from cupyortho.torch import _bridge  # noqa: E402

L, K, BATCH = 100, 10, 128
N_IN, N_OUT = 10, 9  # blank 0, symbols 1..8, marker 9 in; blank + 8 symbols out
T = L + 2 * K
LR, LR_ORTH = 1e-3, 2e-4


# --------------------------------------------------------------------------- data and model

def batch(seed: int, it: int):
    """The copying-task batch of iteration ``it``: inputs (B, T) and targets (B, T), int64."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + it)
    symbols = torch.randint(1, N_OUT, (BATCH, K), generator=g)
    blanks = torch.zeros(BATCH, L, dtype=torch.long)
    marker = torch.full((BATCH, 1), N_IN - 1, dtype=torch.long)
    x = torch.cat([symbols, blanks, marker, torch.zeros(BATCH, K - 1, dtype=torch.long)], dim=1)
    y = torch.cat([torch.zeros(BATCH, L + K, dtype=torch.long), symbols], dim=1)
    return x, y


class ModReLU(nn.Module):
    """``sign(z) relu(|z| + b)`` with a learned bias per feature."""

    def __init__(self, n: int):
        super().__init__()
        self.b = nn.Parameter(torch.empty(n).uniform_(-0.01, 0.01))

    def forward(self, z):
        return torch.sign(z) * torch.relu(z.abs() + self.b)


class CopyRNN(nn.Module):
    def __init__(self, n: int, recurrent: nn.Module):
        super().__init__()
        self.n = n
        self.input_kernel = nn.Linear(N_IN, n)
        nn.init.kaiming_normal_(self.input_kernel.weight, nonlinearity="relu")
        self.act = ModReLU(n)
        self.readout = nn.Linear(n, N_OUT)
        self.recurrent = recurrent  # h -> h @ W.T

    def forward(self, x):
        u = self.input_kernel(nn.functional.one_hot(x, N_IN).float())  # (B, T, n), all steps at once
        h = u.new_zeros(x.shape[0], self.n)
        hs = []
        for t in range(x.shape[1]):
            h = self.act(u[:, t] + self.recurrent(h))
            hs.append(h)
        return self.readout(torch.stack(hs, dim=1))


def torus_start(n: int, seed: int) -> torch.Tensor:
    """Angles of a torus start (rotations of the disjoint planes (2i, 2i+1), angles ~ U(-pi, pi)),
    float32.  Those rotations commute, so the matrix is block diagonal for every schedule."""
    g = np.random.default_rng(seed)
    theta = np.zeros(co.num_angles(n), dtype=np.float32)
    i = np.arange(n // 2)
    theta[co.pair_index(2 * i, 2 * i + 1, n)] = g.uniform(-math.pi, math.pi, n // 2)
    return torch.from_numpy(theta)


class NoBudget:
    """Switch the torch adapter's thread budget off for one variant's steps (the 'without' run)."""

    def __enter__(self):
        self._saved = _bridge._threads.budget
        _bridge._threads.budget = lambda n: contextlib.nullcontext(n)

    def __exit__(self, *exc):
        _bridge._threads.budget = self._saved


def build(variant: str, n: int, seed: int, theta0: torch.Tensor, w0: torch.Tensor):
    """(model, orthogonal parameters, other parameters, cache context factory, step context)."""
    torch.manual_seed(seed)  # identical input kernel, modReLU bias and readout for every variant
    model = CopyRNN(n, nn.Identity())
    if variant == "cupyortho-layer":
        rec = ct.Orthogonal(n)
        with torch.no_grad():
            rec.theta.copy_(theta0)
        cache = getattr(ct, "cached", None) or parametrize.cached
    else:
        rec = nn.Linear(n, n, bias=False)
        if variant == "geotorch":
            import geotorch

            geotorch.orthogonal(rec, "weight")
            rec.weight = w0  # stored as geotorch's base (exact), parameter 0
        elif variant == "torch":
            nn.utils.parametrizations.orthogonal(rec, "weight")
            rec.weight = w0  # stored as torch's base (use_trivialization=True)
        else:  # cupyortho, cupyortho-nobudget
            parametrize.register_parametrization(rec, "weight", ct.OrthogonalParametrization(n, init="identity"))
            with torch.no_grad():
                rec.parametrizations.weight.original.copy_(theta0)
        cache = parametrize.cached
    model.recurrent = rec
    orth = list(rec.parameters())
    orth_ids = {id(p) for p in orth}
    other = [p for p in model.parameters() if id(p) not in orth_ids]
    opt = torch.optim.RMSprop([{"params": other, "lr": LR}, {"params": orth, "lr": LR_ORTH}])
    with torch.no_grad():
        w = weight_of(model)
        err = (w - w0).abs().max().item()
    if err > 1e-5:
        raise RuntimeError(f"{variant}: starting weight differs from the common start by {err:.2e}")
    step_ctx = NoBudget if variant == "cupyortho-nobudget" else contextlib.nullcontext
    return model, opt, cache, step_ctx


def weight_of(model) -> torch.Tensor:
    rec = model.recurrent
    return rec.matrix() if isinstance(rec, ct.Orthogonal) else rec.weight


def step(model, opt, cache, seed, it):
    x, y = batch(seed, it)
    opt.zero_grad(set_to_none=True)
    with cache():
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, N_OUT), y.reshape(-1))
    loss.backward()
    opt.step()
    return loss.item()


def cpu_seconds() -> float:
    """CPU time of this process (all its threads, user + system): spinning idle pools show up here
    even when a loaded machine blurs the wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def matmul_time(n: int, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return (time.perf_counter() - t0) / reps


# --------------------------------------------------------------------------- run

VARIANTS = ("geotorch", "torch", "cupyortho", "cupyortho-layer", "cupyortho-nobudget")


def run_size(n, args, rows, profile_lines):
    theta0 = torus_start(n, args.seed)
    w0 = ct.matrix(theta0).detach()
    models = {v: build(v, n, args.seed, theta0, w0) for v in args.variants}
    times = {v: [] for v in args.variants}
    cpu = {v: [] for v in args.variants}
    losses = {v: [] for v in args.variants}
    mm = [matmul_time(n)]
    for it in range(args.iters):
        for v in args.variants:
            model, opt, cache, step_ctx = models[v]
            with step_ctx():
                c0, t0 = cpu_seconds(), time.perf_counter()
                loss = step(model, opt, cache, args.seed, it)
                dt, dc = time.perf_counter() - t0, cpu_seconds() - c0
            times[v].append(dt)
            cpu[v].append(dc)
            losses[v].append(loss)
            rows.append({"n": n, "variant": v, "iteration": it, "loss": loss, "seconds": dt, "cpu_seconds": dc})
        if it % 4 == 3:
            mm.append(matmul_time(n))
    first = [losses[v][0] for v in args.variants]
    if max(first) - min(first) > 1e-4 * max(first):
        raise RuntimeError(f"n={n}: the variants' first losses differ ({first}): not the same start")
    summary = {}
    mm_t = statistics.median(mm)
    for v in args.variants:
        model = models[v][0]
        with torch.no_grad():
            w = weight_of(model).double()
            orth = (w.T @ w - torch.eye(n, dtype=torch.float64)).abs().max().item()
        timed = times[v][args.warmup:] or times[v]
        used = cpu[v][args.warmup:] or cpu[v]
        summary[v] = {"s_iter": statistics.median(timed), "cpu_iter": statistics.median(used),
                      "loss": losses[v][-1], "orth": orth, "matmul": mm_t}
    if args.profile:
        for v in args.variants:
            if not v.startswith("cupyortho"):
                continue
            model, opt, cache, step_ctx = models[v]
            from torch.profiler import ProfilerActivity, profile

            with step_ctx(), profile(activities=[ProfilerActivity.CPU]) as prof:
                step(model, opt, cache, args.seed, args.iters)
            profile_lines.append(f"## n = {n}, {v}\n")
            profile_lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
            profile_lines.append("\n")
    return summary, losses


def markdown(results, args, load0, load1):
    out = [f"# Copying-memory RNN (L = {L}, batch {BATCH}, float32, {args.iters} iterations, "
           f"median after {args.warmup} warm-up)\n",
           f"torch threads {torch.get_num_threads()}; load average at start {load0}, at end {load1}; "
           f"command: `python bench/rnn_copying.py {' '.join(sys.argv[1:])}`\n"]
    out.append("| n | variant | s/iter | / best of geotorch, torch | / one n x n matmul | CPU s/iter | final loss "
               "| max abs(W^T W - I) |")
    out.append("|---|---|---|---|---|---|---|---|")
    for n, summary in results.items():
        base = [summary[v]["s_iter"] for v in ("geotorch", "torch") if v in summary]
        best = min(base) if base else float("nan")
        for v, s in summary.items():
            out.append(f"| {n} | {v} | {s['s_iter']:.4f} | {s['s_iter'] / best:.2f} | "
                       f"{s['s_iter'] / s['matmul']:.0f} | {s['cpu_iter']:.4f} | {s['loss']:.4f} | {s['orth']:.1e} |")
    return "\n".join(out) + "\n"


def plot(results, all_losses, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(results)
    fig, axes = plt.subplots(1, len(sizes) + 1, figsize=(4.2 * (len(sizes) + 1), 3.6))
    for ax, n in zip(axes, sizes):
        for v, curve in all_losses[n].items():
            ax.plot(range(len(curve)), curve, label=v)
        ax.set_title(f"loss, n = {n}")
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    variants = list(next(iter(results.values())))
    width = 0.8 / len(variants)
    for j, v in enumerate(variants):
        ax.bar([i + j * width for i in range(len(sizes))], [results[n][v]["s_iter"] for n in sizes],
               width, label=v)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))], [str(n) for n in sizes])
    ax.set_yscale("log")
    ax.set_title("s/iter")
    ax.set_xlabel("n")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[190, 512, 1024])
    p.add_argument("--iters", type=int, default=12, help="training iterations per variant and n")
    p.add_argument("--warmup", type=int, default=2, help="iterations left out of the s/iter median")
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--tag", default="")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.tag}" if args.tag else ""
    load0 = tuple(round(x, 2) for x in os.getloadavg())
    print(f"load average {load0}; torch threads {torch.get_num_threads()}", flush=True)
    rows, profile_lines, results, all_losses = [], [], {}, {}
    for n in args.sizes:
        results[n], all_losses[n] = run_size(n, args, rows, profile_lines)
        for v, s in results[n].items():
            print(f"n={n:5d} {v:20s} {s['s_iter']:.4f} s/iter  cpu {s['cpu_iter']:.4f} s/iter  loss {s['loss']:.4f}  orth {s['orth']:.1e}  "
                  f"load {tuple(round(x, 2) for x in os.getloadavg())}", flush=True)
    load1 = tuple(round(x, 2) for x in os.getloadavg())
    md = markdown(results, args, load0, load1)
    print(md)
    with open(out / f"rnn_copying{suffix}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["n", "variant", "iteration", "loss", "seconds", "cpu_seconds"])
        w.writeheader()
        w.writerows(rows)
    (out / f"rnn_copying{suffix}.md").write_text(md)
    plot(results, all_losses, out / f"rnn_copying{suffix}.png")
    if profile_lines:
        (out / f"rnn_copying_profile{suffix}.txt").write_text("\n".join(profile_lines))


if __name__ == "__main__":
    main()
