r"""NumPy reference backend for U(n): complex Givens rotations on the same round-robin schedules.

Design rule: as :mod:`cupyortho.backends.numpy_backend`, one function per public operation, each
taking arrays that :mod:`cupyortho._unitary` has already validated and cast, and a resolved
:class:`~cupyortho.schedule.Schedule`.  Every round is one vectorized step over its disjoint pairs;
the only Python loop is over rounds.  Nothing the caller passed is written to.  Backends see only the
full U(n) layout (``n*n`` parameters); the SU(n) reduction is done by the public layer.

Maths (``docs/unitary.md``).  ``params`` is ``[theta (A), phi (A), delta (n)]`` on its last axis,
``A = n(n-1)/2``, theta and phi in the row-major strict-upper-triangle layout of the angles of SO(n).
With :math:`c = \cos\theta_p`, :math:`s = \sin\theta_p`, :math:`u = e^{i\phi_p}`, pair ``p = (i, j)``
acts on rows

.. math::  x_i \leftarrow c\,x_i - s\,\bar u\,x_j, \qquad x_j \leftarrow s\,u\,x_i + c\,x_j,

i.e. :math:`G_p = \exp(\theta_p K_p)`, :math:`K_p = u\,e_j e_i^T - \bar u\,e_i e_j^T` (skew-Hermitian),
:math:`\det G_p = 1`.  Then :math:`U = D(\delta)\,B_{R-1}\cdots B_1 B_0`, :math:`D = \mathrm{diag}(e^{i\delta})`.

Gradient convention: for a real loss ``L`` of a complex array ``Y``, the cotangent is
:math:`\bar g = \partial L/\partial \mathrm{Re}\,Y + i\,\partial L/\partial \mathrm{Im}\,Y` (PyTorch's
convention; JAX's is its conjugate), so :math:`dL = \mathrm{Re}\sum \bar{\bar g}\,dY` and a linear map
:math:`Y = MX` pulls back as :math:`\bar g_X = M^H \bar g`.  Real inputs get the real part.

A step of the walk is an *op* with a sign :math:`\sigma = \pm 1`: a round with :math:`\theta \to \sigma\theta`
(:math:`G(-\theta, \phi) = G(\theta, \phi)^H`), or the diagonal with :math:`\delta \to \sigma\delta`.
``U x`` runs the rounds forwards then the diagonal, all with :math:`\sigma = +1`; ``U^H x`` runs the
diagonal then the rounds backwards, all with :math:`\sigma = -1`.
"""

from __future__ import annotations

import numpy as np

from ._common import U_FUNCTIONS, complex_dtype, sum_to as _sum_to
from .numpy_backend import round_order, rotate, walk, work

__all__ = list(U_FUNCTIONS)


# --------------------------------------------------------------------------- coefficients

def _cis(a, cdtype):
    """:math:`e^{ia}` as an array of ``cdtype`` (cos and sin evaluated in the dtype of ``a``)."""
    out = np.empty(a.shape, dtype=cdtype)
    out.real = np.cos(a)
    out.imag = np.sin(a)
    return out


class _Coefficients:
    """cos, sin, e^{i phi} in round-major order shaped ``(..., A, 1)`` and e^{i delta} as ``(..., n, 1)``,
    all with ``ndim`` batch axes (leading ones of size 1 added)."""

    def __init__(self, params, schedule, ndim, cdtype):
        a = schedule.num_angles
        theta = round_order(params[..., :a], schedule, ndim)
        self.c = np.cos(theta)
        self.s = np.sin(theta)
        self.u = _cis(round_order(params[..., a:2 * a], schedule, ndim), cdtype)
        delta = params[..., 2 * a:]
        self.d = _cis(delta, cdtype).reshape((1,) * (ndim - (params.ndim - 1)) + delta.shape)[..., None]


def _ops(schedule, adjoint):
    """The walk of ``U x`` (or ``U^H x``): a list of ``(kind, sign, slice, i, j)`` in application order.

    ``kind`` is ``"round"`` (with the round-major slice and pair rows) or ``"diag"``.
    """
    ops = [("round", 1, sl, i, j) for sl, i, j in walk(schedule)] + [("diag", 1, None, None, None)]
    if adjoint:
        ops = [(k, -1, sl, i, j) for k, _, sl, i, j in reversed(ops)]
    return ops


# --------------------------------------------------------------------------- helpers

def _eye(schedule, cdtype):
    return np.eye(schedule.n, dtype=cdtype)


# --------------------------------------------------------------------------- forward

def unitary_apply(params, x, schedule, adjoint=False):
    r"""``U(params) @ x`` (or ``U^H @ x`` with ``adjoint``) without forming U.

    params: ``(..., n*n)`` real; x: ``(..., n, k)`` complex of the matching precision; batch axes
    broadcast.  Returns ``(..., n, k)`` complex.
    """
    batch = np.broadcast_shapes(params.shape[:-1], x.shape[:-2])
    y = work(x, batch, x.dtype)
    k = _Coefficients(params, schedule, len(batch), x.dtype)
    for kind, sign, sl, i, j in _ops(schedule, adjoint):
        if kind == "round":
            rotate(y, i, j, k.c[..., sl, :], sign * k.s[..., sl, :], k.u[..., sl, :])
        else:
            y *= k.d if sign > 0 else np.conj(k.d)
    return y


def unitary(params, schedule, cdtype):
    """``U(params)`` of shape ``(..., n, n)`` and dtype ``cdtype``: the walk applied to the identity."""
    return unitary_apply(params, _eye(schedule, cdtype), schedule)


# --------------------------------------------------------------------------- VJPs

def unitary_apply_vjp(params, x, cotangent, schedule, adjoint=False, output=None):
    r"""Cotangents ``(d_params, d_x)`` of ``y = unitary_apply(params, x)`` for ``cotangent`` (complex).

    Walks the ops backwards from ``y``; each op's input is recovered by undoing it (so only params and
    x, or ``output = y``, are needed).  With ``g`` the op's output cotangent, ``y`` its output and
    ``x`` its input, a round op of sign :math:`\sigma` gives, per pair, summed over columns,

    .. math::
        \partial L/\partial\theta = \sigma\,\mathrm{Re}\sum(u\,\bar g_j y_i - \bar u\,\bar g_i y_j),\qquad
        \partial L/\partial\phi = -\sigma s\,\mathrm{Im}\sum(\bar u\,\bar g_i x_j + u\,\bar g_j x_i),

    and the diagonal gives :math:`\partial L/\partial\delta_k = -\sigma\,\mathrm{Im}\sum \bar g_k y_k`
    (bars on ``g`` are complex conjugates).  The cotangent is pulled back by the op's adjoint.
    ``d_params`` is summed to params' shape (real); ``d_x`` to x's shape (complex, :math:`U^H \bar g`).
    """
    n = schedule.n
    a = schedule.num_angles  # n(n-1)/2, fewer for a truncated schedule
    y = unitary_apply(params, x, schedule, adjoint) if output is None else output
    batch = np.broadcast_shapes(params.shape[:-1], x.shape[:-2], cotangent.shape[:-2])
    y = work(y, batch, x.dtype)
    g = work(cotangent, batch, x.dtype)
    k = _Coefficients(params, schedule, len(batch), x.dtype)
    d_theta = np.empty(batch + (a,), dtype=params.dtype)
    d_phi = np.empty(batch + (a,), dtype=params.dtype)
    d_delta = np.empty(batch + (n,), dtype=params.dtype)
    for kind, sign, sl, i, j in reversed(_ops(schedule, adjoint)):
        if kind == "diag":
            d_delta[...] = -sign * np.sum(np.conj(g) * y, axis=-1).imag
            back = np.conj(k.d) if sign > 0 else k.d
            y *= back
            g *= back
            continue
        c, s, u = k.c[..., sl, :], sign * k.s[..., sl, :], k.u[..., sl, :]
        gi, gj = np.conj(g[..., i, :]), np.conj(g[..., j, :])
        d_theta[..., sl] = sign * np.sum(u * gj * y[..., i, :] - np.conj(u) * gi * y[..., j, :], axis=-1).real
        rotate(y, i, j, c, -s, u)  # y is now the op's input x
        d_phi[..., sl] = -(s[..., 0] * np.sum(np.conj(u) * gi * y[..., j, :] + u * gj * y[..., i, :], axis=-1).imag)
        rotate(g, i, j, c, -s, u)
    d_round = np.concatenate([d_theta, d_phi], axis=-1)
    d_full = np.concatenate(
        [schedule.from_round_order(d_round[..., :a]), schedule.from_round_order(d_round[..., a:]), d_delta],
        axis=-1,
    )
    return _sum_to(d_full, params.shape), _sum_to(g, x.shape)


def unitary_vjp(params, cotangent, schedule, output=None):
    r"""``d_params`` of ``U = unitary(params)`` for ``cotangent = dL/dRe U + i dL/dIm U``, reduction-free.

    :math:`W = \bar G U^H` gives :math:`\partial L/\partial\delta_k = \mathrm{Im}\,W_{kk}`; then
    :math:`W \leftarrow D^H W D` and, for the rounds from last to first, with :math:`W` the value
    before undoing round ``r`` (:math:`W \leftarrow B_r^H W B_r`), pair ``(i, j)`` of round ``r`` gets

    .. math::
        \partial L/\partial\theta = \mathrm{Re}(\bar u W_{ji} - u W_{ij}),\qquad
        \partial L/\partial\phi = \mathrm{Im}\big(s^2 (W_{jj} - W_{ii}) + s c\,(u W_{ij} + \bar u W_{ji})\big).

    (The first is :math:`\mathrm{Re}\,\mathrm{tr}(W^H K_p)`; the second is
    :math:`\mathrm{Im}\,W_{jj} - \mathrm{Im}\,(B_r^H W B_r)_{jj}`, from
    :math:`\partial G/\partial\phi = i(E_j G - G E_j)`.)  Every gradient is a few entries of W: no sums.
    ``output`` may pass ``U`` to skip recomputing it.
    """
    a = schedule.num_angles  # n(n-1)/2, fewer for a truncated schedule
    u_mat = unitary(params, schedule, cotangent.dtype) if output is None else output
    batch = np.broadcast_shapes(params.shape[:-1], cotangent.shape[:-2])
    w = work(np.matmul(cotangent, np.conj(np.swapaxes(u_mat, -1, -2))), batch, cotangent.dtype)
    k = _Coefficients(params, schedule, len(batch), cotangent.dtype)
    d_delta = np.diagonal(w, axis1=-2, axis2=-1).imag.astype(params.dtype)
    dcol = np.swapaxes(k.d, -1, -2)
    w *= np.conj(k.d)
    w *= dcol
    d_theta = np.empty(batch + (a,), dtype=params.dtype)
    d_phi = np.empty(batch + (a,), dtype=params.dtype)
    for kind, _, sl, i, j in reversed(_ops(schedule, False)):
        if kind == "diag":
            continue
        c, s, u = k.c[..., sl, 0], k.s[..., sl, 0], k.u[..., sl, 0]
        wij, wji = w[..., i, j], w[..., j, i]
        wii, wjj = w[..., i, i], w[..., j, j]
        d_theta[..., sl] = (np.conj(u) * wji - u * wij).real
        d_phi[..., sl] = (s * s * (wjj - wii) + s * c * (u * wij + np.conj(u) * wji)).imag
        # W <- B^H W B: rows by G^H = G(-theta, phi); columns by G.
        rotate(w, i, j, c[..., None], -s[..., None], u[..., None])
        rotate(w, i, j, c[..., None, :], -s[..., None, :], np.conj(u)[..., None, :], axis=-1)
    d_full = np.concatenate(
        [schedule.from_round_order(d_theta), schedule.from_round_order(d_phi), d_delta], axis=-1
    )
    return _sum_to(d_full, params.shape)


# --------------------------------------------------------------------------- JVPs

def unitary_apply_jvp(params, x, params_tangent, x_tangent, schedule, adjoint=False):
    r"""Tangent of ``y = unitary_apply(params, x)`` along ``(params_tangent, x_tangent)``.

    Carries ``(y, dy)`` through the ops.  A round op of sign :math:`\sigma` with input ``x`` and
    output ``y``: :math:`dy = G\,dx + \sigma\,d\theta\,K y + \sigma s\,d\phi\,(i\bar u x_j, i u x_i)`
    on rows ``(i, j)``, :math:`K y = (-\bar u y_j, u y_i)`; the diagonal:
    :math:`dy = D^\sigma dx + i\sigma\,d\delta\,y`.  ``x_tangent`` may be None (zero).
    """
    a = schedule.num_angles  # n(n-1)/2, fewer for a truncated schedule
    shapes = [params.shape[:-1], x.shape[:-2], params_tangent.shape[:-1]]
    if x_tangent is not None:
        shapes.append(x_tangent.shape[:-2])
    batch = np.broadcast_shapes(*shapes)
    y = work(x, batch, x.dtype)
    dy = np.zeros(batch + x.shape[-2:], dtype=x.dtype) if x_tangent is None else work(x_tangent, batch, x.dtype)
    k = _Coefficients(params, schedule, len(batch), x.dtype)
    t = params_tangent.reshape((1,) * (len(batch) - (params_tangent.ndim - 1)) + params_tangent.shape)
    dtheta = schedule.to_round_order(t[..., :a])[..., None]
    dphi = schedule.to_round_order(t[..., a:2 * a])[..., None]
    ddelta = t[..., 2 * a:][..., None]
    for kind, sign, sl, i, j in _ops(schedule, adjoint):
        if kind == "diag":
            d = k.d if sign > 0 else np.conj(k.d)
            y *= d
            dy *= d
            dy += (1j * sign) * ddelta * y
            continue
        c, s, u = k.c[..., sl, :], sign * k.s[..., sl, :], k.u[..., sl, :]
        xi, xj = y[..., i, :], y[..., j, :]  # copies: the op's input rows
        rotate(y, i, j, c, s, u)
        rotate(dy, i, j, c, s, u)
        dt, dp = sign * dtheta[..., sl, :], dphi[..., sl, :]
        dy[..., i, :] += -dt * np.conj(u) * y[..., j, :] + 1j * s * dp * np.conj(u) * xj
        dy[..., j, :] += dt * u * y[..., i, :] + 1j * s * dp * u * xi
    return dy


def unitary_jvp(params, params_tangent, schedule, cdtype):
    """Tangent ``dU`` of ``U = unitary(params)`` along ``params_tangent`` (shaped like params)."""
    return unitary_apply_jvp(params, _eye(schedule, cdtype), params_tangent, None, schedule)
