r"""PyTorch adapter: cupyortho's maps as ``torch.library`` custom ops, an orthogonal layer and a
parametrization.

Design rule: this module only wires.  Every forward and backward calls cupyortho's public functions
(:func:`cupyortho.matrix`, :func:`cupyortho.frame`, :func:`cupyortho.apply` and their ``_vjp``);
the mathematics lives there.  ``import cupyortho`` never imports torch: import
``cupyortho.torch`` explicitly.

Ops (namespace ``cupyortho``, built with :func:`torch.library.custom_op`, each with
``register_fake`` for ``torch.compile`` and ``register_autograd``):

=======================  =================================  ==================================
op                       tensors in                         out
=======================  =================================  ==================================
``matrix``               theta ``(..., n(n-1)/2)``          U ``(..., n, n)``
``frame``                theta ``(..., n*m - m(m+1)/2)``    Q ``(..., n, m)`` (first m columns)
``apply``                theta ``(..., A)``, x ``(..., n,   ``U @ x`` (or ``U.T @ x``),
                         k)``                               batch axes broadcast
``matrix_vjp``,          theta, cotangent                   d_theta (theta's shape)
``frame_vjp``
``apply_vjp``            theta, x, y, cotangent             (d_theta, d_x)
``unitary``,             params ``(..., n*n)`` (or          complex U / ``U @ x`` (or
``unitary_apply``        ``n*n - 1``, SU(n)), x             ``U^H @ x``), and their VJP ops
=======================  =================================  ==================================

Devices.  CPU tensors are handed to the NumPy backend as zero-copy views (``tensor.numpy()`` of the
detached tensor) and the results come back with ``torch.from_numpy`` (no copy).  CUDA tensors go
to the CuPy backend through DLPack, with CuPy running on *torch's current stream*
(``cupy.cuda.Stream.from_external``), so the kernels are ordered with the surrounding torch work and
the caching allocator cannot hand the inputs' memory to anyone before they finish; the inputs are
referenced until the op returns.  The CUDA path has not been run here (no GPU): treat it as
untested until the GPU suite has run it.

Derivatives.  Reverse mode is exact (cupyortho's VJPs).  The ops are *once differentiable*: the
backward ops carry an autograd formula that raises :class:`NotImplementedError`, so a second
backward (``create_graph=True`` followed by another ``backward``, ``torch.func.hessian``) fails
loudly instead of returning wrong numbers.  Forward-mode AD (``torch.func.jvp``) is not registered.
``torch.vmap`` works (a vmap rule per op: cupyortho's functions take batch axes natively), including
ordinary ``backward`` through a vmapped graph; ``torch.func.grad``/``jacrev`` over the ops fail
inside torch itself for every ``custom_op`` with ``register_autograd`` (pytorch#168393, #179652).

NaN and infinity propagate (the ops call cupyortho with ``check_finite=False``), as in torch.
Dtypes: float32 and float64; ``apply`` promotes theta and x to a common dtype.
"""

import math
from typing import Optional, Tuple

import warnings

import numpy as np
import torch
from torch import nn

import cupyortho as _co
from . import schedule as _sched
from . import _unitary
from .errors import (
    AngleCountError,
    BackendMismatchError,
    BackendUnavailableError,
    DtypeError,
    ScheduleError,
    ShapeError,
    SizeError,
)

__all__ = [
    "matrix",
    "frame",
    "apply",
    "unitary",
    "unitary_apply",
    "Orthogonal",
    "OrthogonalParametrization",
]

_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------- schedules as op arguments

def _schedule_args(schedule) -> Tuple[Optional[str], Optional[int]]:
    """A ``schedule`` argument -> (kind or None, team size or None), the form the ops accept."""
    if schedule is None:
        return None, None
    if isinstance(schedule, str):
        if schedule not in _sched.SCHEDULE_KINDS:
            raise ScheduleError(
                f"schedule must be one of {_sched.SCHEDULE_KINDS}, a Schedule or None, got {schedule!r}"
            )
        return schedule, None
    if isinstance(schedule, _sched.Schedule):
        return schedule.kind, schedule.team_size
    raise ScheduleError(
        f"schedule must be one of {_sched.SCHEDULE_KINDS}, a Schedule or None, got {type(schedule).__name__}"
    )


def _schedule(kind: Optional[str], team_size: Optional[int], n: int):
    """The op arguments back to a schedule cupyortho accepts."""
    if kind == "team" and team_size is not None:
        return _sched.team_schedule(n, team_size)
    return kind


# --------------------------------------------------------------------------- device plumbing

def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """A zero-copy NumPy view of a CPU tensor (cupyortho never writes to its inputs)."""
    return t.detach().resolve_conj().resolve_neg().numpy()


def _from_numpy(a: np.ndarray) -> torch.Tensor:
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:  # torch.from_numpy warns on read-only memory
        a = a.copy()
    return torch.from_numpy(a)


class _CudaStreamRef:
    """A raw stream handle exposed through the CUDA stream protocol."""

    def __init__(self, ptr: int):
        self._ptr = int(ptr)

    def __cuda_stream__(self):
        return (0, self._ptr)


def _unaliased(xp, out, inputs):
    """``out`` with any output that may share memory with an input copied: a custom op's outputs
    must not alias its inputs (cupyortho returns fresh arrays; this guards that contract)."""
    def fresh(o):
        return o.copy() if any(xp.may_share_memory(o, a) for a in inputs) else o

    return tuple(fresh(o) for o in out) if isinstance(out, tuple) else fresh(out)


def _call(fn, *tensors: torch.Tensor):
    """Run ``fn`` (a cupyortho function of arrays) on tensors; returns a tensor or a tuple of tensors.

    CPU: NumPy views in, ``torch.from_numpy`` out.  CUDA: CuPy views through DLPack, on torch's
    current stream of the tensors' device.
    """
    device = tensors[0].device
    for t in tensors[1:]:
        if t.device != device:
            raise BackendMismatchError(f"all tensors must be on one device; got {device} and {t.device}")
    if device.type == "cpu":
        arrays = [_to_numpy(t) for t in tensors]
        out = _unaliased(np, fn(*arrays), arrays)
        return tuple(_from_numpy(o) for o in out) if isinstance(out, tuple) else _from_numpy(out)
    if device.type == "cuda":
        try:
            import cupy
        except ImportError as exc:
            raise BackendUnavailableError(
                f"CUDA tensors need CuPy (pip install cupy-cuda12x); importing it failed: {exc}"
            ) from exc
        torch_stream = torch.cuda.current_stream(device)
        with cupy.cuda.Device(device.index):
            with cupy.cuda.Stream.from_external(_CudaStreamRef(torch_stream.cuda_stream)):
                # ``keep`` holds the (possibly copied) contiguous inputs until the kernels are queued;
                # later reuse of their memory by torch is ordered on this same stream.
                keep = [t.detach().contiguous() for t in tensors]
                arrays = [cupy.from_dlpack(t) for t in keep]
                out = _unaliased(cupy, fn(*arrays), arrays)
                if isinstance(out, tuple):
                    return tuple(torch.from_dlpack(cupy.ascontiguousarray(o)) for o in out)
                return torch.from_dlpack(cupy.ascontiguousarray(out))
    raise BackendUnavailableError(
        f"cupyortho.torch runs on CPU and CUDA tensors; got a tensor on {device}"
    )


# --------------------------------------------------------------------------- ops

_LIB = "cupyortho"


@torch.library.custom_op(f"{_LIB}::matrix", mutates_args=())
def _matrix_op(theta: torch.Tensor, n: int, kind: Optional[str], team_size: Optional[int]) -> torch.Tensor:
    sched = _schedule(kind, team_size, n)
    return _call(lambda t: _co.matrix(t, n=n, schedule=sched, check_finite=False), theta)


@_matrix_op.register_fake
def _(theta, n, kind, team_size):
    return theta.new_empty(theta.shape[:-1] + (n, n))


@torch.library.custom_op(f"{_LIB}::matrix_vjp", mutates_args=())
def _matrix_vjp_op(
    theta: torch.Tensor, cotangent: torch.Tensor, u: torch.Tensor, n: int, kind: Optional[str],
    team_size: Optional[int],
) -> torch.Tensor:
    # ``u`` is the forward output U(theta), saved by autograd, so the backward does not rebuild it.
    sched = _schedule(kind, team_size, n)
    return _call(
        lambda t, g, uu: _co.matrix_vjp(t, g, n=n, schedule=sched, output=uu, check_finite=False),
        theta, cotangent, u,
    )


@_matrix_vjp_op.register_fake
def _(theta, cotangent, u, n, kind, team_size):
    return torch.empty_like(theta)


@torch.library.custom_op(f"{_LIB}::frame", mutates_args=())
def _frame_op(
    theta: torch.Tensor, n: int, m: int, kind: Optional[str], team_size: Optional[int]
) -> torch.Tensor:
    sched = _schedule(kind, team_size, n)
    return _call(lambda t: _co.frame(t, n, m, schedule=sched, check_finite=False), theta)


@_frame_op.register_fake
def _(theta, n, m, kind, team_size):
    return theta.new_empty(theta.shape[:-1] + (n, m))


@torch.library.custom_op(f"{_LIB}::frame_vjp", mutates_args=())
def _frame_vjp_op(
    theta: torch.Tensor, cotangent: torch.Tensor, n: int, m: int, kind: Optional[str], team_size: Optional[int]
) -> torch.Tensor:
    sched = _schedule(kind, team_size, n)
    return _call(
        lambda t, g: _co.frame_vjp(t, g, n, m, schedule=sched, check_finite=False), theta, cotangent
    )


@_frame_vjp_op.register_fake
def _(theta, cotangent, n, m, kind, team_size):
    return torch.empty_like(theta)


def _apply_shape(theta, x):
    return torch.broadcast_shapes(theta.shape[:-1], x.shape[:-2]) + x.shape[-2:]


@torch.library.custom_op(f"{_LIB}::apply", mutates_args=())
def _apply_op(
    theta: torch.Tensor, x: torch.Tensor, transpose: bool, kind: Optional[str], team_size: Optional[int]
) -> torch.Tensor:
    sched = _schedule(kind, team_size, x.shape[-2])
    return _call(
        lambda t, a: _co.apply(t, a, transpose=transpose, schedule=sched, check_finite=False), theta, x
    )


@_apply_op.register_fake
def _(theta, x, transpose, kind, team_size):
    return x.new_empty(_apply_shape(theta, x))


@torch.library.custom_op(f"{_LIB}::apply_vjp", mutates_args=())
def _apply_vjp_op(
    theta: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    cotangent: torch.Tensor,
    transpose: bool,
    kind: Optional[str],
    team_size: Optional[int],
) -> Tuple[torch.Tensor, torch.Tensor]:
    sched = _schedule(kind, team_size, x.shape[-2])
    return _call(
        lambda t, a, out, g: _co.apply_vjp(
            t, a, g, transpose=transpose, schedule=sched, output=out, check_finite=False
        ),
        theta, x, y, cotangent,
    )


@_apply_vjp_op.register_fake
def _(theta, x, y, cotangent, transpose, kind, team_size):
    return torch.empty_like(theta), torch.empty_like(x)


# --------------------------------------------------------------------------- autograd

def _matrix_setup(ctx, inputs, output):
    theta, n, kind, team_size = inputs
    ctx.save_for_backward(theta, output)
    ctx.args = (n, kind, team_size)


def _matrix_backward(ctx, grad):
    theta, u = ctx.saved_tensors
    return _matrix_vjp_op(theta, grad, u, *ctx.args), None, None, None


_matrix_op.register_autograd(_matrix_backward, setup_context=_matrix_setup)


def _frame_setup(ctx, inputs, output):
    theta, n, m, kind, team_size = inputs
    ctx.save_for_backward(theta)
    ctx.args = (n, m, kind, team_size)


def _frame_backward(ctx, grad):
    (theta,) = ctx.saved_tensors
    return _frame_vjp_op(theta, grad, *ctx.args), None, None, None, None


_frame_op.register_autograd(_frame_backward, setup_context=_frame_setup)


def _apply_setup(ctx, inputs, output):
    theta, x, transpose, kind, team_size = inputs
    # theta, x and the output y: the backward undoes the rounds on y (no forward recomputation).
    ctx.save_for_backward(theta, x, output)
    ctx.args = (transpose, kind, team_size)


def _apply_backward(ctx, grad):
    theta, x, y = ctx.saved_tensors
    d_theta, d_x = _apply_vjp_op(theta, x, y, grad, *ctx.args)
    need_theta, need_x = ctx.needs_input_grad[:2]
    return (d_theta if need_theta else None), (d_x if need_x else None), None, None, None


_apply_op.register_autograd(_apply_backward, setup_context=_apply_setup)


def _once_differentiable(op, name):
    def setup(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise NotImplementedError(
            f"cupyortho.torch: {name} is once differentiable; second derivatives (a backward through "
            "a gradient computed with create_graph=True, torch.func.hessian, gradgradcheck) are not "
            "implemented"
        )

    op.register_autograd(backward, setup_context=setup)


_once_differentiable(_matrix_vjp_op, "matrix")
_once_differentiable(_frame_vjp_op, "frame")
_once_differentiable(_apply_vjp_op, "apply")


# --------------------------------------------------------------------------- unitary ops
# Parameters are real ``(..., P)``, ``P = n*n`` (U(n)) or ``n*n - 1`` (SU(n)); outputs complex.
# torch's cotangent of a complex output of a real loss is dL/dRe + i dL/dIm, the convention of
# cupyortho.unitary_vjp and unitary_apply_vjp, so they are wired unchanged.

def _complex_of(dtype):
    return torch.complex64 if dtype == torch.float32 else torch.complex128


@torch.library.custom_op(f"{_LIB}::unitary", mutates_args=())
def _unitary_op(
    params: torch.Tensor, n: int, special: bool, kind: Optional[str], team_size: Optional[int]
) -> torch.Tensor:
    sched = _schedule(kind, team_size, n)
    return _call(
        lambda p: _unitary.unitary(p, n=n, special=special, schedule=sched, check_finite=False), params
    )


@_unitary_op.register_fake
def _(params, n, special, kind, team_size):
    return params.new_empty(params.shape[:-1] + (n, n), dtype=_complex_of(params.dtype))


@torch.library.custom_op(f"{_LIB}::unitary_vjp", mutates_args=())
def _unitary_vjp_op(
    params: torch.Tensor, cotangent: torch.Tensor, n: int, special: bool, kind: Optional[str],
    team_size: Optional[int],
) -> torch.Tensor:
    sched = _schedule(kind, team_size, n)
    return _call(
        lambda p, g: _unitary.unitary_vjp(p, g, n=n, special=special, schedule=sched, check_finite=False),
        params, cotangent,
    )


@_unitary_vjp_op.register_fake
def _(params, cotangent, n, special, kind, team_size):
    return torch.empty_like(params)


@torch.library.custom_op(f"{_LIB}::unitary_apply", mutates_args=())
def _unitary_apply_op(
    params: torch.Tensor, x: torch.Tensor, special: bool, adjoint: bool, kind: Optional[str],
    team_size: Optional[int],
) -> torch.Tensor:
    sched = _schedule(kind, team_size, x.shape[-2])
    return _call(
        lambda p, a: _unitary.unitary_apply(
            p, a, special=special, adjoint=adjoint, schedule=sched, check_finite=False
        ),
        params, x,
    )


@_unitary_apply_op.register_fake
def _(params, x, special, adjoint, kind, team_size):
    return x.new_empty(_apply_shape(params, x), dtype=_complex_of(params.dtype))


@torch.library.custom_op(f"{_LIB}::unitary_apply_vjp", mutates_args=())
def _unitary_apply_vjp_op(
    params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, cotangent: torch.Tensor, special: bool,
    adjoint: bool, kind: Optional[str], team_size: Optional[int],
) -> Tuple[torch.Tensor, torch.Tensor]:
    sched = _schedule(kind, team_size, x.shape[-2])
    return _call(
        lambda p, a, out, g: _unitary.unitary_apply_vjp(
            p, a, g, special=special, adjoint=adjoint, schedule=sched, output=out, check_finite=False
        ),
        params, x, y, cotangent,
    )


@_unitary_apply_vjp_op.register_fake
def _(params, x, y, cotangent, special, adjoint, kind, team_size):
    return torch.empty_like(params), torch.empty_like(x)


def _unitary_setup(ctx, inputs, output):
    params, n, special, kind, team_size = inputs
    ctx.save_for_backward(params)
    ctx.args = (n, special, kind, team_size)


def _unitary_backward(ctx, grad):
    (params,) = ctx.saved_tensors
    return _unitary_vjp_op(params, grad, *ctx.args), None, None, None, None


_unitary_op.register_autograd(_unitary_backward, setup_context=_unitary_setup)


def _unitary_apply_setup(ctx, inputs, output):
    params, x, special, adjoint, kind, team_size = inputs
    ctx.save_for_backward(params, x, output)
    ctx.args = (special, adjoint, kind, team_size)


def _unitary_apply_backward(ctx, grad):
    params, x, y = ctx.saved_tensors
    d_params, d_x = _unitary_apply_vjp_op(params, x, y, grad, *ctx.args)
    need_p, need_x = ctx.needs_input_grad[:2]
    return (d_params if need_p else None), (d_x if need_x else None), None, None, None, None


_unitary_apply_op.register_autograd(_unitary_apply_backward, setup_context=_unitary_apply_setup)
_once_differentiable(_unitary_vjp_op, "unitary")
_once_differentiable(_unitary_apply_vjp_op, "unitary_apply")


# --------------------------------------------------------------------------- vmap
# cupyortho's functions already take batch axes, so a vmap rule only has to line the mapped axis up
# in front of every tensor (expanding, as a view, the tensors that are not mapped) and give the
# batch axes of all tensors the same rank (size-1 axes, a view), then call the op once.

def _vmap_rule(op, core_ndims, n_tensors, outputs_like=None):
    """Register a vmap rule for ``op`` whose first ``n_tensors`` arguments are tensors with
    ``core_ndims`` non-batch axes; ``outputs_like[i]`` is the input index output ``i`` is shaped
    like (VJP ops), or None for outputs of the broadcast batch shape."""

    def rule(info, in_dims, *args):
        size = info.batch_size
        tensors = []
        for t, d in zip(args[:n_tensors], in_dims[:n_tensors]):
            tensors.append(t.movedim(d, 0) if d is not None else t.unsqueeze(0).expand((size,) + t.shape))
        rank = max(t.dim() - 1 - c for t, c in zip(tensors, core_ndims))
        padded = [
            t.reshape(t.shape[:1] + (1,) * (rank - (t.dim() - 1 - c)) + t.shape[1:])
            for t, c in zip(tensors, core_ndims)
        ]
        out = op(*padded, *args[n_tensors:])
        if outputs_like is None:
            return out, 0
        out = tuple(o.reshape(tensors[i].shape) for o, i in zip(out, outputs_like)) if isinstance(out, tuple) \
            else out.reshape(tensors[outputs_like[0]].shape)
        return out, (tuple(0 for _ in out) if isinstance(out, tuple) else 0)

    torch.library.register_vmap(op, rule)


_vmap_rule(_matrix_op, (1,), 1)
_vmap_rule(_frame_op, (1,), 1)
_vmap_rule(_apply_op, (1, 2), 2)
_vmap_rule(_matrix_vjp_op, (1, 2, 2), 3, outputs_like=(0,))
_vmap_rule(_frame_vjp_op, (1, 2), 2, outputs_like=(0,))
_vmap_rule(_apply_vjp_op, (1, 2, 2, 2), 4, outputs_like=(0, 1))
_vmap_rule(_unitary_op, (1,), 1)
_vmap_rule(_unitary_apply_op, (1, 2), 2)
_vmap_rule(_unitary_vjp_op, (1, 2), 2, outputs_like=(0,))
_vmap_rule(_unitary_apply_vjp_op, (1, 2, 2, 2), 4, outputs_like=(0, 1))


# --------------------------------------------------------------------------- public functions

def _check_tensor(name: str, t, min_ndim: int = 1) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _DTYPES:
        raise DtypeError(f"{name} must have dtype torch.float32 or torch.float64, got {t.dtype}")
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


def _resolve_n(schedule, n):
    if isinstance(schedule, _sched.Schedule):
        if n is not None and n != schedule.n:
            raise SizeError(f"n = {n} disagrees with the schedule, built for n = {schedule.n}")
        return schedule.n
    return n


def matrix(theta: torch.Tensor, *, n: Optional[int] = None, schedule=None) -> torch.Tensor:
    r"""The rotation :math:`U(\theta) = B_{R-1}\cdots B_0 \in SO(n)` (see :func:`cupyortho.matrix`).

    Args:
        theta (Tensor): ``(..., n(n-1)/2)`` angles, float32 or float64, CPU or CUDA.
        n (int, optional): inferred from the angle count when omitted.
        schedule (str | Schedule | None): as in :func:`cupyortho.matrix`.

    Returns:
        Tensor ``(..., n, n)``, differentiable with respect to theta.
    """
    _check_tensor("theta", theta)
    n = _resolve_n(schedule, n)
    n = _n_from_count(theta.shape[-1]) if n is None else _sched._check_int("n", n, 2)
    _check_count(theta, n)
    kind, team_size = _schedule_args(schedule)
    return _matrix_op(theta, n, kind, team_size)


def frame(theta: torch.Tensor, n: int, m: int, *, schedule=None) -> torch.Tensor:
    r"""The first ``m`` columns of the Stiefel-restricted :math:`U(\theta)` (see :func:`cupyortho.frame`).

    Args:
        theta (Tensor): ``(..., n*m - m(m+1)/2)`` angles.
        n (int), m (int): ``1 <= m <= n``.
        schedule: as in :func:`matrix`.

    Returns:
        Tensor ``(..., n, m)`` with orthonormal columns.
    """
    _check_tensor("theta", theta)
    n = _sched._check_int("n", n, 2)
    _resolve_n(schedule, n)
    _check_count(theta, n, m)  # validates m too
    kind, team_size = _schedule_args(schedule)
    return _frame_op(theta, n, int(m), kind, team_size)


def apply(theta: torch.Tensor, x: torch.Tensor, *, transpose: bool = False, schedule=None) -> torch.Tensor:
    r"""``U(theta) @ x`` (or ``U(theta).T @ x``) without forming U (see :func:`cupyortho.apply`).

    Shapes follow ``torch.matmul``: ``x`` is ``(n,)`` or ``(..., n, k)`` with batch axes
    broadcasting against theta's ``(..., A)``.  theta and x are promoted to a common dtype.

    Returns:
        Tensor of the broadcast shape, differentiable with respect to theta and x.
    """
    _check_tensor("theta", theta)
    _check_tensor("x", x)
    vector = x.dim() == 1
    x2 = x.unsqueeze(-1) if vector else x
    n = x2.shape[-2]
    if n < 2:
        raise SizeError(f"x must have n >= 2 rows (axis -2, or axis 0 of a vector); got shape {tuple(x.shape)}")
    if _resolve_n(schedule, n) != n:
        raise SizeError(f"x has n = {n} rows but the schedule is built for n = {schedule.n}")
    _check_count(theta, n)
    try:
        torch.broadcast_shapes(theta.shape[:-1], x2.shape[:-2])
    except RuntimeError:
        raise ShapeError(
            f"batch axes do not broadcast: theta {tuple(theta.shape)}, x {tuple(x.shape)}"
        ) from None
    dtype = torch.promote_types(theta.dtype, x.dtype)
    kind, team_size = _schedule_args(schedule)
    y = _apply_op(theta.to(dtype), x2.to(dtype), bool(transpose), kind, team_size)
    return y.squeeze(-1) if vector else y


def _n_from_unitary_count(count: int, special: bool) -> int:
    n = math.isqrt(count + (1 if special else 0))
    if n >= 2 and _unitary.num_unitary_params(n, special) == count:
        return n
    raise AngleCountError(
        f"params must hold {'n*n - 1' if special else 'n*n'} parameters on its last axis for some n >= 2; "
        f"got {count}"
    )


def unitary(params: torch.Tensor, *, n: Optional[int] = None, special: bool = False, schedule=None) -> torch.Tensor:
    r"""The unitary :math:`U = D(\delta) B_{R-1}\cdots B_0` (see :func:`cupyortho.unitary`).

    Args:
        params (Tensor): real ``(..., P)``, ``P = n*n`` (U(n)) or ``n*n - 1`` (SU(n), ``special=True``),
            laid out ``[theta, phi, delta]``.
        n (int, optional), schedule: as in :func:`matrix`.

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
    kind, team_size = _schedule_args(schedule)
    return _unitary_op(params, n, bool(special), kind, team_size)


def unitary_apply(params: torch.Tensor, x: torch.Tensor, *, special: bool = False, adjoint: bool = False,
                  schedule=None) -> torch.Tensor:
    r"""``U(params) @ x`` (or ``U^H @ x``) without forming U (see :func:`cupyortho.unitary_apply`).

    ``x`` is real or complex, ``(n,)`` or ``(..., n, k)``; the result is complex, of the precision of
    params and x together.
    """
    _check_tensor("params", params)
    if not isinstance(x, torch.Tensor) or x.dtype not in _DTYPES + (torch.complex64, torch.complex128):
        raise DtypeError(f"x must be a float32, float64, complex64 or complex128 tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
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
    kind, team_size = _schedule_args(schedule)
    y = _unitary_apply_op(params.to(real), x2.to(xdt), bool(special), bool(adjoint), kind, team_size)
    return y.squeeze(-1) if vector else y


# --------------------------------------------------------------------------- modules

class Orthogonal(nn.Module):
    r"""A linear layer with an orthogonal weight parametrized by Givens angles.

    Follows :class:`torch.nn.Linear`'s convention :math:`y = x W^T` on inputs ``(..., n)``:

    * ``m=None``: :math:`W = U(\theta) \in SO(n)` (``n x n``), so every row vector is rotated by U;
    * ``m`` given: :math:`W = Q^T` (``m x n``, orthonormal rows) with ``Q = frame(theta, n, m)``,
      so ``y = x @ Q`` has ``m`` features.

    The angles start at zero (``W`` = identity, or the first ``m`` rows of it).  For ``m=None`` the
    forward pass rotates the input directly (``apply``) when there are fewer rows than ``n`` and
    materializes ``U`` followed by one matmul otherwise; both are exact.

    Args:
        n (int): input features.
        m (int, optional): output features, ``1 <= m <= n``; None for a square rotation.
        schedule (str | Schedule | None): as in :func:`cupyortho.matrix`.
        device, dtype: of the angle parameter (default float32).

    Attributes:
        theta (Parameter): ``num_angles(n, m)`` angles.
    """

    def __init__(self, n: int, m: Optional[int] = None, *, schedule=None, device=None, dtype=None):
        super().__init__()
        self.n = _sched._check_int("n", n, 2)
        self.m = None if m is None else _sched._check_int("m", m, 1)
        self.in_features = self.n
        self.out_features = self.n if m is None else self.m
        _resolve_n(schedule, self.n)
        _schedule_args(schedule)
        self.schedule = schedule
        self.theta = nn.Parameter(
            torch.zeros(_sched.num_angles(self.n, self.m), device=device, dtype=dtype or torch.float32)
        )

    def matrix(self) -> torch.Tensor:
        """The weight ``W`` of ``y = x @ W.T``: ``U`` (``n x n``), or ``frame(theta, n, m).T`` (``m x n``)."""
        if self.m is None:
            return matrix(self.theta, n=self.n, schedule=self.schedule)
        return frame(self.theta, self.n, self.m, schedule=self.schedule).mT

    @property
    def weight(self) -> torch.Tensor:
        """Alias of :meth:`matrix`, for code written against ``nn.Linear``."""
        return self.matrix()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.n:
            raise ShapeError(f"input must have shape (..., {self.n}), got {tuple(x.shape)}")
        if x.dtype != self.theta.dtype:  # as nn.Linear: no silent promotion
            raise DtypeError(f"input has dtype {x.dtype} but the layer's angles are {self.theta.dtype}")
        if self.m is not None:
            return x @ frame(self.theta, self.n, self.m, schedule=self.schedule)
        rows = x.reshape(-1, self.n)
        if rows.shape[0] >= self.n:
            return x @ self.matrix().mT
        # U @ x_rows^T: rotate the columns, then back to row vectors.
        return apply(self.theta, rows.mT, schedule=self.schedule).mT.reshape(x.shape[:-1] + (self.n,))

    def extra_repr(self) -> str:
        sched = "" if self.schedule is None else f", schedule={self.schedule!r}"
        return f"in_features={self.in_features}, out_features={self.out_features}{sched}"


class OrthogonalParametrization(nn.Module):
    r"""Parametrization for :func:`torch.nn.utils.parametrize.register_parametrization`.

    Maps angles ``theta`` to a ``rows x cols`` matrix with orthonormal columns or rows:

    * ``rows == cols = n``: :math:`U(\theta) \in SO(n)` (``n(n-1)/2`` angles);
    * ``rows > cols``: ``frame(theta, rows, cols)`` (orthonormal columns);
    * ``rows < cols``: ``frame(theta, cols, rows).T`` (orthonormal rows, e.g. ``nn.Linear(n, m).weight``
      with ``m < n``).

    :meth:`right_inverse` maps a matrix to angles with :func:`cupyortho.inverse.angles_from_matrix`
    (what ``register_parametrization`` calls on the existing weight, and what assigning to
    ``module.weight`` calls).  A matrix that is not orthogonal is first replaced by the orthogonal
    factor of its QR decomposition with a non-negative diagonal of R (as
    ``torch.nn.utils.parametrizations.orthogonal`` does); for square matrices with determinant −1
    (outside SO(n)) the sign of the last column is flipped.

    The inverse map is a numerical solve whose cost grows quickly with n (see ``docs/init.md``);
    with ``init="identity"`` the *first* call of :meth:`right_inverse` (the one
    ``register_parametrization`` makes on the module's current weight) returns zero angles instead,
    so the weight starts at the identity (or its first rows/columns) without solving anything;
    later assignments to the weight use the inverse map.

    Args:
        rows (int), cols (int, optional; default rows): shape of the parametrized matrix.
        schedule (str | Schedule | None): as in :func:`cupyortho.matrix`.
        init (str | None): None (invert the current weight at registration) or ``"identity"``.
        inverse_time_limit (float | None): seconds one inverse map may take before
            :class:`cupyortho.errors.InverseMapError` is raised (default 120; None for no limit).
            Haar-like weights are inverted in seconds up to n of about 16 and may take far longer
            beyond (``docs/init.md``): prefer ``init="identity"`` for large layers.
    """

    def __init__(self, rows: int, cols: Optional[int] = None, *, schedule=None, init: Optional[str] = None,
                 inverse_time_limit: Optional[float] = 120.0):
        super().__init__()
        self.inverse_time_limit = inverse_time_limit
        if init not in (None, "identity"):
            raise ValueError(f"init must be None or 'identity', got {init!r}")
        self._pending_init = init
        rows = _sched._check_int("rows", rows, 1)
        cols = rows if cols is None else _sched._check_int("cols", cols, 1)
        self.shape = (rows, cols)
        self.n = max(rows, cols)
        if self.n < 2:
            raise SizeError(f"the parametrized matrix needs at least 2 rows or columns, got {self.shape}")
        self.m = None if rows == cols else min(rows, cols)
        self.transposed = rows < cols
        _resolve_n(schedule, self.n)
        _schedule_args(schedule)
        self.schedule = schedule

    @property
    def num_angles(self) -> int:
        return _sched.num_angles(self.n, self.m)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        if self.m is None:
            return matrix(theta, n=self.n, schedule=self.schedule)
        q = frame(theta, self.n, self.m, schedule=self.schedule)
        return q.mT if self.transposed else q

    @torch.no_grad()
    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        """Angles ``theta`` with ``forward(theta) == w`` for ``w`` orthogonal (see the class docstring).

        Runs :func:`cupyortho.inverse.angles_from_matrix` (square) or
        :func:`cupyortho.inverse.angles_from_frame` on a float64 CPU copy (a one-off, at registration
        or assignment) and returns the angles in ``w``'s dtype and device.
        """
        if tuple(w.shape[-2:]) != self.shape:
            raise ShapeError(f"right_inverse expects a matrix of shape {self.shape}, got {tuple(w.shape)}")
        if self._pending_init == "identity":
            self._pending_init = None
            return w.new_zeros(w.shape[:-2] + (self.num_angles,))
        try:
            from . import inverse
        except ImportError as exc:
            # Not NotImplementedError: register_parametrization would swallow that and keep the matrix.
            raise BackendUnavailableError(
                "OrthogonalParametrization.right_inverse needs cupyortho.inverse (angles_from_matrix, "
                f"angles_from_frame), which cannot be imported here: {exc}"
            ) from exc
        q = (w.mT if self.transposed else w).detach().to("cpu", torch.float64)  # (n, n) or (n, m)
        q = _orthogonalize(q, atol=100 * q.shape[-1] * torch.finfo(w.dtype).eps)
        if self.m is None:
            neg = torch.linalg.det(q) < 0
            if bool(neg.any()):
                warnings.warn(
                    "right_inverse: the assigned matrix has determinant -1, outside SO(n); the sign of its "
                    "last column is flipped so the parametrized weight is W @ diag(1, ..., 1, -1)",
                    stacklevel=2,
                )
                q = q.clone()
                q[..., -1] = torch.where(neg[..., None], -q[..., -1], q[..., -1])
            angles = inverse.angles_from_matrix(_to_numpy(q), schedule=self.schedule,
                                                time_limit=self.inverse_time_limit)
        else:
            angles = inverse.angles_from_frame(_to_numpy(q), self.m, schedule=self.schedule,
                                               time_limit=self.inverse_time_limit)
        return torch.as_tensor(np.asarray(angles), dtype=w.dtype, device=w.device)


def _orthogonalize(q: torch.Tensor, atol: float = None) -> torch.Tensor:
    """``q`` if its columns are orthonormal (to ``atol``), else Q of its QR with ``diag(R) >= 0``."""
    k = q.shape[-1]
    eye = torch.eye(k, dtype=q.dtype, device=q.device)
    tol = atol if atol is not None else 100 * k * torch.finfo(q.dtype).eps
    if torch.allclose(q.mT @ q, eye, atol=tol, rtol=0):
        return q
    qq, r = torch.linalg.qr(q)
    d = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    d = torch.where(d == 0, torch.ones_like(d), d)
    return qq * d[..., None, :]
