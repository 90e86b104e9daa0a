"""Initializations: identity, small random, Haar.

Statistic: the mean inverse participation ratio of the columns, ``mean_j sum_i U_ij^4``.  Haar columns
are uniform on the sphere (IPR near 3/(n+2)); matrices from naive uniform angles have more localised
columns.  The trace barely separates the two (shown below), the IPR does.  Two-sample KS tests
against scipy.stats.special_ortho_group at fixed seeds.
"""

import numpy as np
import pytest
from scipy.stats import ks_2samp, special_ortho_group

import cupyortho as co
from cupyortho.init import (
    haar_angles,
    haar_frame_angles,
    haar_matrix,
    identity_angles,
    small_random_angles,
)


def ipr(U):
    """Mean over columns of sum_i U_ij^4, one value per matrix of the batch."""
    return (U**4).sum(axis=-2).mean(axis=-1)


def trace(U):
    return np.trace(U, axis1=-2, axis2=-1)


def schedules(n):
    return [co.circle_schedule(n), co.team_schedule(n, team_size=2)]


@pytest.fixture(scope="module")
def ref8():
    return special_ortho_group.rvs(8, size=2000, random_state=1)


def test_identity_angles():
    for s in schedules(7):
        th = identity_angles(7, shape=(2,))
        assert th.shape == (2, 21) and not th.any()
        np.testing.assert_array_equal(co.matrix(th, schedule=s), np.broadcast_to(np.eye(7), (2, 7, 7)))
        thf = identity_angles(7, 3)
        np.testing.assert_array_equal(co.frame(thf, 7, 3, schedule=s.kind), np.eye(7, 3))


def test_small_random_angles():
    a = small_random_angles(9, scale=1e-3, rng=4, shape=(3,))
    b = small_random_angles(9, scale=1e-3, rng=4, shape=(3,))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 36)
    assert 0.8e-3 < a.std() < 1.2e-3
    for s in schedules(9):
        U = co.matrix(a, schedule=s)
        # U = I + sum theta_p K_p + O(scale^2): the first-order term has entries theta_p
        assert np.abs(U - np.eye(9)).max() <= 6e-3
    assert small_random_angles(9, 2, rng=0).shape == (co.num_angles(9, 2),)
    assert small_random_angles(5, rng=0, dtype=np.float32).dtype == np.float32


def test_haar_matrix_is_in_so_n_and_seeded():
    U = haar_matrix(6, shape=50, rng=0)
    np.testing.assert_allclose(U @ np.swapaxes(U, -1, -2), np.broadcast_to(np.eye(6), U.shape), atol=1e-13)
    np.testing.assert_allclose(np.linalg.det(U), 1.0, atol=1e-12)
    np.testing.assert_array_equal(U, haar_matrix(6, shape=50, rng=0))


def test_statistic_separates_haar_from_uniform_angles(ref8):
    """The IPR statistic is powerful where the trace is not: uniform angles are rejected, our Haar
    sampler and a second scipy sample are not (fixed seeds)."""
    N = 300
    other = special_ortho_group.rvs(8, size=N, random_state=2)
    ours = haar_matrix(8, shape=N, rng=3)
    assert ks_2samp(ipr(other), ipr(ref8)).pvalue > 0.01
    assert ks_2samp(ipr(ours), ipr(ref8)).pvalue > 0.01
    uniform = np.random.default_rng(0).uniform(-np.pi, np.pi, (N, 28))
    for s in schedules(8):
        U = co.matrix(uniform, schedule=s)
        assert ks_2samp(ipr(U), ipr(ref8)).pvalue < 1e-4, s
    # the trace barely sees the difference (the reason for the IPR)
    assert ks_2samp(trace(co.matrix(uniform, schedule="circle")), trace(ref8)).pvalue > 0.01


def test_haar_angles_reproduce_the_haar_sample():
    """haar_angles inverts haar_matrix exactly (same rng), so its matrices are Haar-distributed."""
    for s in schedules(6):
        th = haar_angles(6, schedule=s, rng=11, shape=(3,))
        assert th.shape == (3, 15)
        np.testing.assert_allclose(co.matrix(th, schedule=s), haar_matrix(6, rng=11, shape=(3,)), atol=1e-10)


@pytest.mark.parametrize("which", [0, 1])
def test_haar_angles_ks(which):
    """KS against special_ortho_group on matrices of haar_angles themselves (n = 5, small N: each
    sample is one inverse-map solve; the distributional identity is also covered exactly by
    test_haar_angles_reproduce_the_haar_sample)."""
    n, N = 5, 40
    s = schedules(n)[which]
    ref = special_ortho_group.rvs(n, size=2000, random_state=1)
    th = haar_angles(n, schedule=s, rng=100 + which, shape=N)
    U = co.matrix(th, schedule=s)
    assert ks_2samp(ipr(U), ipr(ref)).pvalue > 0.01
    # each column uniform on the sphere: U[0, 0]^2 ~ Beta(1/2, (n-1)/2)
    assert ks_2samp(U[:, 0, 0] ** 2, ref[:, 0, 0] ** 2).pvalue > 0.01


def test_haar_frame_angles():
    for s in ("circle", "team"):
        th = haar_frame_angles(6, 2, schedule=s, rng=7, shape=(2,))
        assert th.shape == (2, co.num_angles(6, 2))
        np.testing.assert_allclose(co.frame(th, 6, 2, schedule=s), haar_matrix(6, rng=7, shape=(2,))[..., :2],
                                   atol=1e-10)


def test_haar_unitary():
    from scipy.stats import unitary_group

    from cupyortho.init import haar_unitary_matrix, haar_unitary_params, identity_unitary_params
    from cupyortho._unitary import unitary

    n, N = 4, 400
    ref = unitary_group.rvs(n, size=2000, random_state=1)
    H = haar_unitary_matrix(n, shape=N, rng=0)
    np.testing.assert_allclose(np.conj(np.swapaxes(H, -1, -2)) @ H, np.broadcast_to(np.eye(n), H.shape), atol=1e-13)
    uipr = lambda U: (np.abs(U) ** 4).sum(axis=-2).mean(axis=-1)  # noqa: E731
    assert ks_2samp(uipr(H), uipr(ref)).pvalue > 0.01
    # naive uniform parameters are rejected by the same statistic
    naive = np.random.default_rng(0).uniform(-np.pi, np.pi, (N, n * n))
    assert ks_2samp(uipr(unitary(naive, schedule="circle")), uipr(ref)).pvalue < 1e-4
    # and the parameters reproduce the Haar draw
    p = haar_unitary_params(n, schedule="team", rng=3, shape=(2,))
    np.testing.assert_allclose(unitary(p, schedule="team"), haar_unitary_matrix(n, rng=3, shape=(2,)), atol=1e-10)
    assert not identity_unitary_params(3, special=True).any() and identity_unitary_params(3).shape == (9,)
    np.testing.assert_array_equal(unitary(identity_unitary_params(3), schedule="circle"), np.eye(3))
