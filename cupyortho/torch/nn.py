r"""Layers and parametrizations: :class:`Orthogonal` and :class:`Unitary` (``nn.Linear``-like layers with
an orthogonal / unitary weight) and :class:`OrthogonalParametrization` / :class:`UnitaryParametrization`
(for :func:`torch.nn.utils.parametrize.register_parametrization`).

Base and angles (``docs/adapters.md``).  With ``use_base=True`` (the default) the weight is
:math:`W = B\,U(\theta)` -- a stored base ``B`` (a registered buffer, in the state_dict) times the
rotation of the trainable angles -- as torch's ``parametrizations.orthogonal`` and geotorch do.
Assigning a weight (``right_inverse``, what ``register_parametrization`` calls on the module's current
weight) stores it in ``B`` with one QR at any n and returns ``theta = 0``; :meth:`rebase` folds
:math:`U(\theta)` into ``B`` and zeroes the angles.  ``B`` is in O(n) (U(n); SU(n) for ``special``),
so det -1 weights are stored exactly.  With ``use_base=False`` the weight is :math:`U(\theta)` itself
and assignment solves for the angles numerically (:mod:`cupyortho.inverse`, small n).

Frames.  A layer with ``m < n`` outputs (a parametrized tall or wide matrix) uses
:math:`Q = B\,\mathrm{frame}(\theta, n, m)` (``n x m``, orthonormal columns), transposed where the
weight is wide.

Assignment tolerance.  A matrix ``W`` with :math:`\max|W^H W - I| \le 256\,\epsilon` of its own dtype
(:func:`assignment_tolerance`: 3.1e-5 for float32, 5.7e-14 for float64) is orthogonal "as is" and
stored bitwise in the base; anything else is replaced by its QR factor with a positive diagonal of R
(as torch does).

Recurrences.  Inside :func:`cached` (or :func:`torch.nn.utils.parametrize.cached`) a layer computes
its weight once and every call reuses it (materialize-then-matmul), so an RNN cell applied at each of
T timesteps builds U once per forward and its VJP once per backward.
"""

import contextlib
import warnings
from typing import Optional

import numpy as np
import torch
from torch import nn

from .. import _validate as _v
from .. import schedule as _sched
from ..errors import (
    ArrayTypeError,
    BackendUnavailableError,
    DtypeError,
    NonFiniteError,
    ScheduleError,
    SettingError,
    ShapeError,
    SizeError,
)
from ._bridge import _to_numpy, same_device
from ._ops import LOW_PRECISION, _complex_of
from ._ops import schedule_args as _schedule_args
from .functional import _as_schedule, _resolve_n, apply, frame, matrix, unitary, unitary_apply

__all__ = [
    "Orthogonal",
    "OrthogonalParametrization",
    "Unitary",
    "UnitaryParametrization",
    "cached",
    "rebase",
    "assignment_tolerance",
]

ASSIGN_EPS = 256
"""The assignment tolerance in units of the dtype's machine epsilon (see :func:`assignment_tolerance`)."""
ASSIGN_EPS_LOW = 4
"""The same for bfloat16/float16 weights: rounding an orthogonal matrix to them leaves at most one eps."""

_REAL = (torch.float32, torch.float64) + LOW_PRECISION

_STATE_VERSION = 1


def assignment_tolerance(dtype: torch.dtype) -> float:
    r"""The largest :math:`\max|W^H W - I|` with which a weight of ``dtype`` is taken as orthogonal
    (unitary) as it is: ``256 * eps(dtype)`` (of the real dtype for complex ones), 3.1e-5 for float32
    and 5.7e-14 for float64; ``4 * eps`` for bfloat16 and float16 (0.031, 0.0039: an orthogonal matrix
    rounded to them is within one eps).  It is checked in ``dtype`` itself (float32 for the low
    precisions), where the rounding of the check is far below it."""
    real = torch.empty((), dtype=dtype).real.dtype
    return (ASSIGN_EPS_LOW if real in LOW_PRECISION else ASSIGN_EPS) * torch.finfo(real).eps


# --------------------------------------------------------------------------- linear algebra helpers

def _orth_error(q: torch.Tensor) -> float:
    """:math:`\\max|q^H q - I|` over the whole batch (a Python float)."""
    q = q.float() if q.dtype in LOW_PRECISION else q
    k = q.shape[-1]
    eye = torch.eye(k, dtype=q.dtype, device=q.device)
    return (q.mH @ q - eye).abs().amax().item() if q.numel() else 0.0


def _unit_phase(d: torch.Tensor) -> torch.Tensor:
    """sign(d) (real) or d/|d| (complex), with 1 where d == 0."""
    if d.is_complex():
        a = d.abs()
        return torch.where(a == 0, torch.ones_like(d), d / torch.where(a == 0, torch.ones_like(a), a))
    s = torch.sign(d)
    return torch.where(s == 0, torch.ones_like(s), s)


def _qr_factor(a: torch.Tensor, complete: bool = False) -> torch.Tensor:
    """Q of ``a = QR`` with R's diagonal made real and positive (the sign-fixed QR factor, unique for a
    full-rank ``a``); ``complete=True``: the ``n x n`` Q whose first ``k`` columns are that factor."""
    low = a.dtype if a.dtype in LOW_PRECISION else None  # no QR in bfloat16/float16: float32, rounded once
    q, r = torch.linalg.qr(a.float() if low else a, mode="complete" if complete else "reduced")
    d = _unit_phase(torch.diagonal(r, dim1=-2, dim2=-1))
    k = d.shape[-1]
    q = torch.cat([q[..., :k] * d[..., None, :], q[..., k:]], dim=-1)
    return q.to(low) if low else q


def _det_one(q: torch.Tensor) -> torch.Tensor:
    """A unitary ``q`` times the scalar phase that makes its determinant 1 (SU(n))."""
    n = q.shape[-1]
    phase = torch.angle(torch.linalg.det(q))
    return q * torch.exp(-1j * phase / n).to(q.dtype)[..., None, None]


def _haar(n: int, dtype, device, generator=None) -> torch.Tensor:
    """A Haar-distributed element of O(n) (real ``dtype``) or U(n) (complex ``dtype``): the sign-fixed
    QR factor of a Gaussian matrix (torch's generator; Mezzadri's phase fix for complex)."""
    z = torch.randn(n, n, dtype=dtype, device=device, generator=generator)
    return _qr_factor(z)


def _base_from(q: torch.Tensor, tol: float):
    """``(B, exact)``: an ``n x n`` orthogonal/unitary B whose first ``k`` columns are ``q`` (``n x k``)
    -- ``q`` itself (a copy) when its columns are orthonormal to ``tol``, else its sign-fixed QR factor
    -- completed by the orthonormal complement of the same (complete) QR.  One QR at most."""
    n, k = q.shape[-2:]
    exact = _orth_error(q) <= tol
    if k == n:
        return (q.clone() if exact else _qr_factor(q)), exact
    full = _qr_factor(q, complete=True)
    if exact:
        full = torch.cat([q, full[..., k:]], dim=-1)
    return full, exact


# --------------------------------------------------------------------------- cached weights

_cache_depth = 0
_cache: dict = {}


@contextlib.contextmanager
def cached():
    r"""Context in which every :class:`Orthogonal` / :class:`Unitary` layer computes its weight once
    and reuses it on every call (e.g. across the timesteps of an RNN), as
    :func:`torch.nn.utils.parametrize.cached` does for parametrizations (which is honoured too).

    Inside, a layer's forward is ``x @ W.T`` with the one cached ``W`` (the materialize strategy: the
    rotations are applied once to build ``W``, the VJP runs once in the backward).  The cache is
    emptied when the outermost context exits; do not update the angles inside it (as with torch's).
    """
    global _cache_depth
    _cache_depth += 1
    try:
        yield
    finally:
        _cache_depth -= 1
        if _cache_depth == 0:
            _cache.clear()


def _torch_cache():
    """torch's parametrize cache while ``parametrize.cached()`` is active, else None."""
    from torch.nn.utils import parametrize

    return parametrize._cache if getattr(parametrize, "_cache_enabled", 0) > 0 else None


def _caching() -> bool:
    return _cache_depth > 0 or _torch_cache() is not None


def _cached_weight(layer) -> torch.Tensor:
    # our context's cache, else torch's (emptied by torch when its context exits)
    cache = _cache if _cache_depth > 0 else _torch_cache()
    key = (id(layer), "cupyortho.weight")
    w = cache.get(key)
    if w is None or w[0] is not layer:
        w = (layer, layer._compute_weight())
        cache[key] = w
    return w[1]


# --------------------------------------------------------------------------- shared machinery

def _schedule_definition(schedule, n: int):
    """What of ``schedule`` defines the weights: (kind, team size), resolved without building it."""
    schedule = _as_schedule(schedule)
    if isinstance(schedule, _sched.Schedule):
        if schedule.kind in ("truncated", "rounds"):  # derived: its token (which describes it) defines it
            return schedule.token, None
        return schedule.kind, schedule.team_size
    kind = _sched.DEFAULT_SCHEDULE if schedule is None else schedule
    return kind, (_sched.default_team_size(n) if kind == "team" else None)


def _check_init(init, allowed):
    """``init`` is one of ``allowed`` (None among them where it is allowed): SettingError otherwise."""
    if init is None and None in allowed:
        return None
    return _v.choice("init", init, [a for a in allowed if a is not None])


class _Trivialized(nn.Module):
    """What the four modules share: the size, schedule and base, the weight ``B @ core(theta)``,
    rebase, and the checkpoint definition checked on load."""

    _complex = False
    special = False

    def _setup(self, n: int, m: Optional[int], schedule, use_base: bool, device, dtype):
        self.n, self.m = n, m
        _resolve_n(schedule, n)
        _schedule_args(schedule)
        self.schedule = schedule
        self.use_base = _v.flag("use_base", use_base)
        if self.use_base:
            bdt = _complex_of(dtype) if self._complex else dtype
            self.register_buffer("base", torch.eye(n, dtype=bdt, device=device))
        else:
            self.base = None

    # the core map of the angles, without the base
    def _core(self, theta: torch.Tensor) -> torch.Tensor:
        if self._complex:
            return unitary(theta, n=self.n, special=self.special, schedule=self.schedule)
        if self.m is None:
            return matrix(theta, n=self.n, schedule=self.schedule)
        return frame(theta, self.n, self.m, schedule=self.schedule)

    def _q(self, theta: torch.Tensor) -> torch.Tensor:
        """``B @ core(theta)`` (``n x n`` or ``n x m``), or ``core(theta)`` without a base."""
        q = self._core(theta)
        if self.base is None:
            return q
        # a parametrization's base takes the weight's dtype at registration; before it, the
        # placeholder identity follows the angles
        return (self.base if self.base.dtype == q.dtype else self.base.to(q.dtype)) @ q

    def _num_params(self) -> int:
        if self._complex:  # 2*A + n (- 1): n*n for full schedules, fewer for a truncated one
            return _v.num_unitary_params(self.n, self.special, _as_schedule(self.schedule))
        # the schedule's count (a truncated schedule holds fewer angles)
        return _sched.get_schedule(_as_schedule(self.schedule), self.n, self.m).num_angles

    @torch.no_grad()
    def _rebase(self, theta: torch.Tensor) -> None:
        if self.base is None:
            raise ShapeError("rebase needs a base: this module was built with use_base=False (pure angles)")
        if theta.shape != (self._num_params(),):
            raise ShapeError(f"rebase expects the angle tensor of shape ({self._num_params()},), "
                             f"got {tuple(theta.shape)}")
        if self._complex or self.m is None:
            full = self._core(theta)
        else:
            # the restricted schedule's full n x n rotation, whose first m columns are frame(theta)
            restricted = _sched.get_schedule(_as_schedule(self.schedule), self.n).restrict(self.m)
            full = matrix(theta, schedule=restricted)
        b = self.base @ full
        if _orth_error(b) > assignment_tolerance(b.dtype):
            b = _qr_factor(b)
            if self.special:
                b = _det_one(b)
        self.base.copy_(b)
        theta.zero_()

    def _init_base(self, init, dtype, device) -> None:
        """Set the base for ``init`` ("identity" or "haar"; "torus" keeps the identity base)."""
        if self.base is None:
            return
        bdt = _complex_of(dtype) if self._complex else dtype
        if init == "haar":
            b = _haar(self.n, bdt, device)
            if self.special:
                b = _det_one(b)
        else:
            b = torch.eye(self.n, dtype=bdt, device=device)
        self.base = b

    def _init_angles(self, init, dtype, device) -> torch.Tensor:
        """The angles for ``init`` (zero, except torus, and haar without a base)."""
        count = self._num_params()
        if init == "torus":
            from ..init import torus_angles

            if count != _sched.num_angles(self.n, self.m):
                raise SettingError("init='torus' needs a schedule holding every pair of the layout "
                                   f"({_sched.num_angles(self.n, self.m)} angles); this one holds {count}")

            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())  # torch's generator
            return torch.as_tensor(torus_angles(self.n, self.m, rng=seed), dtype=dtype, device=device)
        if init == "haar" and self.base is None:
            from .. import init as _init

            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
            if self._complex:
                a = _init.haar_unitary_params(self.n, schedule=self.schedule, rng=seed)
                if self.special:
                    raise ShapeError("init='haar' with special=True needs use_base=True")
            elif self.m is None:
                a = _init.haar_angles(self.n, schedule=self.schedule, rng=seed)
            else:
                a = _init.haar_frame_angles(self.n, self.m, schedule=self.schedule, rng=seed)
            return torch.as_tensor(a, dtype=dtype, device=device)
        return torch.zeros(count, dtype=dtype, device=device)

    # ---- checkpoints: what defines the weight travels in the state_dict and is checked on load

    def _definition(self) -> dict:
        kind, team_size = _schedule_definition(self.schedule, self.n)
        d = {"version": _STATE_VERSION, "kind": kind, "team_size": team_size, "n": self.n, "m": self.m,
             "use_base": self.use_base}
        if self._complex:
            d["special"] = bool(self.special)
        return d

    def get_extra_state(self):
        return self._definition()

    def set_extra_state(self, state):
        pass  # checked before loading, in _load_from_state_dict

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        self._check_checkpoint(state_dict, prefix)
        had_definition = prefix + "_extra_state" in state_dict
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if not had_definition and prefix + "_extra_state" in missing_keys:
            # checkpoints from before the definition was stored load when they fit (checked above)
            missing_keys.remove(prefix + "_extra_state")

    def _check_checkpoint(self, state_dict, prefix):
        name = type(self).__name__
        saved = state_dict.get(prefix + "_extra_state")
        if saved is not None and not isinstance(saved, dict):
            raise ShapeError(f"{name}.load_state_dict: '{prefix}_extra_state' is not a cupyortho layer definition "
                             f"(expected a dict, got {type(saved).__name__})")
        if isinstance(saved, dict):
            mine = self._definition()
            for key in ("kind", "team_size", "n", "m", "use_base", "special"):
                if key in mine and saved.get(key, mine[key]) != mine[key]:
                    what = {"kind": "schedule kind", "team_size": "schedule team size"}.get(key, key)
                    cls = ScheduleError if key in ("kind", "team_size") else SizeError
                    raise cls(
                        f"{name}.load_state_dict: the checkpoint ({prefix}_extra_state) was saved from a layer "
                        f"with {what} = {saved[key]!r}, this one has {what} = {mine[key]!r}; the angles would "
                        "define another weight -- build the layer as it was saved"
                    )
        key = prefix + "base"
        if self.base is not None:
            if key not in state_dict:
                raise ShapeError(
                    f"{name}.load_state_dict: no '{key}' in the checkpoint (expected a tensor of shape "
                    f"{tuple(self.base.shape)}): it holds pure angles (saved before the base existed, or "
                    "with use_base=False); build the layer with use_base=False to load it"
                )
            if tuple(state_dict[key].shape) != tuple(self.base.shape):
                raise ShapeError(
                    f"{name}.load_state_dict: '{key}' has shape {tuple(state_dict[key].shape)} in the checkpoint, "
                    f"this layer needs {tuple(self.base.shape)} (n = {self.n})"
                )
        elif key in state_dict:
            raise ShapeError(
                f"{name}.load_state_dict: the checkpoint holds '{key}' (shape {tuple(state_dict[key].shape)}) "
                "but this layer was built with use_base=False; build it with use_base=True"
            )
        for pkey, param in self._named_angle_params():
            if prefix + pkey in state_dict and tuple(state_dict[prefix + pkey].shape) != tuple(param.shape):
                raise ShapeError(
                    f"{name}.load_state_dict: '{prefix + pkey}' has shape {tuple(state_dict[prefix + pkey].shape)} "
                    f"in the checkpoint, this layer needs {tuple(param.shape)} (n = {self.n}, m = {self.m})"
                )

    def _named_angle_params(self):
        return ()


# --------------------------------------------------------------------------- layers

class _Layer(_Trivialized):
    """An ``nn.Linear``-like layer ``y = x @ W.T`` whose angles are its own parameter ``theta``."""

    def _named_angle_params(self):
        return (("theta", self.theta),)

    def _compute_weight(self) -> torch.Tensor:
        q = self._q(self.theta)
        return q if self.m is None else q.mT

    def matrix(self) -> torch.Tensor:
        """The weight ``W`` of ``y = x @ W.T`` (cached inside :func:`cached`)."""
        return _cached_weight(self) if _caching() else self._compute_weight()

    @property
    def weight(self) -> torch.Tensor:
        """Alias of :meth:`matrix`, for code written against ``nn.Linear``."""
        return self.matrix()

    def rebase(self) -> None:
        """Fold the rotation of the angles into the base, ``B <- B @ U(theta)`` (re-orthogonalized by
        one QR when its error exceeds :func:`assignment_tolerance`), and zero the angles, in place.

        The weight is unchanged (bitwise for square layers unless re-orthogonalized; to rounding for
        frames).  Optimizer state refers to the angles: see :func:`rebase` and ``docs/adapters.md``."""
        self._rebase(self.theta)

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor):
            raise ArrayTypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        same_device(input=x, theta=self.theta)
        if x.dim() < 1 or x.shape[-1] != self.n:
            raise ShapeError(f"input must have shape (..., {self.n}), got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        sched = "" if self.schedule is None else f", schedule={self.schedule!r}"
        base = "" if self.use_base else ", use_base=False"
        return f"in_features={self.in_features}, out_features={self.out_features}{sched}{base}"


class Orthogonal(_Layer):
    r"""A linear layer with an orthogonal weight: ``W = B @ U(theta)``, Givens angles over a base.

    Follows :class:`torch.nn.Linear`'s convention :math:`y = x W^T` on inputs ``(..., n)``:

    * ``m=None``: :math:`W = B\,U(\theta)` (``n x n``; :math:`U \in SO(n)`, ``B`` in O(n));
    * ``m`` given: :math:`W = (B\,Q)^T` (``m x n``, orthonormal rows), ``Q = frame(theta, n, m)``,
      so ``y = x @ B @ Q`` has ``m`` features.

    ``use_base=False`` drops ``B`` (the weight is :math:`U(\theta)` itself, in SO(n)).  The forward pass
    rotates the input directly (``apply``) when there are fewer rows than ``n`` and materializes ``W``
    followed by one matmul otherwise, and always materializes inside :func:`cached`.

    Args:
        n (int): input features, ``n >= 2``.
        m (int, optional): output features, ``1 <= m <= n``; None for a square rotation.
        init (str): ``"identity"`` (B = I, theta = 0), ``"haar"`` (B Haar on O(n) from torch's
            generator, theta = 0; without a base: Haar angles from the inverse map, small n only) or
            ``"torus"`` (B = I, theta from :func:`cupyortho.init.torus_angles`, torch's generator).
        use_base (bool): keep the base buffer ``base`` (default True).
        schedule (str | Schedule | None): as in :func:`cupyortho.matrix`.
        device, dtype: of the parameter and the base (default float32).

    Attributes:
        theta (Parameter): ``num_angles(n, m)`` angles.  base (buffer): ``(n, n)`` or None.

    Raises:
        cupyortho.errors.SizeError, ScheduleError, ShapeError (bad ``init``), DtypeError.
    """

    def __init__(self, n: int, m: Optional[int] = None, *, init: str = "identity", use_base: bool = True,
                 schedule=None, device=None, dtype=None):
        super().__init__()
        n = _sched._check_int("n", n, 2)
        m = None if m is None else _sched._check_int("m", m, 1)
        if m is not None:
            _sched.num_angles(n, m)  # m <= n
        _check_init(init, ("identity", "haar", "torus"))
        dtype = dtype or torch.float32
        if dtype not in _REAL:
            raise DtypeError(f"dtype must be torch.float32, float64, bfloat16 or float16, got {dtype}")
        self._setup(n, m, schedule, use_base, device, dtype)
        self.in_features = n
        self.out_features = n if m is None else m
        self._init_base(init, dtype, device)
        self.theta = nn.Parameter(self._init_angles(init, dtype, device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if x.dtype != self.theta.dtype:  # as nn.Linear: no silent promotion
            raise DtypeError(f"input has dtype {x.dtype} but the layer's angles are {self.theta.dtype}")
        if _caching():
            return x @ _cached_weight(self).mT
        if self.m is not None:
            return x @ self._q(self.theta)
        rows = x.reshape(-1, self.n)
        if rows.shape[0] >= self.n:
            return x @ self.matrix().mT
        # (B U x_rows^T)^T: rotate the columns, apply the base, back to row vectors.
        z = apply(self.theta, rows.mT, schedule=self.schedule)
        if self.base is not None:
            z = self.base @ z
        return z.mT.reshape(x.shape[:-1] + (self.n,))


class Unitary(_Layer):
    r"""A linear layer with a unitary weight :math:`W = B\,U(p)` (``n x n`` complex), ``y = x @ W.T``.

    ``U(p)`` is :func:`cupyortho.unitary` of the real parameters ``p`` (``n*n``, or ``n*n - 1`` in
    SU(n) with ``special=True``); ``B`` is a complex base buffer in U(n) (SU(n) for ``special``).

    Args:
        n (int): features.  special (bool): SU(n) instead of U(n).
        init (str): ``"identity"`` or ``"haar"`` (B Haar on U(n), or SU(n), torch's generator).
        use_base (bool), schedule, device: as in :class:`Orthogonal`.
        dtype: real dtype of the parameters, float32 (weight complex64) or float64 (complex128).

    Attributes:
        theta (Parameter): the real parameters ``[theta, phi, delta]``.  base (buffer): complex ``(n, n)``.
    """

    _complex = True

    def __init__(self, n: int, *, special: bool = False, init: str = "identity", use_base: bool = True,
                 schedule=None, device=None, dtype=None):
        super().__init__()
        n = _sched._check_int("n", n, 2)
        _check_init(init, ("identity", "haar"))
        dtype = dtype or torch.float32
        if dtype not in _REAL:
            raise DtypeError(f"dtype must be torch.float32, float64, bfloat16 or float16, got {dtype}")
        self.special = _v.flag("special", special)
        self._setup(n, None, schedule, use_base, device, dtype)
        self.in_features = self.out_features = n
        self._init_base(init, dtype, device)
        self.theta = nn.Parameter(self._init_angles(init, dtype, device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        cdt = _complex_of(self.theta.dtype)
        if x.dtype not in (self.theta.dtype, cdt):
            raise DtypeError(f"input has dtype {x.dtype}; the layer takes {self.theta.dtype} or {cdt}")
        if _caching():
            return x.to(cdt) @ _cached_weight(self).mT
        rows = x.reshape(-1, self.n)
        if rows.shape[0] >= self.n:
            return x.to(cdt) @ self.matrix().mT
        z = unitary_apply(self.theta, rows.mT, special=self.special, schedule=self.schedule)
        if self.base is not None:
            z = self.base @ z
        return z.mT.reshape(x.shape[:-1] + (self.n,))


# --------------------------------------------------------------------------- parametrizations

class _Parametrization(_Trivialized):
    """For ``register_parametrization``: ``forward(theta)`` is the weight, ``right_inverse(W)`` stores W."""

    def _weight(self, theta: torch.Tensor) -> torch.Tensor:
        q = self._q(theta)
        return q.mT if self.transposed else q

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return self._weight(theta)

    def rebase(self, theta: torch.Tensor) -> None:
        """Fold ``U(theta)`` into the base and zero ``theta`` in place; ``theta`` is the parametrized
        module's ``parametrizations.<name>.original`` (:func:`rebase` finds it for you)."""
        self._rebase(theta)

    def _take_pending_init(self):
        init, self._pending_init = self._pending_init, None
        return init

    def _assign(self, w: torch.Tensor) -> torch.Tensor:
        """right_inverse with a base: B from W by at most one QR, theta = 0."""
        if not bool(torch.isfinite(w).all()):
            raise NonFiniteError("right_inverse: the assigned weight contains NaN or infinity; expected finite values")
        q = w.mT if self.transposed else w
        b, exact = _base_from(q.detach(), assignment_tolerance(w.dtype))
        if self.special:
            det = torch.linalg.det(b)
            if (det - 1).abs().amax().item() > assignment_tolerance(w.dtype) * self.n:
                warnings.warn(
                    "right_inverse: the assigned unitary has det != 1, outside SU(n); it is stored times the "
                    "scalar phase det^(-1/n) (the nearest element of SU(n) among its phase multiples)",
                    stacklevel=3,
                )
                b = _det_one(b)
        self.base = b
        return torch.zeros(self._num_params(), dtype=self._param_dtype(w), device=w.device)

    def _param_dtype(self, w):
        return w.real.dtype if w.is_complex() else w.dtype


class OrthogonalParametrization(_Parametrization):
    r"""Parametrization for :func:`torch.nn.utils.parametrize.register_parametrization`.

    Maps angles ``theta`` to a ``rows x cols`` matrix with orthonormal columns or rows:

    * ``rows == cols = n``: :math:`B\,U(\theta)`, :math:`U \in SO(n)` (``n(n-1)/2`` angles);
    * ``rows > cols``: :math:`B\,\mathrm{frame}(\theta, rows, cols)` (orthonormal columns);
    * ``rows < cols``: :math:`(B\,\mathrm{frame}(\theta, cols, rows))^T` (orthonormal rows, e.g.
      ``nn.Linear(n, m).weight`` with ``m < n``).

    :meth:`right_inverse` (what ``register_parametrization`` calls on the existing weight, and what
    assigning to ``module.weight`` calls), with ``use_base=True``: a ``W`` orthogonal to
    :func:`assignment_tolerance` is copied into ``B`` exactly; any other ``W`` is replaced by its QR
    factor with a positive diagonal of R (as ``torch.nn.utils.parametrizations.orthogonal``); frames
    are completed to an ``n x n`` orthogonal ``B`` from the same QR; ``B`` may have det -1 (it is in
    O(n)); ``theta = 0`` is returned.  One QR, any n, no solve.

    With ``use_base=False`` there is no base: the angles are found with
    :func:`cupyortho.inverse.angles_from_matrix` / ``angles_from_frame``, a numerical solve practical
    up to n of about 16 for Haar-like targets (``docs/init.md``); a det -1 square matrix has its last
    column negated (with a warning), as SO(n) cannot hold it.

    Args:
        rows (int), cols (int, optional; default rows): shape of the parametrized matrix.
        init (str | None): applied by the *first* :meth:`right_inverse` (the registration) instead of
            the module's weight: None (keep the module's current weight, torch's behaviour),
            ``"identity"``, ``"haar"`` (B Haar on O(n), torch's generator) or ``"torus"``
            (:func:`cupyortho.init.torus_angles`).  Later assignments always store the assigned matrix.
        use_base (bool): default True (see above).
        schedule (str | Schedule | None): as in :func:`cupyortho.matrix`.
        inverse_time_limit (float | None): ``use_base=False`` only: seconds one inverse map may take
            before :class:`cupyortho.errors.InverseMapError` (default 120; None for no limit).

    Attributes:
        base (buffer): ``(n, n)``, ``n = max(rows, cols)``, in the parametrized module's state_dict as
            ``parametrizations.<name>.0.base``; None with ``use_base=False``.
    """

    def __init__(self, rows: int, cols: Optional[int] = None, *, init: Optional[str] = None,
                 use_base: bool = True, schedule=None, inverse_time_limit: Optional[float] = 120.0):
        super().__init__()
        _check_init(init, (None, "identity", "haar", "torus"))
        self.inverse_time_limit = inverse_time_limit
        self._pending_init = init
        rows = _sched._check_int("rows", rows, 1)
        cols = rows if cols is None else _sched._check_int("cols", cols, 1)
        self.shape = (rows, cols)
        n = max(rows, cols)
        if n < 2:
            raise SizeError(f"the parametrized matrix needs at least 2 rows or columns, got {self.shape}")
        self.transposed = rows < cols
        self._setup(n, None if rows == cols else min(rows, cols), schedule, use_base, None, torch.float32)

    @property
    def num_angles(self) -> int:
        return self._num_params()

    @torch.no_grad()
    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        """Angles ``theta`` (and, with a base, ``B``) with ``forward(theta) == w`` (see the class docstring)."""
        if not isinstance(w, torch.Tensor) or w.dtype not in _REAL:
            raise DtypeError(f"right_inverse expects a float32, float64, bfloat16 or float16 tensor, got "
                             f"{getattr(w, 'dtype', type(w).__name__)}")
        if tuple(w.shape) != self.shape:
            raise ShapeError(f"right_inverse expects a matrix of shape {self.shape}, got {tuple(w.shape)}")
        init = self._take_pending_init()
        if init is not None:
            self._init_base(init, w.dtype, w.device)
            return self._init_angles(init, w.dtype, w.device)
        if self.base is not None:
            return self._assign(w)
        return self._solve(w)

    def _solve(self, w: torch.Tensor) -> torch.Tensor:
        try:
            from .. import inverse
        except ImportError as exc:
            # Not NotImplementedError: register_parametrization would swallow that and keep the matrix.
            raise BackendUnavailableError(
                "OrthogonalParametrization.right_inverse needs cupyortho.inverse (angles_from_matrix, "
                f"angles_from_frame), which cannot be imported here: {exc}"
            ) from exc
        # float64 copy, orthogonalized unless orthogonal to float64 rounding: a matrix within the
        # dtype's tolerance moves by at most that much, any other is replaced by its QR factor.
        q = (w.mT if self.transposed else w).detach().to("cpu", torch.float64)
        q = _orthogonalize(q, atol=assignment_tolerance(torch.float64))
        if self.m is None:
            neg = torch.linalg.det(q) < 0
            if bool(neg.any()):
                warnings.warn(
                    "right_inverse: the assigned matrix has determinant -1, outside SO(n); the sign of its "
                    "last column is flipped so the parametrized weight is W @ diag(1, ..., 1, -1) "
                    "(use_base=True stores it exactly)",
                    stacklevel=3,
                )
                q = q.clone()
                q[..., -1] = torch.where(neg[..., None], -q[..., -1], q[..., -1])
            angles = inverse.angles_from_matrix(_to_numpy(q), schedule=self.schedule,
                                                time_limit=self.inverse_time_limit)
        else:
            angles = inverse.angles_from_frame(_to_numpy(q), self.m, schedule=self.schedule,
                                               time_limit=self.inverse_time_limit)
        return torch.as_tensor(np.asarray(angles), dtype=w.dtype, device=w.device)


class UnitaryParametrization(_Parametrization):
    r"""Parametrization of a square complex weight: :math:`B\,U(p)` with ``p`` real (``n*n``, or
    ``n*n - 1`` with ``special=True``), ``B`` a complex base in U(n) (SU(n)).

    :meth:`right_inverse` stores a unitary ``W`` (to :func:`assignment_tolerance`) exactly in ``B``, any
    other its phase-fixed QR factor; with ``special=True`` a ``W`` with det != 1 is multiplied by
    ``det(W)^(-1/n)`` (with a warning).  ``p = 0`` is returned.  Only ``use_base=True``: there is no
    numerical inverse of the unitary map wired here (use :func:`cupyortho.params_from_unitary`).

    Args:
        n (int): size of the square weight.
        special (bool): SU(n) instead of U(n).
        init (None, "identity", "haar"): as in :class:`OrthogonalParametrization`.
        schedule: as in :func:`cupyortho.unitary`.
    """

    _complex = True

    def __init__(self, n: int, *, special: bool = False, init: Optional[str] = None, use_base: bool = True,
                 schedule=None):
        super().__init__()
        _check_init(init, (None, "identity", "haar"))
        if not _v.flag("use_base", use_base):
            raise SettingError("UnitaryParametrization needs use_base=True (use cupyortho.params_from_unitary "
                             "for the angles of a given unitary)")
        n = _sched._check_int("n", n, 2)
        self.special = _v.flag("special", special)
        self._pending_init = init
        self.shape = (n, n)
        self.transposed = False
        self._setup(n, None, schedule, True, None, torch.float32)

    @property
    def num_params(self) -> int:
        return self._num_params()

    @torch.no_grad()
    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        """Real parameters ``p`` (and ``B``) with ``forward(p) == w`` (see the class docstring)."""
        if not isinstance(w, torch.Tensor) or w.dtype not in (torch.complex64, torch.complex128):
            raise DtypeError(f"right_inverse expects a complex64 or complex128 tensor, got "
                             f"{getattr(w, 'dtype', type(w).__name__)}")
        if tuple(w.shape) != self.shape:
            raise ShapeError(f"right_inverse expects a matrix of shape {self.shape}, got {tuple(w.shape)}")
        init = self._take_pending_init()
        real = w.real.dtype
        if init is not None:
            self._init_base(init, real, w.device)
            return (self._init_angles(init, real, w.device),)
        # a one-tuple: torch keeps a single returned tensor in the weight's (complex) dtype, the
        # parameters are real (registered as ``parametrizations.<name>.original0``)
        return (self._assign(w),)


def _orthogonalize(q: torch.Tensor, atol: float = None) -> torch.Tensor:
    """``q`` if its columns are orthonormal (to ``atol``), else Q of its QR with ``diag(R) >= 0``."""
    k = q.shape[-1]
    eye = torch.eye(k, dtype=q.dtype, device=q.device)
    tol = atol if atol is not None else 100 * k * torch.finfo(q.dtype).eps
    if torch.allclose(q.mT @ q, eye, atol=tol, rtol=0):
        return q
    return _qr_factor(q)


# --------------------------------------------------------------------------- rebase of a whole model

def rebase(module: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> int:
    r"""Rebase every cupyortho layer and parametrization (with a base) in ``module``: ``B <- B U(theta)``,
    ``theta <- 0``, the weights unchanged.  Returns how many were rebased.

    "Dynamic trivialization" (expRNN, geotorch): call it every K optimizer steps, e.g.
    ``if step % K == 0: cupyortho.torch.rebase(model, optimizer)``.  The angles are coordinates around
    ``B``; optimizer state (momentum, Adam moments) is expressed in them.  With ``optimizer`` given,
    the state of every rebased angle tensor is dropped, so the moments restart in the new chart;
    without it they are kept, which is a good approximation when the angles were small (small K).

    Do not call it inside :func:`cached` / ``parametrize.cached()`` (the cached weight is still right,
    but the cache would hold the old graph).
    """
    from torch.nn.utils import parametrize

    if not isinstance(module, nn.Module):
        raise DtypeError(f"rebase expects a torch.nn.Module, got {type(module).__name__}")
    done = []
    for mod in module.modules():
        if isinstance(mod, _Layer) and mod.base is not None:
            mod.rebase()
            done.append(mod.theta)
        if parametrize.is_parametrized(mod):
            for plist in mod.parametrizations.values():
                ours = [p for p in plist if isinstance(p, _Parametrization) and p.base is not None]
                if not ours:
                    continue
                if len(plist) != 1:
                    raise ShapeError("rebase: a cupyortho parametrization chained with others cannot be "
                                     "rebased (its angles are not the stored original)")
                original = plist.original if hasattr(plist, "original") else plist.original0
                ours[0].rebase(original)
                done.append(original)
    if optimizer is not None:
        for p in done:
            optimizer.state.pop(p, None)
    return len(done)
