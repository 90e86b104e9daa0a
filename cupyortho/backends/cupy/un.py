r"""U(n) on the CuPy backend: the per-round kernels of ``kernels/unitary.cu`` behind the device object.

Design rule: as :mod:`.so`, the ``_impl_*`` functions take the device object first and use only
``dev.xp`` and the launchers of :mod:`.launch`, so the CPU harness of ``tests/cudasim`` runs them
unchanged with NumPy arrays; the package (:mod:`cupyortho.backends.cupy`) makes the thin public calls.
The same operations and signatures as :mod:`cupyortho.backends.numpy_unitary` (the reference it is
tested against); the maths is in ``docs/unitary.md``.

Complex arrays reach the kernels as their real views (``a.view(real dtype)``), so the kernels are
templated on the real type (``float`` for complex64, ``double`` for complex128).  The diagonal
phases are applied with element-wise array operations.  Only the per-round path exists (one launch
per round); there is no fused or blocked path for U(n) yet.
"""

from __future__ import annotations

import numpy as np

from .._common import sum_to as _sum_to
from . import launch as _launch
from .data import angles_per_batch, prod, rounds_data, slot_data, work


def _real(dtype):
    return np.dtype(np.float32) if np.dtype(dtype) in (np.float32, np.complex64) else np.dtype(np.float64)


# --------------------------------------------------------------------------- helpers

def _coefficients(dev, params, batch, schedule, cdtype):
    """coef (Bc, A, 4) round-major (cos theta, sin theta, cos phi, sin phi), its batch stride, and the
    diagonal e^{i delta} as (Bc, n, 1) complex (Bc = 1 when one parameter set serves the batch)."""
    xp = dev.xp
    A = schedule.num_angles
    p, step = angles_per_batch(xp, params, batch)
    idx = rounds_data(dev, schedule).angle_index
    theta = p[:, :A][:, idx]
    phi = p[:, A:2 * A][:, idx]
    coef = xp.ascontiguousarray(xp.stack([xp.cos(theta), xp.sin(theta), xp.cos(phi), xp.sin(phi)], axis=-1))
    delta = p[:, 2 * A:]
    d = xp.empty(delta.shape, dtype=cdtype)
    d.real = xp.cos(delta)
    d.imag = xp.sin(delta)
    return coef, step * 4 * A, d[:, :, None]


def _ops(schedule, adjoint):
    """``(kind, sign, q0, P)`` in application order (see numpy_unitary._ops)."""
    off = [int(o) for o in schedule.round_offsets]
    ops = [("round", 1, off[r], off[r + 1] - off[r]) for r in range(len(off) - 1)] + [("diag", 1, 0, 0)]
    if adjoint:
        ops = [(k, -1, q0, P) for k, _, q0, P in reversed(ops)]
    return ops


def _from_round_order(xp, d_round, rd, A):
    out = xp.empty_like(d_round)
    out[:, rd.angle_index] = d_round[:, :A]
    out[:, A + rd.angle_index] = d_round[:, A:]
    return out


def _rv(a):
    """The real view (B, n, 2k) of a C-contiguous complex (B, n, k)."""
    return a.view(_real(a.dtype))


# --------------------------------------------------------------------------- algorithms

def _impl_unitary_apply(dev, params, x, schedule, adjoint=False):
    """``U @ x`` (or ``U^H @ x``): params (..., n*n) real, x (..., n, k) complex -> (..., n, k)."""
    xp = dev.xp
    batch = tuple(np.broadcast_shapes(params.shape[:-1], x.shape[:-2]))
    rd = rounds_data(dev, schedule)
    y = work(xp, x, batch, x.dtype)
    coef, cb, d = _coefficients(dev, params, batch, schedule, x.dtype)
    yr = _rv(y)
    for kind, sign, q0, P in _ops(schedule, adjoint):
        if kind == "round":
            _launch.unitary_apply_round(dev, yr, coef, rd.pair_i, rd.pair_j, q0, P, cb, sign)
        else:
            y *= d if sign > 0 else xp.conj(d)
    return y.reshape(batch + x.shape[-2:])


def _impl_unitary(dev, params, schedule, cdtype):
    return _impl_unitary_apply(dev, params, dev.xp.eye(schedule.n, dtype=cdtype), schedule)


def _impl_unitary_apply_vjp(dev, params, x, cotangent, schedule, adjoint=False, output=None):
    """``(d_params, d_x)`` of ``y = unitary_apply(params, x)`` (formulas in numpy_unitary)."""
    xp = dev.xp
    n, A = schedule.n, schedule.num_angles
    y = _impl_unitary_apply(dev, params, x, schedule, adjoint) if output is None else output
    batch = tuple(np.broadcast_shapes(params.shape[:-1], x.shape[:-2], cotangent.shape[:-2]))
    B = prod(batch)
    rd = rounds_data(dev, schedule)
    y = work(xp, y, batch, x.dtype)
    g = work(xp, cotangent, batch, x.dtype)
    coef, cb, d = _coefficients(dev, params, batch, schedule, x.dtype)
    d_round = xp.empty((B, 2 * A), dtype=params.dtype)
    d_delta = None
    yr, gr = _rv(y), _rv(g)
    for kind, sign, q0, P in reversed(_ops(schedule, adjoint)):
        if kind == "diag":
            d_delta = (-sign * xp.sum(xp.conj(g) * y, axis=-1).imag).astype(params.dtype)
            back = xp.conj(d) if sign > 0 else d
            y *= back
            g *= back
        else:
            _launch.unitary_apply_vjp_round(dev, yr, gr, d_round, coef, rd.pair_i, rd.pair_j, q0, P, A, cb, sign)
    d_full = xp.concatenate([_from_round_order(xp, d_round, rd, A), d_delta], axis=-1)
    d_params = _sum_to(d_full.reshape(batch + (2 * A + n,)), params.shape)
    d_x = _sum_to(g.reshape(batch + x.shape[-2:]), x.shape)
    return d_params, d_x


def _impl_unitary_vjp(dev, params, cotangent, schedule, output=None):
    """``d_params`` of ``U = unitary(params)``, reduction-free (one launch per round, last first);
    ``output`` may pass ``U`` to skip recomputing it."""
    xp = dev.xp
    n, A = schedule.n, schedule.num_angles
    batch = tuple(np.broadcast_shapes(params.shape[:-1], cotangent.shape[:-2]))
    B = prod(batch)
    cdtype = cotangent.dtype
    u = _impl_unitary(dev, params, schedule, cdtype) if output is None else output
    u = xp.broadcast_to(u, batch + (n, n)).reshape(B, n, n)
    g = xp.broadcast_to(cotangent, batch + (n, n)).reshape(B, n, n)
    w = xp.ascontiguousarray(xp.matmul(g, xp.conj(xp.swapaxes(u, -1, -2))))
    coef, cb, d = _coefficients(dev, params, batch, schedule, cdtype)
    d_delta = xp.ascontiguousarray(xp.diagonal(w, axis1=-2, axis2=-1).imag).astype(params.dtype)
    w *= xp.conj(d)
    w *= xp.swapaxes(d, -1, -2)
    sl = slot_data(dev, schedule)
    rd = rounds_data(dev, schedule)
    d_round = xp.empty((B, 2 * A), dtype=params.dtype)
    wr = _rv(w)
    off = sl.offsets
    for r in range(off.size - 2, -1, -1):
        _launch.unitary_matrix_vjp_round(dev, wr, d_round, coef, sl.slot_i, sl.slot_j, sl.slot_q, int(off[r]),
                                int(off[r + 1] - off[r]), A, cb)
    d_full = xp.concatenate([_from_round_order(xp, d_round, rd, A), d_delta], axis=-1)
    return _sum_to(d_full.reshape(batch + (2 * A + n,)), params.shape)


def _impl_unitary_apply_jvp(dev, params, x, params_tangent, x_tangent, schedule, adjoint=False):
    """Tangent of ``y = unitary_apply(params, x)`` along ``(params_tangent, x_tangent)``."""
    xp = dev.xp
    A = schedule.num_angles
    shapes = [params.shape[:-1], x.shape[:-2], params_tangent.shape[:-1]]
    if x_tangent is not None:
        shapes.append(x_tangent.shape[:-2])
    batch = tuple(np.broadcast_shapes(*shapes))
    B = prod(batch)
    rd = rounds_data(dev, schedule)
    y = work(xp, x, batch, x.dtype)
    if x_tangent is None:
        dy = xp.zeros((B,) + x.shape[-2:], dtype=x.dtype)
    else:
        dy = work(xp, x_tangent, batch, x.dtype)
    coef, cb, d = _coefficients(dev, params, batch, schedule, x.dtype)
    t, tstep = angles_per_batch(xp, params_tangent, batch)
    dt = xp.ascontiguousarray(xp.concatenate([t[:, :A][:, rd.angle_index], t[:, A:2 * A][:, rd.angle_index]], -1))
    ddelta = t[:, 2 * A:][:, :, None]
    yr, dyr = _rv(y), _rv(dy)
    for kind, sign, q0, P in _ops(schedule, adjoint):
        if kind == "round":
            _launch.unitary_apply_jvp_round(dev, yr, dyr, coef, dt, rd.pair_i, rd.pair_j, q0, P, A, cb, tstep * 2 * A, sign)
        else:
            dd = d if sign > 0 else xp.conj(d)
            y *= dd
            dy *= dd
            dy += (1j * sign) * ddelta * y
    return dy.reshape(batch + x.shape[-2:])


def _impl_unitary_jvp(dev, params, params_tangent, schedule, cdtype):
    return _impl_unitary_apply_jvp(dev, params, dev.xp.eye(schedule.n, dtype=cdtype), params_tangent, None,
                                   schedule)
