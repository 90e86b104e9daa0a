r"""Unitary and special unitary matrices from Givens angles and phases, on the SO(n) schedules.

Design rule: as :mod:`cupyortho._api`, this layer owns every input check, the shape conventions and
the SU(n) reduction; backends (:mod:`cupyortho.backends.numpy_unitary`) see only the full U(n)
layout, real parameters of one precision and complex arrays of the matching precision.

Parametrization (``docs/unitary.md``).  ``A = n(n-1)/2``; the last axis of ``params`` is

==========  =========================  =============================================
slice       name                       meaning
==========  =========================  =============================================
``[0, A)``  :math:`\theta`             angle of pair ``(i, j)``, upper-triangle order
``[A, 2A)`` :math:`\phi`               phase of pair ``(i, j)``, same order
``[2A, P)`` :math:`\delta`             diagonal phases: ``n`` of them for U(n),
                                       ``n - 1`` for SU(n) (``delta[n-1] = -sum``)
==========  =========================  =============================================

so ``P = n*n`` (U(n)) or ``n*n - 1`` (SU(n)).  Pair ``(i, j)``, ``i < j``, acts on rows ``i, j`` as

.. math::
    G_p = \begin{pmatrix} c & -s\,e^{-i\phi} \\ s\,e^{i\phi} & c \end{pmatrix}
        = \exp\big(\theta (e^{i\phi} e_j e_i^T - e^{-i\phi} e_i e_j^T)\big),\qquad \det G_p = 1,

rounds are those of the schedule (round 0 acts first) and the diagonal acts last:
:math:`U = D(\delta)\,B_{R-1}\cdots B_0`, :math:`D = \mathrm{diag}(e^{i\delta_0},\dots,e^{i\delta_{n-1}})`,
so :math:`\det U = e^{i\sum\delta}`.  With :math:`\phi = \delta = 0` it is exactly
:func:`cupyortho.matrix` of the same schedule.

Gradient convention: a cotangent of a complex output ``Y`` of a real loss ``L`` is
:math:`\partial L/\partial\,\mathrm{Re}\,Y + i\,\partial L/\partial\,\mathrm{Im}\,Y` (PyTorch's
convention; JAX's cotangents are its complex conjugate).  VJPs return the same for complex inputs
and :math:`\partial L/\partial x` for real ones (params are always real).

Shapes:

=====================  ==================================  ===============================
function               inputs                              output
=====================  ==================================  ===============================
unitary                params (..., P)                     U (..., n, n) complex
unitary_apply          params (..., P), x (n,) or          U @ x (or U^H @ x), matmul
                       (..., n, k), real or complex        broadcasting of batch axes
=====================  ==================================  ===============================

Precision: float32 params give complex64, float64 give complex128; with ``x`` the computation runs
in ``result_type(params, x)`` promoted to complex.
"""

from __future__ import annotations

from . import _dispatch
from . import _validate as _v

__all__ = [
    "num_unitary_params",
    "unitary",
    "unitary_apply",
    "unitary_vjp",
    "unitary_apply_vjp",
    "unitary_jvp",
    "unitary_apply_jvp",
]

_REAL = _v.REAL
_ANY = _v.ANY


def num_unitary_params(n: int, special: bool = False, schedule=None) -> int:
    """Number of real parameters of U(n) (``n*n``) or, with ``special=True``, of SU(n) (``n*n - 1``).

    Layout: ``[theta (A), phi (A), delta (n, or n - 1 for SU(n))]``, ``A = n(n-1)/2`` for the full
    schedules; for a truncated schedule (``Schedule.truncate(k)``, ``Schedule.from_rounds``)
    ``A = schedule.num_angles``, so ``2*A + n`` (``- 1``).  Raises ScheduleError for a Stiefel
    restriction or a schedule built for another n.
    """
    return _v.num_unitary_params(n, special, schedule)


# --------------------------------------------------------------------------- checks

def _arrays(backend, check_finite, **arrays):
    """Validate and convert the named arrays: ``params``-like ones real, data-like ones real or complex."""
    check_finite = _v.flag("check_finite", check_finite)
    out = []
    for name, a in arrays.items():
        allowed = _REAL if name.startswith("params") or name == "tangent" else _ANY
        out.append(_v.as_array(name, a, backend, check_finite=check_finite, allowed=allowed,
                               allow_none=name in ("output", "x_tangent")))
    return out


def _full(params, sched, special, xp):
    """SU(n) parameters -> U(n) layout, appending ``delta[n-1] = -sum(delta[:n-1])`` (linear)."""
    if not special:
        return params
    a = sched.num_angles
    return xp.concatenate([params, -params[..., 2 * a:].sum(axis=-1, keepdims=True)], axis=-1)


def _reduce(d_full, sched, special):
    """Pull a U(n)-layout cotangent back to SU(n) parameters (transpose of :func:`_full`)."""
    if not special:
        return d_full
    a = sched.num_angles
    d = d_full[..., :-1].copy()
    d[..., 2 * a:] -= d_full[..., -1:]
    return d


def _apply_setup(params, x, special, schedule):
    n, vector = _v.x_rows("x", x.shape)
    x2 = x[:, None] if vector else x
    sched = _v.resolve_u(params.shape, n, special, schedule, n_name="n (from x.shape)")
    batch = _v.batch_shape(("params", params.shape[:-1]), ("x", x2.shape[:-2]))
    return x2, vector, sched, batch


# --------------------------------------------------------------------------- forward

def unitary(params, *, n=None, special=False, schedule=None, check_finite=True):
    r"""The unitary :math:`U = D(\delta)\,B_{R-1}\cdots B_0 \in U(n)` (or SU(n) with ``special=True``).

    Args:
        params (array_like, float32 or float64): ``(..., P)``, ``P = n*n`` (U(n)) or ``n*n - 1``
            (SU(n)), laid out ``[theta (A), phi (A), delta (n or n-1)]``, ``A = n(n-1)/2``, theta and
            phi in the row-major order of the strict upper triangle.  Leading axes are a batch.
        n (int, optional): matrix size; taken from a :class:`Schedule`, else inferred from
            ``params.shape[-1]`` when omitted.
        special (bool): SU(n): the last diagonal phase is ``-sum`` of the others, so ``det U = 1``.
        schedule (str | Schedule | None): ``"circle"``, ``"team"``, a :class:`Schedule` or None (the
            library default), as in :func:`cupyortho.matrix`.
        check_finite (bool): reject NaN/inf (default True).

    Returns:
        ndarray ``(..., n, n)``, complex64 for float32 params, complex128 for float64.
    """
    backend = _dispatch.u_backend(params=params)
    (params,) = _arrays(backend, check_finite, params=params)
    special = _v.flag("special", special)
    sched = _v.resolve_u(params.shape, n, special, schedule)
    cdt = backend.complex_dtype(params.dtype)
    if _v.is_empty(params):
        return _v.zeros(backend.xp, params.shape[:-1] + (sched.n, sched.n), cdt)
    return backend.unitary(_full(params, sched, special, backend.xp), sched, cdt)


def unitary_apply(params, x, *, special=False, adjoint=False, schedule=None, check_finite=True):
    r"""``U(params) @ x`` (or ``U^H @ x`` with ``adjoint=True``) without forming U: :math:`O(n^2 k)`.

    Shapes follow ``numpy.matmul``: ``x`` is ``(n,)`` or ``(..., n, k)`` (real or complex), batch axes
    broadcast against params'.

    Args:
        params: ``(..., P)`` (see :func:`unitary`).
        x: ``(n,)`` or ``(..., n, k)``, float32, float64, complex64 or complex128.
        special, schedule, check_finite: as in :func:`unitary`.
        adjoint (bool): apply :math:`U^H = U^{-1}` (the diagonal conjugated first, then the rounds
            backwards with angles negated).

    Returns:
        complex ndarray of the broadcast shape, precision of ``result_type(params, x)``.
    """
    backend = _dispatch.u_backend(params=params, x=x)
    params, x = _arrays(backend, check_finite, params=params, x=x)
    special, adjoint = _v.flag("special", special), _v.flag("adjoint", adjoint)
    x2, vector, sched, batch = _apply_setup(params, x, special, schedule)
    rdt = _v.real_precision(params, x)
    cdt = backend.complex_dtype(rdt)
    if _v.is_empty(params, x2):
        y = _v.zeros(backend.xp, batch + x2.shape[-2:], cdt)
    else:
        full = _full(_v.cast(params, rdt), sched, special, backend.xp)
        y = backend.unitary_apply(full, _v.cast(x2, cdt), sched, adjoint)
    return y[..., 0] if vector else y


# --------------------------------------------------------------------------- VJPs
# The dtype rule of cupyortho._api holds: each cotangent in the dtype of its primal input.

def unitary_vjp(params, cotangent, *, n=None, special=False, schedule=None, output=None, check_finite=True):
    r"""Gradient with respect to params of a real loss of ``U = unitary(params)``.

    Args:
        params: ``(..., P)``.
        cotangent: ``(..., n, n)``, exactly the shape of U, real or complex:
            :math:`\partial L/\partial\,\mathrm{Re}\,U + i\,\partial L/\partial\,\mathrm{Im}\,U`.
        output: optionally ``U = unitary(params)`` from the forward pass (trusted); backends that can
            use it skip recomputing U.
    Returns:
        real ndarray shaped and typed like params.

    Reduction-free: :math:`W = \bar G U^H`, :math:`\partial L/\partial \delta_k = \mathrm{Im}\,W_{kk}`,
    then per round (last first) a few entries of :math:`W` give each pair's two derivatives and
    :math:`W \leftarrow B_r^H W B_r` (``docs/unitary.md``).
    """
    backend = _dispatch.u_backend(params=params, cotangent=cotangent, output=output)
    params, cotangent, output = _arrays(backend, check_finite, params=params, cotangent=cotangent, output=output)
    special = _v.flag("special", special)
    sched = _v.resolve_u(params.shape, n, special, schedule)
    shape = params.shape[:-1] + (sched.n, sched.n)
    _v.same_shape("cotangent", cotangent.shape, shape, "unitary(params)")
    if output is not None:
        _v.same_shape("output", output.shape, shape, "unitary(params)")
    if _v.is_empty(params):
        return _v.zeros(backend.xp, params.shape, params.dtype)
    rdt = _v.real_precision(params, cotangent, output)
    cdt = backend.complex_dtype(rdt)
    full = _full(_v.cast(params, rdt), sched, special, backend.xp)
    extra = {}
    if output is not None and _dispatch.accepts(backend, "unitary_vjp", "output"):
        extra["output"] = _v.cast(output, cdt)
    d = backend.unitary_vjp(full, _v.cast(cotangent, cdt), sched, **extra)
    return _reduce(d, sched, special).astype(params.dtype, copy=False)


def unitary_apply_vjp(params, x, cotangent, *, special=False, adjoint=False, schedule=None, output=None,
                      check_finite=True):
    r"""Cotangents ``(d_params, d_x)`` of ``y = unitary_apply(params, x, adjoint=...)``.

    Memory :math:`O(nk)`: each round's input is recovered by undoing it on ``y`` (``output=y`` skips
    recomputing the forward pass).  ``d_x`` is :math:`U^H \bar g` (or :math:`U \bar g`); its real part
    when ``x`` is real.

    Args:
        cotangent: shaped like the output ``y``, real or complex (convention of :func:`unitary_vjp`).
        output: optional ``y`` (complex), shaped like the output.
    Returns:
        ``(d_params, d_x)`` shaped and typed like params and x (summed over broadcast batch axes).
    """
    backend = _dispatch.u_backend(params=params, x=x, cotangent=cotangent, output=output)
    params, x, cotangent, output = _arrays(backend, check_finite, params=params, x=x, cotangent=cotangent,
                                           output=output)
    special, adjoint = _v.flag("special", special), _v.flag("adjoint", adjoint)
    x2, vector, sched, batch = _apply_setup(params, x, special, schedule)
    out_shape = batch + x2.shape[-2:]
    out_shape_public = out_shape[:-1] if vector else out_shape
    _v.same_shape("cotangent", cotangent.shape, out_shape_public, "unitary_apply(params, x)")
    if output is not None:
        _v.same_shape("output", output.shape, out_shape_public, "unitary_apply(params, x)")
    if _v.is_empty(params, x2):
        return _v.zeros(backend.xp, params.shape, params.dtype), _v.zeros(backend.xp, x.shape, x.dtype)
    if vector:
        cotangent = cotangent[..., None]
        output = None if output is None else output[..., None]
    rdt = _v.real_precision(params, x, cotangent, output)
    cdt = backend.complex_dtype(rdt)
    full = _full(_v.cast(params, rdt), sched, special, backend.xp)
    d_full, d_x = backend.unitary_apply_vjp(
        full, _v.cast(x2, cdt), _v.cast(cotangent, cdt), sched, adjoint, _v.cast(output, cdt)
    )
    d_params = _reduce(d_full, sched, special).astype(params.dtype, copy=False)
    if vector:
        d_x = d_x[..., 0]
    if x.dtype.kind == "f":
        d_x = d_x.real
    return d_params, d_x.astype(x.dtype, copy=False)


# --------------------------------------------------------------------------- JVPs

def unitary_jvp(params, tangent, *, n=None, special=False, schedule=None, check_finite=True):
    r"""Directional derivative :math:`dU = \sum_p t_p\,\partial U/\partial p` along ``tangent``.

    Args:
        params: ``(..., P)``.  tangent: real, the shape of params.
    Returns:
        complex ndarray ``(..., n, n)`` of the precision of ``result_type(params, tangent)``.
    """
    backend = _dispatch.u_backend(params=params, tangent=tangent)
    params, tangent = _arrays(backend, check_finite, params=params, tangent=tangent)
    special = _v.flag("special", special)
    sched = _v.resolve_u(params.shape, n, special, schedule)
    _v.same_shape("tangent", tangent.shape, params.shape, "params")
    rdt = _v.real_precision(params, tangent)
    cdt = backend.complex_dtype(rdt)
    if _v.is_empty(params):
        return _v.zeros(backend.xp, params.shape[:-1] + (sched.n, sched.n), cdt)
    xp = backend.xp
    full = _full(_v.cast(params, rdt), sched, special, xp)
    full_t = _full(_v.cast(tangent, rdt), sched, special, xp)
    return backend.unitary_jvp(full, full_t, sched, cdt)


def unitary_apply_jvp(params, x, params_tangent, x_tangent=None, *, special=False, adjoint=False,
                      schedule=None, check_finite=True):
    r"""Tangent of ``y = unitary_apply(params, x, adjoint=...)`` along ``(params_tangent, x_tangent)``.

    Args:
        params_tangent: real, the shape of params.  x_tangent: the shape of x (real or complex), or
            None for zero.
    Returns:
        complex ndarray shaped like ``unitary_apply(params, x)``.
    """
    backend = _dispatch.u_backend(params=params, x=x, params_tangent=params_tangent, x_tangent=x_tangent)
    params, x, params_tangent, x_tangent = _arrays(
        backend, check_finite, params=params, x=x, params_tangent=params_tangent, x_tangent=x_tangent)
    special, adjoint = _v.flag("special", special), _v.flag("adjoint", adjoint)
    _v.same_shape("params_tangent", params_tangent.shape, params.shape, "params")
    if x_tangent is not None:
        _v.same_shape("x_tangent", x_tangent.shape, x.shape, "x")
    x2, vector, sched, batch = _apply_setup(params, x, special, schedule)
    rdt = _v.real_precision(params, x, params_tangent, x_tangent)
    cdt = backend.complex_dtype(rdt)
    if _v.is_empty(params, x2):
        dy = _v.zeros(backend.xp, batch + x2.shape[-2:], cdt)
        return dy[..., 0] if vector else dy
    xp = backend.xp
    full = _full(_v.cast(params, rdt), sched, special, xp)
    full_t = _full(_v.cast(params_tangent, rdt), sched, special, xp)
    xt2 = None if x_tangent is None else _v.cast(x_tangent[:, None] if vector else x_tangent, cdt)
    dy = backend.unitary_apply_jvp(full, _v.cast(x2, cdt), full_t, xt2, sched, adjoint)
    return dy[..., 0] if vector else dy
