r"""NumPy reference backend: the readable specification every other backend is tested against.

Design rule: the ``rounds_*`` functions are the reference: one function per public operation, each
taking arrays that the public layer in :mod:`cupyortho._api` has already validated and cast (same floating dtype, angles on the last axis,
``x`` as ``(..., n, k)``) and a resolved :class:`~cupyortho.schedule.Schedule`.  Every round is one
vectorized step over its disjoint pairs; the only Python loop is over rounds.  Nothing the caller
passed is written to: every sweep works on its own copy.

Maths (``docs/conventions.md``): a round rotates rows ``i`` and ``j`` of its operand,
``x_i <- c x_i - s x_j``, ``x_j <- s x_i + c x_j``; ``U = B_{R-1} ... B_0``.

The public API calls the CPU backend :mod:`cupyortho.backends.cpu`, which picks the implementation of
each pass (:mod:`cupyortho._strategy`); the unprefixed names here (``matrix``, ``apply``, ...) are
aliases of its functions.
"""

from __future__ import annotations

import numpy as np

from ._common import sum_to as _sum_to

__all__ = [
    "rounds_matrix",
    "rounds_apply",
    "rounds_matrix_vjp",
    "rounds_apply_vjp",
    "rounds_matrix_jvp",
    "rounds_apply_jvp",
]

# --------------------------------------------------------------------------- the round walker
# Shared by the SO(n) reference below, the U(n) reference (numpy_unitary) and the inverse map.

def round_order(values, schedule, ndim):
    """``values`` (..., A) in round-major order, shaped ``(..., A, 1)`` with ``ndim`` batch axes (leading
    axes of size 1 added), ready to broadcast against the rows of a round."""
    t = schedule.to_round_order(values)
    return t.reshape((1,) * (ndim - (t.ndim - 1)) + t.shape)[..., None]


def rotate(y, i, j, c, s, u=None, axis=-2):
    r"""In place: the rows (``axis=-2``) or columns (``axis=-1``) ``i`` and ``j`` of y become
    :math:`(c\,y_i - s\,ar u\,y_j,\; s\,u\,y_i + c\,y_j)`: one round of disjoint pairs at once.

    ``u`` (the phase :math:`e^{i\phi}` of U(n)) is None for real rotations.  ``c``, ``s``, ``u``
    broadcast against ``y[..., i, :]`` (rows: shaped ``(..., P, 1)``) or ``y[..., :, i]`` (columns:
    ``(..., 1, P)`` or ``(P,)``).
    """
    at = (lambda k: (Ellipsis, k, slice(None))) if axis == -2 else (lambda k: (Ellipsis, k))
    yi = y[at(i)]
    yj = y[at(j)]
    if u is None:
        y[at(i)] = c * yi - s * yj
        y[at(j)] = s * yi + c * yj
    else:
        y[at(i)] = c * yi - s * np.conj(u) * yj
        y[at(j)] = s * u * yi + c * yj


def walk(schedule, reverse=False):
    """``(slice into round-major arrays, i, j)`` of every round in application order, or backwards."""
    off = schedule.round_offsets
    items = [(slice(off[r], off[r + 1]), rd.i, rd.j) for r, rd in enumerate(schedule.rounds)]
    return items[::-1] if reverse else items


def work(x, batch, dtype):
    """A private, writable copy of x broadcast to ``batch + x.shape[-2:]``."""
    return np.array(np.broadcast_to(x, batch + x.shape[-2:]), dtype=dtype, copy=True, order="C")


def _round_cos_sin(theta, schedule, ndim):
    """cos and sin of the angles in round-major order, shaped ``(..., A, 1)`` with ``ndim`` batch axes."""
    t = round_order(theta, schedule, ndim)
    return np.cos(t), np.sin(t)


# --------------------------------------------------------------------------- SO(n) reference


def rounds_apply(theta, x, schedule, transpose=False):
    r"""``U(theta) @ x`` (or ``U(theta).T @ x``) without forming U.

    theta: ``(..., A)``; x: ``(..., n, k)``; batch axes broadcast.  Returns ``(..., n, k)``.
    """
    batch = np.broadcast_shapes(theta.shape[:-1], x.shape[:-2])
    y = work(x, batch, x.dtype)
    c, s = _round_cos_sin(theta, schedule, len(batch))
    sign = -1 if transpose else 1
    for sl, i, j in walk(schedule, transpose):
        rotate(y, i, j, c[..., sl, :], sign * s[..., sl, :])
    return y


def rounds_matrix(theta, schedule):
    """``U(theta)`` of shape ``(..., n, n)``: the rounds applied to the identity."""
    eye = np.eye(schedule.n, dtype=theta.dtype)
    return rounds_apply(theta, eye, schedule)


def rounds_apply_vjp(theta, x, cotangent, schedule, transpose=False, output=None):
    r"""Cotangents ``(d_theta, d_x)`` of ``y = apply(theta, x)`` for ``cotangent = dL/dy``.

    Walks the rounds backwards, recovering each round's input by undoing it on ``y`` (so only theta
    and x, or y, are kept), rotating the cotangent by the round's transpose, and reading
    :math:`\partial L/\partial\theta_{ij} = \sum_{cols} (x_i \bar g_j - x_j \bar g_i)`.
    ``output`` may pass ``y`` to skip recomputing it.  Results are summed to the shapes of theta, x.
    """
    y = rounds_apply(theta, x, schedule, transpose) if output is None else output
    batch = np.broadcast_shapes(theta.shape[:-1], x.shape[:-2], cotangent.shape[:-2])
    y = work(y, batch, x.dtype)
    g = work(cotangent, batch, x.dtype)
    c, s = _round_cos_sin(theta, schedule, len(batch))
    d_round = np.empty(batch + (schedule.num_angles,), dtype=x.dtype)
    # Forward applied B_r (sign +1) or B_r^T (sign -1); undoing it applies the opposite sign.
    sign = 1 if transpose else -1
    for sl, i, j in reversed(walk(schedule, transpose)):
        cr, sr = c[..., sl, :], sign * s[..., sl, :]
        rotate(y, i, j, cr, sr)
        rotate(g, i, j, cr, sr)
        d_round[..., sl] = np.sum(y[..., i, :] * g[..., j, :] - y[..., j, :] * g[..., i, :], axis=-1)
    if transpose:
        d_round = -d_round
    d_theta = _sum_to(schedule.from_round_order(d_round), theta.shape)
    d_x = _sum_to(g, x.shape)
    return d_theta, d_x


def rounds_matrix_vjp(theta, cotangent, schedule, output=None):
    r"""``d_theta`` of ``U = matrix(theta)`` for ``cotangent = dL/dU``, by the reduction-free formula.

    :math:`W_{R-1} = \bar G U^T`, :math:`W_{r-1} = B_r^T W_r B_r`, and the angle of pair ``(i, j)`` in
    round ``r`` gets :math:`W_r[j, i] - W_r[i, j]`: one GEMM, then two-sided rotation sweeps; every
    gradient is a single difference of two entries, with no sums over columns.  ``output`` may pass
    ``U`` to skip recomputing it.
    """
    u = rounds_matrix(theta, schedule) if output is None else output
    batch = np.broadcast_shapes(theta.shape[:-1], cotangent.shape[:-2])
    w = np.matmul(cotangent, np.swapaxes(u, -1, -2))
    w = work(w, batch, u.dtype)
    c, s = _round_cos_sin(theta, schedule, len(batch))
    d_round = np.empty(batch + (schedule.num_angles,), dtype=u.dtype)
    # Column rotations are strided gathers; instead rotate rows, transpose, rotate rows again:
    # B^T (B^T X)^T = (B^T X B)^T, so ``w`` alternately holds W_r and W_r^T (``flip``), and the
    # gradient read from W^T changes sign.
    flip = False
    for sl, i, j in reversed(walk(schedule, False)):
        d = w[..., j, i] - w[..., i, j]
        d_round[..., sl] = -d if flip else d
        cr, sr = c[..., sl, :], -s[..., sl, :]
        rotate(w, i, j, cr, sr)
        w = np.ascontiguousarray(np.swapaxes(w, -1, -2))
        rotate(w, i, j, cr, sr)
        flip = not flip
    return _sum_to(schedule.from_round_order(d_round), theta.shape)


def rounds_apply_jvp(theta, x, theta_tangent, x_tangent, schedule, transpose=False):
    r"""Tangent of ``y = apply(theta, x)``: carries ``(y_r, dy_r)`` through the rounds,
    :math:`dy_r = B_r\,dy_{r-1} + K_r y_r` with :math:`K_r = \sum_{p \in r} d\theta_p K_p`,
    :math:`(K_p y)_i = -y_j`, :math:`(K_p y)_j = y_i`.  ``x_tangent`` may be None (zero).
    """
    shapes = [theta.shape[:-1], x.shape[:-2], theta_tangent.shape[:-1]]
    if x_tangent is not None:
        shapes.append(x_tangent.shape[:-2])
    batch = np.broadcast_shapes(*shapes)
    y = work(x, batch, x.dtype)
    if x_tangent is None:
        dy = np.zeros(batch + x.shape[-2:], dtype=x.dtype)
    else:
        dy = work(x_tangent, batch, x.dtype)
    c, s = _round_cos_sin(theta, schedule, len(batch))
    dt = round_order(theta_tangent, schedule, len(batch))
    sign = -1 if transpose else 1
    for sl, i, j in walk(schedule, transpose):
        cr, sr, dr = c[..., sl, :], sign * s[..., sl, :], sign * dt[..., sl, :]
        rotate(y, i, j, cr, sr)
        rotate(dy, i, j, cr, sr)
        dy[..., i, :] -= dr * y[..., j, :]
        dy[..., j, :] += dr * y[..., i, :]
    return dy


def rounds_matrix_jvp(theta, theta_tangent, schedule):
    """Tangent ``dU`` of ``U = matrix(theta)`` along ``theta_tangent``."""
    eye = np.eye(schedule.n, dtype=theta.dtype)
    return rounds_apply_jvp(theta, eye, theta_tangent, None, schedule)


# --------------------------------------------------------------------------- dispatch aliases

_DISPATCH = ("matrix", "apply", "matrix_vjp", "apply_vjp", "matrix_jvp", "apply_jvp")


def __getattr__(attr):
    """``matrix``, ``apply``, ... are the CPU backend's dispatching functions (:mod:`.cpu`), kept here
    as aliases because tests written before the split call them through this module."""
    if attr in _DISPATCH:
        from . import cpu

        return getattr(cpu, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
