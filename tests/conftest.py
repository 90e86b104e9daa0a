"""Test configuration: hypothesis profiles and shared fixtures.

Profiles: ``ci`` (selected automatically by Hypothesis when CI is set) is extended with a modest
example count so the whole suite stays within minutes on two cores; ``dev`` is the local default
(no deadline: first calls may compile or warm caches).  Select with ``--hypothesis-profile``.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", settings.get_profile("ci"), max_examples=25)
settings.register_profile(
    "dev", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow]
)
if not os.environ.get("CI") and not os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile("dev")


@pytest.fixture
def rng():
    return np.random.default_rng(20261129)


# --------------------------------------------------------------------------- backends

class Backend:
    """One backend behind the protocol of ``docs/backends.md`` (SO(n) and U(n) operations by name),
    so that one test body runs against every backend, as cupyx's ``numpy_cupy_allclose`` and SciPy's
    ``xp`` fixture do.

    ``backend.raw(op)`` is the backend's function on its own arrays (``to``/``back`` convert from and
    to NumPy); ``backend.<op>(...)`` takes and returns NumPy arrays.  ``supports(op, schedule)`` says
    whether the backend has a path for that operation and schedule; ``variants(op, schedule)`` lists
    the keyword arguments that force each of its internal paths (``[{}]`` when it has one).
    """

    def __init__(self, name, ops, to=None, back=None, kinds=None, variants=None, dev=None):
        self.name = name
        self.dev = dev  # the device object of the CuPy backend's algorithms (None for the others)
        self._ops = ops
        self.to = to or (lambda a: a)
        self.back = back or (lambda a: a)
        self._kinds = kinds
        self._variants = variants

    def supports(self, op, schedule):
        return op in self._ops and (self._kinds is None or schedule.kind in self._kinds)

    def variants(self, op, schedule):
        return self._variants(op, schedule) if self._variants is not None else [{}]

    def raw(self, op):
        return self._ops[op]

    def __getattr__(self, op):
        if op.startswith("_") or op not in self._ops:
            raise AttributeError(op)
        fn = self._ops[op]

        def call(*args, **kwargs):
            conv = [self.to(a) if isinstance(a, np.ndarray) else a for a in args]
            kw = {k: self.to(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
            out = fn(*conv, **kw)
            return tuple(self.back(o) for o in out) if isinstance(out, tuple) else self.back(out)

        return call


def _protocol():
    from cupyortho.backends._common import SO_FUNCTIONS, U_FUNCTIONS

    return SO_FUNCTIONS, U_FUNCTIONS


def _reference_backend():
    from cupyortho.backends import numpy_backend as nb, numpy_unitary as nu

    so, u = _protocol()
    return Backend("reference", {**{op: getattr(nb, "rounds_" + op) for op in so},
                                 **{op: getattr(nu, op) for op in u}})


def _blocked_backend():
    from cupyortho.backends import blocked

    so, _ = _protocol()
    def granularities(op, schedule):  # block half-sizes u: the smallest and the team size
        return [{"u": u} for u in sorted({1, schedule.team_size})]

    return Backend("blocked", {op: getattr(blocked, op) for op in so}, kinds=("team",), variants=granularities)


def _engine_backend():
    pytest.importorskip("numba")
    from cupyortho.backends import engine

    so, u = _protocol()
    return Backend("engine", {op: getattr(engine, op) for op in so + u})


def _device_paths(op, schedule):
    """The ``path=`` values of the CuPy backend's SO(n) algorithms (U(n) has one path)."""
    from cupyortho.backends.cupy import so as cso

    if op.startswith("unitary"):
        return [{}]
    if op.startswith("apply") or op == "matrix_jvp":
        return [{"path": p} for p in cso.APPLY_PATHS]
    return [{"path": p} for p in cso.MATRIX_PATHS if p != "blocked" or schedule.kind == "team"]


def _device_ops(dev):
    """The CuPy backend's algorithms (``_impl_*`` of backends/cupy/so.py and un.py) bound to ``dev``."""
    import functools

    from cupyortho.backends.cupy import so as cso, un as cun

    so, u = _protocol()
    ops = {op: functools.partial(getattr(cso, "_impl_" + op), dev) for op in so}
    ops.update({op: functools.partial(getattr(cun, "_impl_" + op), dev) for op in u})
    return ops


def _cudasim_backend(seed=0, **device_settings):
    """The CuPy backend's algorithms on the CPU harness; ``seed`` orders the threads, and settings such
    as ``multiprocessor_count`` or ``max_shared_memory`` shape the device the launchers plan for."""
    import shutil

    if shutil.which("g++") is None:
        pytest.fail("the CPU harness cannot run: g++ is not installed (it compiles the kernels)")
    from cudasim import CpuDevice

    dev = CpuDevice(seed, **device_settings)
    return Backend("cudasim", _device_ops(dev), variants=_device_paths, dev=dev)


def gpu_reason():
    """Why the GPU backend cannot run here, or None when it can."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver
        return f"no CUDA device ({type(exc).__name__})"
    return None if count > 0 else "no CUDA device"


def _gpu_backend(seed=0, **device_settings):
    """The CuPy backend's algorithms on the current GPU (the settings of the CPU harness do not apply:
    the real device keeps its limits)."""
    reason = gpu_reason()
    if reason is not None:
        pytest.skip(f"GPU backend: {reason}")
    import cupy

    from cupyortho.backends.cupy.device import get_device

    dev = get_device()
    return Backend("gpu", _device_ops(dev), to=cupy.asarray,
                   back=lambda a: cupy.asnumpy(a) if isinstance(a, cupy.ndarray) else a, variants=_device_paths,
                   dev=dev)


#: Every backend the ``backend`` fixture runs, by name.  A new backend joins with one line here.
BACKENDS = {
    "reference": _reference_backend,
    "blocked": _blocked_backend,
    "engine": _engine_backend,
    "cudasim": _cudasim_backend,
    "gpu": _gpu_backend,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    """Each backend of :data:`BACKENDS` in turn (the GPU one skips with its reason without a GPU)."""
    return BACKENDS[request.param]()
