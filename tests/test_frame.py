"""Stiefel frames and reachability: the parametrizations cover SO(n) and St(n, m)."""

import numpy as np
import pytest
from scipy.stats import special_ortho_group

import cupyortho as co
from oracle import central_gradient, multistart_least_squares

KINDS = ["circle", "team"]


def angles(rng, n, m=None, batch=()):
    return rng.uniform(-np.pi, np.pi, size=batch + (co.num_angles(n, m),))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,m", [(2, 1), (3, 1), (3, 2), (5, 3), (8, 1), (8, 7), (9, 4), (17, 5), (33, 2)])
def test_frame_is_first_columns_of_restricted_matrix(kind, n, m, rng):
    theta = angles(rng, n, m, (2,))
    q = co.frame(theta, n, m, schedule=kind)
    assert q.shape == (2, n, m)
    np.testing.assert_allclose(np.swapaxes(q, -1, -2) @ q, np.broadcast_to(np.eye(m), (2, m, m)), atol=1e-13)
    # same as the full matrix with the dropped angles set to zero
    full = np.zeros((2, co.num_angles(n)))
    full[:, : theta.shape[-1]] = theta
    np.testing.assert_allclose(q, co.matrix(full, schedule=kind)[..., :m], atol=1e-13)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,m", [(3, 1), (4, 2), (6, 3)])
def test_frame_derivatives(kind, n, m, rng):
    theta = angles(rng, n, m)
    g = rng.normal(size=(n, m))
    d = co.frame_vjp(theta, g, n, m, schedule=kind)
    fd = central_gradient(lambda t: np.sum(g * co.frame(t, n, m, schedule=kind)), theta)
    np.testing.assert_allclose(d, fd, rtol=1e-6, atol=1e-8)
    t = rng.normal(size=theta.shape)
    dq = co.frame_jvp(theta, t, n, m, schedule=kind)
    assert abs(np.sum(dq * g) - np.sum(d * t)) < 1e-12
    h = 1e-6
    fdq = (co.frame(theta + h * t, n, m, schedule=kind) - co.frame(theta - h * t, n, m, schedule=kind)) / (2 * h)
    np.testing.assert_allclose(dq, fdq, rtol=1e-6, atol=1e-8)


def _frame_fit(kind, n, m, target, rng):
    a = co.num_angles(n, m)
    eye = np.eye(a)

    def residual(t):
        return (co.frame(t, n, m, schedule=kind) - target).ravel()

    def jac(t):  # exact Jacobian, one JVP per angle, batched
        return co.frame_jvp(np.broadcast_to(t, (a, a)), eye, n, m, schedule=kind).reshape(a, -1).T

    return multistart_least_squares(residual, jac, a, rng)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", range(2, 9))
def test_haar_targets_in_so_n_are_reachable(kind, n, rng):
    target = special_ortho_group.rvs(n, random_state=rng) if n > 2 else _rot2(rng)
    assert _frame_fit(kind, n, n, target, rng) < 1e-10


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,m", [(n, m) for n in range(3, 9) for m in range(1, n - 1)])
def test_stiefel_targets_are_reachable_by_first_columns(kind, n, m, rng):
    target = special_ortho_group.rvs(n, random_state=rng)[:, :m]
    assert _frame_fit(kind, n, m, target, rng) < 1e-10


def test_first_rows_do_not_cover_stiefel():
    """The other candidate frame, the first m rows of U (as columns), misses targets for the team schedule."""
    rng = np.random.default_rng(5)
    n, m, kind = 5, 2, "team"
    s = co.get_schedule(kind, n, m)
    a = co.num_angles(n, m)
    worst = 0.0
    for _ in range(8):  # some targets are reachable, others are not
        target = special_ortho_group.rvs(n, random_state=rng)[:, :m]
        residual = lambda t: (co.apply(t, np.eye(n)[:, :m], transpose=True, schedule=s) - target).ravel()
        worst = max(worst, multistart_least_squares(residual, "2-point", a, rng, tries=10))
    assert worst > 1e-3


def _rot2(rng):
    a = rng.uniform(-np.pi, np.pi)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
