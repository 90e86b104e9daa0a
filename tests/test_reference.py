"""Properties of the NumPy backend through the public API: oracles, orthogonality, derivatives.

These bodies are the specification; other backends are compared with the NumPy results.
"""

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import cupyortho as co
from oracle import central_gradient, dense_matrix, dense_matrix_expm, generator

KINDS = ["circle", "team"]
EDGE_N = [2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65]
EPS = {np.float32: np.finfo(np.float32).eps, np.float64: np.finfo(np.float64).eps}


def angles(rng, n, batch=(), dtype=np.float64, m=None):
    return rng.uniform(-np.pi, np.pi, size=batch + (co.num_angles(n, m),)).astype(dtype)


# ----------------------------------------------------------------------------- oracles

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", EDGE_N)
def test_matrix_equals_dense_product(kind, n, rng):
    s = co.get_schedule(kind, n)
    theta = angles(rng, n)
    u = co.matrix(theta, schedule=kind)
    np.testing.assert_allclose(u, dense_matrix(theta, s), rtol=0, atol=1e-13)
    u32 = co.matrix(theta.astype(np.float32), schedule=kind)
    assert u32.dtype == np.float32
    np.testing.assert_allclose(u32, u, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_matrix_equals_product_of_expm(kind, rng):
    n = 6
    theta = angles(rng, n)
    np.testing.assert_allclose(co.matrix(theta, schedule=kind), dense_matrix_expm(theta, co.get_schedule(kind, n)), atol=1e-13)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [2, 3, 6, 9])
def test_single_angle_is_expm_of_its_generator(kind, n, rng):
    iu, ju = np.triu_indices(n, 1)
    for p in range(co.num_angles(n)):
        theta = np.zeros(co.num_angles(n))
        theta[p] = rng.uniform(-3, 3)
        expected = scipy.linalg.expm(theta[p] * generator(n, iu[p], ju[p]))
        np.testing.assert_allclose(co.matrix(theta, schedule=kind), expected, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_angles_give_identity(kind, dtype):
    for n in [2, 3, 10]:
        u = co.matrix(np.zeros(co.num_angles(n), dtype), schedule=kind)
        assert u.dtype == dtype
        assert np.array_equal(u, np.eye(n, dtype=dtype))


def test_rotation_sign_convention():
    """G(0, 1, theta) e_0 = (cos, sin): the (j, i) entry carries +sin."""
    u = co.matrix(np.array([0.3]))
    np.testing.assert_allclose(u, [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]], atol=1e-16)


# ----------------------------------------------------------------------------- orthogonality

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [2, 3, 17, 63, 64, 65, 127, 129, 255, 512])
def test_orthogonal_with_unit_determinant(kind, dtype, n, rng):
    u = co.matrix(angles(rng, n, dtype=dtype), schedule=kind)
    assert u.dtype == dtype and u.shape == (n, n)
    u64 = u.astype(np.float64)
    err = np.abs(u64.T @ u64 - np.eye(n)).max()
    assert err <= 10 * n * EPS[dtype], err
    det = scipy.linalg.det(u64)
    assert abs(det - 1) <= 100 * n * EPS[dtype], det


# ----------------------------------------------------------------------------- apply

shapes = st.tuples(
    st.integers(2, 12),                       # n
    st.integers(1, 5),                        # k
    hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3),  # theta batch
    st.booleans(),                            # transpose
    st.sampled_from(KINDS),
    st.sampled_from([np.float32, np.float64]),
)


@given(shapes, st.integers(0, 2**32 - 1))
def test_apply_equals_matrix_times_x(params, seed):
    n, k, batch, transpose, kind, dtype = params
    rng = np.random.default_rng(seed)
    theta = angles(rng, n, batch, dtype)
    x = rng.normal(size=(n, k)).astype(dtype)
    u = co.matrix(theta, schedule=kind)
    if transpose:
        u = np.swapaxes(u, -1, -2)
    y = co.apply(theta, x, transpose=transpose, schedule=kind)
    assert y.shape == batch + (n, k) and y.dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(y, u @ x, rtol=0, atol=tol * n)
    # a vector follows numpy.matmul
    yv = co.apply(theta, x[:, 0], transpose=transpose, schedule=kind)
    np.testing.assert_allclose(yv, (u @ x[:, :1])[..., 0], rtol=0, atol=tol * n)


@pytest.mark.parametrize("kind", KINDS)
def test_apply_broadcasts_batches(kind, rng):
    n = 5
    theta = angles(rng, n, (4, 1))
    x = rng.normal(size=(3, n, 2))
    y = co.apply(theta, x, schedule=kind)
    assert y.shape == (4, 3, n, 2)
    for a in range(4):
        for b in range(3):
            np.testing.assert_allclose(y[a, b], co.matrix(theta[a, 0], schedule=kind) @ x[b], atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [2, 3, 8, 17, 33])
def test_transpose_is_inverse(kind, n, rng):
    theta = angles(rng, n, (2,))
    x = rng.normal(size=(n, 3))
    y = co.apply(theta, x, schedule=kind)
    np.testing.assert_allclose(co.apply(theta, y, transpose=True, schedule=kind), np.broadcast_to(x, y.shape), atol=1e-13)
    np.testing.assert_allclose(co.apply(theta, co.apply(theta, x, transpose=True, schedule=kind), schedule=kind),
                               np.broadcast_to(x, y.shape), atol=1e-13)


def test_mixed_dtypes_promote(rng):
    theta = angles(rng, 4, dtype=np.float32)
    x = rng.normal(size=(4, 2))
    assert co.apply(theta, x).dtype == np.float64
    assert co.apply(theta.astype(np.float64), x.astype(np.float32)).dtype == np.float64
    assert co.apply(theta, x.astype(np.float32)).dtype == np.float32


def test_lists_are_accepted():
    u = co.matrix([0.1, 0.2, 0.3])
    np.testing.assert_allclose(u, co.matrix(np.array([0.1, 0.2, 0.3])))


# ----------------------------------------------------------------------------- derivatives

def _fd_check(analytic, f, theta):
    fd = central_gradient(f, theta)
    np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_matrix_vjp_matches_finite_differences(kind, n, rng):
    theta = angles(rng, n)
    g = rng.normal(size=(n, n))
    d = co.matrix_vjp(theta, g, schedule=kind)
    assert d.shape == theta.shape
    _fd_check(d, lambda t: np.sum(g * co.matrix(t, schedule=kind)), theta)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("n,k", [(2, 1), (3, 2), (5, 1), (8, 3)])
def test_apply_vjp_matches_finite_differences(kind, transpose, n, k, rng):
    theta = angles(rng, n)
    x = rng.normal(size=(n, k))
    g = rng.normal(size=(n, k))
    d_theta, d_x = co.apply_vjp(theta, x, g, transpose=transpose, schedule=kind)
    _fd_check(d_theta, lambda t: np.sum(g * co.apply(t, x, transpose=transpose, schedule=kind)), theta)
    u = co.matrix(theta, schedule=kind)
    np.testing.assert_allclose(d_x, (u if transpose else u.T) @ g, atol=1e-13)
    # d_x against finite differences too (the map is linear in x)
    _fd_check(d_x, lambda xx: np.sum(g * co.apply(theta, xx, transpose=transpose, schedule=kind)), x)


@pytest.mark.parametrize("kind", KINDS)
def test_apply_vjp_with_output_and_vector(kind, rng):
    n = 7
    theta = angles(rng, n, (2,))
    x = rng.normal(size=(n,))
    y = co.apply(theta, x, schedule=kind)
    g = rng.normal(size=y.shape)
    d1 = co.apply_vjp(theta, x, g, schedule=kind)
    d2 = co.apply_vjp(theta, x, g, schedule=kind, output=y)
    assert d1[0].shape == theta.shape and d1[1].shape == x.shape
    np.testing.assert_allclose(d1[0], d2[0], atol=1e-13)
    np.testing.assert_allclose(d1[1], d2[1], atol=1e-13)
    # broadcast x: its cotangent is summed over the theta batch
    u = co.matrix(theta, schedule=kind)
    np.testing.assert_allclose(d1[1], sum(u[b].T @ g[b] for b in range(2)), atol=1e-13)


@pytest.mark.parametrize("kind", KINDS)
def test_matrix_vjp_agrees_with_apply_vjp_on_identity(kind, rng):
    n = 11
    theta = angles(rng, n, (3,))
    g = rng.normal(size=(3, n, n))
    d1 = co.matrix_vjp(theta, g, schedule=kind)
    d2, _ = co.apply_vjp(theta, np.eye(n), g, schedule=kind)
    np.testing.assert_allclose(d1, d2, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [2, 3, 6])
def test_jvps_match_finite_differences(kind, n, rng):
    theta = angles(rng, n)
    t = rng.normal(size=theta.shape)
    x = rng.normal(size=(n, 2))
    xt = rng.normal(size=x.shape)
    h = 1e-6
    du = co.matrix_jvp(theta, t, schedule=kind)
    fd = (co.matrix(theta + h * t, schedule=kind) - co.matrix(theta - h * t, schedule=kind)) / (2 * h)
    np.testing.assert_allclose(du, fd, rtol=1e-6, atol=1e-8)
    for transpose in (False, True):
        dy = co.apply_jvp(theta, x, t, xt, transpose=transpose, schedule=kind)
        f = lambda e: co.apply(theta + e * t, x + e * xt, transpose=transpose, schedule=kind)
        np.testing.assert_allclose(dy, (f(h) - f(-h)) / (2 * h), rtol=1e-6, atol=1e-8)


@given(
    st.integers(2, 10), st.integers(1, 4), st.sampled_from(KINDS), st.booleans(),
    hnp.array_shapes(min_dims=0, max_dims=1, max_side=3), st.integers(0, 2**32 - 1),
)
def test_vjp_jvp_dot_products(n, k, kind, transpose, batch, seed):
    """<vjp(G), (t, xt)> == <G, jvp(t, xt)> to 1e-12, for every pair of VJP and JVP."""
    rng = np.random.default_rng(seed)
    theta = angles(rng, n, batch)
    t = rng.normal(size=theta.shape)
    g = rng.normal(size=batch + (n, n))
    lhs = np.sum(co.matrix_vjp(theta, g, schedule=kind) * t)
    rhs = np.sum(g * co.matrix_jvp(theta, t, schedule=kind))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs)) * n
    x = rng.normal(size=(n, k))
    xt = rng.normal(size=x.shape)
    gy = rng.normal(size=batch + (n, k))
    d_theta, d_x = co.apply_vjp(theta, x, gy, transpose=transpose, schedule=kind)
    lhs = np.sum(d_theta * t) + np.sum(d_x * xt)
    rhs = np.sum(gy * co.apply_jvp(theta, x, t, xt, transpose=transpose, schedule=kind))
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs)) * n


@pytest.mark.parametrize("kind", KINDS)
def test_float32_derivatives_track_float64(kind, rng):
    n = 16
    theta = angles(rng, n)
    g = rng.normal(size=(n, n))
    d64 = co.matrix_vjp(theta, g, schedule=kind)
    d32 = co.matrix_vjp(theta.astype(np.float32), g.astype(np.float32), schedule=kind)
    assert d32.dtype == np.float32
    np.testing.assert_allclose(d32, d64, rtol=0, atol=1e-4 * np.abs(d64).max())


def test_undo_drift_is_small(rng):
    """Recovering round inputs by undoing rotations drifts by O(R eps): d_x stays accurate at n = 256."""
    n = 256
    theta = angles(rng, n)
    x = rng.normal(size=(n, 4))
    g = rng.normal(size=(n, 4))
    d_theta, d_x = co.apply_vjp(theta, x, g)
    d_ref, _ = co.apply_vjp(theta, np.eye(n), g @ x.T)  # same gradient, different sweep
    assert np.abs(d_theta - d_ref).max() <= 1e-11 * np.abs(d_ref).max() * n
    np.testing.assert_allclose(d_x, co.matrix(theta).T @ g, atol=1e-12 * n)
