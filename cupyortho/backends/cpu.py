r"""The CPU backend: the backend protocol (:mod:`cupyortho.backends`) for NumPy arrays, SO(n) and U(n).

Design rule: this module decides nothing and computes nothing itself.  Each protocol function asks
:func:`cupyortho._strategy.cpu_impl` which implementation runs the pass and calls it:

* ``"reference"``: the round-by-round NumPy specification (``rounds_*`` of
  :mod:`cupyortho.backends.numpy_backend`, the functions of :mod:`cupyortho.backends.numpy_unitary`);
* ``"blocked"``: the block-diagonal GEMM stages of :mod:`cupyortho.backends.blocked` (team schedules);
* ``"engine"``: the compiled Numba passes of :mod:`cupyortho.backends.engine` (imported, and Numba
  with it, only when the strategy first picks it).

Arguments follow the protocol: validated arrays of one dtype, ``x`` as ``(..., n, k)``, a resolved
:class:`~cupyortho.schedule.Schedule`; nothing the caller passed is written to.
"""

from __future__ import annotations

import numpy as np

from .. import _strategy, _threads
from . import blocked, numpy_backend as _ref, numpy_unitary as _uref
from ._common import complex_dtype  # noqa: F401 (protocol attribute)

__all__ = [
    "xp", "all_finite", "complex_dtype",
    "matrix", "apply", "matrix_vjp", "apply_vjp", "matrix_jvp", "apply_jvp",
    "unitary", "unitary_apply", "unitary_vjp", "unitary_apply_vjp", "unitary_jvp", "unitary_apply_jvp",
]

xp = np


def all_finite(a) -> bool:
    """True when every entry of ``a`` is finite."""
    return bool(np.isfinite(a).all())


def _engine():
    from . import engine

    return engine


_REFERENCE = {
    "matrix": _ref.rounds_matrix,
    "apply": _ref.rounds_apply,
    "matrix_vjp": _ref.rounds_matrix_vjp,
    "apply_vjp": _ref.rounds_apply_vjp,
    "matrix_jvp": _ref.rounds_matrix_jvp,
    "apply_jvp": _ref.rounds_apply_jvp,
    "unitary": _uref.unitary,
    "unitary_apply": _uref.unitary_apply,
    "unitary_vjp": _uref.unitary_vjp,
    "unitary_apply_vjp": _uref.unitary_apply_vjp,
    "unitary_jvp": _uref.unitary_jvp,
    "unitary_apply_jvp": _uref.unitary_apply_jvp,
}


def _impl(op, schedule, dtype=None, k=None):
    """The function that runs ``op`` (chosen by :func:`cupyortho._strategy.cpu_impl`)."""
    which = _strategy.cpu_impl(op, schedule, dtype, k)
    # numba's pool follows cupyortho's thread setting / torch's budget (docs/threads.md)
    if which == "blocked":
        return _threads.with_numba_threads(getattr(blocked, op))
    if which == "engine":
        return _threads.with_numba_threads(getattr(_engine(), op), load=True)
    return _REFERENCE[op]


# --------------------------------------------------------------------------- SO(n)

def matrix(theta, schedule):
    """``U(theta)`` ``(..., n, n)`` for theta ``(..., A)``."""
    return _impl("matrix", schedule, theta.dtype)(theta, schedule)


def apply(theta, x, schedule, transpose=False):
    """``U(theta) @ x`` (``U.T @ x`` with ``transpose``) without forming U; x ``(..., n, k)``."""
    return _impl("apply", schedule, x.dtype, x.shape[-1])(theta, x, schedule, transpose)


def apply_vjp(theta, x, cotangent, schedule, transpose=False, output=None):
    """``(d_theta, d_x)`` of ``apply`` for ``cotangent = dL/dy``; ``output`` may pass ``y``."""
    return _impl("apply_vjp", schedule, x.dtype, x.shape[-1])(theta, x, cotangent, schedule, transpose, output)


def matrix_vjp(theta, cotangent, schedule, output=None):
    """``d_theta`` of ``matrix`` for ``cotangent = dL/dU``; ``output`` may pass ``U``."""
    return _impl("matrix_vjp", schedule, theta.dtype)(theta, cotangent, schedule, output)


def apply_jvp(theta, x, theta_tangent, x_tangent, schedule, transpose=False):
    """Tangent of ``apply`` along ``(theta_tangent, x_tangent)``; ``x_tangent`` may be None (zero)."""
    return _impl("apply_jvp", schedule, x.dtype, x.shape[-1])(
        theta, x, theta_tangent, x_tangent, schedule, transpose
    )


def matrix_jvp(theta, theta_tangent, schedule):
    """Tangent ``dU`` of ``matrix`` along ``theta_tangent``."""
    return _impl("matrix_jvp", schedule, theta.dtype)(theta, theta_tangent, schedule)


# --------------------------------------------------------------------------- U(n)

def unitary(params, schedule, cdtype):
    """``U(params)`` ``(..., n, n)`` of complex dtype ``cdtype``; params ``(..., n*n)`` real."""
    return _impl("unitary", schedule, np.dtype(cdtype))(params, schedule, cdtype)


def unitary_apply(params, x, schedule, adjoint=False):
    """``U @ x`` (``U^H @ x`` with ``adjoint``) without forming U; x ``(..., n, k)`` complex."""
    return _impl("unitary_apply", schedule, x.dtype, x.shape[-1])(params, x, schedule, adjoint)


def unitary_vjp(params, cotangent, schedule, output=None):
    """``d_params`` (real) of ``unitary`` for the complex ``cotangent`` (``docs/unitary.md``).

    ``output`` (``U``) is accepted for the protocol; the reference recomputes ``U``.
    """
    return _impl("unitary_vjp", schedule, cotangent.dtype)(params, cotangent, schedule, output)


def unitary_apply_vjp(params, x, cotangent, schedule, adjoint=False, output=None):
    """``(d_params, d_x)`` of ``unitary_apply``; ``output`` may pass ``y``."""
    return _impl("unitary_apply_vjp", schedule, x.dtype, x.shape[-1])(
        params, x, cotangent, schedule, adjoint, output
    )


def unitary_jvp(params, params_tangent, schedule, cdtype):
    """Tangent ``dU`` of ``unitary`` along ``params_tangent``."""
    return _impl("unitary_jvp", schedule, np.dtype(cdtype))(params, params_tangent, schedule, cdtype)


def unitary_apply_jvp(params, x, params_tangent, x_tangent, schedule, adjoint=False):
    """Tangent of ``unitary_apply``; ``x_tangent`` may be None (zero)."""
    return _impl("unitary_apply_jvp", schedule, x.dtype, x.shape[-1])(
        params, x, params_tangent, x_tangent, schedule, adjoint
    )
