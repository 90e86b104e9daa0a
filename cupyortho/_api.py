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

from .backends._common import sum_to as _sum_to
from . import _dispatch
from . import _validate as _v
from ._strategy import apply_method as _method

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

SUPPORTED_DTYPES = _v.REAL

# Kept for the modules that imported them from here (the checks live in cupyortho._validate and
# cupyortho._dispatch).
_is_cupy = _dispatch.is_cupy


def _check_m(n, m):
    """``m`` checked against ``n`` (``1 <= m <= n``); returns it as an int."""
    n = _v.integer("n", n, 2)
    m = _v.integer("m", m, 1)
    if m > n:
        from .errors import SizeError

        raise SizeError(f"m must satisfy 1 <= m <= n = {n}, got m = {m}")
    return m


def _arrays(backend, check_finite, **arrays):
    """Validate and convert the named array arguments (None allowed for the optional ones, whose names
    are listed in ``_OPTIONAL``); returns them in order."""
    check_finite = _v.flag("check_finite", check_finite)
    return [
        _v.as_array(name, a, backend, check_finite=check_finite, allow_none=name in _OPTIONAL)
        for name, a in arrays.items()
    ]


_OPTIONAL = ("output", "x_tangent")


def _x_as_matrix(x):
    """x of shape (n,) -> (n, 1); (..., n, k) unchanged.  Returns (x2, was_vector)."""
    return (x[:, None], True) if x.ndim == 1 else (x, False)


def _t(xp, a):
    return xp.swapaxes(a, -1, -2)


def _frame_sizes(n, m, schedule):
    """(n, m) of a frame: from the arguments, or from a restricted Schedule when they are omitted."""
    from . import schedule as _sched
    from .errors import SizeError

    if isinstance(schedule, _sched.Schedule):
        n = schedule.n if n is None else n
        m = schedule.m if m is None else m
    if n is None or m is None:
        raise SizeError(f"frame needs n and m (or a Schedule restricted to m); got n = {n!r}, m = {m!r}")
    return _v.integer("n", n, 2), _check_m(n, m)


# --------------------------------------------------------------------------- SO(n)

def matrix(theta, *, n=None, schedule=None, check_finite=True):
    r"""The rotation :math:`U(\theta) = B_{R-1}\cdots B_1 B_0 \in SO(n)`.

    Each round :math:`B_r` is the product of the commuting plane rotations :math:`G(i,j,\theta_{ij})`
    of its pairs, :math:`G = \exp(\theta K_{ij})`, :math:`K_{ij} = e_j e_i^T - e_i e_j^T`.

    Args:
        theta (array_like, float32 or float64): ``(..., n(n-1)/2)`` angles in the row-major order of
            the strict upper triangle; leading axes are a batch of independent matrices (an empty
            batch gives an empty result).
        n (int, optional): matrix size; taken from ``schedule`` when it is a :class:`Schedule`, else
            inferred from ``theta.shape[-1]`` when omitted.
        schedule (str | Schedule | None): ``"circle"``, ``"team"``, a :class:`Schedule`, or None for
            the library default.  Different schedules give different matrices for the same angles.
        check_finite (bool): reject NaN/inf in the inputs (default True).

    Returns:
        ndarray ``(..., n, n)`` of theta's dtype.

    Raises:
        ArrayTypeError, DtypeError, ShapeError, AngleCountError, SizeError, ScheduleError,
            NonFiniteError, BackendMismatchError (all :mod:`cupyortho.errors`).
    """
    backend = _dispatch.so_backend(theta=theta)
    (theta,) = _arrays(backend, check_finite, theta=theta)
    sched = _v.resolve_so(theta.shape, n, schedule)
    if _v.is_empty(theta):
        return _v.zeros(backend.xp, theta.shape[:-1] + (sched.n, sched.n), theta.dtype)
    return backend.matrix(theta, sched)


def _apply_setup(backend, theta, x, schedule, method, others=()):
    """Common checks of apply/apply_vjp/apply_jvp: (x2, vector, sched, output batch shape, strategy)."""
    n, vector = _v.x_rows("x", x.shape)
    x2 = x[:, None] if vector else x
    sched = _v.resolve_so(theta.shape, n, schedule, n_name="n (from x.shape)")
    batch = _v.batch_shape(("theta", theta.shape[:-1]), ("x", x2.shape[:-2]))
    return x2, vector, sched, batch, _method(method, theta, x2)


def apply(theta, x, *, transpose=False, schedule=None, check_finite=True, method="auto"):
    r"""``U(theta) @ x`` (or ``U(theta).T @ x`` with ``transpose=True``) without forming U.

    Costs :math:`O(n^2 k)` instead of the :math:`O(n^3)` of forming U.  Shapes follow ``numpy.matmul``:
    ``x`` is a vector ``(n,)`` or a stack of matrices ``(..., n, k)`` whose batch axes broadcast against
    theta's.  (For a batch of row vectors ``v`` of shape ``(..., n)`` use ``apply(theta, v[..., None])``.)
    Empty batches and ``k = 0`` give empty results.

    Args:
        theta: ``(..., n(n-1)/2)`` angles (see :func:`matrix`).
        x: ``(n,)`` or ``(..., n, k)``.
        transpose (bool): apply :math:`U^T = U^{-1}` (the rounds backwards, angles negated).
        schedule, check_finite: as in :func:`matrix`.
        method (str): the *strategy* (the meaning of ``method=`` everywhere in cupyortho):
            ``"materialize"`` forms ``U`` once and multiplies (a GEMM), ``"rounds"`` applies
            the rounds (block stages for team schedules) to ``x`` without forming ``U``; ``"auto"``
            (default) materializes when ``k`` times the number of ``x`` matrices per angle vector is
            at least ``n``.  The result is the same up to rounding.

    Returns:
        ndarray of the broadcast shape, dtype ``result_type(theta, x)``.

    Raises:
        as :func:`matrix`, and MethodError for an unknown ``method``, ShapeError when the batch axes
        do not broadcast.
    """
    dask_fn = _dispatch.dask_function("apply", theta, x)
    if dask_fn is not None:
        return dask_fn(theta, x, transpose=transpose, schedule=schedule, check_finite=check_finite, method=method)
    backend = _dispatch.so_backend(theta=theta, x=x)
    theta, x = _arrays(backend, check_finite, theta=theta, x=x)
    transpose = _v.flag("transpose", transpose)
    x2, vector, sched, batch, how = _apply_setup(backend, theta, x, schedule, method)
    dtype = _v.result_dtype(theta, x)
    if _v.is_empty(theta, x2):
        y = _v.zeros(backend.xp, batch + x2.shape[-2:], dtype)
        return y[..., 0] if vector else y
    theta_c, x_c = _v.cast(theta, dtype), _v.cast(x2, dtype)
    if how == "materialize":
        u = backend.matrix(theta_c, sched)
        y = backend.xp.matmul(_t(backend.xp, u) if transpose else u, x_c)
    else:
        y = backend.apply(theta_c, x_c, sched, transpose)
    return y[..., 0] if vector else y


def frame(theta, n=None, m=None, *, schedule=None, check_finite=True):
    r"""A point of the Stiefel manifold St(n, m): the first ``m`` columns of ``U(theta)``.

    Only the ``n*m - m(m+1)/2`` rotations of pairs ``i < j`` with ``i < m`` are kept (the others are
    the identity); in the upper-triangle layout they are the first ``num_angles(n, m)`` angles.  The
    first ``m`` *columns* of the restricted U cover all of St(n, m) (tested by fits to random targets;
    the first m rows do not, for the team schedule).

    Args:
        theta: ``(..., n*m - m(m+1)/2)`` angles.
        n (int): ambient dimension.  m (int): number of orthonormal columns, ``1 <= m <= n``.  Both
            may be omitted when ``schedule`` is a :class:`Schedule` restricted to ``m``
            (``schedule.restrict(m)``), which carries them.
        schedule, check_finite: as in :func:`matrix`.

    Returns:
        ndarray ``(..., n, m)`` with orthonormal columns, theta's dtype.
    """
    backend = _dispatch.so_backend(theta=theta)
    (theta,) = _arrays(backend, check_finite, theta=theta)
    n, m = _frame_sizes(n, m, schedule)
    sched = _v.resolve_so(theta.shape, n, schedule, m=m)
    if _v.is_empty(theta):
        return _v.zeros(backend.xp, theta.shape[:-1] + (sched.n, sched.m), theta.dtype)
    return backend.apply(theta, _eye_frame(backend, sched, theta.dtype), sched, False)


def _eye_frame(backend, sched, dtype):
    return backend.xp.eye(sched.n, sched.m, dtype=dtype)


# --------------------------------------------------------------------------- VJPs
# Rule (docs/conventions.md, "API rules"): a VJP returns each cotangent in the dtype of the primal
# input it belongs to (d_theta: theta's, d_x: x's); it computes in result_type of all its inputs.

def matrix_vjp(theta, cotangent, *, n=None, schedule=None, output=None, check_finite=True):
    r"""Gradient with respect to theta of a loss of ``U = matrix(theta)``, given ``cotangent = dL/dU``.

    Uses the reduction-free formula: :math:`W = \bar G U^T`, then per round (last first) the angle of
    pair ``(i, j)`` gets :math:`W[j,i] - W[i,j]` and :math:`W \leftarrow B_r^T W B_r`.

    Args:
        theta: ``(..., A)``.  cotangent: ``(..., n, n)``, the shape of the output.
        n, schedule, check_finite: as in :func:`matrix`.
        output: optionally ``U = matrix(theta)`` from the forward pass, to skip recomputing it (it is
            trusted: a different matrix gives a wrong gradient).
    Returns:
        ndarray shaped and typed like theta (computed in ``result_type`` of the inputs).
    """
    backend = _dispatch.so_backend(theta=theta, cotangent=cotangent, output=output)
    theta, cotangent, output = _arrays(backend, check_finite, theta=theta, cotangent=cotangent, output=output)
    sched = _v.resolve_so(theta.shape, n, schedule)
    shape = theta.shape[:-1] + (sched.n, sched.n)
    _v.same_shape("cotangent", cotangent.shape, shape, "matrix(theta)")
    if output is not None:
        _v.same_shape("output", output.shape, shape, "matrix(theta)")
    if _v.is_empty(theta):
        return _v.zeros(backend.xp, theta.shape, theta.dtype)
    dtype = _v.result_dtype(theta, cotangent, output)
    d = backend.matrix_vjp(_v.cast(theta, dtype), _v.cast(cotangent, dtype), sched, _v.cast(output, dtype))
    return d.astype(theta.dtype, copy=False)


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
        ``(d_theta, d_x)`` shaped and typed like theta and x (summed over broadcast batch axes; zeros
        when the batch is empty or ``k = 0``).
    """
    dask_fn = _dispatch.dask_function("apply_vjp", theta, x, cotangent, output)
    if dask_fn is not None:
        return dask_fn(theta, x, cotangent, transpose=transpose, schedule=schedule, output=output,
                       check_finite=check_finite, method=method)
    backend = _dispatch.so_backend(theta=theta, x=x, cotangent=cotangent, output=output)
    theta, x, cotangent, output = _arrays(backend, check_finite, theta=theta, x=x, cotangent=cotangent,
                                          output=output)
    transpose = _v.flag("transpose", transpose)
    x2, vector, sched, batch, how = _apply_setup(backend, theta, x, schedule, method)
    out_shape = batch + x2.shape[-2:]
    out_shape_public = out_shape[:-1] if vector else out_shape
    _v.same_shape("cotangent", cotangent.shape, out_shape_public, "apply(theta, x)")
    if output is not None:
        _v.same_shape("output", output.shape, out_shape_public, "apply(theta, x)")
    xp = backend.xp
    if _v.is_empty(theta, x2):
        return _v.zeros(xp, theta.shape, theta.dtype), _v.zeros(xp, x.shape, x.dtype)
    dtype = _v.result_dtype(theta, x, cotangent, output)
    if vector:
        cotangent = cotangent[..., None]
        output = None if output is None else output[..., None]
    if how == "materialize":
        theta_c, x_c, g_c = _v.cast(theta, dtype), _v.cast(x2, dtype), _v.cast(cotangent, dtype)
        u = backend.matrix(theta_c, sched)
        g_u = xp.matmul(x_c, _t(xp, g_c)) if transpose else xp.matmul(g_c, _t(xp, x_c))
        g_u = _sum_to(g_u, theta.shape[:-1] + g_u.shape[-2:])
        d_theta = backend.matrix_vjp(theta_c, g_u, sched, output=u)
        d_x = _sum_to(xp.matmul(u if transpose else _t(xp, u), g_c), x2.shape)
    else:
        d_theta, d_x = backend.apply_vjp(
            _v.cast(theta, dtype), _v.cast(x2, dtype), _v.cast(cotangent, dtype), sched,
            transpose, _v.cast(output, dtype),
        )
    return d_theta.astype(theta.dtype, copy=False), (d_x[..., 0] if vector else d_x).astype(x.dtype, copy=False)


def frame_vjp(theta, cotangent, n=None, m=None, *, schedule=None, output=None, check_finite=True):
    """Gradient with respect to theta of a loss of ``Q = frame(theta, n, m)``, given ``dL/dQ``.

    Args:
        theta, n, m, schedule, check_finite: as in :func:`frame`.
        cotangent: ``(..., n, m)``, the shape of ``Q``.
        output: optionally ``Q = frame(theta, n, m)`` from the forward pass (trusted), which skips
            recomputing it.

    Returns:
        ndarray shaped and typed like theta.
    """
    backend = _dispatch.so_backend(theta=theta, cotangent=cotangent, output=output)
    theta, cotangent, output = _arrays(backend, check_finite, theta=theta, cotangent=cotangent, output=output)
    n, m = _frame_sizes(n, m, schedule)
    sched = _v.resolve_so(theta.shape, n, schedule, m=m)
    shape = theta.shape[:-1] + (sched.n, sched.m)
    _v.same_shape("cotangent", cotangent.shape, shape, "frame(theta, n, m)")
    if output is not None:
        _v.same_shape("output", output.shape, shape, "frame(theta, n, m)")
    if _v.is_empty(theta):
        return _v.zeros(backend.xp, theta.shape, theta.dtype)
    dtype = _v.result_dtype(theta, cotangent, output)
    d_theta, _ = backend.apply_vjp(
        _v.cast(theta, dtype), _eye_frame(backend, sched, dtype), _v.cast(cotangent, dtype), sched, False,
        _v.cast(output, dtype),
    )
    return d_theta.astype(theta.dtype, copy=False)


# --------------------------------------------------------------------------- JVPs
# Rule (docs/conventions.md, "API rules"): a JVP returns the tangent of the output in the dtype of
# the output, result_type of all its inputs (primals and tangents).

def matrix_jvp(theta, tangent, *, n=None, schedule=None, check_finite=True):
    r"""Directional derivative :math:`dU = \sum_p t_p\, \partial U/\partial\theta_p` along ``tangent``.

    Carries :math:`(U_r, dU_r)` through the rounds: :math:`dU_r = B_r\,dU_{r-1} + K_r U_r`.

    Args:
        theta: ``(..., A)``.  tangent: same shape as theta.
    Returns:
        ndarray ``(..., n, n)`` of ``result_type(theta, tangent)``.
    """
    backend = _dispatch.so_backend(theta=theta, tangent=tangent)
    theta, tangent = _arrays(backend, check_finite, theta=theta, tangent=tangent)
    sched = _v.resolve_so(theta.shape, n, schedule)
    _v.same_shape("tangent", tangent.shape, theta.shape, "theta")
    dtype = _v.result_dtype(theta, tangent)
    if _v.is_empty(theta):
        return _v.zeros(backend.xp, theta.shape[:-1] + (sched.n, sched.n), dtype)
    return backend.matrix_jvp(_v.cast(theta, dtype), _v.cast(tangent, dtype), sched)


def apply_jvp(theta, x, theta_tangent, x_tangent=None, *, transpose=False, schedule=None, check_finite=True,
              method="auto"):
    r"""Tangent of ``y = apply(theta, x, transpose=...)`` along ``(theta_tangent, x_tangent)``.

    Args:
        theta_tangent: shaped like theta.  x_tangent: shaped like x, or None for zero.
        method: as in :func:`apply` (``"materialize"``: :math:`dU\,x + U\,dx` by GEMMs).
    Returns:
        ndarray shaped like ``apply(theta, x)``, dtype ``result_type`` of all four inputs.
    """
    dask_fn = _dispatch.dask_function("apply_jvp", theta, x, theta_tangent, x_tangent)
    if dask_fn is not None:
        return dask_fn(theta, x, theta_tangent, x_tangent, transpose=transpose, schedule=schedule,
                       check_finite=check_finite, method=method)
    backend = _dispatch.so_backend(theta=theta, x=x, theta_tangent=theta_tangent, x_tangent=x_tangent)
    theta, x, theta_tangent, x_tangent = _arrays(
        backend, check_finite, theta=theta, x=x, theta_tangent=theta_tangent, x_tangent=x_tangent)
    transpose = _v.flag("transpose", transpose)
    _v.same_shape("theta_tangent", theta_tangent.shape, theta.shape, "theta")
    if x_tangent is not None:
        _v.same_shape("x_tangent", x_tangent.shape, x.shape, "x")
    x2, vector, sched, batch, how = _apply_setup(backend, theta, x, schedule, method)
    dtype = _v.result_dtype(theta, x, theta_tangent, x_tangent)
    xp = backend.xp
    if _v.is_empty(theta, x2):
        dy = _v.zeros(xp, batch + x2.shape[-2:], dtype)
        return dy[..., 0] if vector else dy
    xt2 = None if x_tangent is None else _x_as_matrix(x_tangent)[0]
    if how == "materialize":
        theta_c, x_c = _v.cast(theta, dtype), _v.cast(x2, dtype)
        u = backend.matrix(theta_c, sched)
        du = backend.matrix_jvp(theta_c, _v.cast(theta_tangent, dtype), sched)
        if transpose:
            u, du = _t(xp, u), _t(xp, du)
        dy = xp.matmul(du, x_c)
        if xt2 is not None:
            dy = dy + xp.matmul(u, _v.cast(xt2, dtype))
    else:
        dy = backend.apply_jvp(
            _v.cast(theta, dtype), _v.cast(x2, dtype), _v.cast(theta_tangent, dtype), _v.cast(xt2, dtype),
            sched, transpose,
        )
    return dy[..., 0] if vector else dy


def frame_jvp(theta, tangent, n=None, m=None, *, schedule=None, check_finite=True):
    """Tangent ``dQ`` of ``Q = frame(theta, n, m)`` along ``tangent`` (shaped like theta).

    Returns:
        ndarray ``(..., n, m)`` of ``result_type(theta, tangent)``.
    """
    backend = _dispatch.so_backend(theta=theta, tangent=tangent)
    theta, tangent = _arrays(backend, check_finite, theta=theta, tangent=tangent)
    n, m = _frame_sizes(n, m, schedule)
    sched = _v.resolve_so(theta.shape, n, schedule, m=m)
    _v.same_shape("tangent", tangent.shape, theta.shape, "theta")
    dtype = _v.result_dtype(theta, tangent)
    if _v.is_empty(theta):
        return _v.zeros(backend.xp, theta.shape[:-1] + (sched.n, sched.m), dtype)
    return backend.apply_jvp(
        _v.cast(theta, dtype), _eye_frame(backend, sched, dtype), _v.cast(tangent, dtype), None, sched, False
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
