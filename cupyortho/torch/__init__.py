r"""PyTorch adapter: cupyortho's maps as ``torch.library`` custom ops, functional wrappers, an
orthogonal layer and a parametrization.

Design rule: this package only wires.  Every forward and backward calls cupyortho's public
functions (:func:`cupyortho.matrix`, :func:`cupyortho.frame`, :func:`cupyortho.apply`, the unitary
maps and their ``_vjp``); the mathematics lives there.  ``import cupyortho`` never imports torch:
import ``cupyortho.torch`` explicitly.

Layout (by concern):

* :mod:`._bridge` -- CPU views, DLPack and CUDA streams (tensors in, arrays to cupyortho, tensors out);
* :mod:`._ops` -- the custom ops, registered from one table with autograd, fake kernels and vmap rules;
* :mod:`.functional` -- the checked public functions ``matrix``, ``frame``, ``apply``, ``unitary``,
  ``unitary_apply``;
* :mod:`.nn` -- layers and parametrizations.

See ``docs/adapters.md``.
"""

from ._bridge import _CudaStreamRef, _call, _from_numpy, _to_numpy, _unaliased  # noqa: F401
from ._ops import (  # noqa: F401
    OPS,
    _apply_op,
    _apply_vjp_op,
    _frame_op,
    _frame_vjp_op,
    _matrix_op,
    _matrix_vjp_op,
    _schedule,
    _schedule_args,
    _unitary_apply_op,
    _unitary_apply_vjp_op,
    _unitary_op,
    _unitary_vjp_op,
)
from .functional import apply, frame, matrix, unitary, unitary_apply
from .functional import _check_tensor, _resolve_n  # noqa: F401
from .nn import (
    Orthogonal,
    OrthogonalParametrization,
    Unitary,
    UnitaryParametrization,
    assignment_tolerance,
    cached,
    rebase,
)
from .nn import _orthogonalize  # noqa: F401

__all__ = [
    "matrix",
    "frame",
    "apply",
    "unitary",
    "unitary_apply",
    "Orthogonal",
    "OrthogonalParametrization",
    "Unitary",
    "UnitaryParametrization",
    "assignment_tolerance",
    "cached",
    "rebase",
]
