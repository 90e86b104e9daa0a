r"""The compiled CPU engine: every pass of the backend protocol in ONE Numba call over all rounds.

Design rule: the engine is an implementation behind :mod:`cupyortho.backends.cpu` (which asks
:mod:`cupyortho._strategy` when to use it); it provides the protocol's functions with the protocol's
signatures (``cupyortho/backends/__init__.py``) and reads only the public tables of a
:class:`~cupyortho.schedule.Schedule` (``pair_i, pair_j, round_offsets, angle_index``), so every
schedule, restricted or not, runs on the same code.  Numba is imported at the first call, not at
``import cupyortho``; kernels are compiled with ``cache=True``, so a second process loads them from
the cache instead of recompiling (``docs/engine.md`` has the measured costs).

How a pass runs (``kernels.py``):

* the work is split over Numba threads by independent items ``(batch entry, column chunk)``; inside
  an item every rotation of the schedule runs in sequence over the chunk's columns, so there is no
  barrier between rounds;
* SO(n) apply and VJP run on 64-byte SIMD tiles emitted as LLVM vector IR, and the 4-round, 8-row
  blocks of team meetings run as register blocks (:func:`kernels.block_ops`); the cos/sin of the
  angles come from one compiled pass, kept for the backward of the same angles (:func:`_so_coef`);
* the pairs run in a *locality order* (:func:`kernels.locality_stages`): consecutive rounds are
  grouped into stages whose pairs split into components of at most ``L`` rows (``L`` such that
  ``L`` rows of the chunk fill about half of L1), and a component's rotations for all the stage's
  rounds run together while its rows sit in L1.  This computes bit for bit the same product as
  round order (rotations on disjoint rows commute exactly).  For team schedules the components are
  the meeting blocks of ``schedule.team_stages`` (the CPU twin of ``kernels/fused.cu``); for the
  circle schedule stages are single rounds.
* angle-gradient partials are summed per column chunk in column order and the chunks are added in
  chunk order; the chunks of a gradient pass depend on ``k`` only (:func:`chunk_width`), never on the
  number of threads, so results are bitwise identical run to run and for any thread count.

Threads: Numba's (``numba.set_num_threads``, ``NUMBA_NUM_THREADS``; ``cupyortho.set_num_threads``
sets them too where available).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .._common import sum_to as _sum_to

__all__ = [
    "matrix", "apply", "matrix_vjp", "apply_vjp", "matrix_jvp", "apply_jvp",
    "unitary", "unitary_apply", "unitary_vjp", "unitary_apply_vjp", "unitary_jvp", "unitary_apply_jvp",
    "chunk_width", "warm_up",
]

CHUNK = 16
"""Columns per chunk at least (one AVX-512 vector of float32)."""
MAX_GRAD_CHUNKS = 4
"""At most this many column chunks in a gradient pass: the partials take ``MAX_GRAD_CHUNKS`` values per
angle and batch entry (``matrix_vjp`` at ``n = 2048``: 2 ``n x n`` matrices; 4 with 8 chunks, which put its
peak at 10.5 ``n x n``), and bound the threads a single-matrix gradient pass can use."""
L1_BYTES = 16384
"""Bytes of the working rows of one component (about half of a 32 KiB L1 data cache)."""


def _k():
    from . import kernels

    return kernels


def chunk_width(k: int, grad: bool, batch: int = 1) -> int:
    """Columns per work item for ``k`` columns.  Gradient passes: a function of ``k`` only (at most
    :data:`MAX_GRAD_CHUNKS` chunks of at least :data:`CHUNK` columns).  Other passes have no reduction,
    so their split may follow the thread count: one item per thread (each item streams every
    rotation's coefficients once, so fewer, wider items read less)."""
    if k <= 0:
        return 1
    if grad:
        nc = max(1, min(MAX_GRAD_CHUNKS, -(-k // CHUNK)))
    else:
        import numba

        want = max(1, -(-numba.get_num_threads() // max(1, batch)))  # one item per thread
        nc = max(1, min(want, -(-k // CHUNK)))
    return -(-k // nc)


SERIAL_WORK = 1 << 17
"""Passes with fewer rotation-columns (pairs x columns x batch) than this, or a single work item,
run on the calling thread: a parallel region costs more than they do."""


def _run(name, work, y, cw, *args):
    """Run kernel ``name`` on ``y``: its parallel version, or ``name_serial`` for small passes (the
    same item function either way, so the same bits)."""
    import numba

    K = _k()
    items = y.shape[0] * (-(-y.shape[2] // cw))
    if items <= 1 or work < SERIAL_WORK or numba.get_num_threads() == 1:
        return getattr(K, name + "_serial")(y, *args)
    return getattr(K, name)(y, *args)


def _lanes(dtype):
    """Lanes of one 64-byte tile of the SO(n) kernels (16 float32, 8 float64)."""
    return 64 // np.dtype(dtype).itemsize


def _budget(cw, itemsize, arrays):
    """Rows per component: a power of two with ``rows * cw * itemsize * arrays`` about L1_BYTES."""
    rows = max(2, L1_BYTES // max(1, cw * itemsize * arrays))
    return 1 << (rows.bit_length() - 1)


class _Plan:
    """Processing order of a schedule's pairs for one row budget (see :func:`kernels.locality_stages`)
    and its op stream of 8-row blocks and single rotations (:func:`kernels.block_ops`)."""

    def __init__(self, schedule, budget):
        K = _k()
        n = schedule.n
        pi = np.ascontiguousarray(schedule.pair_i, dtype=np.int64)
        pj = np.ascontiguousarray(schedule.pair_j, dtype=np.int64)
        off = np.ascontiguousarray(schedule.round_offsets, dtype=np.int64)
        if budget >= n:
            outer = np.zeros(pi.size, dtype=np.int64)
        else:
            stage, root = K.locality_stages(n, pi, pj, off, budget)
            outer = stage * n + root
        # inside a component, the 8-row groups (team meeting blocks of 4 rounds) in stage order
        stage8, root8 = K.locality_stages(n, pi, pj, off, K.BLOCK_ROWS)
        inner = stage8 * n + root8
        order = np.lexsort((inner, outer))  # stable: round order kept inside a group
        # the tables kept (for every pass of this schedule): int32 while positions fit, about 18 bytes
        # per pair (n = 2048: 37 MiB, 2.3 n x n float32 matrices; 7.4 with the int64 tables before)
        small = np.int32 if pi.size < 2**31 else np.int64
        self.pi = pi[order].astype(small)
        self.pj = pj[order].astype(small)
        o, i = outer[order], inner[order]
        cut = np.flatnonzero((o[1:] != o[:-1]) | (i[1:] != i[:-1])) + 1
        gstart = np.concatenate([[0], cut, [order.size]]).astype(np.int64)
        del o, i, outer, inner
        self.kind, self.idx = K.block_ops(self.pi, self.pj, gstart)
        self.aidx = np.asarray(schedule.angle_index)[order].astype(small)
        self.aidx32 = self.aidx  # the coefficient kernel's index (one array: int32 while it fits)
        self.num_angles = int(schedule.num_angles)
        # gradients scatter back by assignment when every angle has exactly one pair, else by sums
        self.bijective = self.aidx.size == self.num_angles and np.array_equal(
            np.sort(self.aidx), np.arange(self.num_angles)
        )
        if self.bijective:  # scatter as a gather through the inverse permutation (2x faster)
            self.inverse = np.empty_like(self.aidx)
            self.inverse[self.aidx] = np.arange(self.aidx.size, dtype=small)


@functools.lru_cache(maxsize=8)  # a plan is ~2.3 words per pair: keep a few, not dozens
def _plan_cached(schedule, budget):
    return _Plan(schedule, budget)


def _plan(schedule, cw, itemsize, arrays):
    return _plan_cached(schedule, _budget(cw, itemsize, arrays))


COEF_CACHE_MAX = 1 << 22
"""Largest ``c, s`` (elements) that :func:`_so_coef` keeps for the next pass."""
_coef_cache = None  # (plan, dtype, copy of theta, c, s): the last coefficients computed


def _same(a, b):
    """``a == b`` everywhere (shapes equal); a cheap first look at a few angles settles most misses."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    return bool(np.array_equal(fa[:16], fb[:16]) and np.array_equal(fa, fb))


def _so_coef(theta, plan, dtype):
    """``c, s`` ``(T, P)`` of ``dtype``: cos and sin of ``theta (..., A)`` in processing order
    (``T`` the flat parameter batch).

    The last result is kept (one entry, at most :data:`COEF_CACHE_MAX` elements) with a copy of its
    theta: the backward pass of a forward on the same angles (``apply`` then ``apply_vjp``, as every
    autodiff adapter calls them) finds it after comparing theta's values, instead of gathering the
    angles and evaluating cos and sin again.  Comparing values, not identities, keeps it exact when
    the caller changes theta in place between calls.
    """
    global _coef_cache
    ent = _coef_cache
    if (ent is not None and ent[0] is plan and ent[1] == dtype and ent[2].shape == theta.shape
            and ent[2].dtype == theta.dtype and _same(ent[2], theta)):
        return ent[3], ent[4]
    import numba

    th = np.ascontiguousarray(theta.reshape(-1, theta.shape[-1]))
    c = np.empty((th.shape[0], plan.aidx.size), dtype=dtype)
    s = np.empty_like(c)
    K = _k()
    serial = c.size < SERIAL_WORK or numba.get_num_threads() == 1
    (K.coefficients_serial if serial else K.coefficients)(th, plan.aidx32, c, s)
    if c.size <= COEF_CACHE_MAX:
        _coef_cache = (plan, np.dtype(dtype), theta.copy(), c, s)
    return c, s


def _forget_coefficients():
    """Drop the kept coefficients (so the next pass computes them)."""
    global _coef_cache
    _coef_cache = None


def _so_plan(schedule, dtype):
    """The plan of the SO(n) tile kernels: the same for every pass and ``k`` (the L1 budget of two
    buffers one tile wide), so a forward and its backward share coefficients."""
    itemsize = np.dtype(dtype).itemsize
    return _plan_cached(schedule, _budget(_lanes(dtype), itemsize, 2))


def _so_grad(plan, part, sign, out_shape):
    """The angle gradient ``(..., A)`` from the partials ``part (B, nc, P)``: chunks added in order,
    times ``sign``, scattered to the public layout."""
    B, nc, P = part.shape
    if nc == 0:
        d = np.zeros((B, P), dtype=part.dtype)
    else:
        d = part[:, 0] if nc == 1 else part.sum(axis=1)  # (part is this pass's own scratch)
    if sign < 0:
        np.negative(d, out=d)
    return _scatter(plan, d).reshape(out_shape + (plan.num_angles,))


def _scatter(plan, d):
    """Values per processing position ``(B, P)`` -> public angle layout ``(B, A)``."""
    if plan.bijective:
        return np.take(d, plan.inverse, axis=-1)
    out = np.zeros(d.shape[:-1] + (plan.num_angles,), dtype=d.dtype)
    np.add.at(out.T, plan.aidx, d.T)
    return out


def _param_batch(*arrays):
    """Broadcast batch shape of parameter arrays (angles on the last axis; None ignored)."""
    return np.broadcast_shapes(*[a.shape[:-1] for a in arrays if a is not None])


def _tmap(pbatch, out):
    """For each flat output batch entry, the flat index of the parameter batch entry it uses."""
    size = math.prod(pbatch)
    return np.ascontiguousarray(
        np.broadcast_to(np.arange(size, dtype=np.int64).reshape(pbatch), out).reshape(-1)
    )


def _gather(a, pbatch, idx):
    """``a[..., idx]`` broadcast to ``pbatch``, as a C-contiguous ``(prod(pbatch), len(idx))``."""
    a = np.broadcast_to(a, pbatch + a.shape[-1:]).reshape(-1, a.shape[-1])
    return np.take(a, idx, axis=1)  # C-contiguous; 2x faster than a[:, idx]


def _work(x, out, dtype):
    """A private C-contiguous copy of ``x`` broadcast to ``out + x.shape[-2:]``, as ``(B, n, k)``."""
    n, k = x.shape[-2:]
    y = np.array(np.broadcast_to(x, out + (n, k)), dtype=dtype, copy=True, order="C")
    return y.reshape((math.prod(out), n, k))


# --------------------------------------------------------------------------- SO(n)

def apply(theta, x, schedule, transpose=False):
    """``U(theta) @ x`` or ``U(theta).T @ x``: theta ``(..., A)``, x ``(..., n, k)`` -> ``(..., n, k)``."""
    out = np.broadcast_shapes(theta.shape[:-1], x.shape[:-2])
    y = _work(x, out, x.dtype)
    n, k = x.shape[-2:]
    cw = chunk_width(k, False, y.shape[0])
    plan = _so_plan(schedule, x.dtype)
    pb = theta.shape[:-1]
    c, s = _so_coef(theta, plan, x.dtype)
    _run("so_apply", plan.pi.size * y.size // n,
         y, cw, c, s, x.dtype.type(-1 if transpose else 1), _tmap(pb, out), plan.kind, plan.idx, cw,
         _lanes(x.dtype), bool(transpose))
    return y.reshape(out + (n, k))


def matrix(theta, schedule):
    """``U(theta)`` ``(..., n, n)``: the pass applied to the identity."""
    return apply(theta, np.eye(schedule.n, dtype=theta.dtype), schedule)


def apply_vjp(theta, x, cotangent, schedule, transpose=False, output=None):
    """``(d_theta, d_x)`` of ``y = apply(theta, x)``: one backward pass that undoes every rotation on
    ``y`` (``output`` when given), pulls the cotangent back and sums the angle partials."""
    own = output is None
    y = apply(theta, x, schedule, transpose) if own else output
    out = np.broadcast_shapes(theta.shape[:-1], x.shape[:-2], cotangent.shape[:-2])
    n, k = x.shape[-2:]
    if own and y.shape == out + (n, k):  # our own C-contiguous result: undone in place, no copy
        yw = y.reshape((math.prod(out), n, k))
    else:
        yw = _work(y, out, x.dtype)
    gw = _work(cotangent, out, x.dtype)
    cw = chunk_width(k, True)
    plan = _so_plan(schedule, x.dtype)
    pb = theta.shape[:-1]
    c, s = _so_coef(theta, plan, x.dtype)
    B = yw.shape[0]
    nc = -(-k // cw) if k else 0
    part = np.empty((B, nc, plan.pi.size), dtype=x.dtype)
    _run("so_apply_vjp", plan.pi.size * yw.size // n,
         yw, cw, gw, c, s, x.dtype.type(1 if transpose else -1), _tmap(pb, out), plan.kind, plan.idx, cw,
         _lanes(x.dtype), not transpose, part, x.dtype.type(0))
    d_theta = _so_grad(plan, part, -1 if transpose else 1, out)
    return _sum_to(d_theta, theta.shape), _sum_to(gw.reshape(out + (n, k)), x.shape)


def matrix_vjp(theta, cotangent, schedule, output=None):
    """``d_theta`` of ``U = matrix(theta)`` for ``cotangent = dL/dU`` (the apply VJP with ``x = I``).
    Given ``output``, ``x`` is only a shape and dtype: a zero-stride view instead of an identity."""
    n = schedule.n
    if output is None:
        x = np.eye(n, dtype=theta.dtype)
    else:
        x = np.broadcast_to(np.zeros((), dtype=theta.dtype), (n, n))
    return apply_vjp(theta, x, cotangent, schedule, False, output)[0]


def apply_jvp(theta, x, theta_tangent, x_tangent, schedule, transpose=False):
    """Tangent of ``y = apply(theta, x)`` along ``(theta_tangent, x_tangent)`` (None: zero)."""
    pb = _param_batch(theta, theta_tangent)
    xb = [x.shape[:-2]] + ([] if x_tangent is None else [x_tangent.shape[:-2]])
    out = np.broadcast_shapes(pb, *xb)
    n, k = x.shape[-2:]
    y = _work(x, out, x.dtype)
    dy = (np.zeros_like(y) if x_tangent is None else _work(x_tangent, out, x.dtype))
    cw = chunk_width(k, False, y.shape[0])
    plan = _so_plan(schedule, x.dtype)
    c, s = _so_coef(np.broadcast_to(theta, pb + theta.shape[-1:]), plan, x.dtype)
    dt = _gather(theta_tangent, pb, plan.aidx).astype(x.dtype, copy=False)
    _run("so_apply_jvp", plan.pi.size * y.size // n,
         y, cw, dy, c, s, dt, x.dtype.type(-1 if transpose else 1), _tmap(pb, out), plan.kind, plan.idx, cw,
         _lanes(x.dtype), bool(transpose))
    return dy.reshape(out + (n, k))


def matrix_jvp(theta, theta_tangent, schedule):
    """Tangent ``dU`` of ``U = matrix(theta)`` along ``theta_tangent``."""
    return apply_jvp(theta, np.eye(schedule.n, dtype=theta.dtype), theta_tangent, None, schedule)


# --------------------------------------------------------------------------- U(n)

def _cis(a, cdtype):
    out = np.empty(a.shape, dtype=cdtype)
    out.real = np.cos(a)
    out.imag = np.sin(a)
    return out


def _ucoef(params, pb, plan, n, cdtype, adjoint):
    """c, s, u per processing position and the diagonal factor (conjugated for the adjoint)."""
    A = plan.num_angles
    th = _gather(params[..., :A], pb, plan.aidx)
    ph = _gather(params[..., A:2 * A], pb, plan.aidx)
    dl = np.ascontiguousarray(np.broadcast_to(params[..., 2 * A:2 * A + n], pb + (n,)).reshape(-1, n))
    c, s, u, d = np.cos(th), np.sin(th), _cis(ph, cdtype), _cis(dl, cdtype)
    if adjoint:
        s, d = -s, np.conj(d)
    return c, s, u, d


def unitary_apply(params, x, schedule, adjoint=False):
    """``U(params) @ x`` (``U^H @ x``): params ``(..., n*n)`` real, x ``(..., n, k)`` complex."""
    out = np.broadcast_shapes(params.shape[:-1], x.shape[:-2])
    y = _work(x, out, x.dtype)
    n, k = x.shape[-2:]
    cw = chunk_width(k, False, y.shape[0])
    plan = _plan(schedule, cw, x.dtype.itemsize, 1)
    pb = params.shape[:-1]
    c, s, u, d = _ucoef(params, pb, plan, n, x.dtype, adjoint)
    _run("u_apply", plan.pi.size * y.size // n,
         y, cw, c, s, u, d, _tmap(pb, out), plan.pi, plan.pj, cw, bool(adjoint), -1 if adjoint else 1)
    return y.reshape(out + (n, k))


def unitary(params, schedule, cdtype):
    """``U(params)`` ``(..., n, n)`` of dtype ``cdtype``."""
    return unitary_apply(params, np.eye(schedule.n, dtype=cdtype), schedule)


def unitary_apply_vjp(params, x, cotangent, schedule, adjoint=False, output=None):
    """``(d_params, d_x)`` of ``y = unitary_apply(params, x)`` (``docs/unitary.md``): real
    ``d_params`` shaped like params, complex ``d_x`` shaped like x."""
    y = unitary_apply(params, x, schedule, adjoint) if output is None else output
    out = np.broadcast_shapes(params.shape[:-1], x.shape[:-2], cotangent.shape[:-2])
    n, k = x.shape[-2:]
    yw = _work(y, out, x.dtype)
    gw = _work(cotangent, out, x.dtype)
    cw = chunk_width(k, True)
    plan = _plan(schedule, cw, x.dtype.itemsize, 2)
    pb = params.shape[:-1]
    c, s, u, d = _ucoef(params, pb, plan, n, x.dtype, adjoint)
    B, P = yw.shape[0], plan.pi.size
    nc = -(-k // cw) if k else 0
    rdt = params.dtype
    pt = np.empty((B, nc, P), dtype=rdt)
    pp = np.empty((B, nc, P), dtype=rdt)
    pd = np.empty((B, nc, n), dtype=rdt)
    _run("u_apply_vjp", plan.pi.size * yw.size // n,
         yw, cw, gw, c, s, u, d, _tmap(pb, out), plan.pi, plan.pj, cw, not adjoint,
                  -1 if adjoint else 1, pt, pp, pd, rdt.type(0))
    sigma = -1 if adjoint else 1
    dt = pt.sum(axis=1) if nc else np.zeros((B, P), rdt)
    dp = pp.sum(axis=1) if nc else np.zeros((B, P), rdt)
    dd = pd.sum(axis=1) if nc else np.zeros((B, n), rdt)
    if sigma < 0:
        dt = -dt
    else:
        dd = -dd
    full = np.concatenate([_scatter(plan, dt), _scatter(plan, dp), dd], axis=-1)
    full = full.reshape(out + (full.shape[-1],))
    return _sum_to(full, params.shape), _sum_to(gw.reshape(out + (n, k)), x.shape)


def unitary_vjp(params, cotangent, schedule, output=None):
    """``d_params`` of ``U = unitary(params)`` (the apply VJP with ``x = I``); ``output`` may pass U."""
    eye = np.eye(schedule.n, dtype=cotangent.dtype)
    return unitary_apply_vjp(params, eye, cotangent, schedule, False, output)[0]


def unitary_apply_jvp(params, x, params_tangent, x_tangent, schedule, adjoint=False):
    """Tangent of ``y = unitary_apply(params, x)`` along ``(params_tangent, x_tangent)`` (None: zero)."""
    pb = _param_batch(params, params_tangent)
    xb = [x.shape[:-2]] + ([] if x_tangent is None else [x_tangent.shape[:-2]])
    out = np.broadcast_shapes(pb, *xb)
    n, k = x.shape[-2:]
    y = _work(x, out, x.dtype)
    dy = np.zeros_like(y) if x_tangent is None else _work(x_tangent, out, x.dtype)
    cw = chunk_width(k, False, y.shape[0])
    plan = _plan(schedule, cw, x.dtype.itemsize, 2)
    A = plan.num_angles
    c, s, u, d = _ucoef(params, pb, plan, n, x.dtype, adjoint)
    sigma = -1 if adjoint else 1
    dt = sigma * _gather(params_tangent[..., :A], pb, plan.aidx)
    dp = _gather(params_tangent[..., A:2 * A], pb, plan.aidx)
    dd = np.ascontiguousarray(
        np.broadcast_to(params_tangent[..., 2 * A:2 * A + n], pb + (n,)).reshape(-1, n)
    )
    _run("u_apply_jvp", plan.pi.size * y.size // n,
         y, cw, dy, c, s, u, d, dt, dp, dd, _tmap(pb, out), plan.pi, plan.pj, cw, bool(adjoint),
                  sigma, sigma)
    return dy.reshape(out + (n, k))


def unitary_jvp(params, params_tangent, schedule, cdtype):
    """Tangent ``dU`` of ``U = unitary(params)`` along ``params_tangent``."""
    return unitary_apply_jvp(params, np.eye(schedule.n, dtype=cdtype), params_tangent, None, schedule)


# --------------------------------------------------------------------------- compile / warm-up

def warm_up(dtypes=("float32", "float64", "complex64", "complex128")):
    """Compile (or load from Numba's cache) every kernel, serial and parallel, for ``dtypes``.

    Returns ``{(pass, dtype): seconds}``: the first-call cost of each pass (compile on a fresh
    install, cache load afterwards), as ``python -m cupyortho`` prints it.
    """
    import time

    from ... import schedule as _sched

    global SERIAL_WORK
    times = {}
    sch = _sched.circle_schedule(4)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    _plan_cached(sch, 2)  # the locality planner
    times[("plan", "int64")] = time.perf_counter() - t0
    saved = SERIAL_WORK
    try:
        for name in dtypes:
            dt = np.dtype(name)
            rdt = np.dtype(np.float32 if dt in (np.complex64, np.float32) else np.float64)
            th = rng.standard_normal(6).astype(rdt)
            p = rng.standard_normal(16).astype(rdt)
            x = rng.standard_normal((4, 40)).astype(dt)
            if dt.kind == "c":
                passes = {
                    "unitary_apply": lambda: unitary_apply(p, x, sch),
                    "unitary_apply_vjp": lambda: unitary_apply_vjp(p, x, x, sch),
                    "unitary_apply_jvp": lambda: unitary_apply_jvp(p, x, p, x, sch),
                }
            else:
                passes = {
                    "apply": lambda: apply(th, x, sch),
                    "apply_vjp": lambda: apply_vjp(th, x, x, sch),
                    "apply_jvp": lambda: apply_jvp(th, x, th, x, sch),
                }
            for op, fn in passes.items():
                t0 = time.perf_counter()
                SERIAL_WORK = saved
                _forget_coefficients()
                fn()  # serial kernels (small pass)
                SERIAL_WORK = 0
                _forget_coefficients()
                fn()  # parallel kernels
                times[(op, name)] = time.perf_counter() - t0
    finally:
        SERIAL_WORK = saved
    return times
