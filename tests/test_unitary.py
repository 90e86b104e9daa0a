"""U(n) and SU(n): complex Givens rotations with phases, on the SO(n) schedules.

Checked against independent oracles (dense products of explicit 2x2 blocks and scipy.linalg.expm of
skew-Hermitian generators), cupyortho.matrix (phi = delta = 0), central finite differences of real
losses (float64), the VJP/JVP dot test, Haar targets from scipy.stats.unitary_group, and input checks.
"""

import re

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from hypothesis import given, strategies as st

import cupyortho as co
from cupyortho.backends import numpy_backend as _nb
from cupyortho.errors import (
    AngleCountError, DtypeError, NonFiniteError, ScheduleError, ShapeError, SizeError,
)
from cupyortho._unitary import (
    num_unitary_params, unitary, unitary_apply, unitary_apply_jvp, unitary_apply_vjp, unitary_jvp,
    unitary_vjp,
)
from oracle import central_gradient, multistart_least_squares

KINDS = ["circle", "team"]


def _na(n):
    return n * (n - 1) // 2


def _params(rng, n, special=False, batch=(), dtype=np.float64, scale=np.pi):
    return rng.uniform(-scale, scale, batch + (num_unitary_params(n, special),)).astype(dtype)


def _cnormal(rng, shape, dtype=np.complex128):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)


def _full(p, n, special):
    """Independent SU(n) -> U(n) expansion for the oracles."""
    if not special:
        return p
    return np.concatenate([p, [-p[2 * _na(n):].sum()]])


# --------------------------------------------------------------------------- oracles

def _generator(n, i, j, phi):
    """K = e^{i phi} e_j e_i^T - e^{-i phi} e_i e_j^T (skew-Hermitian)."""
    k = np.zeros((n, n), dtype=complex)
    k[j, i] = np.exp(1j * phi)
    k[i, j] = -np.exp(-1j * phi)
    return k


def _block(n, i, j, theta, phi):
    g = np.eye(n, dtype=complex)
    c, s = np.cos(theta), np.sin(theta)
    g[i, i] = c
    g[j, j] = c
    g[i, j] = -s * np.exp(-1j * phi)
    g[j, i] = s * np.exp(1j * phi)
    return g


def _dense_unitary(p, schedule, use_expm=False):
    """D(delta) times the product of the n(n-1)/2 explicit pair matrices in schedule order."""
    n = schedule.n
    a = _na(n)
    theta, phi, delta = p[:a], p[a:2 * a], p[2 * a:]
    u = np.eye(n, dtype=complex)
    for rd in schedule.rounds:
        for i, j, q in zip(rd.i, rd.j, rd.angle):
            if use_expm:
                g = scipy.linalg.expm(theta[q] * _generator(n, i, j, phi[q]))
            else:
                g = _block(n, i, j, theta[q], phi[q])
            u = g @ u
    return np.diag(np.exp(1j * delta)) @ u


def _real_loss(seed, shape):
    """A nonlinear real loss of a complex array and its cotangent dL/dRe + i dL/dIm."""
    r = np.random.default_rng(seed)
    a, b, w = r.normal(size=shape), r.normal(size=shape), r.uniform(0.1, 1.0, size=shape)

    def loss(y):
        return float(np.sum(a * y.real + b * y.imag + w * np.abs(y) ** 2))

    def cotangent(y):
        return a + 1j * b + 2 * w * y

    return loss, cotangent


def _eps(dtype):
    return np.finfo(np.result_type(dtype, np.complex64)).eps


# --------------------------------------------------------------------------- layout and sizes

def test_num_unitary_params():
    for n in (2, 3, 7, 64):
        assert num_unitary_params(n) == n * n == 2 * co.num_angles(n) + n
        assert num_unitary_params(n, special=True) == n * n - 1
    for bad in (1, 0, 2.0, True, "3"):
        with pytest.raises(SizeError, match="n must be an integer"):
            num_unitary_params(bad)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [2, 3, 5, 8, 13])
def test_zero_phases_reduce_exactly_to_matrix(kind, dtype, n, rng):
    theta = rng.uniform(-np.pi, np.pi, _na(n)).astype(dtype)
    p = np.concatenate([theta, np.zeros(_na(n) + n, dtype)])
    sched = co.get_schedule(kind, n)
    u = unitary(p, schedule=kind)
    assert u.dtype == np.result_type(dtype, np.complex64)
    # Bit for bit against the round-by-round SO(n) reference (same operations, exact zeros added) ...
    np.testing.assert_array_equal(u.real, _nb.rounds_matrix(theta, sched))
    np.testing.assert_array_equal(u.imag, 0)
    x = rng.normal(size=(n, 3)).astype(dtype)
    y = unitary_apply(p, x, schedule=kind)
    np.testing.assert_array_equal(y.real, _nb.rounds_apply(theta, x, sched))
    np.testing.assert_array_equal(y.imag, 0)
    # ... and to rounding against the public functions (team schedules there use blocked GEMMs).
    tol = 10 * n * np.finfo(dtype).eps
    assert np.abs(u.real - co.matrix(theta, schedule=kind)).max() <= tol
    assert np.abs(y.real - co.apply(theta, x, schedule=kind)).max() <= tol * np.abs(x).max()


@pytest.mark.parametrize("kind", KINDS)
def test_diagonal_phases_act_last(kind, rng):
    n = 6
    p = _params(rng, n)
    a = _na(n)
    without = p.copy()
    without[2 * a:] = 0
    np.testing.assert_allclose(
        unitary(p, schedule=kind), np.exp(1j * p[2 * a:])[:, None] * unitary(without, schedule=kind),
        rtol=0, atol=1e-15,
    )


@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize(
    "schedule, n",
    [(k, n) for k in KINDS for n in (2, 3, 4, 5, 7, 8, 9)] + [(co.team_schedule(7, 2), 7), (co.team_schedule(9, 4), 9)],
)
def test_matches_dense_products(schedule, n, special, rng):
    sched = co.get_schedule(schedule, n)
    p = _params(rng, n, special)
    full = _full(p, n, special)
    u = unitary(p, schedule=schedule, special=special)
    np.testing.assert_allclose(u, _dense_unitary(full, sched), rtol=0, atol=1e-14)
    np.testing.assert_allclose(u, _dense_unitary(full, sched, use_expm=True), rtol=0, atol=1e-13)


@pytest.mark.parametrize("n", [2, 5])
def test_single_pair_is_expm_of_skew_hermitian_generator(n, rng):
    a = _na(n)
    for q, (i, j) in enumerate(zip(*np.triu_indices(n, 1))):
        p = np.zeros(n * n)
        p[a:2 * a] = rng.uniform(-np.pi, np.pi, a)  # phases of the other pairs do nothing at theta = 0
        p[q] = rng.uniform(-np.pi, np.pi)
        k = _generator(n, i, j, p[a + q])
        np.testing.assert_array_equal(k.conj().T, -k)
        for kind in KINDS:
            np.testing.assert_allclose(unitary(p, schedule=kind), scipy.linalg.expm(p[q] * k), rtol=0, atol=1e-15)
            u_single = unitary(p, schedule=kind)
            assert abs(np.linalg.det(u_single) - 1) < 1e-14


# --------------------------------------------------------------------------- unitarity and det

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [2, 3, 17, 64, 255, 256])
def test_unitarity(kind, dtype, n, rng):
    u = unitary(_params(rng, n, dtype=dtype), schedule=kind)
    assert u.dtype == np.result_type(dtype, np.complex64)
    eye = np.eye(n)
    tol = 10 * n * _eps(dtype)
    h = u.conj().swapaxes(-1, -2)
    assert np.abs(h @ u - eye).max() <= tol
    assert np.abs(u @ h - eye).max() <= tol


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [2, 3, 8, 33])
def test_determinant(kind, n, rng):
    p = _params(rng, n, batch=(3,))
    a = _na(n)
    np.testing.assert_allclose(
        np.linalg.det(unitary(p, schedule=kind)), np.exp(1j * p[:, 2 * a:].sum(-1)), rtol=0, atol=1e-12
    )
    ps = _params(rng, n, special=True, batch=(3,))
    np.testing.assert_allclose(scipy.linalg.det(unitary(ps, schedule=kind, special=True)), 1, rtol=0, atol=1e-12)
    ps32 = ps.astype(np.float32)
    np.testing.assert_allclose(np.linalg.det(unitary(ps32, schedule=kind, special=True)), 1, rtol=0, atol=1e-4)


def test_special_is_unitary_with_the_last_phase_fixed(rng):
    n = 5
    ps = _params(rng, n, special=True)
    full = np.concatenate([ps, [-ps[2 * _na(n):].sum()]])
    np.testing.assert_array_equal(unitary(ps, special=True), unitary(full))


@given(
    n=st.integers(2, 12),
    kind=st.sampled_from(KINDS),
    special=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 4),
)
def test_properties(n, kind, special, seed, k):
    r = np.random.default_rng(seed)
    p = r.uniform(-2 * np.pi, 2 * np.pi, num_unitary_params(n, special))
    u = unitary(p, schedule=kind, special=special)
    assert np.abs(u.conj().T @ u - np.eye(n)).max() <= 10 * n * np.finfo(float).eps
    x = _cnormal(r, (n, k))
    y = unitary_apply(p, x, schedule=kind, special=special)
    np.testing.assert_allclose(y, u @ x, rtol=0, atol=1e-13)
    np.testing.assert_allclose(unitary_apply(p, y, adjoint=True, schedule=kind, special=special), x, rtol=0, atol=1e-13)
    np.testing.assert_allclose(unitary_apply(p, x, adjoint=True, schedule=kind, special=special), u.conj().T @ x,
                               rtol=0, atol=1e-13)
    if special:
        assert abs(np.linalg.det(u) - 1) < 1e-12


def test_zero_params_give_identity():
    for n in (2, 5):
        np.testing.assert_array_equal(unitary(np.zeros(n * n)), np.eye(n))
        np.testing.assert_array_equal(unitary(np.zeros(n * n - 1), special=True), np.eye(n))


# --------------------------------------------------------------------------- apply: shapes, dtypes

@pytest.mark.parametrize("kind", KINDS)
def test_apply_follows_matmul(kind, rng):
    n = 7
    p = _params(rng, n, batch=(2, 1))
    u = unitary(p, schedule=kind)
    for x in (rng.normal(size=(n,)), _cnormal(rng, (n,)), rng.normal(size=(3, n, 4)), _cnormal(rng, (n, 1))):
        y = unitary_apply(p, x, schedule=kind)
        expected = np.matmul(u, x)
        assert y.shape == expected.shape
        np.testing.assert_allclose(y, expected, rtol=0, atol=1e-14)
        ya = unitary_apply(p, x, adjoint=True, schedule=kind)
        np.testing.assert_allclose(ya, np.matmul(u.conj().swapaxes(-1, -2), x), rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    "pdt, xdt, out",
    [
        (np.float32, np.float32, np.complex64),
        (np.float32, np.complex64, np.complex64),
        (np.float64, np.float32, np.complex128),
        (np.float32, np.float64, np.complex128),
        (np.float32, np.complex128, np.complex128),
        (np.float64, np.complex64, np.complex128),
    ],
)
def test_dtypes(pdt, xdt, out, rng):
    n = 4
    p = _params(rng, n, dtype=pdt)
    x = _cnormal(rng, (n, 2)).astype(xdt) if np.dtype(xdt).kind == "c" else rng.normal(size=(n, 2)).astype(xdt)
    assert unitary(p).dtype == np.result_type(pdt, np.complex64)
    y = unitary_apply(p, x)
    assert y.dtype == out
    g = _cnormal(rng, y.shape)
    dp, dx = unitary_apply_vjp(p, x, g)
    assert dp.dtype == pdt and dx.dtype == xdt
    assert unitary_vjp(p, _cnormal(rng, (n, n))).dtype == pdt
    assert unitary_apply_jvp(p, x, p * 0.5, x).dtype == out
    assert unitary_jvp(p, p * 0.5).dtype == np.result_type(pdt, np.complex64)


@pytest.mark.parametrize("kind", KINDS)
def test_complex64_agrees_with_complex128(kind, rng):
    n = 16
    p = _params(rng, n)
    g = _cnormal(rng, (n, n))
    u64, u32 = unitary(p, schedule=kind), unitary(p.astype(np.float32), schedule=kind)
    assert np.abs(u64 - u32).max() < 50 * n * np.finfo(np.float32).eps
    d64 = unitary_vjp(p, g, schedule=kind)
    d32 = unitary_vjp(p.astype(np.float32), g.astype(np.complex64), schedule=kind)
    assert np.abs(d64 - d32).max() < 1e-3 * np.abs(d64).max()


# --------------------------------------------------------------------------- reachability

def _fit(target, n, kind, special, rng, tries=10):
    """Least-squares fit of unitary(p) to target; the best max |residual| over random starts."""
    size = num_unitary_params(n, special)
    basis = np.eye(size)

    def residual(p):
        d = unitary(p, schedule=kind, special=special) - target
        return np.concatenate([d.real.ravel(), d.imag.ravel()])

    def jac(p):
        j = unitary_jvp(np.broadcast_to(p, (size, size)), basis, schedule=kind, special=special)
        return np.concatenate([j.real.reshape(size, -1), j.imag.reshape(size, -1)], axis=1).T

    return multistart_least_squares(residual, jac, size, rng, tries)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_haar_targets_are_reachable(kind, special, n, rng):
    for seed in range(2):
        target = scipy.stats.unitary_group.rvs(n, random_state=rng)
        if special:
            target = target / np.linalg.det(target) ** (1.0 / n)
            assert abs(np.linalg.det(target) - 1) < 1e-12
        assert _fit(target, n, kind, special, rng) < 1e-10


@pytest.mark.parametrize("kind", KINDS)
def test_special_cannot_reach_other_determinants(kind, rng):
    # Negative control: the fit above can fail; SU(n) never reaches a U(n) target with det = -1.
    n = 3
    target = scipy.stats.unitary_group.rvs(n, random_state=rng)
    target = -target / np.linalg.det(target) ** (1.0 / n)
    assert _fit(target, n, kind, True, rng, tries=2) > 1e-2


# --------------------------------------------------------------------------- derivatives

def _check_close(a, b, tol=1e-7):
    scale = max(1.0, float(np.abs(b).max()))
    assert np.abs(a - b).max() <= tol * scale, (np.abs(a - b).max(), scale)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_unitary_vjp_matches_finite_differences(kind, special, n, rng):
    p = _params(rng, n, special)
    loss, cot = _real_loss(n, (n, n))
    f = lambda q: loss(unitary(q, schedule=kind, special=special))  # noqa: E731
    fd = central_gradient(f, p)
    g = cot(unitary(p, schedule=kind, special=special))
    _check_close(unitary_vjp(p, g, schedule=kind, special=special), fd)
    d_apply, _ = unitary_apply_vjp(p, np.eye(n), g, schedule=kind, special=special)
    _check_close(d_apply, fd)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("adjoint", [False, True])
@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("xkind", ["complex", "real", "vector"])
def test_apply_vjp_matches_finite_differences(kind, adjoint, special, xkind, rng):
    n = 5
    p = _params(rng, n, special)
    x = {"complex": _cnormal(rng, (n, 3)), "real": rng.normal(size=(n, 3)), "vector": _cnormal(rng, (n,))}[xkind]
    kw = dict(schedule=kind, special=special, adjoint=adjoint)
    loss, cot = _real_loss(7, unitary_apply(p, x, **kw).shape)
    y = unitary_apply(p, x, **kw)
    dp, dx = unitary_apply_vjp(p, x, cot(y), **kw)
    _check_close(dp, central_gradient(lambda q: loss(unitary_apply(q, x, **kw)), p))
    fd_re = central_gradient(lambda xr: loss(unitary_apply(p, xr + 1j * x.imag if xkind != "real" else xr, **kw)),
                             x.real)
    if xkind == "real":
        assert dx.dtype == np.float64
        _check_close(dx, fd_re)
    else:
        fd_im = central_gradient(lambda xi: loss(unitary_apply(p, x.real + 1j * xi, **kw)), x.imag)
        _check_close(dx, fd_re + 1j * fd_im)
    dp2, dx2 = unitary_apply_vjp(p, x, cot(y), output=y, **kw)
    np.testing.assert_allclose(dp2, dp, rtol=0, atol=1e-13)
    np.testing.assert_allclose(dx2, dx, rtol=0, atol=1e-13)


def test_apply_vjp_sums_over_broadcast_batch(rng):
    n = 4
    p = _params(rng, n, batch=(1, 3))
    x = _cnormal(rng, (2, 1, n, 2))
    g = _cnormal(rng, (2, 3, n, 2))
    dp, dx = unitary_apply_vjp(p, x, g)
    assert dp.shape == p.shape and dx.shape == x.shape
    pb = np.broadcast_to(p, (2, 3, p.shape[-1]))
    xb = np.broadcast_to(x, (2, 3, n, 2))
    dpb, dxb = unitary_apply_vjp(pb, xb, g)
    np.testing.assert_allclose(dp, dpb.sum(0, keepdims=True), rtol=0, atol=1e-13)
    np.testing.assert_allclose(dx, dxb.sum(1, keepdims=True), rtol=0, atol=1e-13)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("special", [False, True])
def test_jvps_match_finite_differences(kind, special, rng):
    n, h = 5, 1e-6
    p = _params(rng, n, special)
    t = rng.normal(size=p.shape)
    kw = dict(schedule=kind, special=special)
    fd = (unitary(p + h * t, **kw) - unitary(p - h * t, **kw)) / (2 * h)
    _check_close(unitary_jvp(p, t, **kw), fd)
    x, tx = _cnormal(rng, (n, 2)), _cnormal(rng, (n, 2))
    for adjoint in (False, True):
        f = lambda s: unitary_apply(p + s * t, x + s * tx, adjoint=adjoint, **kw)  # noqa: E731
        _check_close(unitary_apply_jvp(p, x, t, tx, adjoint=adjoint, **kw), (f(h) - f(-h)) / (2 * h))
        f0 = lambda s: unitary_apply(p + s * t, x, adjoint=adjoint, **kw)  # noqa: E731
        _check_close(unitary_apply_jvp(p, x, t, adjoint=adjoint, **kw), (f0(h) - f0(-h)) / (2 * h))


def _inner(a, b):
    """Real inner product Re sum(conj(a) b), the pairing of cotangents with tangents."""
    return float(np.sum(np.conj(a) * b).real)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("n", [2, 9, 16])
def test_dot_tests(kind, special, n, rng):
    p = _params(rng, n, special, batch=(2,))
    t = rng.normal(size=p.shape)
    g = _cnormal(rng, (2, n, n))
    kw = dict(schedule=kind, special=special)
    lhs = _inner(unitary_vjp(p, g, **kw), t)
    assert abs(lhs - _inner(g, unitary_jvp(p, t, **kw))) <= 1e-12 * max(1, abs(lhs)) * n
    for adjoint in (False, True):
        for x, tx in ((_cnormal(rng, (n, 3)), _cnormal(rng, (n, 3))), (rng.normal(size=(n, 3)), rng.normal(size=(n, 3)))):
            gy = _cnormal(rng, (2, n, 3))
            dp, dx = unitary_apply_vjp(p, x, gy, adjoint=adjoint, **kw)
            lhs = _inner(dp, t) + _inner(dx, tx)
            rhs = _inner(gy, unitary_apply_jvp(p, x, t, tx, adjoint=adjoint, **kw))
            assert abs(lhs - rhs) <= 1e-12 * max(1, abs(lhs)) * n


@pytest.mark.parametrize("kind", KINDS)
def test_matrix_vjp_agrees_with_apply_vjp_at_larger_n(kind, rng):
    n = 64
    p = _params(rng, n)
    g = _cnormal(rng, (n, n))
    d_matrix = unitary_vjp(p, g, schedule=kind)
    d_apply, _ = unitary_apply_vjp(p, np.eye(n), g, schedule=kind)
    assert np.abs(d_matrix - d_apply).max() <= 1e-10 * np.abs(d_matrix).max()


def test_real_cotangent_means_zero_imaginary_part(rng):
    n = 4
    p = _params(rng, n)
    g = rng.normal(size=(n, n))
    np.testing.assert_array_equal(unitary_vjp(p, g), unitary_vjp(p, g + 0j))


# --------------------------------------------------------------------------- input checks

N = 4
P = N * N


def _inputs(rng, pdt=np.float64, xdt=np.complex128):
    return dict(
        p=_params(rng, N, batch=(2,), dtype=pdt),
        ps=_params(rng, N, special=True, batch=(2,), dtype=pdt),
        x=(_cnormal(rng, (N, 3)) if np.dtype(xdt).kind == "c" else rng.normal(size=(N, 3))).astype(xdt),
        gy=_cnormal(rng, (2, N, 3)),
        gu=_cnormal(rng, (2, N, N)),
    )


CALLS = {
    "unitary": lambda d: unitary(d["p"]),
    "unitary_special": lambda d: unitary(d["ps"], special=True),
    "apply": lambda d: unitary_apply(d["p"], d["x"]),
    "apply_adjoint": lambda d: unitary_apply(d["ps"], d["x"], adjoint=True, special=True),
    "unitary_vjp": lambda d: unitary_vjp(d["p"], d["gu"]),
    "unitary_vjp_special": lambda d: unitary_vjp(d["ps"], d["gu"], special=True),
    "apply_vjp": lambda d: unitary_apply_vjp(d["p"], d["x"], d["gy"]),
    "apply_vjp_out": lambda d: unitary_apply_vjp(d["ps"], d["x"], d["gy"], output=d["gy"] * 0.5, special=True),
    "unitary_jvp": lambda d: unitary_jvp(d["p"], d["p"] * 0.3),
    "apply_jvp": lambda d: unitary_apply_jvp(d["ps"], d["x"], d["ps"] * 0.3, d["x"] * 2, special=True),
}


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("xdt", [np.float32, np.complex128])
def test_inputs_are_not_modified(name, xdt, rng):
    d = _inputs(rng, np.float32, xdt)
    before = {k: v.copy() for k, v in d.items()}
    out = CALLS[name](d)
    for k in d:
        assert np.array_equal(d[k], before[k]), f"{name} modified {k}"
    for o in out if isinstance(out, tuple) else (out,):
        assert all(not np.shares_memory(o, v) for v in d.values())
    for v in d.values():
        v.flags.writeable = False
    CALLS[name](d)  # read-only inputs work


def test_count_errors(rng):
    with pytest.raises(AngleCountError, match=r"n\*n parameters of U\(n\).*got 15"):
        unitary(np.zeros(15))
    with pytest.raises(AngleCountError, match=r"n\*n - 1 parameters of SU\(n\).*got 16"):
        unitary(np.zeros(16), special=True)
    with pytest.raises(AngleCountError, match=r"15 parameters of SU\(n\) for n = 4.*delta \(3\).*\(16,\)"):
        unitary(np.zeros(16), n=4, special=True)
    with pytest.raises(AngleCountError, match=r"16 parameters of U\(n\) for n \(from x.shape\) = 4"):
        unitary_apply(np.zeros(9), np.zeros((4, 2)))
    with pytest.raises(AngleCountError, match="got 3"):
        unitary(np.zeros(3))


def test_shape_errors(rng):
    d = _inputs(rng)
    with pytest.raises(ShapeError, match="at least one dimension"):
        unitary(np.float64(0.0))
    with pytest.raises(ShapeError, match=r"cotangent must have the shape of unitary\(params\), \(2, 4, 4\)"):
        unitary_vjp(d["p"], d["gu"][0])
    with pytest.raises(ShapeError, match="cotangent must have the shape"):
        unitary_apply_vjp(d["p"], d["x"], d["gy"][..., :2])
    with pytest.raises(ShapeError, match="output must have the shape"):
        unitary_apply_vjp(d["p"], d["x"], d["gy"], output=d["gy"][0])
    with pytest.raises(ShapeError, match="tangent must have the shape of params"):
        unitary_jvp(d["p"], d["p"][0])
    with pytest.raises(ShapeError, match="x_tangent must have the shape of x"):
        unitary_apply_jvp(d["p"], d["x"], d["p"], d["x"][:, :2])
    with pytest.raises(ShapeError, match="batch axes do not broadcast"):
        unitary_apply(d["p"], np.zeros((3, N, 2)))
    with pytest.raises(SizeError, match="x must have n >= 2 rows"):
        unitary_apply(np.zeros(1), np.zeros(1))


@pytest.mark.parametrize(
    "arg, value, fragment",
    [
        ("params", np.zeros(P, np.complex128), "parameters are real"),
        ("params", np.zeros(P, np.int64), "got int64"),
        ("params", np.zeros(P, np.float16), "cast to float32"),
        ("x", np.zeros((N, 2), np.int32), "x must have dtype"),
        ("tangent", np.zeros(P, np.complex64), "params_tangent must have dtype float32 or float64"),
    ],
)
def test_dtype_errors(arg, value, fragment, rng):
    p = _params(rng, N)
    x = np.ones((N, 2))
    with pytest.raises(DtypeError, match=fragment):
        if arg == "params":
            unitary(value)
        elif arg == "x":
            unitary_apply(p, value)
        else:
            unitary_apply_jvp(p, x, value)
    with pytest.raises(DtypeError, match="tangent must have dtype float32 or float64, got complex128"):
        unitary_jvp(p, p + 0j)


def test_non_finite_inputs(rng):
    p = _params(rng, N)
    bad = p.copy()
    bad[3] = np.nan
    with pytest.raises(NonFiniteError, match="params contains NaN"):
        unitary(bad)
    x = _cnormal(rng, (N, 2))
    x[0, 0] = complex(0, np.inf)
    with pytest.raises(NonFiniteError, match="x contains NaN or infinity"):
        unitary_apply(p, x)
    assert np.isnan(unitary(bad, check_finite=False)).any()


def test_schedule_errors(rng):
    p = _params(rng, N)
    with pytest.raises(ScheduleError, match="schedule must be one of"):
        unitary(p, schedule="spiral")
    with pytest.raises(SizeError, match="n = 5 disagrees with the schedule"):
        unitary(p, n=5, schedule=co.circle_schedule(4))
    with pytest.raises(ScheduleError, match="Stiefel restriction"):
        unitary(p, schedule=co.circle_schedule(4).restrict(2))
    with pytest.raises(AngleCountError, match="for n = 5"):
        unitary(p, schedule=co.circle_schedule(5))
    np.testing.assert_array_equal(unitary(p, schedule=co.team_schedule(4, 2)), unitary(p, schedule="team"))


# --------------------------------------------------------------------------- GPU (public API)

def _gpu():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception as exc:
        pytest.skip(f"no usable CUDA device ({type(exc).__name__})")
    return cupy


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_public_api_on_gpu(kind, dtype, rng):
    cupy = _gpu()
    n = 37
    p = _params(rng, n, batch=(2,), dtype=dtype)
    ps = _params(rng, n, special=True, dtype=dtype)
    x = _cnormal(rng, (n, 4))
    g = _cnormal(rng, (2, n, n))
    tol = 2e-4 if dtype == np.float32 else 1e-12
    pairs = [
        (unitary(p, schedule=kind), unitary(cupy.asarray(p), schedule=kind)),
        (unitary(ps, special=True, schedule=kind), unitary(cupy.asarray(ps), special=True, schedule=kind)),
        (unitary_apply(p, x, adjoint=True, schedule=kind),
         unitary_apply(cupy.asarray(p), cupy.asarray(x), adjoint=True, schedule=kind)),
        (unitary_vjp(p, g, schedule=kind), unitary_vjp(cupy.asarray(p), cupy.asarray(g), schedule=kind)),
        (unitary_apply_vjp(p, x, g[..., :4], schedule=kind)[0],
         unitary_apply_vjp(cupy.asarray(p), cupy.asarray(x), cupy.asarray(g[..., :4]), schedule=kind)[0]),
        (unitary_jvp(p, p, schedule=kind), unitary_jvp(cupy.asarray(p), cupy.asarray(p), schedule=kind)),
    ]
    for want, got in pairs:
        assert isinstance(got, cupy.ndarray) and got.dtype == want.dtype
        np.testing.assert_allclose(cupy.asnumpy(got), want, rtol=0, atol=tol * max(1, np.abs(want).max()))
    u = unitary(cupy.asarray(_params(rng, 1024, dtype=dtype)), schedule=kind)
    err = float(cupy.abs(u.conj().T @ u - cupy.eye(1024)).max())
    assert err <= 10 * 1024 * _eps(dtype)
