"""Layers and parametrizations: :class:`Orthogonal` (an ``nn.Linear`` with an orthogonal weight) and
:class:`OrthogonalParametrization` (for :func:`torch.nn.utils.parametrize.register_parametrization`)."""

import warnings
from typing import Optional

import numpy as np
import torch
from torch import nn

from .. import schedule as _sched
from ..errors import BackendUnavailableError, DtypeError, ShapeError, SizeError
from ._bridge import _to_numpy
from ._ops import schedule_args as _schedule_args
from .functional import _resolve_n, apply, frame, matrix

__all__ = ["Orthogonal", "OrthogonalParametrization"]


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
            torch.zeros(_sched.get_schedule(schedule, self.n, self.m).num_angles, device=device,
                        dtype=dtype or torch.float32)  # the schedule's count (truncations hold fewer)
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
        return _sched.get_schedule(self.schedule, self.n, self.m).num_angles  # truncations hold fewer

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
            from .. import inverse
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
