r"""The one validation module: every check of caller input, for the public functions and the adapters.

Design rule (``docs/conventions.md``, "API rules"): a public function, the torch and JAX adapters and
the inverse map validate through this module and nothing else, so a rule is decided once.  Every
check raises a :mod:`cupyortho.errors` class whose message names the argument, what was expected and
what was received; nothing here modifies its arguments.

The surface, in three groups (all functions take the argument's public ``name`` first):

Arrays (the library's own arrays: NumPy or CuPy; ``xp`` is the array module of the backend):
    :func:`as_array` (conversion: sequences, ``np.matrix`` and other subclasses become base arrays,
    masked arrays and ``None`` are refused, dtype and finiteness checked), :func:`as_host` (a float64
    NumPy copy for the host-only inverse map; integer arrays refused), :func:`result_dtype`,
    :func:`real_precision`, :func:`cast`, :func:`is_empty`, :func:`zeros`.

Shapes (work on plain tuples, so the torch adapter uses them on tensors' shapes):
    :func:`check_dtype` (a dtype name against the allowed ones), :func:`check_ndim`,
    :func:`resolve_so` (angle count, n, m and schedule -> the resolved schedule; the count always
    comes from the schedule), :func:`resolve_u` (the same for U(n)/SU(n) parameters),
    :func:`x_rows` (``x`` as ``(n,)`` or ``(..., n, k)``), :func:`batch_shape`, :func:`same_shape`.

Settings (plain Python values):
    :func:`integer`, :func:`real` (finite floats with bounds), :func:`flag` (booleans),
    :func:`choice`, :func:`rng`, :func:`dtype_setting`, :func:`shape_setting`.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import schedule as _sched
from .errors import (
    AngleCountError,
    ArrayTypeError,
    DtypeError,
    NonFiniteError,
    ScheduleError,
    SettingError,
    ShapeError,
    SizeError,
)

__all__ = [
    "REAL", "ANY",
    "as_array", "as_host", "result_dtype", "real_precision", "cast", "is_empty", "zeros",
    "check_dtype", "check_ndim", "resolve_so", "resolve_u", "num_unitary_params", "x_rows",
    "batch_shape", "same_shape",
    "integer", "real", "flag", "choice", "rng", "dtype_setting", "shape_setting",
]

REAL = ("float32", "float64")
"""The real dtypes cupyortho computes in."""
ANY = ("float32", "float64", "complex64", "complex128")
"""Real and complex dtypes (data of the unitary functions)."""


def _what(value) -> str:
    """A short description of a received value for error messages."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} (a {type(value).__name__})"


# --------------------------------------------------------------------------- arrays

def _dtype_name(dtype) -> str:
    """The NumPy name of an array's dtype (also for torch/JAX dtypes); '' when it has none."""
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype).rsplit(".", 1)[-1]


def check_dtype(name, dtype, allowed=REAL):
    """Raise :class:`DtypeError` unless ``dtype`` (any library's dtype or its name) is in ``allowed``."""
    dt = _dtype_name(dtype)
    if dt in allowed:
        return dt
    hint = ""
    if dt == "float16" or dt == "bfloat16":
        hint = f" ({dt} is not supported: cast to float32)"
    elif dt.startswith("complex") and allowed == REAL:
        hint = " (angles and parameters are real)"
    raise DtypeError(f"{name} must have dtype {' or '.join(allowed)}, got {dt or type(dtype).__name__}{hint}")


def check_ndim(name, shape, minimum=1):
    """Raise :class:`ShapeError` unless ``len(shape) >= minimum``."""
    if len(shape) < minimum:
        got = "a scalar" if len(shape) == 0 else f"shape {tuple(shape)}"
        count = "one dimension" if minimum == 1 else f"{minimum} dimensions"
        raise ShapeError(f"{name} must have at least {count}, got {got}")


def as_array(name, a, backend, *, check_finite=True, allowed=REAL, allow_none=False, min_ndim=1):
    """``a`` as an array of ``backend.xp`` (NumPy or CuPy) with a dtype in ``allowed``.

    Conversion rules: ``None`` raises :class:`ArrayTypeError` (unless ``allow_none``, then None is
    returned); masked arrays raise :class:`ArrayTypeError` (a mask would be silently dropped);
    NumPy subclasses (``np.matrix``, ``np.memmap``, ...) become base ``ndarray`` views; sequences and
    foreign arrays (anything ``xp.asarray`` accepts) are converted.  The dtype must be in ``allowed``
    (:class:`DtypeError`; Python float sequences become float64), the array must have at least
    ``min_ndim`` axes (:class:`ShapeError`), and with ``check_finite`` it must hold no NaN or
    infinity (:class:`NonFiniteError`).  The caller's array is never copied or written.
    """
    if a is None:
        if allow_none:
            return None
        raise ArrayTypeError(f"{name} must be an array of dtype {' or '.join(allowed)}, got None")
    if isinstance(a, np.ma.MaskedArray):
        raise ArrayTypeError(
            f"{name} must be a plain array, got a masked array (numpy.ma.MaskedArray): cupyortho would "
            f"ignore its mask; pass {name}.filled(value) or {name}.data explicitly"
        )
    xp = backend.xp
    if not isinstance(a, xp.ndarray) or type(a) is not xp.ndarray:
        if isinstance(a, (str, bytes, dict, set)):
            raise ArrayTypeError(f"{name} must be an array of dtype {' or '.join(allowed)}, got {_what(a)}")
        try:
            a = xp.asarray(a)
        except Exception as exc:
            raise ArrayTypeError(
                f"{name} must be an array of dtype {' or '.join(allowed)}, got {_what(a)} "
                f"that cannot be converted ({type(exc).__name__}: {exc})"
            ) from None
    if a.dtype == object:
        raise DtypeError(f"{name} must have dtype {' or '.join(allowed)}, got object (ragged or non-numeric input)")
    check_dtype(name, a.dtype, allowed)
    check_ndim(name, a.shape, min_ndim)
    if check_finite and a.size and not backend.all_finite(a):
        raise NonFiniteError(f"{name} contains NaN or infinity; expected finite values "
                             "(pass check_finite=False to skip this check)")
    return a


def as_host(name, a, *, allowed=REAL, complex_ok=False):
    """``(float64 or complex128 NumPy copy of a, result dtype, was_cupy)`` for host-only solvers.

    Integer, bool and object arrays are refused (:class:`DtypeError`), as are masked arrays and None
    (:class:`ArrayTypeError`).  The result dtype is ``a``'s real precision (float32 for float32 or
    complex64, float64 otherwise).  The copy is owned by the caller.
    """
    was_cupy = type(a).__module__.split(".")[0] == "cupy"
    if was_cupy:
        a = a.get()
    allowed = ANY if complex_ok else allowed

    class _Host:
        xp = np

        @staticmethod
        def all_finite(v):
            return bool(np.isfinite(v).all())

    a = as_array(name, a, _Host, check_finite=True, allowed=allowed)
    precision = np.dtype(np.float32) if a.dtype in (np.float32, np.complex64) else np.dtype(np.float64)
    target = np.complex128 if complex_ok else np.float64
    return np.array(a, dtype=target), precision, was_cupy


def result_dtype(*arrays):
    """``numpy.result_type`` of the dtypes of the given arrays (None entries ignored)."""
    return np.result_type(*[np.dtype(a.dtype) for a in arrays if a is not None])


def real_precision(*arrays):
    """float32 or float64: the precision of ``result_type`` of the arrays (complex counts as its part)."""
    dt = result_dtype(*arrays)
    return np.dtype(np.float32) if dt in (np.float32, np.complex64) else np.dtype(np.float64)


def cast(a, dtype):
    """``a`` in ``dtype`` (``a`` itself when it already is; None stays None)."""
    return a if a is None or a.dtype == dtype else a.astype(dtype)


def is_empty(*arrays) -> bool:
    """Whether any of the given arrays (None ignored) has no entries.

    Rule (``docs/conventions.md``): when an input is empty, every output is either empty or a sum
    over an empty set, so the public layer returns zeros of the output shapes without calling a
    backend; backends never see empty arrays.
    """
    return any(a is not None and a.size == 0 for a in arrays)


def zeros(xp, shape, dtype):
    """A fresh zero array (the result of a call with an empty input)."""
    return xp.zeros(tuple(shape), dtype=dtype)


# --------------------------------------------------------------------------- shapes

def _n_from_count(name, count):
    """n with n(n-1)/2 == count, or an AngleCountError naming the nearest sizes."""
    n = (1 + math.isqrt(1 + 8 * count)) // 2
    if n >= 2 and n * (n - 1) // 2 == count:
        return n
    lo = max(n, 2)
    raise AngleCountError(
        f"{name} must hold n(n-1)/2 angles on its last axis for some n >= 2; got {count} "
        f"(n = {lo} needs {lo * (lo - 1) // 2}, n = {lo + 1} needs {(lo + 1) * lo // 2}); "
        "pass n= explicitly for a clearer message"
    )


_FULL_NAMES = ("circle", "team")
"""Schedule names whose angle count is ``num_angles(n, m)`` (every pair ``i < j``, ``i < m``)."""


def _schedule_and_n(schedule, n, n_name):
    """``(schedule, n)`` with a token resolved to its Schedule, ``n`` taken from a Schedule (an
    explicit ``n`` must agree), and anything but a name, a Schedule or None refused."""
    if isinstance(schedule, str) and ":" in schedule:
        schedule = _sched.from_token(schedule)  # a schedule token names a Schedule (which carries n)
    if isinstance(schedule, _sched.Schedule):
        if n is not None and integer(n_name, n, 2) != schedule.n:
            raise SizeError(f"{n_name} = {n} disagrees with the schedule, built for n = {schedule.n} "
                            f"(expected {n_name} = {schedule.n} or None)")
        return schedule, schedule.n
    if schedule is not None and not isinstance(schedule, str):
        raise ScheduleError(f"schedule must be a schedule name, a Schedule or None, got {_what(schedule)}")
    return schedule, n


def resolve_so(shape, n=None, schedule=None, m=None, *, name="theta", n_name="n"):
    """The resolved :class:`~cupyortho.schedule.Schedule` for angles of shape ``shape``.

    ``n`` comes from a :class:`Schedule` when one is passed (an explicit ``n`` must agree), else from
    the argument, else from the angle count ``shape[-1] = n(n-1)/2``.  ``m`` (frames) comes from the
    argument or from a restricted schedule.  The expected angle count is always the resolved
    schedule's ``num_angles``.  Raises :class:`SizeError`, :class:`ScheduleError` or
    :class:`AngleCountError`.
    """
    check_ndim(name, shape, 1)
    count = int(shape[-1])
    schedule, n = _schedule_and_n(schedule, n, n_name)
    if isinstance(schedule, _sched.Schedule) and m is None:
        m = schedule.m
    n = _n_from_count(name, count) if n is None else integer(n_name, n, 2)
    if m is not None:
        m = integer("m", m, 1)
        if m > n:
            raise SizeError(f"m must satisfy 1 <= m <= n = {n}, got m = {m}")
    if (schedule is None or schedule in _FULL_NAMES) and count != _sched.num_angles(n, m):
        # The count of the named full schedules is known without building them (no allocation for
        # a wrong count with an absurd n).
        sched = None
    else:
        sched = _sched.get_schedule(schedule, n, m)
    if sched is None or count != sched.num_angles:
        expected = _sched.num_angles(n, m) if sched is None else sched.num_angles
        desc = f"the {schedule or 'default'} schedule" if sched is None else repr(sched)
        if m is not None:
            what = f"n*m - m(m+1)/2 = {expected} angles for {n_name} = {n}, m = {m}"
        else:
            what = f"{expected} angles for {n_name} = {n}"
        raise AngleCountError(f"{name} must hold {what} on its last axis ({desc}); got shape {tuple(shape)}")
    return sched


def num_unitary_params(n, special=False, schedule=None) -> int:
    """``2*A + n`` real parameters of U(n) (``2*A + n - 1`` of SU(n)), ``A`` the schedule's rotation
    count: ``n(n-1)/2`` for the full schedules (so ``n*n``, ``n*n - 1``), fewer for a truncation."""
    n = integer("n", n, 2)
    special = flag("special", special)
    if schedule is None or (isinstance(schedule, str) and schedule in _sched.SCHEDULE_KINDS):
        return n * n - (1 if special else 0)
    return 2 * resolve_u((0,), n, special, schedule, check_count=False).num_angles + n - (1 if special else 0)


def resolve_u(shape, n=None, special=False, schedule=None, *, name="params", n_name="n", check_count=True):
    """The resolved schedule for U(n)/SU(n) parameters of shape ``shape``.

    As :func:`resolve_so`: ``n`` from a Schedule, the argument or the count (``n*n`` or ``n*n - 1``).
    Full schedules and their truncations (``Schedule.truncate``, ``Schedule.from_rounds``) are
    accepted, Stiefel restrictions are not; the count is ``2*A + n`` (``- 1`` for SU(n)),
    ``A = schedule.num_angles``, laid out ``[theta (A), phi (A), delta]``.
    """
    check_ndim(name, shape, 1)
    special = flag("special", special)
    count = int(shape[-1])
    group = "SU(n)" if special else "U(n)"
    schedule, n = _schedule_and_n(schedule, n, n_name)
    if isinstance(schedule, _sched.Schedule) and schedule.m is not None:
        raise ScheduleError(f"schedule for {group} must be a full schedule (all pairs), a truncation or user "
                            f"rounds, not a Stiefel restriction; got {schedule!r}")
    if n is None:
        n = math.isqrt(count + (1 if special else 0))
        if n < 2 or n * n - special != count:
            lo = max(n, 2)
            raise AngleCountError(
                f"{name} must hold {'n*n - 1' if special else 'n*n'} parameters of {group} on its last "
                f"axis for some n >= 2; got {count} (n = {lo} needs {lo * lo - special}, "
                f"n = {lo + 1} needs {(lo + 1) ** 2 - special})"
            )
    n = integer(n_name, n, 2)
    a = n * (n - 1) // 2
    if check_count and (schedule is None or schedule in _FULL_NAMES) and count != n * n - special:
        raise AngleCountError(
            f"{name} must hold {n * n - special} parameters of {group} for {n_name} = {n}, laid out as "
            f"[theta ({a}), phi ({a}), delta ({n - special})], on its last axis; got shape {tuple(shape)}"
        )
    sched = _sched.get_schedule(schedule, n)
    a = sched.num_angles
    expected = 2 * a + n - special
    if check_count and count != expected:
        raise AngleCountError(
            f"{name} must hold {expected} parameters of {group} for {n_name} = {n} ({sched!r}), laid out as "
            f"[theta ({a}), phi ({a}), delta ({n - special})], on its last axis; got shape {tuple(shape)}"
        )
    return sched


def x_rows(name, shape):
    """``(n, vector)`` for data ``x`` of shape ``(n,)`` (``vector``) or ``(..., n, k)``; n >= 2."""
    check_ndim(name, shape, 1)
    vector = len(shape) == 1
    n = int(shape[0] if vector else shape[-2])
    if n < 2:
        raise SizeError(f"{name} must have n >= 2 rows (axis -2, or axis 0 of a vector); got shape {tuple(shape)}")
    return n, vector


def batch_shape(*named_shapes):
    """Broadcast of the batch shapes given as ``(name, shape)`` pairs; :class:`ShapeError` if impossible."""
    try:
        return tuple(np.broadcast_shapes(*[tuple(s) for _, s in named_shapes]))
    except ValueError:
        desc = ", ".join(f"{name} {tuple(s)}" for name, s in named_shapes)
        raise ShapeError(f"batch axes do not broadcast: expected broadcastable batch shapes, got {desc}") from None


def same_shape(name, shape, expected, what):
    """Raise :class:`ShapeError` unless ``shape == expected`` (the shape of ``what``)."""
    if tuple(shape) != tuple(expected):
        raise ShapeError(f"{name} must have the shape of {what}, {tuple(expected)}; got {tuple(shape)}")


# --------------------------------------------------------------------------- settings

def integer(name, value, minimum=None, maximum=None, error=SizeError) -> int:
    """``value`` as a Python int in ``[minimum, maximum]`` (bounds optional).

    Python and NumPy integers are accepted (not bools, not floats, not strings); otherwise ``error``
    (:class:`SizeError` for sizes, :class:`SettingError` for counts such as ``restarts``).
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise error(f"{name} must be an integer{_range(minimum, maximum)}, got {_what(value)}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise error(f"{name} must be an integer{_range(minimum, maximum)}, got {value}")
    return value


def _range(lo, hi, strict_lo=False):
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" {'>' if strict_lo else '>='} {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def real(name, value, *, minimum=None, maximum=None, strict=True, allow_none=False, allow_inf=False):
    """``value`` as a finite Python float; with ``minimum``, ``value > minimum`` (``>=`` unless
    ``strict``); with ``maximum``, ``value <= maximum``.  :class:`SettingError` otherwise."""
    if value is None and allow_none:
        return None
    expected = ("a real number" if allow_inf else "a finite real number") + (
        f" {'>' if strict else '>='} {minimum}" if minimum is not None else "") + (
        f" and <= {maximum}" if maximum is not None else "") + (
        " or None" if allow_none else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise SettingError(f"{name} must be {expected}, got {_what(value)}")
    v = float(value)
    bad = math.isnan(v) or (math.isinf(v) and not allow_inf)
    if minimum is not None:
        bad = bad or (v <= minimum if strict else v < minimum)
    if maximum is not None:
        bad = bad or v > maximum
    if bad:
        raise SettingError(f"{name} must be {expected}, got {value!r}")
    return v


def flag(name, value) -> bool:
    """A boolean setting: ``True``/``False`` (also NumPy bools and the ints 0 and 1)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    raise SettingError(f"{name} must be True or False, got {_what(value)}")


def choice(name, value, choices, error=SettingError):
    """``value`` if it is one of ``choices`` (strings), else ``error`` naming them."""
    if isinstance(value, str) and value in choices:
        return value
    raise error(f"{name} must be one of {tuple(choices)}, got {_what(value)}")


def rng(value, name="rng"):
    """A ``numpy.random.Generator`` from None, a non-negative int seed, a SeedSequence or a Generator."""
    if isinstance(value, np.random.Generator):
        return value
    if value is None or isinstance(value, np.random.SeedSequence):
        return np.random.default_rng(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        if int(value) < 0:
            raise SettingError(f"{name} must be None, a non-negative int seed or a numpy.random.Generator, got {value}")
        return np.random.default_rng(int(value))
    raise SettingError(
        f"{name} must be None, a non-negative int seed or a numpy.random.Generator, got {_what(value)}"
    )


def dtype_setting(name, value, allowed=REAL):
    """A ``dtype=`` setting as a NumPy dtype in ``allowed``: :class:`DtypeError` otherwise."""
    try:
        dt = np.dtype(value)
    except TypeError:
        raise DtypeError(f"{name} must be one of {allowed} (a NumPy dtype), got {_what(value)}") from None
    if value is None or dt.name not in allowed:
        raise DtypeError(f"{name} must be one of {allowed}, got {_what(value)}")
    return dt


MAX_ELEMENTS = 2**31
"""Largest number of entries an initializer allocates (16 GiB of float64): larger requests are refused."""


def shape_setting(name, value, trailing=1):
    """A batch ``shape=`` setting: None or () (no batch), an int, or a sequence of non-negative ints.

    ``trailing`` is the number of entries each batch element holds; the total must not exceed
    :data:`MAX_ELEMENTS` (:class:`SizeError`, before anything is allocated).
    """
    if value is None:
        return ()
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ShapeError(f"{name} must be an int or a sequence of non-negative ints, got {_what(value)}")
    out = tuple(value)
    for d in out:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral) or int(d) < 0:
            raise ShapeError(f"{name} must be an int or a sequence of non-negative ints, got {_what(value)}")
    out = tuple(int(d) for d in out)
    total = math.prod(out) * int(trailing)
    if total > MAX_ELEMENTS or int(trailing) > MAX_ELEMENTS:  # an empty batch of absurd entries too
        raise SizeError(f"{name} = {out} asks for {total} entries; at most {MAX_ELEMENTS} are allocated")
    return out
