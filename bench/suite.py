"""Side-by-side CPU benchmark: cupyortho against one n x n matmul, torch's orthogonal
parametrizations (matrix_exp and cayley) and geotorch, every figure also as a ratio.

    python bench/suite.py [--quick] [--out bench/results] [--tag NAME]
    OPENBLAS_NUM_THREADS=1 python bench/suite.py --threads 1 --tag 1thread

``--threads`` sets torch's threads; NumPy's BLAS threads come from ``OPENBLAS_NUM_THREADS`` (read at
import).  On a loaded machine two-thread BLAS becomes erratic for sequences of mid-sized GEMMs (the
blocked path's stages) while one large GEMM suffers less, so both configurations are worth a run.

Sections (each table is measured in one run, so the ratios survive a noisy machine):

* ``materialize``: forming ``U`` (forward) and forward+backward (``dL/dtheta`` for ``L = <G, U>``) at
  n in {256, 512, 1024, 2048, 4096}, float32 and float64 (torch's matrix_exp and geotorch, whose
  backward costs ~150 matmuls, only up to ``--max-slow-n``, default 2048).  cupyortho rows: the public API
  (``matrix`` then ``matrix_vjp``, which recomputes ``U``), and the backend call given ``U``
  (``output=U``: what an autograd adapter that saved ``U`` pays).  torch rows: the parametrized
  weight of ``nn.Linear(n, n)`` (``torch.nn.utils.parametrizations.orthogonal``), then ``backward``
  of ``<G, W>``.  geotorch: ``geotorch.orthogonal`` (its default, the matrix exponential).
* ``apply``: ``Y = U X``, forward+backward, n in {1024, 2048, 4096}, k in {1, 32, 256}, float32;
  cupyortho with ``method="auto"`` (and both forced strategies), torch and geotorch
  materialize-then-matmul.
* ``unitary``: U(n) from ``n^2`` parameters, complex64: materialize (forward, forward+backward) at
  n in {256, 512, 1024}, and apply fwd+bwd at n = 1024, k in {1, 32, 256}, against torch's complex
  ``orthogonal`` parametrization (matrix_exp and cayley) materialize(-then-matmul); ratios to one
  complex n x n matmul and to torch's complex matrix_exp.
* ``memory``: peak memory of one materialize forward+backward at n = 2048 (float32), each method in
  a fresh subprocess with no earlier call: the kernel's peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs`` once the inputs and cupyortho's cached index tables exist) minus the
  resident set at that point, and for cupyortho also NumPy's traced peak (``tracemalloc``).

``--quick`` runs every section at small sizes (a smoke run, seconds).

Writes ``results.csv``, ``materialize.png`` (log-log, time vs n, one line per method), ``apply.png``
(log-log, fwd+bwd time / matmul vs k, one panel per n),
``results.md`` (the tables) under ``--out``; prints the tables too.  Timings: the minimum over
repeats after one warm-up call.  The machine's load average is recorded with every table.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cupyortho as co  # noqa: E402
from cupyortho.backends import numpy_backend as nb  # noqa: E402


def settle():
    """Pause after timing the reference matmul: the method timed right after it ran up to 1.5x slow
    (n = 1024, k = 32: 0.25 vs 0.17 matmuls for the same call), and a second's pause removed the
    difference (most likely BLAS threads still spinning after the GEMM)."""
    time.sleep(1.0)


def best(fn, min_time=0.3, max_repeat=5):
    """Minimum wall time of ``fn()`` over repeats after warm-up calls (one, then 0.2 s more for fast
    calls: whichever method was timed first after a change of size ran up to 2x slow for several
    calls, most likely while the allocator settled; n = 1024, k = 256: 1.36 vs 0.72 matmuls for the
    same call).  Slow calls are repeated less: over 0.5 s one more call is made and the faster of the two is taken (never the first
    alone: it pays the one-time costs, cached index tables and JIT loads, that a training loop does
    not)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first <= 0.5:  # warm up for 0.2 s more (see above)
        t1 = time.perf_counter()
        while time.perf_counter() - t1 < 0.2:
            fn()
    if first > 0.5:
        t0 = time.perf_counter()
        fn()
        return min(first, time.perf_counter() - t0)
    times = []
    total = 0.0
    while len(times) < 2 or (total < min_time and len(times) < max_repeat):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
    return min(times)


def load():
    return os.getloadavg()[0]


# --------------------------------------------------------------------------- methods

def torch_param(n, kind, dtype):
    """An nn.Linear(n, n) whose weight is orthogonal: torch (matrix_exp, cayley) or geotorch."""
    import torch

    lin = torch.nn.Linear(n, n, bias=False).to(getattr(torch, dtype))  # complex64: U(n)
    if kind == "geotorch":
        import geotorch

        geotorch.orthogonal(lin, "weight")
    else:
        torch.nn.utils.parametrizations.orthogonal(lin, "weight", orthogonal_map=kind)
    return lin


def torch_fns(n, kind, dtype, g, x=None):
    """(forward, forward+backward) closures for a torch-parametrized weight."""
    import torch

    lin = torch_param(n, kind, dtype)
    gt = torch.from_numpy(g)
    xt = None if x is None else torch.from_numpy(x)

    def fwd():
        with torch.no_grad():
            w = lin.weight
            return w if xt is None else w @ xt

    def fwd_bwd():
        lin.zero_grad(set_to_none=True)
        w = lin.weight
        out = w if xt is None else w @ xt
        out.backward(gt)

    return fwd, fwd_bwd


TORCH_METHODS = [("torch cayley", "cayley"), ("torch matrix_exp", "matrix_exp"), ("geotorch", "geotorch")]
SLOW_METHODS = ("matrix_exp", "geotorch")  # backward ~150 matmuls: skipped above --max-slow-n
MAX_SLOW_N = 2048


def torch_methods(n):
    return [(lbl, k) for lbl, k in TORCH_METHODS if n <= MAX_SLOW_N or k not in SLOW_METHODS]


def materialize_rows(sizes, dtypes, rng):
    rows = []
    for dtype in dtypes:
        for n in sizes:
            theta = rng.uniform(-np.pi, np.pi, co.num_angles(n)).astype(dtype)
            g = rng.standard_normal((n, n)).astype(dtype)
            a = rng.standard_normal((n, n)).astype(dtype)
            sched = co.get_schedule("team", n)
            t_mm = best(lambda: a @ g, max_repeat=7)
            settle()
            ld = load()
            res = {"matmul": (t_mm, None)}
            t_f = best(lambda: co.matrix(theta, schedule="team"))

            def fwd_bwd():
                co.matrix(theta, schedule="team")
                return co.matrix_vjp(theta, g, schedule="team")

            t_fb = best(fwd_bwd)
            u = co.matrix(theta, schedule="team")
            t_b = best(lambda: co.matrix_vjp(theta, g, schedule=sched, output=u))
            res["cupyortho team"] = (t_f, t_fb)
            res["cupyortho team (bwd given U)"] = (t_f, t_f + t_b)
            if n <= 512:
                t_fc = best(lambda: co.matrix(theta, schedule="circle"))
                t_fbc = best(lambda: (co.matrix(theta, schedule="circle"), co.matrix_vjp(theta, g, schedule="circle")))
                res["cupyortho circle"] = (t_fc, t_fbc)
            for label, kind in torch_methods(n):
                f, fb = torch_fns(n, kind, dtype, g)
                res[label] = (best(f), best(fb))
            for method, (tf, tfb) in res.items():
                rows.append(dict(section="materialize", method=method, dtype=dtype, n=n, k="",
                                 fwd_s=tf, fwd_bwd_s=tfb, fwd_ratio=tf / t_mm,
                                 fwd_bwd_ratio=None if tfb is None else tfb / t_mm,
                                 vs_cayley=None if tfb is None else tfb / res["torch cayley"][1],
                                 load=ld))
            print(f"  materialize {dtype} n={n} done (load {ld:.1f})", flush=True)
    return rows


def apply_rows(n, ks, dtype, rng):
    rows = []
    theta = rng.uniform(-np.pi, np.pi, co.num_angles(n)).astype(dtype)
    a = rng.standard_normal((n, n)).astype(dtype)
    thetas = [theta, rng.uniform(-np.pi, np.pi, theta.size).astype(dtype)]
    for k in ks:
        x = rng.standard_normal((n, k)).astype(dtype)
        g = rng.standard_normal((n, k)).astype(dtype)
        t_mm = best(lambda: a @ a, max_repeat=7)
        settle()
        ld = load()
        res = {}
        for method in ("auto", "rounds", "materialize"):
            # new angles every step, as in training (two angle vectors in turn), so no call finds the
            # previous step's cos/sin kept; within a step the backward shares its forward's angles
            step = itertools.cycle(thetas)
            f = lambda m=method: co.apply(next(step), x, schedule="team", method=m)  # noqa: E731

            def fb(m=method):
                th = next(step)
                return co.apply_vjp(th, x, g, schedule="team", method=m,
                                    output=co.apply(th, x, schedule="team", method=m))
            res[f"cupyortho team method={method}"] = (best(f), best(fb))
        for label, kind in torch_methods(n):
            f, fb = torch_fns(n, kind, dtype, g, x)
            res[label + " (materialize, matmul)"] = (best(f), best(fb))
        t_cay = res["torch cayley (materialize, matmul)"][1]
        for method, (tf, tfb) in res.items():
            rows.append(dict(section="apply", method=method, dtype=dtype, n=n, k=k, fwd_s=tf, fwd_bwd_s=tfb,
                             fwd_ratio=tf / t_mm, fwd_bwd_ratio=tfb / t_mm, vs_cayley=tfb / t_cay, load=ld))
        print(f"  apply n={n} k={k} done (load {ld:.1f})", flush=True)
    return rows


def unitary_rows(sizes, n_apply, ks, rng, dtype="complex64"):
    """U(n): cupyortho's unitary / unitary_apply against torch's complex orthogonal parametrization."""
    rows = []
    real = "float32" if dtype == "complex64" else "float64"

    def crandn(*shape):
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)

    for n in sizes:
        params = rng.uniform(-np.pi, np.pi, co.num_unitary_params(n)).astype(real)
        g, a = crandn(n, n), crandn(n, n)
        t_mm = best(lambda: a @ g, max_repeat=7)
        settle()
        ld = load()
        res = {"matmul (complex)": (t_mm, None)}
        t_f = best(lambda: co.unitary(params, n=n))
        u = co.unitary(params, n=n)
        t_b = best(lambda: co.unitary_vjp(params, g, n=n, output=u))
        res["cupyortho unitary (bwd given U)"] = (t_f, t_f + t_b)
        for label, kind in TORCH_METHODS[:2]:
            f, fb = torch_fns(n, kind, dtype, g)
            res[label + " (complex)"] = (best(f), best(fb))
        ref = res["torch matrix_exp (complex)"][1]
        for method, (tf, tfb) in res.items():
            rows.append(dict(section="unitary", method=method, dtype=dtype, n=n, k="", fwd_s=tf, fwd_bwd_s=tfb,
                             fwd_ratio=tf / t_mm, fwd_bwd_ratio=None if tfb is None else tfb / t_mm,
                             vs_cayley=None if tfb is None else tfb / ref, load=ld))
        print(f"  unitary materialize n={n} done (load {ld:.1f})", flush=True)
    n = n_apply
    params = rng.uniform(-np.pi, np.pi, co.num_unitary_params(n)).astype(real)
    a = crandn(n, n)
    for k in ks:
        x, g = crandn(n, k), crandn(n, k)
        t_mm = best(lambda: a @ a, max_repeat=7)
        settle()
        ld = load()
        res = {}
        f = lambda: co.unitary_apply(params, x)  # noqa: E731
        fb = lambda: co.unitary_apply_vjp(params, x, g, output=co.unitary_apply(params, x))  # noqa: E731
        res["cupyortho unitary_apply"] = (best(f), best(fb))
        for label, kind in TORCH_METHODS[:2]:
            f, fb = torch_fns(n, kind, dtype, g, x)
            res[label + " (complex, materialize, matmul)"] = (best(f), best(fb))
        ref = res["torch matrix_exp (complex, materialize, matmul)"][1]
        for method, (tf, tfb) in res.items():
            rows.append(dict(section="unitary_apply", method=method, dtype=dtype, n=n, k=k, fwd_s=tf,
                             fwd_bwd_s=tfb, fwd_ratio=tf / t_mm, fwd_bwd_ratio=tfb / t_mm, vs_cayley=tfb / ref,
                             load=ld))
        print(f"  unitary apply n={n} k={k} done (load {ld:.1f})", flush=True)
    return rows


# --------------------------------------------------------------------------- memory

_MEM_CHILD = r"""
import json, sys, tracemalloc
import numpy as np


def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # MiB


def reset_peak():
    with open("/proc/self/clear_refs", "w") as fh:  # "5": reset the peak RSS (VmHWM) to the current RSS
        fh.write("5")
    return status("VmRSS")


sys.path.insert(0, {root!r})
method, n = {method!r}, {n}
rng = np.random.default_rng(0)
g = rng.standard_normal((n, n)).astype(np.float32)
out = {{}}
if method.startswith("cupyortho"):
    import cupyortho as co
    from cupyortho.backends import blocked
    theta = rng.uniform(-np.pi, np.pi, co.num_angles(n)).astype(np.float32)
    sched = co.get_schedule("team", n)
    blocked.plan(sched, blocked.granularity(sched))  # index tables (cached, reused by every call)
    from cupyortho.backends import engine
    engine._so_plan(sched, np.float32)  # the engine's processing order (cached per schedule likewise)
    co.matrix_vjp(theta[:co.num_angles(64)], g[:64, :64], schedule="team")  # load the compiled kernels
    base = reset_peak()
    tracemalloc.start()
    u = co.matrix(theta, schedule="team")
    d = co.matrix_vjp(theta, g, schedule="team", output=u if method.endswith("given U") else None)
    out["numpy_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
else:
    import torch
    torch.set_num_threads({threads})
    sys.path.insert(0, {bench!r})
    from suite import torch_param
    lin = torch_param(n, method, "float32")
    gt = torch.from_numpy(g)
    base = reset_peak()
    w = lin.weight
    w.backward(gt)
out["rss_growth_mib"] = status("VmHWM") - base
print(json.dumps(out))
"""


def memory_rows(n):
    rows = []
    for label, method in [("cupyortho team", "cupyortho"), ("cupyortho team (bwd given U)", "cupyortho given U")] + \
            [(lbl, k) for lbl, k in TORCH_METHODS]:
        code = _MEM_CHILD.format(root=str(ROOT), bench=str(ROOT / "bench"), method=method, n=n,
                                 threads=os.cpu_count() or 1)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            continue
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(dict(section="memory", method=label, dtype="float32", n=n, k="",
                         rss_growth_mib=out["rss_growth_mib"], numpy_peak_mib=out.get("numpy_peak_mib"),
                         matrix_mib=n * n * 4 / 2**20))
        print(f"  memory {label}: {out}", flush=True)
    return rows


# --------------------------------------------------------------------------- output

FIELDS = ["section", "method", "dtype", "n", "k", "fwd_s", "fwd_bwd_s", "fwd_ratio", "fwd_bwd_ratio",
          "vs_cayley", "load", "rss_growth_mib", "numpy_peak_mib", "matrix_mib"]


def fmt(v, digits=2):
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(rows, header):
    lines = [header, ""]
    mat = [r for r in rows if r["section"] == "materialize"]
    for dtype in sorted({r["dtype"] for r in mat}):
        sub = [r for r in mat if r["dtype"] == dtype]
        ns = sorted({r["n"] for r in sub})
        loads = ", ".join(f"n={n}: {fmt(next(r['load'] for r in sub if r['n'] == n), 1)}" for n in ns)
        lines += [f"### Materialize U, {dtype}: time / one n x n numpy matmul (same run)", "",
                  f"Load average when measured: {loads}.", "",
                  "| method | " + " | ".join(f"n={n} fwd | n={n} fwd+bwd" for n in ns) + " |",
                  "|---|" + "---|---|" * len(ns)]
        for method in dict.fromkeys(r["method"] for r in sub):
            cells = []
            for n in ns:
                r = next((r for r in sub if r["n"] == n and r["method"] == method), None)
                if r is None:
                    cells += ["-", "-"]
                elif method == "matmul":
                    cells += [f"1 ({r['fwd_s'] * 1e3:.1f} ms)", "-"]
                else:
                    cells += [fmt(r["fwd_ratio"], 1), fmt(r["fwd_bwd_ratio"], 1)]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    for section, what, ref in [("apply", "Apply Y = U X", "torch Cayley"),
                               ("unitary_apply", "Unitary apply Y = U X", "torch complex matrix_exp")]:
        app = [r for r in rows if r["section"] == section]
        for n in sorted({r["n"] for r in app}):
            sub = [r for r in app if r["n"] == n]
            lines += [f"### {what}, n = {n}, {sub[0]['dtype']}, forward+backward", "",
                      f"Ratios: to one n x n numpy matmul, and to {ref} materialize-then-matmul (same run).", "",
                      f"| method | k | fwd / matmul | fwd+bwd / matmul | fwd+bwd / {ref} | {ref} is x times slower | load |",
                      "|---|---|---|---|---|---|---|"]
            for r in sub:
                lines.append(f"| {r['method']} | {r['k']} | {fmt(r['fwd_ratio'])} | {fmt(r['fwd_bwd_ratio'])} | "
                             f"{fmt(r['vs_cayley'], 3)} | {fmt(1 / r['vs_cayley'], 1)} | {fmt(r['load'], 1)} |")
            lines.append("")
    uni = [r for r in rows if r["section"] == "unitary"]
    if uni:
        ns = sorted({r["n"] for r in uni})
        lines += [f"### Materialize U in U(n), {uni[0]['dtype']}: time / one complex n x n matmul (same run)", "",
                  "Last columns: forward+backward / torch's complex matrix_exp forward+backward.", "",
                  "| method | " + " | ".join(f"n={n} fwd | n={n} fwd+bwd | n={n} vs matrix_exp" for n in ns) + " |",
                  "|---|" + "---|---|---|" * len(ns)]
        for method in dict.fromkeys(r["method"] for r in uni):
            cells = []
            for n in ns:
                r = next((r for r in uni if r["n"] == n and r["method"] == method), None)
                if r is None:
                    cells += ["-"] * 3
                elif r["fwd_bwd_s"] is None:
                    cells += [f"1 ({r['fwd_s'] * 1e3:.1f} ms)", "-", "-"]
                else:
                    cells += [fmt(r["fwd_ratio"], 1), fmt(r["fwd_bwd_ratio"], 1), fmt(r["vs_cayley"], 3)]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    mem = [r for r in rows if r["section"] == "memory"]
    if mem:
        n = mem[0]["n"]
        lines += [f"### Peak memory, materialize forward+backward, n = {n}, float32", "",
                  f"One n x n float32 matrix is {mem[0]['matrix_mib']:.0f} MiB.  Peak RSS of one call (fresh "
                  "subprocess each, peak counter reset once the inputs exist) minus the RSS at that point; "
                  "cupyortho also NumPy's traced peak.", "",
                  "| method | peak RSS growth (MiB) | in n x n matrices | NumPy traced peak (MiB) |",
                  "|---|---|---|---|"]
        for r in mem:
            lines.append(f"| {r['method']} | {fmt(r['rss_growth_mib'], 0)} | "
                         f"{fmt(r['rss_growth_mib'] / r['matrix_mib'], 1)} | {fmt(r['numpy_peak_mib'], 0)} |")
        lines.append("")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mat = [r for r in rows if r["section"] == "materialize"]
    dtypes = sorted({r["dtype"] for r in mat})
    fig, axes = plt.subplots(len(dtypes), 2, figsize=(12, 4.5 * len(dtypes)), squeeze=False)
    for row, dtype in enumerate(dtypes):
        for col, (key, title) in enumerate([("fwd_s", "forward"), ("fwd_bwd_s", "forward+backward")]):
            ax = axes[row][col]
            for method in dict.fromkeys(r["method"] for r in mat):
                pts = [(r["n"], r[key]) for r in mat if r["dtype"] == dtype and r["method"] == method
                       and r[key] is not None]
                if method == "matmul":
                    pts = [(r["n"], r["fwd_s"]) for r in mat if r["dtype"] == dtype and r["method"] == method]
                if pts:
                    xs, ys = zip(*sorted(pts))
                    ax.loglog(xs, ys, "o-" if method != "matmul" else "k--", label=method)
            ax.set_xlabel("n")
            ax.set_ylabel("seconds")
            ax.set_title(f"materialize U, {title}, {dtype}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_apply(rows, path):
    """Apply fwd+bwd: time / one n x n matmul against k, log-log, one panel per n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    app = [r for r in rows if r["section"] == "apply"]
    ns = sorted({r["n"] for r in app})
    fig, axes = plt.subplots(1, len(ns), figsize=(6 * len(ns), 4.5), squeeze=False)
    for col, n in enumerate(ns):
        ax = axes[0][col]
        for method in dict.fromkeys(r["method"] for r in app):
            pts = sorted((r["k"], r["fwd_bwd_ratio"]) for r in app if r["n"] == n and r["method"] == method)
            if pts:
                xs, ys = zip(*pts)
                ax.loglog(xs, ys, "o-", label=method)
        ax.set_xlabel("k (columns of X)")
        ax.set_ylabel("fwd+bwd time / one n x n matmul")
        ax.set_title(f"apply Y = U X, n = {n}, float32")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    p.add_argument("--sections", nargs="+", default=["materialize", "apply", "unitary", "memory"])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    p.add_argument("--tag", default="", help="suffix of the output file names")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="materialize sizes")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    p.add_argument("--apply-sizes", type=int, nargs="+", default=None, help="apply sizes")
    p.add_argument("--max-slow-n", type=int, default=MAX_SLOW_N,
                   help="largest n for torch matrix_exp / geotorch (their backward is ~150 matmuls)")
    args = p.parse_args()
    globals()["MAX_SLOW_N"] = args.max_slow_n
    import torch

    torch.set_num_threads(args.threads)
    suffix = f"_{args.tag}" if args.tag else ""
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = args.sizes or ([64, 128] if args.quick else [256, 512, 1024, 2048, 4096])
    napply = args.apply_sizes or ([256] if args.quick else [1024, 2048, 4096])
    ks = [1, 8, 64] if args.quick else [1, 32, 256]
    rows = []
    t0 = time.time()
    start_load = os.getloadavg()
    print(f"load average at start: {start_load}", flush=True)

    def write():  # after every section, so a run cut short keeps what it measured
        header = (f"## CPU benchmark ({os.cpu_count()} cores, numpy {np.__version__}, torch {torch.__version__}; "
                  f"load average at start {start_load[0]:.2f}/{start_load[1]:.2f}/{start_load[2]:.2f}, "
                  f"load average now {os.getloadavg()[0]:.2f}, "
                  f"run took {time.time() - t0:.0f} s so far, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
                  f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
                  f"torch threads {torch.get_num_threads()})\n\n"
                  f"Command: `{' '.join(['python', 'bench/suite.py'] + sys.argv[1:])}`.  "
                  "Every ratio is taken between timings of the same run "
                  "(minimum over repeats); the machine is shared, so absolute times are noisy.")
        with open(out / f"results{suffix}.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in FIELDS})
        md = markdown(rows, header)
        (out / f"results{suffix}.md").write_text(md + "\n")
        if any(r["section"] == "materialize" for r in rows):
            plot(rows, out / f"materialize{suffix}.png")
        if any(r["section"] == "apply" for r in rows):
            plot_apply(rows, out / f"apply{suffix}.png")
        return md

    if "materialize" in args.sections:
        rows += materialize_rows(sizes, args.dtypes, rng)
        write()
    if "apply" in args.sections:
        for n in napply:
            rows += apply_rows(n, ks, "float32", rng)
            write()
    if "unitary" in args.sections:
        rows += unitary_rows([64, 128] if args.quick else [256, 512, 1024], 128 if args.quick else 1024, ks, rng)
        write()
    if "memory" in args.sections:
        rows += memory_rows(256 if args.quick else 2048)
    print(write())


if __name__ == "__main__":
    main()
