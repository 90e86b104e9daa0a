"""Exceptions raised by cupyortho.

Design rule: every check that rejects caller input raises one of these classes, and its
message names the argument, what was expected and what was received.  They subclass the
builtin ``ValueError``/``TypeError`` so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "CupyorthoError",
    "ShapeError",
    "AngleCountError",
    "SizeError",
    "DtypeError",
    "NonFiniteError",
    "ScheduleError",
    "MethodError",
    "BackendMismatchError",
    "BackendUnavailableError",
    "NotOrthogonalError",
    "InverseMapError",
    "ArrayTypeError",
    "SettingError",
]


class CupyorthoError(Exception):
    """Base class of every exception raised by cupyortho."""


class ShapeError(CupyorthoError, ValueError):
    """An array argument has the wrong shape (dimension count, axis length or batch shape)."""


class AngleCountError(ShapeError):
    """The last axis of an angle/parameter array does not hold the number of angles n and m require."""


class SizeError(CupyorthoError, ValueError):
    """A size argument (n, m, team size) is out of range."""


class DtypeError(CupyorthoError, TypeError):
    """An array has a dtype cupyortho does not compute in (only float32 and float64 are supported)."""


class NonFiniteError(CupyorthoError, ValueError):
    """An input holds NaN or infinity while ``check_finite=True``."""


class ScheduleError(CupyorthoError, ValueError):
    """An unknown schedule name, or a schedule built for another n."""


class MethodError(CupyorthoError, ValueError):
    """An unknown ``method`` (strategy) argument."""


class BackendMismatchError(CupyorthoError, TypeError):
    """Arguments live in different array libraries (e.g. a NumPy angle vector with a CuPy matrix)."""


class BackendUnavailableError(CupyorthoError, ImportError):
    """An optional backend (cupy, torch, jax) was requested but cannot be imported or used."""


class NotOrthogonalError(CupyorthoError, ValueError):
    """A matrix given as orthogonal/unitary is not, within the stated tolerance."""


class InverseMapError(CupyorthoError, RuntimeError):
    """The inverse map did not reach the requested accuracy from any of its starting points."""


class ArrayTypeError(CupyorthoError, TypeError):
    """An array argument is not an array cupyortho accepts: None, a masked array (its mask would be
    dropped), or an object that cannot be converted to an array."""


class SettingError(CupyorthoError, ValueError):
    """A non-array setting (a tolerance, a step budget, a time limit, a flag, a seed) is out of range
    or of the wrong type."""
