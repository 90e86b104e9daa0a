r"""One thread setting for every CPU pool cupyortho uses.

cupyortho's CPU work runs on up to three pools: NumPy's BLAS (the GEMMs of materialize-then-matmul
and of the blocked stages), numba's pool (the compiled engine, ``cupyortho/backends/engine/``) and
the worker threads of the blocked backend.  Design rule: *one* setting sizes all of them, and it is
decided here and nowhere else.  Which setting applies to a call:

1. inside a framework's budget (:func:`budget`, entered by ``cupyortho.torch`` around every CPU op
   with ``torch.get_num_threads()``): that budget, with one pool at a time (see :func:`budget`);
2. else the value of :func:`set_num_threads` / :func:`threads`;
3. else nothing is changed: every pool keeps its own default (``OPENBLAS_NUM_THREADS`` /
   ``OMP_NUM_THREADS`` for BLAS, ``NUMBA_NUM_THREADS`` for numba, all CPUs otherwise).

threadpoolctl (BLAS) and numba are imported lazily, at the first call that needs them; importing
this module imports neither.  See ``docs/threads.md``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Iterator, Optional

from .errors import BackendUnavailableError, SizeError

__all__ = ["set_num_threads", "get_num_threads", "threads"]

_lock = threading.RLock()
_setting: Optional[int] = None  # set_num_threads(n); None: every pool keeps its default
_blas_saved = None  # [(lib controller, its count before cupyortho changed it)] while a setting holds
_numba_saved = None  # numba's count (in the thread that first set one) before cupyortho changed it
_local = threading.local()  # .budgets: stack of framework budgets entered in this thread
_scope = {"depth": 0, "saved": None}  # BLAS override shared by the budgets of all threads
_controller = {"key": None, "libs": None}
_serial = {"depth": 0, "saved": None}  # BLAS at one thread while cupyortho's workers run GEMMs


def _check_count(n, name: str = "n") -> int:
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise SizeError(f"{name} must be an integer >= 1 (or None), got {n!r} of type {type(n).__name__}")
    n = int(n.__index__())
    if n < 1:
        raise SizeError(f"{name} must be an integer >= 1 (or None), got {n}")
    return n


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------- BLAS (threadpoolctl)

def _blas_libs():
    """threadpoolctl's controllers of the loaded BLAS libraries (cached; rebuilt when a library that
    may bring its own BLAS, SciPy or torch, has been imported since)."""
    key = ("scipy.linalg" in sys.modules, "torch" in sys.modules, "numpy" in sys.modules)
    if _controller["key"] != key:
        try:
            import threadpoolctl
        except ImportError as exc:  # a core dependency; guard against a broken install
            raise BackendUnavailableError(
                f"cupyortho's thread settings need threadpoolctl (pip install threadpoolctl): {exc}"
            ) from exc
        ctl = threadpoolctl.ThreadpoolController()
        _controller["libs"] = [c for c in ctl.lib_controllers if c.user_api == "blas"]
        _controller["key"] = key
    return _controller["libs"]


def _set_blas(n: int):
    """Set every BLAS library to ``n`` threads; returns [(lib, previous count)] for those changed."""
    changed = []
    for lib in _blas_libs():
        prev = lib.get_num_threads()
        if prev != n:
            lib.set_num_threads(n)
            changed.append((lib, prev))
    return changed


def _restore_blas(saved) -> None:
    for lib, prev in reversed(saved or ()):
        lib.set_num_threads(prev)


def blas_threads() -> list:
    """The thread count of each loaded BLAS library (threadpoolctl's view), for tests and reports."""
    return [lib.get_num_threads() for lib in _blas_libs()]


# --------------------------------------------------------------------------- numba

def _numba_count(n: int) -> int:
    import numba

    return min(n, numba.config.NUMBA_NUM_THREADS)  # numba cannot exceed the threads it launched


def _requested() -> Optional[int]:
    budgets = getattr(_local, "budgets", None)
    if budgets:
        return budgets[-1]
    return _setting


def apply_to_numba() -> Optional[int]:
    """Set numba's thread count *in the calling thread* to the current setting (the engine calls this
    when it loads).  numba's setting is thread-local, so the engine also enters :func:`numba_threads`
    around each call.  Returns the count applied, or None when nothing is set (numba's own default
    stays)."""
    n = _requested()
    if n is None or "numba" not in sys.modules:
        return None
    import numba

    n = _numba_count(n)
    numba.set_num_threads(n)
    return n


@contextlib.contextmanager
def numba_threads() -> Iterator[Optional[int]]:
    """Context for one compiled call: numba runs on the current setting in the calling thread and
    gets its previous count back on exit.  Yields the count (None: nothing set, or numba not imported
    yet; nothing is touched then, numba's default applies)."""
    n = _requested()
    if n is None or "numba" not in sys.modules:
        yield None
        return
    import numba

    n = _numba_count(n)
    prev = numba.get_num_threads()
    if prev == n:
        yield n
        return
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(prev)


def with_numba_threads(fn, load: bool = False):
    """``fn`` wrapped so that each call runs inside :func:`numba_threads` (what
    :mod:`cupyortho.backends.cpu` does for the compiled implementations).  ``load``: import numba
    first (the engine needs it anyway), so the very first call is covered too."""

    def call(*args, **kwargs):
        if load and _requested() is not None:
            import numba  # noqa: F401
        with numba_threads():
            return fn(*args, **kwargs)

    return call


def get_setting() -> Optional[int]:
    """The count in force for this call: a framework budget, else :func:`set_num_threads`'s value,
    else None (nothing set: every pool keeps its default)."""
    return _requested()


def pool_size(limit: int) -> int:
    """Workers for cupyortho's own Python thread pools: the current setting (or the CPUs available),
    at most ``limit``."""
    n = _requested()
    return max(1, min(limit, available_cpus() if n is None else n))


@contextlib.contextmanager
def serial_blas(workers: int) -> Iterator[int]:
    """Context for code that runs independent GEMMs (and ``nogil`` compiled kernels) on ``workers``
    of cupyortho's own threads, one pool for all of it (the blocked backend's slab path): BLAS is
    single-threaded inside, so no OpenBLAS worker spins beside cupyortho's threads, and gets its
    counts back when the last such context (of any thread) is left.

    Yields the number of workers to use: ``workers``, or 1 when BLAS could not be set to one thread
    (OpenBLAS ignores a request made from a thread other than the main one; BLAS then keeps its own
    threads and the work runs in the calling thread).  With ``workers <= 1`` nothing is touched.
    """
    if workers <= 1:
        yield 1
        return
    with _lock:
        if _serial["depth"] == 0:
            _serial["saved"] = _set_blas(1)
        _serial["depth"] += 1
        ok = all(c == 1 for c in blas_threads())
    try:
        yield workers if ok else 1
    finally:
        with _lock:
            _serial["depth"] -= 1
            if _serial["depth"] == 0:
                _restore_blas(_serial["saved"])
                _serial["saved"] = None


# --------------------------------------------------------------------------- public setting

def set_num_threads(n: Optional[int]) -> None:
    """Use ``n`` threads for all of cupyortho's CPU work on NumPy arrays.

    Sets, process-wide, the thread count of NumPy's BLAS (through threadpoolctl; cupyortho's GEMMs
    are NumPy's, so your own NumPy code sees the same limit, as with
    ``threadpoolctl.threadpool_limits``), of numba's pool for the compiled engine (numba's count is
    per thread: it is applied in whichever thread calls cupyortho; if numba is already imported it is
    also set in the calling thread now) and of cupyortho's own worker threads.  numba cannot use more
    threads than ``NUMBA_NUM_THREADS`` (read when numba starts); larger values are capped there.

    Calls made through ``cupyortho.torch`` follow torch instead (``torch.get_num_threads()``; see
    ``docs/threads.md``).

    Args:
        n (int | None): threads, ``>= 1``; None undoes the setting: BLAS (and numba, in the calling
            thread) get back the counts they had before the first :func:`set_num_threads`, the worker
            threads their default.

    Raises:
        cupyortho.errors.SizeError: ``n`` is not an integer >= 1 or None.
        cupyortho.errors.BackendUnavailableError: threadpoolctl cannot be imported.
    """
    global _setting, _blas_saved, _numba_saved
    if n is not None:
        n = _check_count(n)
    with _lock:
        if n is None:
            _restore_blas(_blas_saved)
            _blas_saved = None
        else:
            changed = _set_blas(n)
            if _blas_saved is None:
                _blas_saved = changed
            else:  # keep the counts from before cupyortho's first change
                known = {id(lib) for lib, _ in _blas_saved}
                _blas_saved.extend((lib, prev) for lib, prev in changed if id(lib) not in known)
        _setting = n
        if "numba" in sys.modules:
            import numba

            if n is None:
                if _numba_saved is not None:
                    numba.set_num_threads(_numba_saved)
                _numba_saved = None
            else:
                if _numba_saved is None:
                    _numba_saved = numba.get_num_threads()
                numba.set_num_threads(_numba_count(n))


def get_num_threads() -> int:
    """The number of threads cupyortho's CPU work uses now.

    Inside a ``cupyortho.torch`` op: torch's budget.  Else the value of :func:`set_num_threads`, or,
    when none is set, the number of CPUs available to the process (the default of numba and
    OpenBLAS; the environment variables of ``docs/threads.md`` can make a pool smaller).
    """
    n = _requested()
    return available_cpus() if n is None else n


@contextlib.contextmanager
def threads(n: Optional[int]) -> Iterator[int]:
    """Context manager: :func:`set_num_threads` ``(n)`` inside, the previous setting restored on exit
    (also on an exception).  Process-wide, like :func:`set_num_threads`; contexts nest.

    Example::

        with cupyortho.threads(1):
            y = cupyortho.apply(theta, x)   # single-threaded BLAS and engine

    Yields:
        int: :func:`get_num_threads` inside the context.
    """
    if n is not None:
        n = _check_count(n)
    with _lock:
        prev = _setting
        set_num_threads(n)
    try:
        yield get_num_threads()
    finally:
        with _lock:
            set_num_threads(prev)


# --------------------------------------------------------------------------- framework budgets

#: BLAS threads inside a framework budget.  OpenBLAS's idle workers keep spinning for about 0.1 s
#: after each call (measured here: 0.10 s of CPU in the 0.5 s after one 500 x 500 GEMM, against
#: 0.003 s for torch's OpenMP pool and 0.007 s for numba's), so a multi-threaded cupyortho GEMM
#: would leave OpenBLAS competing with torch's next ops.  Inside a budget, BLAS therefore runs in the
#: calling thread only, and cupyortho's parallel work goes to numba's pool (which sleeps when idle).
#: With ``OPENBLAS_THREAD_TIMEOUT`` set (<= 8) before NumPy loads, OpenBLAS's workers sleep at once
#: and BLAS gets the whole budget.  See ``docs/threads.md`` for the measurements.
def _budget_blas(n: int) -> int:
    timeout = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "")
    if timeout.isdigit() and int(timeout) <= 8:
        return n
    return 1


@contextlib.contextmanager
def budget(n: int) -> Iterator[int]:
    """Context for one call made on behalf of a framework that owns its own pool (``cupyortho.torch``
    enters it with ``torch.get_num_threads()`` around every CPU op): cupyortho's pools use ``n``
    threads, one pool at a time (BLAS as :func:`_budget_blas` decides, numba ``n``), and everything is
    restored on exit.  Thread-safe: budgets entered by several threads share one BLAS override,
    restored when the last one leaves."""
    n = _check_count(n, "budget")
    stack = getattr(_local, "budgets", None)
    if stack is None:
        stack = _local.budgets = []
    with _lock:
        if _scope["depth"] == 0:
            _scope["saved"] = _set_blas(_budget_blas(n))
        _scope["depth"] += 1
    stack.append(n)
    try:
        yield n
    finally:
        stack.pop()
        with _lock:
            _scope["depth"] -= 1
            if _scope["depth"] == 0:
                _restore_blas(_scope["saved"])
                _scope["saved"] = None
