r"""cupyortho: orthogonal and unitary matrices from Givens-rotation angles.

The ``n(n-1)/2`` plane rotations of SO(n) are scheduled as rounds of commuting rotations (a
round-robin tournament), so :math:`U(\theta)` is built in O(n) parallel steps and differentiated
exactly (VJPs and JVPs) without storing intermediates.  See ``docs/conventions.md``.

Importing cupyortho imports NumPy only; CuPy, PyTorch and JAX are used when their arrays are passed
in (or their adapter modules are imported).
"""

from ._version import __version__
from . import errors
from .schedule import (
    Schedule,
    circle_schedule,
    team_schedule,
    get_schedule,
    num_angles,
    pair_index,
)
from ._api import (
    matrix,
    frame,
    apply,
    matrix_vjp,
    frame_vjp,
    apply_vjp,
    matrix_jvp,
    frame_jvp,
    apply_jvp,
    available_backends,
)

__all__ = [
    "__version__",
    "errors",
    "Schedule",
    "circle_schedule",
    "team_schedule",
    "get_schedule",
    "num_angles",
    "pair_index",
    "matrix",
    "frame",
    "apply",
    "matrix_vjp",
    "frame_vjp",
    "apply_vjp",
    "matrix_jvp",
    "frame_jvp",
    "apply_jvp",
    "available_backends",
]
