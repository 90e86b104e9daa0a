r"""The functional torch API: :func:`matrix`, :func:`frame`, :func:`apply`, :func:`unitary`,
:func:`unitary_apply`, each a checked call of one custom op (``cupyortho.torch._ops``).

NaN and infinity propagate (the ops call cupyortho with ``check_finite=False``), as in torch.
Dtypes: float32 and float64; ``apply`` promotes theta and x to a common dtype.  All tensor
arguments must be on one device (checked before dispatch, see :func:`._bridge.same_device`).
"""

import math
from typing import Optional

import torch

from .. import _unitary
from .. import schedule as _sched
from ..errors import AngleCountError, BackendMismatchError, DtypeError, ShapeError, SizeError
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


# --------------------------------------------------------------------------- argument checks
# These stay here until the shared validation module (cupyortho/_validate.py) lands; then they
# become calls of it.

def _check_tensor(name: str, t, min_ndim: int = 1) -> None:
    if not isinstance(t, torch.Tensor):
        raise DtypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise DtypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.dtype not in _DTYPES:
        raise DtypeError(f"{name} must have dtype torch.float32, float64, bfloat16 or float16, got {t.dtype}")
    if t.dim() < min_ndim:
        raise ShapeError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(t.shape)}")


def _n_from_count(count: int) -> int:
    n = (1 + math.isqrt(1 + 8 * count)) // 2
    if n >= 2 and n * (n - 1) // 2 == count:
        return n
    raise AngleCountError(
        f"theta must hold n(n-1)/2 angles on its last axis for some n >= 2; got {count}"
    )


def _check_count(theta, n, m=None):
    expected = _sched.num_angles(n, m)
    if theta.shape[-1] != expected:
        what = f"n = {n}" + (f", m = {m}" if m is not None else "")
        raise AngleCountError(
            f"theta must hold {expected} angles on its last axis for {what}; got shape {tuple(theta.shape)}"
        )


def _restriction(schedule):
    """The ``m`` of a Stiefel-restricted Schedule (its angle count is ``num_angles(n, m)``), else None."""
    return schedule.m if isinstance(schedule, _sched.Schedule) else None


def _check_base(base, n: int, dtype, device, what: str = "theta"):
    """``base``: None, or a ``(..., n, n)`` tensor of ``dtype`` on ``device``."""
    if base is None:
        return
    if not isinstance(base, torch.Tensor):
        raise DtypeError(f"base must be None or a torch.Tensor, got {type(base).__name__}")
    if base.dtype != dtype:
        raise DtypeError(f"base must have dtype {dtype} (that of {what}), got {base.dtype}")
    if base.dim() < 2 or tuple(base.shape[-2:]) != (n, n):
        raise ShapeError(f"base must have shape (..., {n}, {n}), got {tuple(base.shape)}")
    if base.device != device:
        raise BackendMismatchError(f"base and {what} must be on one device; got base on {base.device} and "
                                   f"{what} on {device}")


def _resolve_n(schedule, n):
    if isinstance(schedule, _sched.Schedule):
        if n is not None and n != schedule.n:
            raise SizeError(f"n = {n} disagrees with the schedule, built for n = {schedule.n}")
        return schedule.n
    return n


def _n_from_unitary_count(count: int, special: bool) -> int:
    n = math.isqrt(count + (1 if special else 0))
    if n >= 2 and _unitary.num_unitary_params(n, special) == count:
        return n
    raise AngleCountError(
        f"params must hold {'n*n - 1' if special else 'n*n'} parameters on its last axis for some n >= 2; "
        f"got {count}"
    )


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
    n = _resolve_n(schedule, n)
    m = _restriction(schedule)
    n = _n_from_count(theta.shape[-1]) if n is None else _sched._check_int("n", n, 2)
    _check_count(theta, n, m)
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
    n = _sched._check_int("n", n, 2)
    _resolve_n(schedule, n)
    _check_count(theta, n, m)  # validates m too
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
    vector = x.dim() == 1
    x2 = x.unsqueeze(-1) if vector else x
    n = x2.shape[-2]
    if n < 2:
        raise SizeError(f"x must have n >= 2 rows (axis -2, or axis 0 of a vector); got shape {tuple(x.shape)}")
    if _resolve_n(schedule, n) != n:
        raise SizeError(f"x has n = {n} rows but the schedule is built for n = {schedule.n}")
    _check_count(theta, n, _restriction(schedule))
    try:
        torch.broadcast_shapes(theta.shape[:-1], x2.shape[:-2])
    except RuntimeError:
        raise ShapeError(
            f"batch axes do not broadcast: theta {tuple(theta.shape)}, x {tuple(x.shape)}"
        ) from None
    dtype = torch.promote_types(theta.dtype, x.dtype)
    y = _apply_op(theta.to(dtype), x2.to(dtype), bool(transpose), *schedule_args(schedule))
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
    n = _resolve_n(schedule, n)
    n = _n_from_unitary_count(params.shape[-1], special) if n is None else _sched._check_int("n", n, 2)
    if params.shape[-1] != _unitary.num_unitary_params(n, special):
        raise AngleCountError(
            f"params must hold {_unitary.num_unitary_params(n, special)} parameters for n = {n}; "
            f"got shape {tuple(params.shape)}"
        )
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
    if not isinstance(x, torch.Tensor) or x.dtype not in _DTYPES + (torch.complex64, torch.complex128):
        raise DtypeError(f"x must be a float32, float64, bfloat16, float16, complex64 or complex128 tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    same_device(params=params, x=x)
    vector = x.dim() == 1
    x2 = x.unsqueeze(-1) if vector else x
    if x2.dim() < 2 or x2.shape[-2] < 2:
        raise SizeError(f"x must have n >= 2 rows (axis -2, or axis 0 of a vector); got shape {tuple(x.shape)}")
    n = x2.shape[-2]
    if params.shape[-1] != _unitary.num_unitary_params(n, special):
        raise AngleCountError(
            f"params must hold {_unitary.num_unitary_params(n, special)} parameters for n = {n} (from x); "
            f"got shape {tuple(params.shape)}"
        )
    try:
        torch.broadcast_shapes(params.shape[:-1], x2.shape[:-2])
    except RuntimeError:
        raise ShapeError(f"batch axes do not broadcast: params {tuple(params.shape)}, x {tuple(x.shape)}") from None
    real = torch.promote_types(params.dtype, x.real.dtype if x.is_complex() else x.dtype)
    xdt = _complex_of(real) if x.is_complex() else real
    y = _unitary_apply_op(params.to(real), x2.to(xdt), bool(special), bool(adjoint), *schedule_args(schedule))
    return y.squeeze(-1) if vector else y
