r"""JAX adapter: :func:`matrix`, :func:`frame` and :func:`apply` as ``jax.custom_vjp`` functions.

Design rule: this module only wires.  The forward and backward rules call cupyortho's public
functions (:func:`cupyortho.matrix`, :func:`cupyortho.frame`, :func:`cupyortho.apply` and their
``_vjp``) through JAX callbacks; the mathematics lives there.  ``import cupyortho`` never imports
jax: import ``cupyortho.jax`` explicitly.

How the arrays travel:

* CPU (and any platform without the CuPy path): :func:`jax.pure_callback` hands NumPy views to
  cupyortho's NumPy backend.  On an accelerator this copies through the host.
* CUDA, when CuPy is installed: :func:`jax.experimental.buffer_callback.buffer_callback` hands the
  device buffers to the CuPy backend without a host copy, running on XLA's stream, and the results
  are written into XLA's output buffers.  The platform is chosen per lowering with
  :func:`jax.lax.platform_dependent`.  This path is *not tested* on a GPU yet (no GPU here); its
  wiring is tested on the CPU, where the same callback runs with NumPy buffers.

Transformations: ``jit`` and ``grad``/``vjp`` (exact, reverse mode, cupyortho's VJPs) work;
``vmap`` works through ``vmap_method="expand_dims"`` (the callbacks broadcast the mapped axes as
views and cupyortho's batch axes do the rest).  ``custom_vjp`` excludes a custom JVP, so forward
mode (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) is *not* supported (JAX raises), and
derivatives are first order only: the backward rule is itself a callback.

NaN and infinity propagate (cupyortho is called with ``check_finite=False``).  Dtypes: float32 and
float64 (float64 needs ``jax_enable_x64``); ``apply`` promotes theta and x to a common dtype.

:func:`unitary` and :func:`unitary_apply` wire :mod:`cupyortho._unitary` the same way; JAX's
cotangent of a complex output is the conjugate of cupyortho's (torch's) convention, so complex
cotangents are conjugated on the way in and complex ``d_x`` on the way out.

Shapes are those of :mod:`cupyortho`: theta ``(..., A)``; ``matrix`` -> ``(..., n, n)``;
``frame`` -> ``(..., n, m)``; ``apply`` takes ``x`` of shape ``(n,)`` or ``(..., n, k)`` with batch
axes broadcasting against theta's.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import cupyortho as _co
from ._api import _frame_sizes
from . import _validate as _v
from . import schedule as _sched
from . import _unitary as _umod
from .errors import ArrayTypeError

__all__ = ["matrix", "frame", "apply", "unitary", "unitary_apply"]

_VMAP_METHOD = "expand_dims"


# --------------------------------------------------------------------------- callbacks

def _xp(a):
    return sys.modules["cupy"] if type(a).__module__.split(".")[0] == "cupy" else np


def _lift(arrays, core_ndims):
    """Broadcast the leading axes that vmap added (as views) so every array shares them.

    ``core_ndims[i]`` is the rank array ``i`` had when the function was traced; with
    ``vmap_method="expand_dims"`` every array gets the same number of extra leading axes, of size 1
    where it is not mapped.
    """
    extra = arrays[0].ndim - core_ndims[0]
    if extra == 0:
        return arrays
    lead = np.broadcast_shapes(*[a.shape[:extra] for a in arrays])
    return [_xp(a).broadcast_to(a, lead + a.shape[extra:]) for a in arrays]


def _host_call(fn, out_types, core_ndims, *args):
    """``fn`` on NumPy views of ``args`` through :func:`jax.pure_callback`; returns a tuple."""

    def callback(*arrays):
        arrays = _lift([np.asarray(a) for a in arrays], core_ndims)
        out = fn(*arrays)
        out = out if isinstance(out, tuple) else (out,)
        return tuple(np.asarray(o, dtype=t.dtype) for o, t in zip(out, out_types))

    return jax.pure_callback(callback, tuple(out_types), *args, vmap_method=_VMAP_METHOD)


class _CudaStreamRef:
    """XLA's raw stream handle exposed through the CUDA stream protocol (for CuPy)."""

    def __init__(self, ptr):
        self._ptr = int(ptr)

    def __cuda_stream__(self):
        return (0, self._ptr)


def _on_gpu(buffer) -> bool:
    """Whether a ``buffer_callback`` Buffer lives on a GPU (its CUDA array interface works)."""
    try:
        buffer.__cuda_array_interface__
    except Exception:  # the CPU buffers raise UNIMPLEMENTED
        return False
    return True


def _buffer_call(fn, out_types, core_ndims, *args):
    """``fn`` on the device buffers through ``buffer_callback``, writing XLA's output buffers.

    On a GPU the buffers are viewed as CuPy arrays (``__cuda_array_interface__``, no copy) and CuPy
    runs on XLA's stream; on the CPU they are NumPy arrays (which is how this path is tested here).
    """
    from jax.experimental.buffer_callback import buffer_callback

    def callback(ctx, out, *buffers):
        if _on_gpu(buffers[0]):  # pragma: no cover - needs a GPU
            import cupy

            ptr = buffers[0].__cuda_array_interface__["data"][0]
            device = cupy.cuda.runtime.pointerGetAttributes(ptr).device
            with cupy.cuda.Device(device), cupy.cuda.Stream.from_external(_CudaStreamRef(ctx.stream)):
                arrays = _lift([cupy.asarray(b) for b in buffers], core_ndims)
                result = fn(*arrays)
                result = result if isinstance(result, tuple) else (result,)
                for o, r in zip(out, result):
                    cupy.asarray(o)[...] = r
            return
        arrays = _lift([np.asarray(b) for b in buffers], core_ndims)
        result = fn(*arrays)
        result = result if isinstance(result, tuple) else (result,)
        for o, r in zip(out, result):
            np.asarray(o)[...] = r

    return buffer_callback(callback, tuple(out_types), vmap_method=_VMAP_METHOD)(*args)


def _has_cupy() -> bool:
    return importlib.util.find_spec("cupy") is not None


def _call(fn, out_types, core_ndims, *args):
    """Run ``fn`` (a cupyortho function of arrays) on the platform the computation is lowered for."""
    host = functools.partial(_host_call, fn, out_types, core_ndims)
    if not _has_cupy():
        return host(*args)
    device = functools.partial(_buffer_call, fn, out_types, core_ndims)
    return jax.lax.platform_dependent(*args, cuda=device, default=host)


def _like(a, shape=None):
    return jax.ShapeDtypeStruct(a.shape if shape is None else shape, a.dtype)


# --------------------------------------------------------------------------- custom_vjp cores
# Every core takes arrays already checked and cast by the public functions below, and the
# schedule (a hashable Schedule) as a non-differentiable argument.

@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _matrix(theta, sched):
    n = sched.n
    fn = lambda t: _co.matrix(t, schedule=sched, check_finite=False)  # noqa: E731
    return _call(fn, [_like(theta, theta.shape[:-1] + (n, n))], [theta.ndim], theta)[0]


def _matrix_fwd(theta, sched):
    return _matrix(theta, sched), theta


def _matrix_bwd(sched, theta, g):
    fn = lambda t, c: _co.matrix_vjp(t, c, schedule=sched, check_finite=False)  # noqa: E731
    return _call(fn, [_like(theta)], [theta.ndim, g.ndim], theta, g)


_matrix.defvjp(_matrix_fwd, _matrix_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _frame(theta, sched, n, m):
    fn = lambda t: _co.frame(t, n, m, schedule=sched, check_finite=False)  # noqa: E731
    return _call(fn, [_like(theta, theta.shape[:-1] + (n, m))], [theta.ndim], theta)[0]


def _frame_fwd(theta, sched, n, m):
    return _frame(theta, sched, n, m), theta


def _frame_bwd(sched, n, m, theta, g):
    fn = lambda t, c: _co.frame_vjp(t, c, n, m, schedule=sched, check_finite=False)  # noqa: E731
    return _call(fn, [_like(theta)], [theta.ndim, g.ndim], theta, g)


_frame.defvjp(_frame_fwd, _frame_bwd)


def _apply_out(theta, x):
    return _like(x, jnp.broadcast_shapes(theta.shape[:-1], x.shape[:-2]) + x.shape[-2:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _apply(theta, x, sched, transpose):
    fn = lambda t, a: _co.apply(t, a, transpose=transpose, schedule=sched, check_finite=False)  # noqa: E731
    return _call(fn, [_apply_out(theta, x)], [theta.ndim, x.ndim], theta, x)[0]


def _apply_fwd(theta, x, sched, transpose):
    y = _apply(theta, x, sched, transpose)
    return y, (theta, x, y)


def _apply_bwd(sched, transpose, res, g):
    theta, x, y = res

    def fn(t, a, out, c):
        return _co.apply_vjp(t, a, c, transpose=transpose, schedule=sched, output=out, check_finite=False)

    return _call(fn, [_like(theta), _like(x)], [theta.ndim, x.ndim, y.ndim, g.ndim], theta, x, y, g)


_apply.defvjp(_apply_fwd, _apply_bwd)


# Unitary.  cupyortho.unitary_vjp takes and returns cotangents of complex arrays as dL/dRe + i dL/dIm
# (torch's convention); JAX's are the complex conjugate, so complex cotangents are conjugated on
# the way in and the complex d_x on the way out.

def _complex_of(dtype):
    return jnp.complex64 if dtype == jnp.float32 else jnp.complex128


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _unitary(params, sched, special):
    n = sched.n
    fn = lambda p: _umod.unitary(p, special=special, schedule=sched, check_finite=False)  # noqa: E731
    out = jax.ShapeDtypeStruct(params.shape[:-1] + (n, n), _complex_of(params.dtype))
    return _call(fn, [out], [params.ndim], params)[0]


def _unitary_fwd(params, sched, special):
    return _unitary(params, sched, special), params


def _unitary_bwd(sched, special, params, g):
    fn = lambda p, c: _umod.unitary_vjp(p, c, special=special, schedule=sched, check_finite=False)  # noqa: E731
    return _call(fn, [_like(params)], [params.ndim, g.ndim], params, jnp.conj(g))


_unitary.defvjp(_unitary_fwd, _unitary_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _unitary_apply(params, x, sched, special, adjoint):
    def fn(p, a):
        return _umod.unitary_apply(p, a, special=special, adjoint=adjoint, schedule=sched, check_finite=False)

    out = jax.ShapeDtypeStruct(_apply_out(params, x).shape, _complex_of(params.dtype))
    return _call(fn, [out], [params.ndim, x.ndim], params, x)[0]


def _unitary_apply_fwd(params, x, sched, special, adjoint):
    y = _unitary_apply(params, x, sched, special, adjoint)
    return y, (params, x, y)


def _unitary_apply_bwd(sched, special, adjoint, res, g):
    params, x, y = res

    def fn(p, a, out, c):
        return _umod.unitary_apply_vjp(
            p, a, c, special=special, adjoint=adjoint, schedule=sched, output=out, check_finite=False
        )

    d_params, d_x = _call(
        fn, [_like(params), _like(x)], [params.ndim, x.ndim, y.ndim, g.ndim], params, x, y, jnp.conj(g)
    )
    return d_params, (jnp.conj(d_x) if jnp.iscomplexobj(x) else d_x)


_unitary_apply.defvjp(_unitary_apply_fwd, _unitary_apply_bwd)


# --------------------------------------------------------------------------- public functions
# Validation is cupyortho._validate's (the same rules and messages as the NumPy functions); this
# module only converts to jax arrays and wires the cores above.

def _jax_array(name, a, allowed=_v.REAL):
    """``a`` as a jax array with a dtype in ``allowed`` and at least one axis (cupyortho errors only).

    A float64 input while ``jax_enable_x64`` is off would be silently downcast to float32 by JAX:
    it warns (UserWarning naming the argument) and continues in float32.
    """
    if a is None:
        raise ArrayTypeError(f"{name} must be an array of dtype {' or '.join(allowed)}, got None")
    if isinstance(a, np.ma.MaskedArray):
        raise ArrayTypeError(f"{name} must be a plain array, got a masked array (numpy.ma.MaskedArray): "
                             f"its mask would be ignored; pass {name}.filled(value) explicitly")
    dt = getattr(a, "dtype", None)
    if dt is not None:
        name_of = _v.check_dtype(name, dt, allowed)
        if name_of in ("float64", "complex128") and not jax.config.jax_enable_x64:
            warnings.warn(
                f"{name} has dtype {name_of} but jax_enable_x64 is off, so JAX computes in "
                f"{'float32' if name_of == 'float64' else 'complex64'}; enable x64 "
                "(jax.config.update('jax_enable_x64', True)) to keep double precision",
                UserWarning, stacklevel=3,
            )
    if isinstance(a, (str, bytes, dict, set)):
        raise ArrayTypeError(f"{name} must be an array of dtype {' or '.join(allowed)}, got a {type(a).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # JAX's own downcast warning: ours is above
            a = jnp.asarray(a)
    except Exception as exc:
        raise ArrayTypeError(
            f"{name} must be an array of dtype {' or '.join(allowed)}, got a {type(a).__name__} that cannot "
            f"be converted ({type(exc).__name__}: {exc})"
        ) from None
    _v.check_dtype(name, a.dtype, allowed)
    _v.check_ndim(name, a.shape, 1)
    return a


def _full_schedule(sched):
    """The hashable, unrestricted Schedule the cores take (frames pass n and m separately)."""
    return sched.unrestricted()  # also for brick, truncated and user-built schedules


def _pad_batch(a, b, core_a, core_b):
    """Give ``a`` and ``b`` batch axes of equal rank (size-1 padding, a free reshape), so the axes
    vmap adds in front line up in the callbacks."""
    rank = max(a.ndim - core_a, b.ndim - core_b)
    return (a.reshape((1,) * (rank - a.ndim + core_a) + a.shape),
            b.reshape((1,) * (rank - b.ndim + core_b) + b.shape))


def matrix(theta, *, n=None, schedule=None):
    r"""The rotation :math:`U(\theta) = B_{R-1}\cdots B_0 \in SO(n)` (see :func:`cupyortho.matrix`).

    Args:
        theta: ``(..., n(n-1)/2)`` angles, float32 or float64.
        n (int, optional): taken from a Schedule, else inferred from the angle count when omitted.
        schedule (str | Schedule | None): as in :func:`cupyortho.matrix`.

    Returns:
        ``jax.Array`` ``(..., n, n)``; differentiable in reverse mode, jit- and vmap-compatible.

    Raises:
        the :mod:`cupyortho.errors` classes of :func:`cupyortho.matrix` (never JAX's own errors).
    """
    theta = _jax_array("theta", theta)
    sched = _v.resolve_so(theta.shape, n, schedule)
    if sched.m is not None:
        return _frame(theta, _full_schedule(sched), sched.n, sched.m)
    return _matrix(theta, sched)


def frame(theta, n=None, m=None, *, schedule=None):
    r"""The first ``m`` columns of the Stiefel-restricted :math:`U(\theta)` (see :func:`cupyortho.frame`).

    Args:
        theta: ``(..., n*m - m(m+1)/2)`` angles.  n, m (int): ``1 <= m <= n`` (or from a restricted
            Schedule).
        schedule: as in :func:`matrix`.

    Returns:
        ``jax.Array`` ``(..., n, m)`` with orthonormal columns.
    """
    theta = _jax_array("theta", theta)
    n, m = _frame_sizes(n, m, schedule)
    sched = _v.resolve_so(theta.shape, n, schedule, m=m)
    return _frame(theta, _full_schedule(sched), sched.n, sched.m)


def apply(theta, x, *, transpose=False, schedule=None):
    r"""``U(theta) @ x`` (or ``U(theta).T @ x``) without forming U (see :func:`cupyortho.apply`).

    Args:
        theta: ``(..., A)`` angles.  x: ``(n,)`` or ``(..., n, k)``; batch axes broadcast.
        transpose (bool): apply :math:`U^T`.  schedule: as in :func:`matrix`.

    Returns:
        ``jax.Array`` of the ``matmul`` broadcast shape, dtype ``result_type(theta, x)``.
    """
    theta = _jax_array("theta", theta)
    x = _jax_array("x", x)
    transpose = _v.flag("transpose", transpose)
    n, vector = _v.x_rows("x", x.shape)
    x2 = x[:, None] if vector else x
    sched = _v.resolve_so(theta.shape, n, schedule, n_name="n (from x.shape)")
    _v.batch_shape(("theta", theta.shape[:-1]), ("x", x2.shape[:-2]))
    dtype = jnp.result_type(theta, x)
    theta_p, x_p = _pad_batch(theta.astype(dtype), x2.astype(dtype), 1, 2)
    y = _apply(theta_p, x_p, _full_schedule(sched), transpose)
    return y[..., 0] if vector else y


def unitary(params, *, n=None, special=False, schedule=None):
    r"""The unitary :math:`U = D(\delta) B_{R-1}\cdots B_0` (see :func:`cupyortho.unitary`).

    Args:
        params: real ``(..., P)``, ``P = n*n`` (U(n)) or ``n*n - 1`` (SU(n), ``special=True``),
            laid out ``[theta, phi, delta]``.
        n (int, optional), schedule: as in :func:`matrix`.

    Returns:
        complex ``jax.Array`` ``(..., n, n)``.  Gradients follow JAX's complex convention.
    """
    params = _jax_array("params", params)
    special = _v.flag("special", special)
    sched = _v.resolve_u(params.shape, n, special, schedule)
    return _unitary(params, sched, special)


def unitary_apply(params, x, *, special=False, adjoint=False, schedule=None):
    r"""``U(params) @ x`` (or ``U^H @ x``) without forming U (see :func:`cupyortho.unitary_apply`).

    ``x`` is real or complex, ``(n,)`` or ``(..., n, k)``; the result is complex.
    """
    params = _jax_array("params", params)
    x = _jax_array("x", x, _v.ANY)
    special, adjoint = _v.flag("special", special), _v.flag("adjoint", adjoint)
    n, vector = _v.x_rows("x", x.shape)
    x2 = x[:, None] if vector else x
    sched = _v.resolve_u(params.shape, n, special, schedule, n_name="n (from x.shape)")
    _v.batch_shape(("params", params.shape[:-1]), ("x", x2.shape[:-2]))
    real = jnp.result_type(params.dtype, jnp.real(x2).dtype)
    params = params.astype(real)
    x2 = x2.astype(_complex_of(real) if jnp.iscomplexobj(x2) else real)
    params_p, x_p = _pad_batch(params, x2, 1, 2)
    y = _unitary_apply(params_p, x_p, sched, special, adjoint)
    return y[..., 0] if vector else y
