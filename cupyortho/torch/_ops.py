r"""cupyortho's maps as ``torch.library`` custom ops, registered from ONE table.

Every op is a row of :data:`_TABLE`: its schema, the cupyortho function it wires (the mathematics
lives there), its fake kernel (``torch.compile``), the non-batch rank of each tensor argument (its
vmap rule) and, for the forward ops, the VJP op its autograd formula calls and the order in which
that op takes the saved tensors.  The registration loop below turns each row into a
:func:`torch.library.custom_op` with ``register_fake``, ``register_autograd`` and ``register_vmap``.

=======================  =================================  ==================================
op                       tensors in                         out
=======================  =================================  ==================================
``matrix``               theta ``(..., n(n-1)/2)``          U ``(..., n, n)``
``frame``                theta ``(..., n*m - m(m+1)/2)``    Q ``(..., n, m)`` (first m columns)
``apply``                theta ``(..., A)``, x ``(..., n,   ``U @ x`` (or ``U.T @ x``),
                         k)``                               batch axes broadcast
``matrix_vjp``,          theta, cotangent (, U)             d_theta (theta's shape)
``frame_vjp``
``apply_vjp``            theta, x, y, cotangent             (d_theta, d_x)
``unitary``,             params ``(..., n*n)`` (or          complex U / ``U @ x`` (or
``unitary_apply``        ``n*n - 1``, SU(n)), x             ``U^H @ x``), and their VJP ops
=======================  =================================  ==================================

The schedule travels to every op as the trailing arguments :data:`_SCHEDULE_SCHEMA`; the
conversions :func:`schedule_args` (public argument -> op arguments) and :func:`_schedule` (op
arguments -> what cupyortho accepts) are the only code that knows that encoding.

Derivatives.  Reverse mode is exact (cupyortho's VJPs).  The ops are *once differentiable*: the VJP
ops carry an autograd formula that raises :class:`NotImplementedError`, so a second backward fails
loudly instead of returning wrong numbers.  Forward-mode AD is not registered.  ``torch.vmap``
works (cupyortho's functions take batch axes natively); ``torch.func.grad``/``jacrev`` over the ops
fail inside torch itself for every ``custom_op`` with ``register_autograd`` (pytorch#168393, #179652).

Unitary parameters are real ``(..., P)``, ``P = n*n`` (U(n)) or ``n*n - 1`` (SU(n)); outputs are
complex.  torch's cotangent of a complex output of a real loss is dL/dRe + i dL/dIm, the convention
of cupyortho.unitary_vjp and unitary_apply_vjp, so they are wired unchanged.
"""

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

import cupyortho as _co
from .. import _unitary
from .. import schedule as _sched
from ..errors import ScheduleError
from ._bridge import _call

_LIB = "cupyortho"

# --------------------------------------------------------------------------- the schedule argument
# The one place that encodes a schedule as op arguments.  Every op's schema ends with
# _SCHEDULE_SCHEMA and every public function passes ``*schedule_args(schedule)``.

_SCHEDULE_SCHEMA = "str? kind, int? team_size"


def schedule_args(schedule) -> Tuple[Optional[str], Optional[int]]:
    """A ``schedule`` argument (None, a kind name, a token or a Schedule) -> the trailing op arguments
    ``(kind or token, team_size)``; a Schedule travels as its token, which carries its restriction."""
    if schedule is None:
        return None, None
    if isinstance(schedule, str):
        if schedule not in _sched.SCHEDULE_KINDS and ":" not in schedule:
            raise ScheduleError(
                f"schedule must be one of {_sched.SCHEDULE_KINDS}, a schedule token, a Schedule or None, "
                f"got {schedule!r}"
            )
        return schedule, None
    if isinstance(schedule, _sched.Schedule):
        return schedule.token, None  # the one way any Schedule travels: its token (cupyortho.schedule)
    raise ScheduleError(
        f"schedule must be one of {_sched.SCHEDULE_KINDS}, a Schedule or None, got {type(schedule).__name__}"
    )


# kept under its historical name for callers of the adapter's private helpers
_schedule_args = schedule_args


def _schedule(n: int, kind: Optional[str], team_size: Optional[int]):
    """The trailing op arguments back to a schedule cupyortho accepts, for size ``n``."""
    if kind == "team" and team_size is not None:
        return _sched.team_schedule(n, team_size)
    return kind


# --------------------------------------------------------------------------- the table

def _complex_of(dtype):
    return torch.complex128 if dtype == torch.float64 else torch.complex64  # bf16/fp16: complex64


def _eye(batch, n, m, dtype, device):
    """A fresh ``batch + (n, m)`` identity (the output of every map at zero parameters)."""
    out = torch.zeros(tuple(batch) + (n, m), dtype=dtype, device=device)
    out.diagonal(dim1=-2, dim2=-1).fill_(1)
    return out


def _apply_shape(theta, x):
    return torch.broadcast_shapes(theta.shape[:-1], x.shape[:-2]) + x.shape[-2:]


@dataclass(frozen=True)
class _Op:
    name: str
    args: str                  # schema of the arguments before the schedule's
    returns: str               # "Tensor" or "(Tensor, Tensor)"
    impl: Callable             # (arrays..., scalars..., schedule) -> array or tuple of arrays
    n: Callable                # (*args without the schedule) -> the n the schedule is built for
    fake: Callable             # (*args without the schedule) -> empty output tensor(s)
    core: Tuple[int, ...]      # non-batch rank of each tensor argument (vmap)
    like: Optional[Tuple[int, ...]] = None  # VJP ops: index of the input each output is shaped like
    vjp: Optional[str] = None  # forward ops: the op computing their VJP ...
    vjp_tensors: Tuple[str, ...] = ()  # ... and its tensor arguments: input names, "out", "grad"
    at_zero: Optional[Callable] = None  # forward maps of the parameters alone: the output at all-zero parameters

    @property
    def n_tensors(self) -> int:
        return len(self.core)

    @property
    def n_args(self) -> int:
        return len(self.args.split(", "))

    @property
    def tensor_names(self) -> Tuple[str, ...]:
        return tuple(a.split()[1] for a in self.args.split(", ") if a.startswith("Tensor "))


_TABLE = (
    _Op("matrix", "Tensor theta, int n", "Tensor",
        lambda t, n, s: _co.matrix(t, n=n, schedule=s, check_finite=False),
        n=lambda theta, n: n,
        fake=lambda theta, n: theta.new_empty(theta.shape[:-1] + (n, n)),
        core=(1,), vjp="matrix_vjp", vjp_tensors=("theta", "grad", "out"),
        at_zero=lambda theta, n: _eye(theta.shape[:-1], n, n, theta.dtype, theta.device)),
    # ``u`` is the forward output U(theta), saved by autograd, so the backward does not rebuild it.
    _Op("matrix_vjp", "Tensor theta, Tensor cotangent, Tensor u, int n", "Tensor",
        lambda t, g, u, n, s: _co.matrix_vjp(t, g, n=n, schedule=s, output=u, check_finite=False),
        n=lambda theta, g, u, n: n,
        fake=lambda theta, *_: torch.empty_like(theta),
        core=(1, 2, 2), like=(0,)),
    _Op("frame", "Tensor theta, int n, int m", "Tensor",
        lambda t, n, m, s: _co.frame(t, n, m, schedule=s, check_finite=False),
        n=lambda theta, n, m: n,
        fake=lambda theta, n, m: theta.new_empty(theta.shape[:-1] + (n, m)),
        core=(1,), vjp="frame_vjp", vjp_tensors=("theta", "grad"),
        at_zero=lambda theta, n, m: _eye(theta.shape[:-1], n, m, theta.dtype, theta.device)),
    _Op("frame_vjp", "Tensor theta, Tensor cotangent, int n, int m", "Tensor",
        lambda t, g, n, m, s: _co.frame_vjp(t, g, n, m, schedule=s, check_finite=False),
        n=lambda theta, g, n, m: n,
        fake=lambda theta, *_: torch.empty_like(theta),
        core=(1, 2), like=(0,)),
    # apply saves theta, x and the output y: the backward undoes the rounds on y.
    _Op("apply", "Tensor theta, Tensor x, bool transpose", "Tensor",
        lambda t, a, tr, s: _co.apply(t, a, transpose=tr, schedule=s, check_finite=False),
        n=lambda theta, x, tr: x.shape[-2],
        fake=lambda theta, x, tr: x.new_empty(_apply_shape(theta, x)),
        core=(1, 2), vjp="apply_vjp", vjp_tensors=("theta", "x", "out", "grad")),
    _Op("apply_vjp", "Tensor theta, Tensor x, Tensor y, Tensor cotangent, bool transpose", "(Tensor, Tensor)",
        lambda t, a, y, g, tr, s: _co.apply_vjp(t, a, g, transpose=tr, schedule=s, output=y, check_finite=False),
        n=lambda theta, x, y, g, tr: x.shape[-2],
        fake=lambda theta, x, *_: (torch.empty_like(theta), torch.empty_like(x)),
        core=(1, 2, 2, 2), like=(0, 1)),
    _Op("unitary", "Tensor params, int n, bool special", "Tensor",
        lambda p, n, sp, s: _unitary.unitary(p, n=n, special=sp, schedule=s, check_finite=False),
        n=lambda p, n, sp: n,
        fake=lambda p, n, sp: p.new_empty(p.shape[:-1] + (n, n), dtype=_complex_of(p.dtype)),
        core=(1,), vjp="unitary_vjp", vjp_tensors=("params", "grad"),
        at_zero=lambda p, n, sp: _eye(p.shape[:-1], n, n, _complex_of(p.dtype), p.device)),
    _Op("unitary_vjp", "Tensor params, Tensor cotangent, int n, bool special", "Tensor",
        lambda p, g, n, sp, s: _unitary.unitary_vjp(p, g, n=n, special=sp, schedule=s, check_finite=False),
        n=lambda p, g, n, sp: n,
        fake=lambda p, *_: torch.empty_like(p),
        core=(1, 2), like=(0,)),
    _Op("unitary_apply", "Tensor params, Tensor x, bool special, bool adjoint", "Tensor",
        lambda p, a, sp, adj, s: _unitary.unitary_apply(p, a, special=sp, adjoint=adj, schedule=s,
                                                         check_finite=False),
        n=lambda p, x, sp, adj: x.shape[-2],
        fake=lambda p, x, sp, adj: x.new_empty(_apply_shape(p, x), dtype=_complex_of(p.dtype)),
        core=(1, 2), vjp="unitary_apply_vjp", vjp_tensors=("params", "x", "out", "grad")),
    _Op("unitary_apply_vjp",
        "Tensor params, Tensor x, Tensor y, Tensor cotangent, bool special, bool adjoint", "(Tensor, Tensor)",
        lambda p, a, y, g, sp, adj, s: _unitary.unitary_apply_vjp(
            p, a, g, special=sp, adjoint=adj, schedule=s, output=y, check_finite=False),
        n=lambda p, x, y, g, sp, adj: x.shape[-2],
        fake=lambda p, x, *_: (torch.empty_like(p), torch.empty_like(x)),
        core=(1, 2, 2, 2), like=(0, 1)),
)


# --------------------------------------------------------------------------- registration

def _kernel(spec: _Op):
    """The op's implementation: the tensors go through the bridge, the rest is passed on."""
    k, f = spec.n_tensors, spec.n_args  # the schedule's arguments follow the first f (defaults may be left out)

    def kernel(*args):
        tensors, scalars, sched = args[:k], args[k:f], args[f:]
        if any(t.numel() == 0 for t in tensors):
            # An empty batch (or k = 0 columns): every output is a sum over nothing -- zeros of the
            # shape the fake kernel states, without calling cupyortho.
            out = spec.fake(*args[:f])
            return tuple(torch.zeros_like(o) for o in out) if isinstance(out, tuple) else torch.zeros_like(out)
        if spec.at_zero is not None and tensors[0].device.type == "cpu" and not bool(tensors[0].any()):
            # Zero parameters (after registration or rebase): every schedule's map is exactly the
            # identity, so it is returned without running the rounds (an O(A) check on the CPU; on a
            # GPU the check would synchronize, so the rounds run there).
            return spec.at_zero(*args[:f])
        schedule = _schedule(spec.n(*args[:f]), *sched)
        return _call(lambda *arrays: spec.impl(*arrays, *scalars, schedule), *tensors)

    return kernel


def _fake(spec: _Op):
    def fake(*args):
        return spec.fake(*args[:spec.n_args])

    return fake


def _register_autograd(op, spec: _Op, vjp_op) -> None:
    k = spec.n_tensors
    names = spec.tensor_names
    save_out = "out" in spec.vjp_tensors

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:k], *((output,) if save_out else ()))
        ctx.rest = inputs[k:]

    def backward(ctx, grad):
        saved = ctx.saved_tensors
        env = dict(zip(names, saved[:k]), grad=grad)
        if save_out:
            env["out"] = saved[k]
        grads = vjp_op(*(env[name] for name in spec.vjp_tensors), *ctx.rest)
        grads = grads if isinstance(grads, tuple) else (grads,)
        grads = tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))
        return grads + (None,) * len(ctx.rest)

    op.register_autograd(backward, setup_context=setup)


def _register_once_differentiable(op, name: str) -> None:
    def setup(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise NotImplementedError(
            f"cupyortho.torch: {name} is once differentiable; second derivatives (a backward through "
            "a gradient computed with create_graph=True, torch.func.hessian, gradgradcheck) are not "
            "implemented"
        )

    op.register_autograd(backward, setup_context=setup)


# vmap.  cupyortho's functions already take batch axes, so a rule only has to line the mapped axis
# up in front of every tensor (expanding, as a view, the tensors that are not mapped) and give the
# batch axes of all tensors the same rank (size-1 axes, a view), then call the op once.

def _register_vmap(op, spec: _Op) -> None:
    core, k, like = spec.core, spec.n_tensors, spec.like

    def rule(info, in_dims, *args):
        size = info.batch_size
        tensors = []
        for t, d in zip(args[:k], in_dims[:k]):
            tensors.append(t.movedim(d, 0) if d is not None else t.unsqueeze(0).expand((size,) + t.shape))
        rank = max(t.dim() - 1 - c for t, c in zip(tensors, core))
        padded = [
            t.reshape(t.shape[:1] + (1,) * (rank - (t.dim() - 1 - c)) + t.shape[1:])
            for t, c in zip(tensors, core)
        ]
        out = op(*padded, *args[k:])
        if like is None:
            return out, 0
        if isinstance(out, tuple):
            out = tuple(o.reshape(tensors[i].shape) for o, i in zip(out, like))
            return out, tuple(0 for _ in out)
        return out.reshape(tensors[like[0]].shape), 0

    torch.library.register_vmap(op, rule)


def _build():
    ops = {}
    for spec in _TABLE:
        schema = f"({spec.args}, {_SCHEDULE_SCHEMA}) -> {spec.returns}"
        op = torch.library.custom_op(f"{_LIB}::{spec.name}", _kernel(spec), mutates_args=(), schema=schema)
        op.register_fake(_fake(spec))
        _register_vmap(op, spec)
        ops[spec.name] = op
    for spec in _TABLE:
        if spec.vjp is not None:
            _register_autograd(ops[spec.name], spec, ops[spec.vjp])
        else:
            _register_once_differentiable(ops[spec.name], spec.name.replace("_vjp", ""))
    return ops


OPS = _build()


# --------------------------------------------------------------------------- bfloat16 / float16
# The one place low precision is handled: a cast at the op boundary.  The ops compute in float32
# and float64 only; a forward op called with bfloat16/float16 tensors gets float32 copies and its
# result is cast back (complex64 for the unitary ops: torch has no bfloat16 complex).  The casts are
# ordinary differentiable torch ops outside the custom op, so autograd saves float32 tensors for the
# backward, runs the VJP op in float32 and casts the gradients back to each input's dtype.  Each
# output entry is therefore the float32 result rounded once: within u |entry| (u = 2**-8 for
# bfloat16, 2**-11 for float16) of the exact map at the (low-precision) inputs, plus float32's own
# O(n eps32) error (docs/adapters.md; tests/test_torch_lowp.py).

LOW_PRECISION = (torch.bfloat16, torch.float16)


def _low_precision_boundary(op, n_tensors: int):
    def call(*args):
        tensors = args[:n_tensors]
        low = next((t.dtype for t in tensors if t.dtype in LOW_PRECISION), None)
        if low is None:
            return op(*args)
        wide = tuple(t.float() if t.dtype in LOW_PRECISION else t for t in tensors)
        out = op(*wide, *args[n_tensors:])
        return out if out.is_complex() else out.to(low)

    call.op = op
    return call


_matrix_op = OPS["matrix"]
_matrix_vjp_op = OPS["matrix_vjp"]
_frame_op = OPS["frame"]
_frame_vjp_op = OPS["frame_vjp"]
_apply_op = OPS["apply"]
_apply_vjp_op = OPS["apply_vjp"]
_unitary_op = OPS["unitary"]
_unitary_vjp_op = OPS["unitary_vjp"]
_unitary_apply_op = OPS["unitary_apply"]
_unitary_apply_vjp_op = OPS["unitary_apply_vjp"]

# What the public functions call: the forward ops behind the low-precision boundary.
matrix_op = _low_precision_boundary(_matrix_op, 1)
frame_op = _low_precision_boundary(_frame_op, 1)
apply_op = _low_precision_boundary(_apply_op, 2)
unitary_op = _low_precision_boundary(_unitary_op, 1)
unitary_apply_op = _low_precision_boundary(_unitary_apply_op, 2)
