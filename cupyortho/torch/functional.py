r"""The functional torch API: :func:`matrix`, :func:`frame`, :func:`apply`, :func:`unitary`,
:func:`unitary_apply`, each a checked call of one custom op (``cupyortho.torch._ops``).

NaN and infinity propagate (the ops call cupyortho with ``check_finite=False``), as in torch.
Dtypes: float32 and float64, and bfloat16/float16 (rotated with float32 arithmetic, returned in
their own dtype: ``docs/low_precision.md``); ``apply`` promotes theta and x to a common dtype.  All tensor
arguments must be on one device (checked before dispatch, see :func:`._bridge.same_device`).
"""

from typing import Optional

import torch

from .. import _validate as _v
from .. import schedule as _sched
from ..errors import ArrayTypeError, BackendMismatchError, DtypeError, ShapeError, SizeError
from ._bridge import same_device
from ._ops import (
    apply_op as _apply_op,
    frame_op as _frame_op,
    matrix_op as _matrix_op,
    unitary_apply_op as _unitary_apply_op,
    unitary_op as _unitary_op,
    _complex_of,
    LOW_PRECISION,
    schedule_args,
)

__all__ = ["matrix", "frame", "apply", "unitary", "unitary_apply"]

_DTYPES = (torch.float32, torch.float64) + LOW_PRECISION  # low precision: computed in float32 (_ops)
_COMPLEX = (torch.complex64, torch.complex128)


# --------------------------------------------------------------------------- argument checks
# Shapes, counts, n, m and schedules go through the shared validation module (cupyortho._validate,
# on the tensors' shapes); only what is particular to tensors (type, layout, dtype, device) is here.

def _check_tensor(name: str, t, allowed=_DTYPES, min_ndim: int = 1) -> None:
    if not isinstance(t, torch.Tensor):
        raise ArrayTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise DtypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise DtypeError(f"{name} must have dtype {names}; got {t.dtype}")
    _v.check_ndim(name, tuple(t.shape), min_ndim)


def _constant(fn):
    """Under ``torch.compile`` the checks run as plain Python at trace time on the concrete shapes and
    their result is a constant of the graph (``assume_constant_result``), instead of being traced."""
    return torch._dynamo.assume_constant_result(fn)


def _as_schedule(schedule):
    """A schedule token names a Schedule (which carries n, m and its angle count)."""
    return _sched.from_token(schedule) if isinstance(schedule, str) and ":" in schedule else schedule


@_constant
def _so_n(shape, n, schedule, m=None, n_name="n"):
    """(n, m) of angles of ``shape`` (cupyortho._validate.resolve_so: counts, n, m and schedule)."""
    sched = _v.resolve_so(shape, n, _as_schedule(schedule), m, n_name=n_name)
    return sched.n, sched.m


@_constant
def _u_n(shape, n, special, schedule, n_name="n"):
    """n of unitary parameters of ``shape`` (cupyortho._validate.resolve_u)."""
    return _v.resolve_u(shape, n, special, _as_schedule(schedule), n_name=n_name).n


@_constant
def _x_rows(name, shape, batch_name, batch):
    """(n, vector) of data ``x`` (cupyortho._validate.x_rows), its batch axes checked to broadcast."""
    n, vector = _v.x_rows(name, shape)
    _v.batch_shape((batch_name, batch), (name, shape[:-1] if vector else shape[:-2]))
    return n, vector


def _resolve_n(schedule, n):
    """The n a layer's ``schedule`` implies (a Schedule's own n; an explicit n must agree)."""
    schedule = _as_schedule(schedule)
    if isinstance(schedule, _sched.Schedule):
        if n is not None and n != schedule.n:
            raise SizeError(f"n = {n} disagrees with the schedule, built for n = {schedule.n}")
        return schedule.n
    return n


def _check_base(base, n: int, dtype, device, what: str = "theta"):
    """``base``: None, or a ``(..., n, n)`` tensor of ``dtype`` on ``device``."""
    if base is None:
        return
    if not isinstance(base, torch.Tensor):
        raise ArrayTypeError(f"base must be None or a torch.Tensor, got {type(base).__name__}")
    if base.dtype != dtype:
        raise DtypeError(f"base must have dtype {dtype} (that of {what}), got {base.dtype}")
    if base.dim() < 2 or tuple(base.shape[-2:]) != (n, n):
        raise ShapeError(f"base must have shape (..., {n}, {n}), got {tuple(base.shape)}")
    if base.device != device:
        raise BackendMismatchError(f"base and {what} must be on one device; got base on {base.device} and "
                                   f"{what} on {device}")


# --------------------------------------------------------------------------- public functions

def matrix(theta: torch.Tensor, *, n: Optional[int] = None, schedule=None, base=None) -> torch.Tensor:
    r"""The rotation :math:`U(\theta) = B_{R-1}\cdots B_0 \in SO(n)` (see :func:`cupyortho.matrix`),
    or :math:`B\,U(\theta)` with a base ``B`` (the layers' trivialization, ``docs/adapters.md``).

    Args:
        theta (Tensor): ``(..., n(n-1)/2)`` angles, float32 or float64, CPU or CUDA
            (``(..., num_angles(n, m))`` with a Stiefel-restricted Schedule: its full ``n x n`` matrix).
        n (int, optional): inferred from the angle count when omitted.
        schedule (str | Schedule | None): as in :func:`cupyortho.matrix`.
        base (Tensor, optional): ``(..., n, n)`` of theta's dtype and device, typically orthogonal;
            the result is ``base @ U(theta)`` (batch axes broadcast as in ``torch.matmul``).

    Returns:
        Tensor ``(..., n, n)``, differentiable with respect to theta (and base).

    Raises:
        DtypeError, ShapeError, AngleCountError, SizeError, ScheduleError, BackendMismatchError
        (``cupyortho.errors``) for bad arguments, naming the argument.
    """
    _check_tensor("theta", theta)
    n, _ = _so_n(tuple(theta.shape), n, schedule)  # a restricted Schedule: its own count
    _check_base(base, n, theta.dtype, theta.device)
    u = _matrix_op(theta, n, *schedule_args(schedule))
    return u if base is None else base @ u


def frame(theta: torch.Tensor, n: int, m: int, *, schedule=None, base=None) -> torch.Tensor:
    r"""The first ``m`` columns of the Stiefel-restricted :math:`U(\theta)` (see :func:`cupyortho.frame`).

    Args:
        theta (Tensor): ``(..., n*m - m(m+1)/2)`` angles.
        n (int), m (int): ``1 <= m <= n``.
        schedule: as in :func:`matrix`.
        base (Tensor, optional): ``(..., n, n)``; the result is ``base @ frame(theta, n, m)``.

    Returns:
        Tensor ``(..., n, m)`` with orthonormal columns.
    """
    _check_tensor("theta", theta)
    n, m = _so_n(tuple(theta.shape), _v.integer("n", n, 2), schedule, _v.integer("m", m, 1))
    _check_base(base, n, theta.dtype, theta.device)
    q = _frame_op(theta, n, int(m), *schedule_args(schedule))
    return q if base is None else base @ q


def apply(theta: torch.Tensor, x: torch.Tensor, *, transpose: bool = False, schedule=None) -> torch.Tensor:
    r"""``U(theta) @ x`` (or ``U(theta).T @ x``) without forming U (see :func:`cupyortho.apply`).

    Shapes follow ``torch.matmul``: ``x`` is ``(n,)`` or ``(..., n, k)`` with batch axes
    broadcasting against theta's ``(..., A)``.  theta and x are promoted to a common dtype.

    Returns:
        Tensor of the broadcast shape, differentiable with respect to theta and x.
    """
    _check_tensor("theta", theta)
    _check_tensor("x", x)
    same_device(theta=theta, x=x)
    n, vector = _x_rows("x", tuple(x.shape), "theta", tuple(theta.shape[:-1]))
    x2 = x.unsqueeze(-1) if vector else x
    _so_n(tuple(theta.shape), n, schedule, n_name="n (the rows of x)")
    dtype = torch.promote_types(theta.dtype, x.dtype)
    y = _apply_op(theta.to(dtype), x2.to(dtype), _v.flag("transpose", transpose), *schedule_args(schedule))
    return y.squeeze(-1) if vector else y


def unitary(params: torch.Tensor, *, n: Optional[int] = None, special: bool = False, schedule=None,
            base=None) -> torch.Tensor:
    r"""The unitary :math:`U = D(\delta) B_{R-1}\cdots B_0` (see :func:`cupyortho.unitary`).

    Args:
        params (Tensor): real ``(..., P)``, ``P = n*n`` (U(n)) or ``n*n - 1`` (SU(n), ``special=True``),
            laid out ``[theta, phi, delta]``.
        n (int, optional), schedule: as in :func:`matrix`.
        base (Tensor, optional): complex ``(..., n, n)`` (complex64 for float32 params, complex128 for
            float64) on params' device; the result is ``base @ U(params)``.

    Returns:
        complex Tensor ``(..., n, n)`` (complex64 for float32 params, complex128 for float64),
        differentiable with respect to params.
    """
    _check_tensor("params", params)
    special = _v.flag("special", special)
    n = _u_n(tuple(params.shape), n, special, schedule)
    _check_base(base, n, _complex_of(params.dtype), params.device, "params")
    u = _unitary_op(params, n, bool(special), *schedule_args(schedule))
    return u if base is None else base @ u


def unitary_apply(params: torch.Tensor, x: torch.Tensor, *, special: bool = False, adjoint: bool = False,
                  schedule=None) -> torch.Tensor:
    r"""``U(params) @ x`` (or ``U^H @ x``) without forming U (see :func:`cupyortho.unitary_apply`).

    ``x`` is real or complex, ``(n,)`` or ``(..., n, k)``; the result is complex, of the precision of
    params and x together.
    """
    _check_tensor("params", params)
    _check_tensor("x", x, _DTYPES + _COMPLEX)
    same_device(params=params, x=x)
    special, adjoint = _v.flag("special", special), _v.flag("adjoint", adjoint)
    n, vector = _x_rows("x", tuple(x.shape), "params", tuple(params.shape[:-1]))
    x2 = x.unsqueeze(-1) if vector else x
    _u_n(tuple(params.shape), n, special, schedule, n_name="n (the rows of x)")
    real = torch.promote_types(params.dtype, x.real.dtype if x.is_complex() else x.dtype)
    xdt = _complex_of(real) if x.is_complex() else real
    y = _unitary_apply_op(params.to(real), x2.to(xdt), bool(special), bool(adjoint), *schedule_args(schedule))
    return y.squeeze(-1) if vector else y
