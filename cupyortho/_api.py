r"""Public functions: validate, resolve the schedule, dispatch to a backend by array type.

Design rule: this layer owns every input check and every shape convention; backends receive
validated arrays of one floating dtype, ``x`` as ``(..., n, k)``, and a resolved
:class:`~cupyortho.schedule.Schedule`.  A backend is chosen by the type of the arrays: NumPy
arrays (and Python sequences) go to the NumPy backend, CuPy arrays to the CuPy backend.  Only
modules already imported are consulted, so ``import cupyortho`` imports nothing but NumPy.

Shapes (``A = num_angles(n)``, or ``num_angles(n, m)`` for frames):

==================  ==========================  ==========================
function            inputs                      output
==================  ==========================  ==========================
matrix              theta (..., A)              U (..., n, n)
frame               theta (..., A)              Q (..., n, m) = U[..., :, :m]
apply               theta (..., A), x (n,) or   U @ x (or U.T @ x), matmul
                    (..., n, k)                 broadcasting of the batch axes
==================  ==========================  ==========================

VJPs return cotangents shaped like the inputs they belong to; JVPs return the tangent of the
output.  Cotangents and tangents must have exactly the shape of the output or input they pair with.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np

from .backends._common import sum_to as _sum_to
from . import schedule as _sched
from .backends import numpy_backend as _numpy_backend
from ._strategy import apply_method as _method
from .errors import (
    AngleCountError,
    BackendMismatchError,
    BackendUnavailableError,
    DtypeError,
    MethodError,
    NonFiniteError,
    ShapeError,
    SizeError,
)

__all__ = [
    "matrix",
    "frame",
    "apply",
    "matrix_vjp",
    "frame_vjp",
    "apply_vjp",
    "matrix_jvp",
    "frame_jvp",
    "apply_jvp",
]

SUPPORTED_DTYPES = ("float32", "float64")


# --------------------------------------------------------------------------- dispatch

def _is_cupy(a) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def _dask_call(name, *arrays):
    """The cupyortho.dask function ``name`` when an argument is a Dask array, else None.

    Hook for Dask arrays (``docs/design.md`` §10): checked by type name, so Dask is imported only
    when one arrives."""
    if any(type(a).__module__.split(".")[0] == "dask" for a in arrays if a is not None):
        from . import dask as _dask

        return getattr(_dask, name)
    return None


def _array_library(**arrays) -> str:
    """``"cupy"`` or ``"numpy"``: the one library all given (name -> array) arguments live in; None
    values are ignored.  Mixing libraries raises :class:`BackendMismatchError`."""
    kinds = {name: ("cupy" if _is_cupy(a) else "numpy") for name, a in arrays.items() if a is not None}
    found = set(kinds.values())
    if len(found) > 1:
        desc = ", ".join(f"{k} is a {v} array" for k, v in kinds.items())
        raise BackendMismatchError(f"all array arguments must live in the same library; got {desc}")
    return found.pop() if found else "numpy"


def _backend_for(**arrays):
    """The SO(n) backend module for the given (name -> array) arguments."""
    if _array_library(**arrays) == "cupy":
        try:
            from .backends import cupy_backend
        except ImportError as exc:  # pragma: no cover - exercised only when cupy is half-installed
            raise BackendUnavailableError(f"the CuPy backend cannot be loaded: {exc}") from exc
        return cupy_backend
    return _numpy_backend


# --------------------------------------------------------------------------- checks

def _as_array(name, a, backend, check_finite, allow_none=False):
    """Convert ``a`` to a floating array of the backend, checking dtype and (optionally) finiteness."""
    if a is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be an array, got None")
    xp = backend.xp
    if not hasattr(a, "dtype"):
        try:
            a = xp.asarray(a)
        except Exception as exc:
            raise DtypeError(f"{name} must be a float32 or float64 array, got {type(a).__name__}: {exc}") from exc
    dt = np.dtype(a.dtype)
    if dt.kind != "f" or dt.name not in SUPPORTED_DTYPES:
        raise DtypeError(
            f"{name} must have dtype float32 or float64, got {dt.name}"
            + (" (float16 is not supported: cast to float32)" if dt.name == "float16" else "")
        )
    if not isinstance(a, xp.ndarray):
        a = xp.asarray(a)
    if a.ndim == 0:
        raise ShapeError(f"{name} must have at least one dimension, got a scalar")
    if check_finite and not backend.all_finite(a):
        raise NonFiniteError(f"{name} contains NaN or infinity (pass check_finite=False to skip this check)")
    return a


def _n_from_angles(count: int) -> int:
    """n with n(n-1)/2 == count, or an AngleCountError explaining the nearest sizes."""
    n = (1 + math.isqrt(1 + 8 * count)) // 2
    if n >= 2 and n * (n - 1) // 2 == count:
        return n
    lo = max(n, 2)
    raise AngleCountError(
        f"theta must hold n(n-1)/2 angles on its last axis for some n >= 2; got {count} "
        f"(n = {lo} needs {lo * (lo - 1) // 2}, n = {lo + 1} needs {(lo + 1) * lo // 2}); "
        "pass n= explicitly for a clearer message"
    )


def _resolve(theta, n, schedule, m=None, n_name="n"):
    """Check theta's angle count against n (and m); return the resolved schedule."""
    count = theta.shape[-1]
    if isinstance(schedule, _sched.Schedule):
        if n is not None and n != schedule.n:
            raise SizeError(f"{n_name} = {n} disagrees with the schedule, built for n = {schedule.n}")
        n = schedule.n
        if m is None:
            m = schedule.m  # a restricted (Stiefel) schedule carries its own angle count
    if n is None:
        n = _n_from_angles(count)
    n = _sched._check_int(n_name, n, 2)
    expected = _sched.num_angles(n, m)
    if count != expected:
        what = f"n*m - m(m+1)/2 = {expected} angles for {n_name} = {n}, m = {m}" if m is not None else \
            f"n(n-1)/2 = {expected} angles for {n_name} = {n}"
        raise AngleCountError(f"theta must hold {what} on its last axis; got shape {tuple(theta.shape)}")
    return _sched.get_schedule(schedule, n, m)


def _common_dtype(*arrays):
    return np.result_type(*[np.dtype(a.dtype) for a in arrays if a is not None])


def _cast(a, dtype):
    return a if a is None or a.dtype == dtype else a.astype(dtype)


def _check_same_shape(name, a, expected, what):
    if tuple(a.shape) != tuple(expected):
        raise ShapeError(f"{name} must have the shape of {what}, {tuple(expected)}; got {tuple(a.shape)}")


def _x_as_matrix(x, n_name="x"):
    """x of shape (n,) -> (n, 1); (..., n, k) unchanged. Returns (x2, was_vector)."""
    if x.ndim == 1:
        return x[:, None], True
    return x, False


def _batch_shape(*shapes):
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        raise ShapeError(
            "batch axes do not broadcast: " + ", ".join(str(tuple(s)) for s in shapes)
        ) from None


# --------------------------------------------------------------------------- SO(n)

def matrix(theta, *, n=None, schedule=None, check_finite=True):
    r"""The rotation :math:`U(\theta) = B_{R-1}\cdots B_1 B_0 \in SO(n)`.

    Each round :math:`B_r` is the product of the commuting plane rotations :math:`G(i,j,\theta_{ij})`
    of its pairs, :math:`G = \exp(\theta K_{ij})`, :math:`K_{ij} = e_j e_i^T - e_i e_j^T`.

    Args:
        theta (array_like, float32 or float64): ``(..., n(n-1)/2)`` angles in the row-major order of
            the strict upper triangle; leading axes are a batch of independent matrices.
        n (int, optional): matrix size; inferred from ``theta.shape[-1]`` when omitted.
        schedule (str | Schedule | None): ``"circle"``, ``"team"``, a :class:`Schedule`, or None for
            the library default.  Different schedules give different matrices for the same angles.
        check_finite (bool): reject NaN/inf in the inputs (default True).

    Returns:
        ndarray ``(..., n, n)`` of theta's dtype.
    """
    backend = _backend_for(theta=theta)
    theta = _as_array("theta", theta, backend, check_finite)
    sched = _resolve(theta, n, schedule)
    return backend.matrix(theta, sched)


def _t(xp, a):
    return xp.swapaxes(a, -1, -2)


def apply(theta, x, *, transpose=False, schedule=None, check_finite=True, method="auto"):
    r"""``U(theta) @ x`` (or ``U(theta).T @ x`` with ``transpose=True``) without forming U.

    Costs :math:`O(n^2 k)` instead of the :math:`O(n^3)` of forming U.  Shapes follow ``numpy.matmul``:
    ``x`` is a vector ``(n,)`` or a stack of matrices ``(..., n, k)`` whose batch axes broadcast against
    theta's.  (For a batch of row vectors ``v`` of shape ``(..., n)`` use ``apply(theta, v[..., None])``.)

    Args:
        theta: ``(..., n(n-1)/2)`` angles (see :func:`matrix`).
        x: ``(n,)`` or ``(..., n, k)``.
        transpose (bool): apply :math:`U^T = U^{-1}` (the rounds backwards, angles negated).
        schedule, check_finite: as in :func:`matrix`.
        method (str): ``"materialize"`` forms ``U`` once and multiplies (a GEMM), ``"rounds"`` applies
            the rounds (block stages for team schedules) to ``x`` without forming ``U``; ``"auto"``
            (default) materializes when ``k`` times the number of ``x`` matrices per angle vector is
            at least ``n``.  The result is the same up to rounding.

    Returns:
        ndarray of the broadcast shape, dtype ``result_type(theta, x)``.
    """
    dask_fn = _dask_call("apply", theta, x)
    if dask_fn is not None:
        return dask_fn(theta, x, transpose=transpose, schedule=schedule, check_finite=check_finite, method=method)
    backend = _backend_for(theta=theta, x=x)
    theta = _as_array("theta", theta, backend, check_finite)
    x = _as_array("x", x, backend, check_finite)
    x2, vector = _x_as_matrix(x)
    n = x2.shape[-2]
    if n < 2:
        raise SizeError(f"x must have n >= 2 rows (axis -2, or axis 0 of a vector); got shape {tuple(x.shape)}")
    sched = _resolve(theta, n, schedule, n_name="n (from x.shape)")
    _batch_shape(theta.shape[:-1], x2.shape[:-2])
    dtype = _common_dtype(theta, x)
    theta_c, x_c = _cast(theta, dtype), _cast(x2, dtype)
    if _method(method, theta, x2) == "materialize":
        u = backend.matrix(theta_c, sched)
        y = backend.xp.matmul(_t(backend.xp, u) if transpose else u, x_c)
    else:
        y = backend.apply(theta_c, x_c, sched, bool(transpose))
    return y[..., 0] if vector else y


def frame(theta, n, m, *, schedule=None, check_finite=True):
    r"""A point of the Stiefel manifold St(n, m): the first ``m`` columns of ``U(theta)``.

    Only the ``n*m - m(m+1)/2`` rotations of pairs ``i < j`` with ``i < m`` are kept (the others are
    the identity); in the upper-triangle layout they are the first ``num_angles(n, m)`` angles.  The
    first ``m`` *columns* of the restricted U cover all of St(n, m) (tested by fits to random targets;
    the first m rows do not, for the team schedule).

    Args:
        theta: ``(..., n*m - m(m+1)/2)`` angles.
        n (int): ambient dimension.  m (int): number of orthonormal columns, ``1 <= m <= n``.
        schedule, check_finite: as in :func:`matrix`.

    Returns:
        ndarray ``(..., n, m)`` with orthonormal columns.
    """
    backend = _backend_for(theta=theta)
    theta = _as_array("theta", theta, backend, check_finite)
    sched = _resolve(theta, n, schedule, m=_check_m(n, m))
    return backend.apply(theta, _eye_frame(backend, sched, theta.dtype), sched, False)


def _check_m(n, m):
    n = _sched._check_int("n", n, 2)
    m = _sched._check_int("m", m, 1)
    if m > n:
        raise SizeError(f"m must satisfy 1 <= m <= n = {n}, got m = {m}")
    return m


def _eye_frame(backend, sched, dtype):
    return backend.xp.eye(sched.n, sched.m, dtype=dtype)


# --------------------------------------------------------------------------- VJPs

def matrix_vjp(theta, cotangent, *, n=None, schedule=None, output=None, check_finite=True):
    r"""Gradient with respect to theta of a loss of ``U = matrix(theta)``, given ``cotangent = dL/dU``.

    Uses the reduction-free formula: :math:`W = \bar G U^T`, then per round (last first) the angle of
    pair ``(i, j)`` gets :math:`W[j,i] - W[i,j]` and :math:`W \leftarrow B_r^T W B_r`.

    Args:
        theta: ``(..., A)``.  cotangent: ``(..., n, n)``, the shape of the output.
        output: optionally ``U = matrix(theta)`` from the forward pass, to skip recomputing it (it is
            trusted: a different matrix gives a wrong gradient).
    Returns:
        ndarray shaped like theta.
    """
    backend = _backend_for(theta=theta, cotangent=cotangent, output=output)
    theta = _as_array("theta", theta, backend, check_finite)
    cotangent = _as_array("cotangent", cotangent, backend, check_finite)
    output = _as_array("output", output, backend, check_finite, allow_none=True)
    sched = _resolve(theta, n, schedule)
    _check_same_shape("cotangent", cotangent, theta.shape[:-1] + (sched.n, sched.n), "matrix(theta)")
    if output is not None:
        _check_same_shape("output", output, theta.shape[:-1] + (sched.n, sched.n), "matrix(theta)")
    dtype = _common_dtype(theta, cotangent, output)
    return backend.matrix_vjp(_cast(theta, dtype), _cast(cotangent, dtype), sched, _cast(output, dtype))


def apply_vjp(theta, x, cotangent, *, transpose=False, schedule=None, output=None, check_finite=True,
              method="auto"):
    r"""Cotangents ``(d_theta, d_x)`` of ``y = apply(theta, x, transpose=...)`` for ``cotangent = dL/dy``.

    Memory :math:`O(nk)`: the rounds are undone on ``y`` to recover each round's input, so nothing but
    theta and x (or ``output=y``, which skips recomputing the forward pass) is needed.  For pair
    ``(i, j)`` in a round with input rows :math:`x_i, x_j` and input cotangent :math:`\bar g`:
    :math:`\partial L/\partial \theta_{ij} = \sum_{cols}(x_i \bar g_j - x_j \bar g_i)`; ``d_x`` is
    :math:`U^T \bar G` (or :math:`U \bar G`).  Undoing rotations drifts by :math:`O(R\epsilon)`.
    ``method`` as in :func:`apply`: ``"materialize"`` forms ``U``, passes
    :math:`\bar G_U = \bar G x^T` (:math:`x \bar G^T` for the transpose) to :func:`matrix_vjp` and
    returns :math:`d_x = U^T \bar G` by a GEMM.

    Returns:
        ``(d_theta, d_x)`` shaped like theta and x (summed over broadcast batch axes).
    """
    dask_fn = _dask_call("apply_vjp", theta, x, cotangent, output)
    if dask_fn is not None:
        return dask_fn(theta, x, cotangent, transpose=transpose, schedule=schedule, output=output,
                       check_finite=check_finite, method=method)
    backend = _backend_for(theta=theta, x=x, cotangent=cotangent, output=output)
    theta = _as_array("theta", theta, backend, check_finite)
    x = _as_array("x", x, backend, check_finite)
    cotangent = _as_array("cotangent", cotangent, backend, check_finite)
    output = _as_array("output", output, backend, check_finite, allow_none=True)
    x2, vector = _x_as_matrix(x)
    sched = _resolve(theta, x2.shape[-2], schedule, n_name="n (from x.shape)")
    out_shape = _batch_shape(theta.shape[:-1], x2.shape[:-2]) + x2.shape[-2:]
    out_shape_public = out_shape[:-1] if vector else out_shape
    _check_same_shape("cotangent", cotangent, out_shape_public, "apply(theta, x)")
    if output is not None:
        _check_same_shape("output", output, out_shape_public, "apply(theta, x)")
    dtype = _common_dtype(theta, x, cotangent, output)
    if vector:
        cotangent = cotangent[..., None]
        output = None if output is None else output[..., None]
    if _method(method, theta, x2) == "materialize":
        xp = backend.xp
        theta_c, x_c, g_c = _cast(theta, dtype), _cast(x2, dtype), _cast(cotangent, dtype)
        u = backend.matrix(theta_c, sched)
        g_u = xp.matmul(x_c, _t(xp, g_c)) if transpose else xp.matmul(g_c, _t(xp, x_c))
        g_u = _sum_to(g_u, theta.shape[:-1] + g_u.shape[-2:])
        d_theta = backend.matrix_vjp(theta_c, g_u, sched, output=u)
        d_x = _sum_to(xp.matmul(u if transpose else _t(xp, u), g_c), x2.shape)
    else:
        d_theta, d_x = backend.apply_vjp(
            _cast(theta, dtype), _cast(x2, dtype), _cast(cotangent, dtype), sched,
            bool(transpose), _cast(output, dtype),
        )
    return d_theta.astype(theta.dtype, copy=False), (d_x[..., 0] if vector else d_x).astype(x.dtype, copy=False)


def frame_vjp(theta, cotangent, n, m, *, schedule=None, check_finite=True):
    """Gradient with respect to theta of a loss of ``Q = frame(theta, n, m)``, given ``dL/dQ``.

    Returns:
        ndarray shaped like theta.
    """
    backend = _backend_for(theta=theta, cotangent=cotangent)
    theta = _as_array("theta", theta, backend, check_finite)
    cotangent = _as_array("cotangent", cotangent, backend, check_finite)
    sched = _resolve(theta, n, schedule, m=_check_m(n, m))
    _check_same_shape("cotangent", cotangent, theta.shape[:-1] + (sched.n, sched.m), "frame(theta, n, m)")
    dtype = _common_dtype(theta, cotangent)
    theta_c = _cast(theta, dtype)
    d_theta, _ = backend.apply_vjp(
        theta_c, _eye_frame(backend, sched, dtype), _cast(cotangent, dtype), sched, False, None
    )
    return d_theta.astype(theta.dtype, copy=False)


# --------------------------------------------------------------------------- JVPs

def matrix_jvp(theta, tangent, *, n=None, schedule=None, check_finite=True):
    r"""Directional derivative :math:`dU = \sum_p t_p\, \partial U/\partial\theta_p` along ``tangent``.

    Carries :math:`(U_r, dU_r)` through the rounds: :math:`dU_r = B_r\,dU_{r-1} + K_r U_r`.

    Args:
        theta: ``(..., A)``.  tangent: same shape as theta.
    Returns:
        ndarray ``(..., n, n)``.
    """
    backend = _backend_for(theta=theta, tangent=tangent)
    theta = _as_array("theta", theta, backend, check_finite)
    tangent = _as_array("tangent", tangent, backend, check_finite)
    sched = _resolve(theta, n, schedule)
    _check_same_shape("tangent", tangent, theta.shape, "theta")
    dtype = _common_dtype(theta, tangent)
    return backend.matrix_jvp(_cast(theta, dtype), _cast(tangent, dtype), sched)


def apply_jvp(theta, x, theta_tangent, x_tangent=None, *, transpose=False, schedule=None, check_finite=True,
              method="auto"):
    r"""Tangent of ``y = apply(theta, x, transpose=...)`` along ``(theta_tangent, x_tangent)``.

    Args:
        theta_tangent: shaped like theta.  x_tangent: shaped like x, or None for zero.
        method: as in :func:`apply` (``"materialize"``: :math:`dU\,x + U\,dx` by GEMMs).
    Returns:
        ndarray shaped like ``apply(theta, x)``.
    """
    dask_fn = _dask_call("apply_jvp", theta, x, theta_tangent, x_tangent)
    if dask_fn is not None:
        return dask_fn(theta, x, theta_tangent, x_tangent, transpose=transpose, schedule=schedule,
                       check_finite=check_finite, method=method)
    backend = _backend_for(theta=theta, x=x, theta_tangent=theta_tangent, x_tangent=x_tangent)
    theta = _as_array("theta", theta, backend, check_finite)
    x = _as_array("x", x, backend, check_finite)
    theta_tangent = _as_array("theta_tangent", theta_tangent, backend, check_finite)
    x_tangent = _as_array("x_tangent", x_tangent, backend, check_finite, allow_none=True)
    _check_same_shape("theta_tangent", theta_tangent, theta.shape, "theta")
    if x_tangent is not None:
        _check_same_shape("x_tangent", x_tangent, x.shape, "x")
    x2, vector = _x_as_matrix(x)
    sched = _resolve(theta, x2.shape[-2], schedule, n_name="n (from x.shape)")
    _batch_shape(theta.shape[:-1], x2.shape[:-2])
    dtype = _common_dtype(theta, x, theta_tangent, x_tangent)
    xt2 = None if x_tangent is None else _x_as_matrix(x_tangent)[0]
    if _method(method, theta, x2) == "materialize":
        xp = backend.xp
        theta_c, x_c = _cast(theta, dtype), _cast(x2, dtype)
        u = backend.matrix(theta_c, sched)
        du = backend.matrix_jvp(theta_c, _cast(theta_tangent, dtype), sched)
        if transpose:
            u, du = _t(xp, u), _t(xp, du)
        dy = xp.matmul(du, x_c)
        if xt2 is not None:
            dy = dy + xp.matmul(u, _cast(xt2, dtype))
    else:
        dy = backend.apply_jvp(
            _cast(theta, dtype), _cast(x2, dtype), _cast(theta_tangent, dtype), _cast(xt2, dtype),
            sched, bool(transpose),
        )
    return dy[..., 0] if vector else dy


def frame_jvp(theta, tangent, n, m, *, schedule=None, check_finite=True):
    """Tangent ``dQ`` of ``Q = frame(theta, n, m)`` along ``tangent`` (shaped like theta)."""
    backend = _backend_for(theta=theta, tangent=tangent)
    theta = _as_array("theta", theta, backend, check_finite)
    tangent = _as_array("tangent", tangent, backend, check_finite)
    sched = _resolve(theta, n, schedule, m=_check_m(n, m))
    _check_same_shape("tangent", tangent, theta.shape, "theta")
    dtype = _common_dtype(theta, tangent)
    return backend.apply_jvp(
        _cast(theta, dtype), _eye_frame(backend, sched, dtype), _cast(tangent, dtype), None, sched, False
    )


def available_backends() -> dict:
    """Which array backends can run here: ``{"numpy": True, "cupy": bool-or-reason, ...}``."""
    out = {"numpy": True}
    try:
        import cupy  # noqa: F401
        try:
            ndev = cupy.cuda.runtime.getDeviceCount()
            out["cupy"] = True if ndev > 0 else "installed, no GPU"
        except Exception as exc:  # no driver / no device
            out["cupy"] = f"installed, no GPU ({type(exc).__name__})"
    except ImportError:
        out["cupy"] = "not installed"
    for name in ("torch", "jax"):
        out[name] = True if importlib.util.find_spec(name) is not None else "not installed"
    return out
