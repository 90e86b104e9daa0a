"""Every backend on the one protocol (``docs/backends.md``), by the same test bodies.

The ``backend`` fixture (tests/conftest.py) runs each body on the NumPy reference, the blocked GEMM
path, the CuPy backend's algorithms on the CPU harness (``cudasim``) and on a GPU (skipped without
one).  Agreement is checked against the round-by-round reference (itself checked against
independent oracles in test_reference.py and test_unitary.py), so the reference is not compared
with itself; every backend, the reference included, must leave its inputs untouched.
"""

import numpy as np
import pytest

from cupyortho import schedule as S
from cupyortho.backends import cpu, cupy as cupy_backend
from cupyortho.backends._common import ATTRIBUTES, SO_FUNCTIONS, U_FUNCTIONS
from conftest import BACKENDS

TOL = {np.float64: 1e-12, np.float32: 3e-5}
CDTYPE = {np.float64: np.complex128, np.float32: np.complex64}


def _reference():
    return BACKENDS["reference"]()


def _close(got, want, dtype, scale, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape, got.dtype, want.dtype)
    ref = max(1.0, float(np.abs(want).max(initial=0.0)))
    err = float(np.abs(got - want).max(initial=0.0))
    assert err <= TOL[dtype] * scale * ref, f"{what}: max error {err:.3g} (values up to {ref:.3g})"


def _cnormal(rng, shape, dtype):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(CDTYPE[dtype])


def _so_calls(sched, rng, dtype, tb=(2,), xb=(), k=3):
    """(op, args) of every SO(n) operation on one random input set (batch axes tb on theta, xb on x)."""
    n, A = sched.n, sched.num_angles
    m = n if sched.m is None else sched.m
    batch = np.broadcast_shapes(tb, xb)
    theta = rng.uniform(-np.pi, np.pi, tb + (A,)).astype(dtype)
    t_theta = rng.standard_normal(tb + (A,)).astype(dtype)
    x = rng.standard_normal(xb + (n, k)).astype(dtype)
    g = rng.standard_normal(batch + (n, k)).astype(dtype)
    t_x = rng.standard_normal(xb + (n, k)).astype(dtype)
    gm = rng.standard_normal(tb + (n, n)).astype(dtype)
    calls = [("apply", (theta, x, sched, False)), ("apply", (theta, x, sched, True)),
             ("apply_vjp", (theta, x, g, sched, False, None)), ("apply_vjp", (theta, x, g, sched, True, None)),
             ("apply_jvp", (theta, x, t_theta, t_x, sched, True)), ("apply_jvp", (theta, x, t_theta, None, sched, False))]
    if m == n:
        calls += [("matrix", (theta, sched)), ("matrix_vjp", (theta, gm, sched, None)),
                  ("matrix_jvp", (theta, t_theta, sched))]
    return calls


def _u_calls(sched, rng, dtype, tb=(2,), xb=(), k=3):
    """(op, args) of every U(n) operation on one random input set."""
    n = sched.n
    cdt = CDTYPE[dtype]
    batch = np.broadcast_shapes(tb, xb)
    p = rng.uniform(-np.pi, np.pi, tb + (n * n,)).astype(dtype)
    t = rng.standard_normal(tb + (n * n,)).astype(dtype)
    x = _cnormal(rng, xb + (n, k), dtype)
    gy = _cnormal(rng, batch + (n, k), dtype)
    tx = _cnormal(rng, xb + (n, k), dtype)
    gu = _cnormal(rng, tb + (n, n), dtype)
    return [("unitary", (p, sched, cdt)), ("unitary_vjp", (p, gu, sched)),
            ("unitary_jvp", (p, t, sched, cdt)),
            ("unitary_apply", (p, x, sched, False)), ("unitary_apply", (p, x, sched, True)),
            ("unitary_apply_vjp", (p, x, gy, sched, True, None)),
            ("unitary_apply_jvp", (p, x, t, tx, sched, False))]


SCHEDULES = [S.circle_schedule(7), S.team_schedule(7, 2), S.team_schedule(9), S.team_schedule(6, 2).restrict(3),
             S.circle_schedule(2)]


def test_backend_modules_provide_the_protocol():
    for module in (cpu, cupy_backend):
        missing = [a for a in ATTRIBUTES + SO_FUNCTIONS + U_FUNCTIONS if a not in dir(module) and a != "xp"]
        assert not missing, f"{module.__name__} lacks {missing}"
        assert all(callable(getattr(module, f)) for f in SO_FUNCTIONS + U_FUNCTIONS)
    assert cpu.xp is np


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sched", SCHEDULES, ids=repr)
def test_every_operation_matches_the_reference(backend, sched, dtype):
    if backend.name == "reference":
        pytest.skip("the reference is the comparison (checked against oracles in test_reference.py)")
    ref = _reference()
    rng = np.random.default_rng(sched.n * 7 + len(repr(sched)))
    calls = _so_calls(sched, rng, dtype, tb=(2, 1), xb=(3,))
    if sched.m is None:
        calls += _u_calls(sched, rng, dtype, tb=(1, 2), xb=(3, 1))
    ran = 0
    for op, args in calls:
        if not backend.supports(op, sched):
            continue
        got, want = getattr(backend, op)(*args), ref.raw(op)(*args)
        for g, w in zip(got, want) if isinstance(want, tuple) else [(got, want)]:
            _close(g, w, dtype, 4 * sched.n * 3, f"{backend.name} {op} {sched!r}")
        ran += 1
    if not ran:
        pytest.skip(f"{backend.name} has no path for {sched!r}")


def test_output_is_used_and_gives_the_same_cotangents(backend):
    # The VJPs' output= (the forward result passed back) gives the same cotangents, and is used: a
    # wrong output gives other ones.
    sched = S.team_schedule(8, 2)
    rng = np.random.default_rng(3)
    theta = rng.uniform(-3, 3, (2, sched.num_angles))
    x, g = rng.standard_normal((8, 3)), rng.standard_normal((2, 8, 3))
    gm = rng.standard_normal((2, 8, 8))
    y = _reference().apply(theta, x, sched, False)
    u = _reference().matrix(theta, sched)
    for want, got in [(backend.apply_vjp(theta, x, g, sched, False, None), backend.apply_vjp(theta, x, g, sched, False, y)),
                      ((backend.matrix_vjp(theta, gm, sched, None),), (backend.matrix_vjp(theta, gm, sched, u),))]:
        for a, b in zip(got, want):
            _close(a, b, np.float64, 10, f"{backend.name} output=")
    wrong = backend.apply_vjp(theta, x, g, sched, False, 2 * y)[0]
    assert not np.allclose(wrong, backend.apply_vjp(theta, x, g, sched, False, None)[0])
    assert not np.allclose(backend.matrix_vjp(theta, gm, sched, 2 * u), backend.matrix_vjp(theta, gm, sched, None))
    if backend.supports("unitary_vjp", sched):
        p = rng.uniform(-3, 3, (2, 64))
        gu = _cnormal(rng, (2, 8, 8), np.float64)
        uu = _reference().unitary(p, sched, np.complex128)
        _close(backend.unitary_vjp(p, gu, sched, uu), backend.unitary_vjp(p, gu, sched), np.float64, 10,
               f"{backend.name} unitary_vjp output=")
        assert not np.allclose(backend.unitary_vjp(p, gu, sched, 2 * uu), backend.unitary_vjp(p, gu, sched))


@pytest.mark.parametrize("sched", [S.circle_schedule(9), S.team_schedule(9, 2), S.team_schedule(13, 4)], ids=repr)
def test_inputs_are_not_modified(backend, sched):
    """Nothing a backend is given is written to: every operation, SO(n) and U(n), every argument, on
    every internal path of the backend (moved here from test_cupy_backend.py and test_blocked.py)."""
    rng = np.random.default_rng(11)
    calls = _so_calls(sched, rng, np.float64) + _u_calls(sched, rng, np.float64)
    theta, x, g = calls[2][1][:3]
    gm = next(args[1] for op, args in calls if op == "matrix_vjp")
    calls += [("apply_vjp", (theta, x, g, sched, False, _reference().apply(theta, x, sched, False))),
              ("matrix_vjp", (theta, gm, sched, _reference().matrix(theta, sched)))]
    ran = 0
    for op, args in calls:
        if not backend.supports(op, sched):
            continue
        dev_args = [backend.to(a) if isinstance(a, np.ndarray) else a for a in args]
        before = [backend.back(a).copy() if isinstance(a, np.ndarray) else None for a in args]
        for kw in backend.variants(op, sched):
            backend.raw(op)(*dev_args, **kw)
            for i, (a, b) in enumerate(zip(dev_args, before)):
                if b is not None:
                    np.testing.assert_array_equal(backend.back(a), b,
                                                  err_msg=f"{backend.name} {op} {kw} wrote to argument {i}")
            ran += 1
    if not ran:
        pytest.skip(f"{backend.name} has no path for {sched!r}")
