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

import math

import numpy as np

from . import schedule as _sched
from ._api import _array_library, _batch_shape, _check_same_shape, _x_as_matrix
from .backends import numpy_unitary as _numpy_unitary
from .errors import (
    AngleCountError,
    BackendUnavailableError,
    DtypeError,
    NonFiniteError,
    ScheduleError,
    ShapeError,
    SizeError,
)

__all__ = [
    "num_unitary_params",
    "unitary",
    "unitary_apply",
    "unitary_vjp",
    "unitary_apply_vjp",
    "unitary_jvp",
    "unitary_apply_jvp",
]

_REAL = ("float32", "float64")
_ANY = ("float32", "float64", "complex64", "complex128")


def num_unitary_params(n: int, special: bool = False) -> int:
    """Number of real parameters of U(n) (``n*n``) or, with ``special=True``, of SU(n) (``n*n - 1``).

    Layout: ``[theta (n(n-1)/2), phi (n(n-1)/2), delta (n, or n - 1 for SU(n))]``.
    """
    n = _sched._check_int("n", n, 2)
    return n * n - (1 if special else 0)


# --------------------------------------------------------------------------- dispatch and checks

def _backend_for(**arrays):
    """The U(n) backend module for the given (name -> array) arguments."""
    if _array_library(**arrays) == "cupy":
        try:
            from .backends import cupy_unitary
        except ImportError as exc:
            raise BackendUnavailableError(
                f"the unitary functions have no usable CuPy backend here: {exc}; pass NumPy arrays"
            ) from exc
        return cupy_unitary
    return _numpy_unitary


def _as_array(name, a, backend, check_finite, allowed, allow_none=False):
    """``a`` as an array of the backend with a dtype in ``allowed``; optionally finite."""
    if a is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be an array, got None")
    xp = backend.xp
    what = " or ".join(allowed)
    if not hasattr(a, "dtype"):
        try:
            a = xp.asarray(a)
        except Exception as exc:
            raise DtypeError(f"{name} must be a {what} array, got {type(a).__name__}: {exc}") from exc
    dt = np.dtype(a.dtype)
    if dt.name not in allowed:
        hint = ""
        if dt.kind == "c" and allowed == _REAL:
            hint = " (parameters are real angles and phases)"
        elif dt.name == "float16":
            hint = " (float16 is not supported: cast to float32)"
        raise DtypeError(f"{name} must have dtype {what}, got {dt.name}{hint}")
    if not isinstance(a, xp.ndarray):
        a = xp.asarray(a)
    if a.ndim == 0:
        raise ShapeError(f"{name} must have at least one dimension, got a scalar")
    if check_finite and not backend.all_finite(a):
        raise NonFiniteError(f"{name} contains NaN or infinity (pass check_finite=False to skip this check)")
    return a


def _layout(n, special, a=None):
    a = n * (n - 1) // 2 if a is None else a
    return f"[theta ({a}), phi ({a}), delta ({n - 1 if special else n})]"


def _resolve(params, n, special, schedule, n_name="n"):
    """Check the parameter count against n (inferred when None); return the resolved schedule."""
    count = params.shape[-1]
    if isinstance(schedule, str) and ":" in schedule:
        schedule = _sched.from_token(schedule)  # a token names a Schedule, which carries n
    group = "SU(n)" if special else "U(n)"
    if isinstance(schedule, _sched.Schedule):
        if n is not None and n != schedule.n:
            raise SizeError(f"{n_name} = {n} disagrees with the schedule, built for n = {schedule.n}")
        if schedule.m is not None:
            raise ScheduleError(
                f"schedule must cover all pairs of U(n); got the Stiefel restriction {schedule!r}"
            )
        n = schedule.n
    if n is None:
        n = math.isqrt(count + (1 if special else 0))
        if n < 2 or num_unitary_params(n, special) != count:
            lo = max(n, 2)
            raise AngleCountError(
                f"params must hold {'n*n - 1' if special else 'n*n'} parameters of {group} on its last "
                f"axis for some n >= 2; got {count} (n = {lo} needs {num_unitary_params(lo, special)}, "
                f"n = {lo + 1} needs {num_unitary_params(lo + 1, special)})"
            )
    n = _sched._check_int(n_name, n, 2)
    sched = _sched.get_schedule(schedule, n)
    a = sched.num_angles  # a truncated or user-built schedule holds its own count
    expected = 2 * a + n - (1 if special else 0)
    if count != expected:
        raise AngleCountError(
            f"params must hold {expected} parameters of {group} for {n_name} = {n}, laid out as "
            f"{_layout(n, special, a)}, on its last axis; got shape {tuple(params.shape)}"
        )
    return sched


def _full(params, n, special, xp):
    """SU(n) parameters -> U(n) layout, appending ``delta[n-1] = -sum(delta[:n-1])`` (linear)."""
    if not special:
        return params
    return xp.concatenate([params, -params[..., -(n - 1):].sum(axis=-1, keepdims=True)], axis=-1)


def _reduce(d_full, n, special):
    """Pull a U(n)-layout cotangent back to SU(n) parameters (transpose of :func:`_full`)."""
    if not special:
        return d_full
    d = d_full[..., :-1].copy()
    d[..., -(n - 1):] -= d_full[..., -1:]
    return d


def _real_dtype(*arrays):
    """float32 or float64: the precision of ``result_type`` of the arrays (complex counts as its part)."""
    dt = np.result_type(*[np.dtype(a.dtype) for a in arrays if a is not None])
    return np.dtype(np.float32) if dt in (np.float32, np.complex64) else np.dtype(np.float64)


def _cast(a, dtype):
    return a if a is None or a.dtype == dtype else a.astype(dtype)


def _setup(params, n, special, schedule, check_finite, backend, n_name="n"):
    params = _as_array("params", params, backend, check_finite, _REAL)
    sched = _resolve(params, n, bool(special), schedule, n_name)
    return params, sched


# --------------------------------------------------------------------------- forward

def unitary(params, *, n=None, special=False, schedule=None, check_finite=True):
    r"""The unitary :math:`U = D(\delta)\,B_{R-1}\cdots B_0 \in U(n)` (or SU(n) with ``special=True``).

    Args:
        params (array_like, float32 or float64): ``(..., P)``, ``P = n*n`` (U(n)) or ``n*n - 1``
            (SU(n)), laid out ``[theta (A), phi (A), delta (n or n-1)]``, ``A = n(n-1)/2``, theta and
            phi in the row-major order of the strict upper triangle.  Leading axes are a batch.
        n (int, optional): matrix size; inferred from ``params.shape[-1]`` when omitted.
        special (bool): SU(n): the last diagonal phase is ``-sum`` of the others, so ``det U = 1``.
        schedule (str | Schedule | None): ``"circle"``, ``"team"``, a :class:`Schedule` or None (the
            library default), as in :func:`cupyortho.matrix`.
        check_finite (bool): reject NaN/inf (default True).

    Returns:
        ndarray ``(..., n, n)``, complex64 for float32 params, complex128 for float64.
    """
    backend = _backend_for(params=params)
    params, sched = _setup(params, n, special, schedule, check_finite, backend)
    full = _full(params, sched.n, special, backend.xp)
    return backend.unitary(full, sched, backend.complex_dtype(params.dtype))


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
    backend = _backend_for(params=params, x=x)
    params = _as_array("params", params, backend, check_finite, _REAL)
    x = _as_array("x", x, backend, check_finite, _ANY)
    x2, vector = _x_as_matrix(x)
    nx = x2.shape[-2]
    if nx < 2:
        raise SizeError(f"x must have n >= 2 rows (axis -2, or axis 0 of a vector); got shape {tuple(x.shape)}")
    sched = _resolve(params, nx, bool(special), schedule, n_name="n (from x.shape)")
    _batch_shape(params.shape[:-1], x2.shape[:-2])
    rdt = _real_dtype(params, x)
    cdt = backend.complex_dtype(rdt)
    full = _full(_cast(params, rdt), sched.n, special, backend.xp)
    y = backend.unitary_apply(full, _cast(x2, cdt), sched, bool(adjoint))
    return y[..., 0] if vector else y


# --------------------------------------------------------------------------- VJPs

def unitary_vjp(params, cotangent, *, n=None, special=False, schedule=None, check_finite=True):
    r"""Gradient with respect to params of a real loss of ``U = unitary(params)``.

    Args:
        params: ``(..., P)``.
        cotangent: ``(..., n, n)``, exactly the shape of U, real or complex:
            :math:`\partial L/\partial\,\mathrm{Re}\,U + i\,\partial L/\partial\,\mathrm{Im}\,U`.
    Returns:
        real ndarray shaped and typed like params.

    Reduction-free: :math:`W = \bar G U^H`, :math:`\partial L/\partial \delta_k = \mathrm{Im}\,W_{kk}`,
    then per round (last first) a few entries of :math:`W` give each pair's two derivatives and
    :math:`W \leftarrow B_r^H W B_r` (``docs/unitary.md``).
    """
    backend = _backend_for(params=params, cotangent=cotangent)
    params, sched = _setup(params, n, special, schedule, check_finite, backend)
    cotangent = _as_array("cotangent", cotangent, backend, check_finite, _ANY)
    _check_same_shape("cotangent", cotangent, params.shape[:-1] + (sched.n, sched.n), "unitary(params)")
    rdt = _real_dtype(params, cotangent)
    cdt = backend.complex_dtype(rdt)
    full = _full(_cast(params, rdt), sched.n, special, backend.xp)
    d = backend.unitary_vjp(full, _cast(cotangent, cdt), sched)
    return _reduce(d, sched.n, special).astype(params.dtype, copy=False)


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
    backend = _backend_for(params=params, x=x, cotangent=cotangent, output=output)
    params = _as_array("params", params, backend, check_finite, _REAL)
    x = _as_array("x", x, backend, check_finite, _ANY)
    cotangent = _as_array("cotangent", cotangent, backend, check_finite, _ANY)
    output = _as_array("output", output, backend, check_finite, _ANY, allow_none=True)
    x2, vector = _x_as_matrix(x)
    sched = _resolve(params, x2.shape[-2], bool(special), schedule, n_name="n (from x.shape)")
    out_shape = _batch_shape(params.shape[:-1], x2.shape[:-2]) + x2.shape[-2:]
    out_shape_public = out_shape[:-1] if vector else out_shape
    _check_same_shape("cotangent", cotangent, out_shape_public, "unitary_apply(params, x)")
    if output is not None:
        _check_same_shape("output", output, out_shape_public, "unitary_apply(params, x)")
    if vector:
        cotangent = cotangent[..., None]
        output = None if output is None else output[..., None]
    rdt = _real_dtype(params, x, cotangent, output)
    cdt = backend.complex_dtype(rdt)
    full = _full(_cast(params, rdt), sched.n, special, backend.xp)
    d_full, d_x = backend.unitary_apply_vjp(
        full, _cast(x2, cdt), _cast(cotangent, cdt), sched, bool(adjoint), _cast(output, cdt)
    )
    d_params = _reduce(d_full, sched.n, special).astype(params.dtype, copy=False)
    if vector:
        d_x = d_x[..., 0]
    if np.dtype(x.dtype).kind == "f":
        d_x = d_x.real
    return d_params, d_x.astype(x.dtype, copy=False)


# --------------------------------------------------------------------------- JVPs

def unitary_jvp(params, tangent, *, n=None, special=False, schedule=None, check_finite=True):
    r"""Directional derivative :math:`dU = \sum_p t_p\,\partial U/\partial p` along ``tangent``.

    Args:
        params: ``(..., P)``.  tangent: real, the shape of params.
    Returns:
        complex ndarray ``(..., n, n)``.
    """
    backend = _backend_for(params=params, tangent=tangent)
    params, sched = _setup(params, n, special, schedule, check_finite, backend)
    tangent = _as_array("tangent", tangent, backend, check_finite, _REAL)
    _check_same_shape("tangent", tangent, params.shape, "params")
    rdt = _real_dtype(params, tangent)
    xp = backend.xp
    full = _full(_cast(params, rdt), sched.n, special, xp)
    full_t = _full(_cast(tangent, rdt), sched.n, special, xp)
    return backend.unitary_jvp(full, full_t, sched, backend.complex_dtype(rdt))


def unitary_apply_jvp(params, x, params_tangent, x_tangent=None, *, special=False, adjoint=False,
                      schedule=None, check_finite=True):
    r"""Tangent of ``y = unitary_apply(params, x, adjoint=...)`` along ``(params_tangent, x_tangent)``.

    Args:
        params_tangent: real, the shape of params.  x_tangent: the shape of x (real or complex), or
            None for zero.
    Returns:
        complex ndarray shaped like ``unitary_apply(params, x)``.
    """
    backend = _backend_for(params=params, x=x, params_tangent=params_tangent, x_tangent=x_tangent)
    params = _as_array("params", params, backend, check_finite, _REAL)
    x = _as_array("x", x, backend, check_finite, _ANY)
    params_tangent = _as_array("params_tangent", params_tangent, backend, check_finite, _REAL)
    x_tangent = _as_array("x_tangent", x_tangent, backend, check_finite, _ANY, allow_none=True)
    _check_same_shape("params_tangent", params_tangent, params.shape, "params")
    if x_tangent is not None:
        _check_same_shape("x_tangent", x_tangent, x.shape, "x")
    x2, vector = _x_as_matrix(x)
    sched = _resolve(params, x2.shape[-2], bool(special), schedule, n_name="n (from x.shape)")
    _batch_shape(params.shape[:-1], x2.shape[:-2])
    rdt = _real_dtype(params, x, params_tangent, x_tangent)
    cdt = backend.complex_dtype(rdt)
    xp = backend.xp
    full = _full(_cast(params, rdt), sched.n, special, xp)
    full_t = _full(_cast(params_tangent, rdt), sched.n, special, xp)
    xt2 = None if x_tangent is None else _cast(_x_as_matrix(x_tangent)[0], cdt)
    dy = backend.unitary_apply_jvp(full, _cast(x2, cdt), full_t, xt2, sched, bool(adjoint))
    return dy[..., 0] if vector else dy
