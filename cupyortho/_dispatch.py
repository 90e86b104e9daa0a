r"""The one dispatch module: which array library the arguments live in, and which backend runs them.

Design rule: a backend is chosen by the type of the arrays alone.  NumPy arrays (and anything that is
not a CuPy array: sequences, subclasses, foreign arrays that :func:`cupyortho._validate.as_array`
converts) go to the CPU backend; CuPy arrays to the CuPy backends.  Backends are imported lazily, at
first use, so ``import cupyortho`` imports NumPy only.  Mixing libraries in one call raises
:class:`~cupyortho.errors.BackendMismatchError`.

Surface: :func:`library`, :func:`so_backend`, :func:`u_backend`, :func:`accepts`.
"""

from __future__ import annotations

import functools
import importlib
import inspect

from .errors import BackendMismatchError, BackendUnavailableError

__all__ = ["library", "is_cupy", "so_backend", "u_backend", "accepts", "dask_function"]


def is_cupy(a) -> bool:
    """Whether ``a`` is a CuPy array (checked by type, without importing CuPy)."""
    return type(a).__module__.split(".")[0] == "cupy"


def library(**arrays) -> str:
    """``"cupy"`` or ``"numpy"``: the one library all given (name -> array) arguments live in.

    None values are ignored; anything that is not a CuPy array counts as NumPy (it is converted).
    """
    kinds = {name: ("cupy" if is_cupy(a) else "numpy") for name, a in arrays.items() if a is not None}
    found = set(kinds.values())
    if len(found) > 1:
        desc = ", ".join(f"{k} is a {v} array" for k, v in kinds.items())
        raise BackendMismatchError(f"all array arguments must live in the same library (all NumPy or all CuPy); got {desc}")
    return found.pop() if found else "numpy"


def dask_function(name, *arrays):
    """The :mod:`cupyortho.dask` function ``name`` when one of ``arrays`` is a Dask array, else None.

    Checked by type name, so Dask (and cupyortho.dask) is imported only when a Dask array arrives;
    the Dask layer then runs the chunks on the backend of their library (``docs/design.md`` §10).
    """
    if any(type(a).__module__.split(".")[0] == "dask" for a in arrays if a is not None):
        from . import dask

        return getattr(dask, name)
    return None


@functools.lru_cache(maxsize=None)
def _module(name):
    return importlib.import_module(f"cupyortho.backends.{name}")


def _cpu():
    """The CPU backend, :mod:`cupyortho.backends.cpu` (SO(n) and U(n) together, for NumPy arrays)."""
    return _module("cpu")


def _cupy(what):
    """The CuPy backend, the package :mod:`cupyortho.backends.cupy` (SO(n) and U(n) together)."""
    try:
        return _module("cupy")
    except ImportError as exc:  # pragma: no cover - exercised only when cupy is half-installed
        raise BackendUnavailableError(
            f"the CuPy backend for {what} cannot be loaded: {exc}; pass NumPy arrays"
        ) from exc


def so_backend(**arrays):
    """The SO(n) backend module for the given (name -> array) arguments."""
    if library(**arrays) == "cupy":
        return _cupy("SO(n)")
    return _cpu()


def u_backend(**arrays):
    """The U(n) backend module for the given (name -> array) arguments."""
    if library(**arrays) == "cupy":
        return _cupy("U(n)")
    return _cpu()


@functools.lru_cache(maxsize=None)
def _params(fn):
    try:
        return frozenset(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return frozenset()


def accepts(backend, function, keyword) -> bool:
    """Whether ``backend.function`` takes the keyword argument ``keyword`` (e.g. ``output``)."""
    return keyword in _params(getattr(backend, function))
