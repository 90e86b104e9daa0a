"""GPU benchmarks of the CuPy backend, as GPU times and as ratios to one n x n cupy.matmul.

    python bench/gpu_bench.py [--out results.json] [--budget 300] [--quick]

Cases (float32 unless stated; times are medians of CUDA-event-timed repeats after a warm-up, so
kernel compilation is excluded; inputs are passed with ``check_finite=False``, whose check would
add a device-to-host flag transfer per argument):

* materialize forward ``matrix(theta)`` and forward+backward ``matrix`` + ``matrix_vjp`` (and
  with the backward given U, ``matrix_vjp(..., output=U)`` of the backend, which skips recomputing it) at
  n = 1024, 2048, 4096, schedules circle (fused all-rounds kernel; per-round two-sided VJP), team
  t = 64 and t = 128 (blocked: blocks from angles + batched GEMMs);
* apply forward ``apply(theta, x)`` and forward+backward (``apply`` + ``apply_vjp(output=y)``) at
  n = 4096, k = 32, both schedules, and each kernel path (fused, per-round) for the circle schedule;
* each as a ratio to one n x n ``cupy.matmul`` of the same dtype timed in the same run, and to
  torch's Cayley map ``Q = (I + S)^{-1}(I - S)``, ``S = A - A^T`` (forward, and forward+backward
  with autograd) on the GPU when torch with CUDA is importable.

Targets (issue 3): materialize forward+backward at n = 4096 float32 within 10x one matmul; apply
n = 4096, k = 32 forward+backward under 2 ms.  Also recorded: orthogonality max|U^T U - I| of every
materialized U, the tile widths the fused kernels chose, device name and library versions.
Writes a JSON file (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np


def _event_time(cupy, fn, repeat, warmup=1):
    """Median GPU time in ms of ``fn()`` over ``repeat`` runs (CUDA events on the current stream)."""
    for _ in range(warmup):
        fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def _torch_time(torch, fn, repeat, warmup=1):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def _torch_cuda():
    try:
        import torch
    except ImportError as exc:
        return None, f"torch not importable ({exc})"
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} has no CUDA device"
    return torch, None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="JSON results file")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--budget", type=float, default=300.0, help="seconds; later cases are skipped past it")
    p.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    p.add_argument("--apply-n", type=int, default=4096)
    p.add_argument("--apply-k", type=int, default=32)
    args = p.parse_args(argv)

    import cupy

    import cupyortho as co
    from cupyortho import schedule as S
    from cupyortho.backends.cupy import so as cb
    from cupyortho.backends.cupy.device import get_device

    t_start = time.perf_counter()
    dev = get_device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    torch, torch_reason = _torch_cuda()
    info = {
        "device": props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"]),
        "compute_capability": dev.compute_capability,
        "multiprocessors": dev.multiprocessor_count,
        "max_shared_memory_optin": dev.max_shared_memory,
        "cupy": cupy.__version__,
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "python": platform.python_version(),
        "torch": getattr(torch, "__version__", None) if torch else torch_reason,
        "partial_bytes": cb.PARTIAL_BYTES,
    }
    rows = []
    rng = np.random.default_rng(0)
    dtype = np.float32
    rep_fast = 3 if args.quick else 10
    rep_slow = 2 if args.quick else 3

    def over_budget():
        return time.perf_counter() - t_start > args.budget

    def add(row):
        rows.append(row)
        keys = ("case", "schedule", "n", "k", "ms", "ratio_matmul", "ratio_torch", "tile_width", "note")
        print("  ".join(f"{k}={row[k]}" for k in keys if row.get(k) is not None), flush=True)

    matmul_ms = {}
    for n in args.sizes:
        a = cupy.asarray(rng.standard_normal((n, n)), dtype=dtype)
        b = cupy.asarray(rng.standard_normal((n, n)), dtype=dtype)
        matmul_ms[n] = _event_time(cupy, lambda: cupy.matmul(a, b), rep_fast)
        add({"case": "matmul", "n": n, "ms": round(matmul_ms[n], 4)})

    # torch Cayley reference.
    cayley_ms = {}
    if torch is not None:
        for n in args.sizes:
            A = torch.randn(n, n, device="cuda", dtype=torch.float32, requires_grad=True)
            eye = torch.eye(n, device="cuda", dtype=torch.float32)
            G = torch.randn(n, n, device="cuda", dtype=torch.float32)

            def cayley():
                s = A - A.T
                return torch.linalg.solve(eye + s, eye - s)

            def cayley_fb():
                A.grad = None
                cayley().backward(G)

            with torch.no_grad():
                fwd = _torch_time(torch, cayley, rep_fast)
            fb = _torch_time(torch, cayley_fb, rep_fast)
            cayley_ms[n] = (fwd, fb)
            add({"case": "torch_cayley_fwd", "n": n, "ms": round(fwd, 4), "ratio_matmul": round(fwd / matmul_ms[n], 2)})
            add({"case": "torch_cayley_fwd_bwd", "n": n, "ms": round(fb, 4), "ratio_matmul": round(fb / matmul_ms[n], 2)})

    def ratios(row, n, which):
        row["ratio_matmul"] = round(row["ms"] / matmul_ms[n], 2)
        if n in cayley_ms:
            row["ratio_torch"] = round(row["ms"] / cayley_ms[n][which], 2)
        return row

    # Materialize.
    for n in args.sizes:
        theta = cupy.asarray(rng.uniform(-np.pi, np.pi, co.num_angles(n)), dtype=dtype)
        G = cupy.asarray(rng.standard_normal((n, n)), dtype=dtype)
        for label, sched in (("circle", S.circle_schedule(n)), ("team64", S.team_schedule(n, 64)),
                             ("team128", S.team_schedule(n, 128))):
            if over_budget():
                add({"case": "materialize", "schedule": label, "n": n, "note": "skipped: time budget"})
                continue
            slow = label == "circle" and n >= 2048
            reps = rep_slow if slow else rep_fast
            u = co.matrix(theta, schedule=sched, check_finite=False)
            orth = float(cupy.abs(u.T @ u - cupy.eye(n, dtype=dtype)).max())
            fwd = _event_time(cupy, lambda: co.matrix(theta, schedule=sched, check_finite=False), reps)
            add(ratios({"case": "materialize_fwd", "schedule": label, "n": n, "ms": round(fwd, 3),
                        "orthogonality": orth}, n, 0))
            if sched.kind == "team" and n == max(args.sizes):
                # Where the blocked forward spends its time: building the blocks from the angles.
                ms = _event_time(cupy, lambda: cb._blocked_blocks(dev, theta, (), sched), reps)
                add({"case": "blocked_build_blocks", "schedule": label, "n": n, "ms": round(ms, 3),
                     "ratio_matmul": round(ms / matmul_ms[n], 2), "note": "part of materialize_fwd"})
            if over_budget():
                add({"case": "materialize_fwd_bwd", "schedule": label, "n": n, "note": "skipped: time budget"})
                continue

            def fwd_bwd():
                co.matrix(theta, schedule=sched, check_finite=False)
                co.matrix_vjp(theta, G, schedule=sched, check_finite=False)

            fb = _event_time(cupy, fwd_bwd, rep_slow if slow else max(3, rep_fast // 2))
            add(ratios({"case": "materialize_fwd_bwd", "schedule": label, "n": n, "ms": round(fb, 3)}, n, 1))
            if over_budget():
                continue

            def fwd_bwd_reuse():  # the backward given U (backend matrix_vjp(..., output=U))
                u = cb._impl_matrix(dev, theta, sched)
                cb._impl_matrix_vjp(dev, theta, G, sched, output=u)

            fb = _event_time(cupy, fwd_bwd_reuse, rep_slow if slow else max(3, rep_fast // 2))
            add(ratios({"case": "materialize_fwd_bwd_reusing_U", "schedule": label, "n": n,
                        "ms": round(fb, 3)}, n, 1))

    # Apply at n = 4096, k = 32.
    n, k = args.apply_n, args.apply_k
    if n not in matmul_ms:
        a = cupy.asarray(rng.standard_normal((n, n)), dtype=dtype)
        matmul_ms[n] = _event_time(cupy, lambda: cupy.matmul(a, a), rep_fast)
    theta = cupy.asarray(rng.uniform(-np.pi, np.pi, co.num_angles(n)), dtype=dtype)
    x = cupy.asarray(rng.standard_normal((n, k)), dtype=dtype)
    g = cupy.asarray(rng.standard_normal((n, k)), dtype=dtype)
    for label, sched in (("circle", S.circle_schedule(n)), ("team64", S.team_schedule(n, 64))):
        for path in (None, "fused", "rounds"):
            if path is not None and label != "circle":
                continue
            if over_budget():
                add({"case": "apply", "schedule": label, "n": n, "k": k, "note": "skipped: time budget"})
                continue
            name = "apply" if path is None else f"apply[{path}]"

            def fwd():
                return cb._impl_apply(dev, theta, x, sched, False, path)

            def fwd_bwd():
                y = cb._impl_apply(dev, theta, x, sched, False, path)
                cb._impl_apply_vjp(dev, theta, x, g, sched, False, y, path)

            tk_f = cb._tile_width(dev, n, k, 1, 1, 4, path=path)
            tk_b = cb._tile_width(dev, n, k, 1, 2, 4, A=sched.num_angles, path=path)
            ms_f = _event_time(cupy, fwd, rep_fast)
            add({"case": f"{name}_fwd", "schedule": label, "n": n, "k": k, "ms": round(ms_f, 4),
                 "ratio_matmul": round(ms_f / matmul_ms[n], 3), "tile_width": tk_f})
            ms_fb = _event_time(cupy, fwd_bwd, rep_fast)
            add({"case": f"{name}_fwd_bwd", "schedule": label, "n": n, "k": k, "ms": round(ms_fb, 4),
                 "ratio_matmul": round(ms_fb / matmul_ms[n], 3), "tile_width": tk_b,
                 "note": "target < 2 ms"})

    # Tile-width sweep of the fused kernels (apply fwd+bwd, circle), for tuning the heuristic.
    sched = S.circle_schedule(n)
    for width in (1, 2, 4, 8, 16, 32):
        if over_budget():
            break
        cb.TILE_WIDTH = width
        try:
            def fwd_bwd_w():
                y = cb._impl_apply(dev, theta, x, sched, False, "fused")
                cb._impl_apply_vjp(dev, theta, x, g, sched, False, y, "fused")

            ms = _event_time(cupy, fwd_bwd_w, rep_fast)
        finally:
            cb.TILE_WIDTH = None
        add({"case": "apply[fused]_fwd_bwd", "schedule": "circle", "n": n, "k": k, "ms": round(ms, 4),
             "ratio_matmul": round(ms / matmul_ms[n], 3), "tile_width": width, "note": "forced tile width"})

    # Targets.
    def find(case, schedule, n):
        for row in rows:
            if row["case"] == case and row.get("schedule") == schedule and row.get("n") == n and "ms" in row:
                return row
        return None

    targets = {}
    best = [find(case, s, 4096) for s in ("team64", "team128", "circle")
            for case in ("materialize_fwd_bwd", "materialize_fwd_bwd_reusing_U")]
    best = [r for r in best if r]
    if best:
        r = min(best, key=lambda r: r["ms"])
        targets["materialize_fwd_bwd_4096_within_10x_matmul"] = {
            "case": r["case"], "schedule": r["schedule"], "ratio": r["ratio_matmul"],
            "met": r["ratio_matmul"] <= 10}
    app = [r for r in rows if r["case"].startswith("apply") and r["case"].endswith("_fwd_bwd") and "ms" in r
           and r["n"] == 4096 and r["k"] == 32 and r.get("note") != "forced tile width"]
    if app:
        r = min(app, key=lambda r: r["ms"])
        targets["apply_4096x32_fwd_bwd_under_2ms"] = {"case": r["case"], "schedule": r["schedule"],
                                                       "ms": r["ms"], "met": r["ms"] < 2.0}
    result = {"info": info, "rows": rows, "targets": targets,
              "elapsed_s": round(time.perf_counter() - t_start, 1)}
    print(json.dumps({"targets": targets, "info": info}, indent=1))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
