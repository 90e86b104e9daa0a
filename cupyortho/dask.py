r"""``apply``, ``apply_vjp`` and ``apply_jvp`` for a Dask array ``x`` chunked along its columns.

:func:`cupyortho.apply`, :func:`cupyortho.apply_vjp` and :func:`cupyortho.apply_jvp` call these
functions when an argument is a ``dask.array.Array``; they can also be called directly.  Dask is
imported only then (``pip install "cupyortho[dask]"``).

Data layout: ``x`` is ``(n, k)`` (or ``(..., n, k)``, or a vector ``(n,)``) with chunks of NumPy
arrays (or of CuPy arrays, on a GPU) along the column axis ``k`` and the batch axes; the row axis
``n`` must be one chunk (a chunked ``n`` raises :class:`~cupyortho.errors.ShapeError`: rotations mix
all ``n`` rows of a column, so rechunk with ``x.rechunk({x.ndim - 2: -1})``).  ``theta`` is one
in-memory angle vector ``(A,)`` shared by every chunk.  Cotangents and tangents may be Dask arrays
(rechunked to ``x``'s chunks) or in-memory arrays.

Results are lazy Dask arrays with ``x``'s chunks; nothing is computed until the caller computes.
The strategy is the library's (``docs/design.md`` §11, decided on the whole array's shape):

* ``"materialize"`` (what ``"auto"`` picks when ``k >= n``): ``U = matrix(theta)`` is one task
  shared by every chunk, each chunk is a GEMM (``U @ x_c``), and ``apply_vjp``'s ``d_theta`` is
  ``matrix_vjp(theta, G)`` of ``G = sum_c g_c x_cᵀ`` (``docs/design.md`` §6).
* ``"rounds"``: each chunk runs :func:`cupyortho.apply` / ``apply_vjp`` / ``apply_jvp`` with
  ``method="rounds"`` (``docs/design.md`` §5, §7), and ``d_theta`` sums the per-chunk ``d_theta``.

Either way ``d_theta`` is a **deterministic tree reduction**: the per-chunk parts are added in
pairs in chunk order, level by level, so the same chunking gives the same bits whatever the
scheduler.  Memory: a chunk and its outputs at a time per worker, plus ``U`` and ``G`` (``n x n``).
Checks on metadata (dtypes, shapes, chunks, angle counts) happen when the function is called;
``check_finite`` on the chunks happens when they are computed.
"""

from __future__ import annotations

import numpy as np

from . import _api, _dispatch
from . import _validate as _v
from ._strategy import apply_method
from .errors import BackendMismatchError, ShapeError

__all__ = ["apply", "apply_vjp", "apply_jvp", "is_dask_array"]


def is_dask_array(a) -> bool:
    """True for a ``dask.array.Array`` (checked without importing Dask)."""
    return type(a).__module__.split(".")[0] == "dask" and hasattr(a, "chunks")


# --------------------------------------------------------------------------- checks

def _check_x(x, check_finite):
    if not is_dask_array(x):
        raise BackendMismatchError(f"x must be a dask array for cupyortho.dask, got {type(x).__name__}")
    _v.check_dtype("x", x.dtype)
    _v.check_ndim("x", x.shape, 1)
    row_axis = 0 if x.ndim == 1 else x.ndim - 2
    if x.numblocks[row_axis] != 1:
        raise ShapeError(
            f"x must be one chunk along its row axis n (axis {row_axis}); got chunks "
            f"{x.chunks[row_axis]}: rotations mix all n rows of a column, so chunk along the "
            f"columns k instead, e.g. x.rechunk({{{row_axis}: -1}})"
        )
    _v.x_rows("x", x.shape)
    return x


def _meta(x):
    """An empty array of the library of x's chunks (NumPy unless they are CuPy)."""
    meta = getattr(x, "_meta", None)
    return meta if meta is not None else np.empty(0)


def _check_theta(theta, x, schedule, check_finite):
    if is_dask_array(theta):
        raise BackendMismatchError(
            "theta must be an in-memory NumPy or CuPy array (one angle vector shared by every chunk "
            "of x); got a dask array: pass theta.compute()"
        )
    backend = _dispatch.so_backend(theta=theta, x=_meta(x))
    check_finite = _v.flag("check_finite", check_finite)
    theta = _v.as_array("theta", theta, backend, check_finite=check_finite)
    if theta.ndim != 1:
        raise ShapeError(
            f"theta must be one angle vector (A,) when x is a dask array; got shape {tuple(theta.shape)} "
            "(batches of angle vectors: loop over them, or use in-memory arrays)"
        )
    n = x.shape[0] if x.ndim == 1 else x.shape[-2]
    sched = _v.resolve_so(theta.shape, n, schedule, n_name="n (from x.shape)")
    return theta, backend, sched


def _like_x(name, a, x):
    """A cotangent/tangent as a dask array with exactly x's shape and chunks (None stays None)."""
    import dask.array as da

    if a is None:
        return None
    if not is_dask_array(a):
        if not hasattr(a, "dtype"):
            a = np.asarray(a)
        a = da.from_array(a, chunks=x.chunks) if tuple(a.shape) == tuple(x.shape) else da.asarray(a)
    _v.check_dtype(name, a.dtype)
    _v.same_shape(name, a.shape, x.shape, "x" if name.startswith("x") else "apply(theta, x)")
    return a.rechunk(x.chunks) if a.chunks != x.chunks else a


# --------------------------------------------------------------------------- graph helpers

def _delayed_blocks(a):
    """Object array (shape ``a.numblocks``) of one Delayed per block, keys shared with ``a``."""
    return a.to_delayed(optimize_graph=False)


def _assemble(tasks, chunks, dtype, meta):
    """A dask array from an object array of Delayed blocks with the given chunks."""
    import dask.array as da

    def nest(index):
        depth = len(index)
        if depth == len(chunks):
            shape = tuple(chunks[d][i] for d, i in enumerate(index))
            return da.from_delayed(tasks[index], shape=shape, dtype=dtype, meta=meta)
        return [nest(index + (i,)) for i in range(len(chunks[depth]))]

    return da.block(nest(()))


def _add(a, b):
    return a + b


def _tree_sum(parts):
    """Deterministic pairwise sum of Delayed parts in their order (level by level)."""
    from dask import delayed

    parts = list(parts)
    while len(parts) > 1:
        nxt = [delayed(_add, pure=True)(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


def _as_matrix(x):
    """(n,) -> (n, 1) lazily; (..., n, k) unchanged."""
    return (x[:, None], True) if x.ndim == 1 else (x, False)


def _t(a):
    return a.swapaxes(-1, -2)


# --------------------------------------------------------------------------- chunk functions

def _checked(name, a, backend, check_finite, dtype):
    return _v.cast(_v.as_array(name, a, backend, check_finite=check_finite), dtype)


def _chunk_matmul(xb, u, name, backend, check_finite, dtype, transpose):
    xb = _checked(name, xb, backend, check_finite, dtype)
    return (_t(u) if transpose else u) @ xb


def _chunk_materialized_vjp(xb, gb, u, backend, check_finite, dtype, transpose, n):
    """This chunk's contribution to dL/dU (g xᵀ, or x gᵀ for the transpose, summed over batch axes)
    and its d_x (Uᵀ g, or U g), from one read of the chunk."""
    xb = _checked("x", xb, backend, check_finite, dtype)
    gb = _checked("cotangent", gb, backend, check_finite, dtype)
    gu = xb @ _t(gb) if transpose else gb @ _t(xb)
    return gu.reshape(-1, n, n).sum(axis=0), (u if transpose else _t(u)) @ gb


def _chunk_jvp_materialized(u, du, xb, xtb, backend, check_finite, dtype, transpose):
    xb = _checked("x", xb, backend, check_finite, dtype)
    if transpose:
        u, du = _t(u), _t(du)
    dy = du @ xb
    if xtb is not None:
        dy = dy + u @ _checked("x_tangent", xtb, backend, check_finite, dtype)
    return dy


def _chunk_rounds_vjp(theta, xb, gb, ob, schedule, transpose, check_finite):
    return _api.apply_vjp(theta, xb, gb, transpose=transpose, schedule=schedule, output=ob,
                          check_finite=check_finite, method="rounds")


# --------------------------------------------------------------------------- public

def apply(theta, x, *, transpose=False, schedule=None, check_finite=True, method="auto"):
    r"""Lazy ``U(theta) @ x`` (``U.T @ x`` with ``transpose=True``) for a Dask array ``x``.

    Args:
        theta (numpy.ndarray or cupy.ndarray, float32 or float64): one angle vector
            ``(n(n-1)/2,)``, in memory (the library of x's chunks).
        x (dask.array.Array, float32 or float64): ``(n,)``, ``(n, k)`` or ``(..., n, k)``, one chunk
            along ``n``, any chunks along ``k`` and the batch axes.
        transpose, schedule, check_finite, method: as in :func:`cupyortho.apply`.

    Returns:
        dask.array.Array: shaped and chunked like ``x``, dtype ``result_type(theta, x)``.

    Raises:
        ShapeError: x chunked along ``n``; theta not one vector.
        BackendMismatchError: theta is a Dask array, or lives in another library than x's chunks.
        DtypeError, AngleCountError, SizeError, ScheduleError, MethodError: as
            :func:`cupyortho.apply`.  NaN/inf in a chunk raises NonFiniteError when it is computed.
    """
    from dask import delayed

    x = _check_x(x, check_finite)
    transpose = _v.flag("transpose", transpose)
    check_finite = _v.flag("check_finite", check_finite)
    theta, backend, sched = _check_theta(theta, x, schedule, check_finite)
    x2, vector = _as_matrix(x)
    dtype = np.result_type(theta.dtype, x2.dtype)
    theta_c = theta.astype(dtype, copy=False)
    meta = backend.xp.empty((0,) * x2.ndim, dtype=dtype)
    if apply_method(method, theta, x2) == "materialize":
        u = delayed(backend.matrix, pure=True)(theta_c, sched)
        y = x2.map_blocks(_chunk_matmul, u, "x", backend, check_finite, dtype, bool(transpose),
                          dtype=dtype, meta=meta)
    else:
        y = x2.map_blocks(lambda xb: _api.apply(theta_c, xb, transpose=transpose, schedule=sched,
                                                check_finite=check_finite, method="rounds"),
                          dtype=dtype, meta=meta)
    return y[..., 0] if vector else y


def apply_vjp(theta, x, cotangent, *, transpose=False, schedule=None, output=None, check_finite=True,
              method="auto"):
    r"""Lazy cotangents ``(d_theta, d_x)`` of ``y = apply(theta, x)`` for a Dask array ``x``.

    ``d_theta`` is a deterministic tree reduction over the chunks (module docstring).

    Args:
        theta, x, transpose, schedule, check_finite, method: as in :func:`apply`.
        cotangent: ``dL/dy``, shaped like ``y``; a Dask array (rechunked to x's chunks) or in memory.
        output: optionally ``y`` itself (used by ``method="rounds"`` to skip the forward pass).

    Returns:
        ``(d_theta, d_x)``: a Dask array ``(A,)`` of theta's dtype, and a Dask array shaped and chunked
        like ``x`` of x's dtype.

    Raises:
        ShapeError: cotangent/output not shaped like ``y``; as :func:`apply` otherwise.
    """
    import dask.array as da
    from dask import delayed

    x = _check_x(x, check_finite)
    transpose = _v.flag("transpose", transpose)
    check_finite = _v.flag("check_finite", check_finite)
    theta, backend, sched = _check_theta(theta, x, schedule, check_finite)
    cotangent = _like_x("cotangent", cotangent, x)
    output = _like_x("output", output, x)
    x2, vector = _as_matrix(x)
    g2 = _as_matrix(cotangent)[0]
    o2 = None if output is None else _as_matrix(output)[0]
    dtype = np.result_type(theta.dtype, x2.dtype, g2.dtype, *(() if o2 is None else (o2.dtype,)))
    theta_c = theta.astype(dtype, copy=False)
    xp = backend.xp
    n = x2.shape[-2]
    A = theta.shape[-1]
    if apply_method(method, theta, x2) == "materialize":
        u = delayed(backend.matrix, pure=True)(theta_c, sched)
        xb, gb = _delayed_blocks(x2), _delayed_blocks(g2)
        tasks = np.empty(xb.shape, dtype=object)
        for i in np.ndindex(xb.shape):
            tasks[i] = delayed(_chunk_materialized_vjp, pure=True, nout=2)(
                xb[i], gb[i], u, backend, check_finite, dtype, bool(transpose), n)
        gram = _tree_sum([tasks[i][0] for i in np.ndindex(tasks.shape)])
        d_theta = delayed(backend.matrix_vjp, pure=True)(theta_c, gram, sched, u)
        d_theta = da.from_delayed(d_theta, shape=(A,), dtype=dtype, meta=xp.empty((0,), dtype=dtype))
        d_x = _assemble(np.vectorize(lambda t: t[1], otypes=[object])(tasks), x2.chunks, dtype,
                        xp.empty((0,) * x2.ndim, dtype=dtype))
    else:
        xb, gb = _delayed_blocks(x2), _delayed_blocks(g2)
        ob = None if o2 is None else _delayed_blocks(o2)
        tasks = np.empty(xb.shape, dtype=object)
        for i in np.ndindex(xb.shape):
            tasks[i] = delayed(_chunk_rounds_vjp, pure=True, nout=2)(
                theta_c, xb[i], gb[i], None if ob is None else ob[i], sched, bool(transpose), check_finite)
        d_theta = _tree_sum([tasks[i][0] for i in np.ndindex(tasks.shape)])
        d_theta = da.from_delayed(d_theta, shape=(A,), dtype=dtype, meta=xp.empty((0,), dtype=dtype))
        d_x = _assemble(np.vectorize(lambda t: t[1], otypes=[object])(tasks), x2.chunks, dtype,
                        xp.empty((0,) * x2.ndim, dtype=dtype))
    d_x = d_x[..., 0] if vector else d_x
    return d_theta.astype(theta.dtype), d_x.astype(x.dtype)


def apply_jvp(theta, x, theta_tangent, x_tangent=None, *, transpose=False, schedule=None,
              check_finite=True, method="auto"):
    r"""Lazy tangent of ``y = apply(theta, x)`` along ``(theta_tangent, x_tangent)``, x a Dask array.

    Args:
        theta, x, transpose, schedule, check_finite, method: as in :func:`apply`.
        theta_tangent: in-memory array shaped like theta.
        x_tangent: shaped like x (Dask or in memory), or None for zero.

    Returns:
        dask.array.Array shaped and chunked like ``x``, dtype ``result_type`` of the inputs.

    Raises:
        ShapeError: a tangent of the wrong shape; as :func:`apply` otherwise.
    """
    from dask import delayed

    x = _check_x(x, check_finite)
    transpose = _v.flag("transpose", transpose)
    check_finite = _v.flag("check_finite", check_finite)
    theta, backend, sched = _check_theta(theta, x, schedule, check_finite)
    if is_dask_array(theta_tangent):
        raise BackendMismatchError("theta_tangent must be an in-memory array like theta; got a dask array")
    theta_tangent = _v.as_array("theta_tangent", theta_tangent, backend, check_finite=check_finite)
    _v.same_shape("theta_tangent", theta_tangent.shape, theta.shape, "theta")
    x_tangent = _like_x("x_tangent", x_tangent, x)
    x2, vector = _as_matrix(x)
    xt2 = None if x_tangent is None else _as_matrix(x_tangent)[0]
    dtype = np.result_type(theta.dtype, x2.dtype, theta_tangent.dtype,
                           *(() if xt2 is None else (xt2.dtype,)))
    theta_c = theta.astype(dtype, copy=False)
    tt_c = theta_tangent.astype(dtype, copy=False)
    meta = backend.xp.empty((0,) * x2.ndim, dtype=dtype)
    if apply_method(method, theta, x2) == "materialize":
        u = delayed(backend.matrix, pure=True)(theta_c, sched)
        du = delayed(backend.matrix_jvp, pure=True)(theta_c, tt_c, sched)
        args = (x2,) if xt2 is None else (x2, xt2)

        def fn(*blocks, u, du):
            return _chunk_jvp_materialized(u, du, blocks[0], blocks[1] if len(blocks) > 1 else None,
                                           backend, check_finite, dtype, bool(transpose))

        dy = x2.map_blocks(fn, *args[1:], u=u, du=du, dtype=dtype, meta=meta)
    else:
        def fn(xb, xtb=None):
            return _api.apply_jvp(theta_c, xb, tt_c, xtb, transpose=transpose, schedule=sched,
                                  check_finite=check_finite, method="rounds")

        dy = x2.map_blocks(fn, *(() if xt2 is None else (xt2,)), dtype=dtype, meta=meta)
    return dy[..., 0] if vector else dy
