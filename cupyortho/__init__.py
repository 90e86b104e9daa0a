r"""cupyortho: orthogonal and unitary matrices from Givens-rotation angles.

The ``n(n-1)/2`` plane rotations of SO(n) are scheduled as rounds of commuting rotations (a
round-robin tournament), so :math:`U(\theta)` is built in O(n) parallel steps and differentiated
exactly (VJPs and JVPs) without storing intermediates.  See ``docs/conventions.md``.

Importing cupyortho imports NumPy only; SciPy, CuPy, PyTorch and JAX are imported when needed (CuPy
when its arrays are passed in; PyTorch and JAX by their adapters ``cupyortho.torch``/``cupyortho.jax``).
"""

from ._version import __version__
from . import errors
from ._threads import set_num_threads, get_num_threads, threads
from .schedule import (
    Schedule,
    circle_schedule,
    team_schedule,
    brick_schedule,
    get_schedule,
    from_token,
    num_angles,
    pair_index,
)
from . import _api, _unitary
from ._api import *  # noqa: F401,F403  (matrix, frame, apply and their VJPs/JVPs)
from ._api import available_backends
from ._unitary import *  # noqa: F401,F403  (num_unitary_params, unitary, unitary_apply, ...)
from .inverse import angles_from_matrix, angles_from_frame, params_from_unitary
from .init import (
    identity_angles,
    small_random_angles,
    haar_matrix,
    haar_angles,
    haar_frame_angles,
    identity_unitary_params,
    haar_unitary_matrix,
    haar_unitary_params,
    torus_angles,
)

# The public names, in the order of the API reference; each group's list lives with its module.
__all__ = [
    "__version__",
    "errors",
    # CPU threads
    "set_num_threads",
    "get_num_threads",
    "threads",
    # schedules
    "Schedule",
    "circle_schedule",
    "team_schedule",
    "get_schedule",
    "num_angles",
    "pair_index",
    "brick_schedule",
    "from_token",
    # SO(n) and St(n, m)
    *_api.__all__,
    "available_backends",
    # U(n) and SU(n)
    *_unitary.__all__,
    # inverse map and initialization
    "angles_from_matrix",
    "angles_from_frame",
    "params_from_unitary",
    "identity_angles",
    "small_random_angles",
    "haar_matrix",
    "haar_angles",
    "haar_frame_angles",
    "identity_unitary_params",
    "haar_unitary_matrix",
    "haar_unitary_params",
    "torus_angles",
]
