"""The inverse map: angles_from_matrix / angles_from_frame round trips, checks and solver pieces.

Targets are Haar-random (scipy.stats.special_ortho_group at fixed seeds); sizes are small because
the dense solver's cost grows quickly with n (bench/inverse_bench.py measures it).  Schedules are
always passed explicitly, and both are tested.
"""

import numpy as np
import pytest
import scipy.linalg
from scipy.stats import special_ortho_group

import cupyortho as co
from cupyortho import inverse as inv
from cupyortho.errors import NotOrthogonalError, ShapeError, SizeError
from cupyortho.inverse import InverseMapError, angles_from_frame, angles_from_matrix
from cupyortho.schedule import get_schedule

KINDS = ["circle", "team"]


def haar(n, seed):
    if n == 2:
        t = np.random.default_rng(seed).uniform(-np.pi, np.pi)
        return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return special_ortho_group.rvs(n, random_state=seed)


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 8])
def test_round_trip_haar(kind, n):
    for seed in range(2):
        U = haar(n, seed)
        theta = angles_from_matrix(U, schedule=kind)
        assert theta.shape == (n * (n - 1) // 2,) and theta.dtype == np.float64
        assert np.abs(co.matrix(theta, schedule=kind) - U).max() <= 1e-10
        assert np.all(np.abs(theta) <= np.pi + 1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_larger(kind):
    U = haar(12, 7)
    theta = angles_from_matrix(U, schedule=kind)
    assert np.abs(co.matrix(theta, schedule=kind) - U).max() <= 1e-10


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_of_a_parametrized_matrix(kind):
    """U = matrix(theta0) for uniform angles: some preimage (not necessarily theta0) is found."""
    n = 7
    theta0 = np.random.default_rng(3).uniform(-np.pi, np.pi, n * (n - 1) // 2)
    U = co.matrix(theta0, schedule=kind)
    theta = angles_from_matrix(U, schedule=kind)
    assert np.abs(co.matrix(theta, schedule=kind) - U).max() <= 1e-10


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,m", [(5, 1), (6, 2), (6, 3), (7, 3), (6, 5), (8, 4)])
def test_round_trip_frame(kind, n, m):
    Q = haar(n, 11)[:, :m]
    theta = angles_from_frame(Q, m, schedule=kind)
    assert theta.shape == (co.num_angles(n, m),)
    assert np.abs(co.frame(theta, n, m, schedule=kind) - Q).max() <= 1e-10


def test_frame_m_equals_n_is_the_matrix_inverse():
    U = haar(5, 2)
    a = angles_from_frame(U, 5, schedule="circle")
    b = angles_from_matrix(U, schedule="circle")
    np.testing.assert_array_equal(a, b)


def test_frame_accepts_either_determinant():
    """m < n has no determinant condition: the columns of a reflection are reachable."""
    U = haar(5, 4) @ np.diag([1, 1, 1, 1, -1.0])
    Q = U[:, :4]
    theta = angles_from_frame(Q, 4, schedule="team")
    assert np.abs(co.frame(theta, 5, 4, schedule="team") - Q).max() <= 1e-10


def test_identity_gives_zero_angles():
    for kind in KINDS:
        theta = angles_from_matrix(np.eye(6), schedule=kind)
        assert np.abs(theta).max() <= 1e-14


def test_schedule_object_and_explicit_team_size():
    s = co.team_schedule(6, team_size=2)
    U = haar(6, 5)
    theta = angles_from_matrix(U, schedule=s)
    assert np.abs(co.matrix(theta, schedule=s) - U).max() <= 1e-10


def test_batch():
    U = np.stack([haar(5, 0), haar(5, 1), np.eye(5)]).reshape(3, 1, 5, 5)
    theta = angles_from_matrix(U, schedule="circle")
    assert theta.shape == (3, 1, 10)
    assert np.abs(co.matrix(theta, schedule="circle") - U).max() <= 1e-10
    Q = U[..., :2]
    tf = angles_from_frame(Q, 2, schedule="team")
    assert tf.shape == (3, 1, co.num_angles(5, 2))
    assert np.abs(co.frame(tf, 5, 2, schedule="team") - Q).max() <= 1e-10


def test_float32_in_float32_out():
    U = haar(5, 3).astype(np.float32)
    theta = angles_from_matrix(U, schedule="circle")
    assert theta.dtype == np.float32
    # the solve is float64 against the projected matrix; only the final cast rounds
    assert np.abs(co.matrix(theta.astype(np.float64), schedule="circle") - U).max() <= 1e-6


def test_deterministic_and_inputs_unchanged():
    U = haar(6, 9)
    U_copy = U.copy()
    a = angles_from_matrix(U, schedule="team")
    b = angles_from_matrix(U, schedule="team")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(U, U_copy)
    Q = U[:, :3].copy()
    Q_copy = Q.copy()
    angles_from_frame(Q, 3, schedule="circle")
    np.testing.assert_array_equal(Q, Q_copy)


# --------------------------------------------------------------------------- input checks

def test_not_orthogonal_rejected_with_its_error():
    U = haar(5, 0)
    bad = U + 1e-3 * np.random.default_rng(0).standard_normal(U.shape)
    err = np.abs(bad.T @ bad - np.eye(5)).max()
    with pytest.raises(NotOrthogonalError, match=f"{err:.3g}"):
        angles_from_matrix(bad, schedule="circle")
    # within a looser tol it is accepted, projected to the nearest rotation, and inverted
    theta = angles_from_matrix(bad, schedule="circle", tol=1e-2)
    u, _, vt = np.linalg.svd(bad)
    assert np.abs(co.matrix(theta, schedule="circle") - u @ vt).max() <= 1e-10
    with pytest.raises(NotOrthogonalError, match="orthonormal columns"):
        angles_from_frame(2 * U[:, :2], 2, schedule="circle")


def test_det_minus_one_rejected_and_documented_fix_works():
    U = haar(5, 1) @ np.diag([1, 1, 1, 1, -1.0])
    assert np.linalg.det(U) < 0
    with pytest.raises(NotOrthogonalError, match=r"det = \+1.*diag\(1, \.\.\., 1, -1\)"):
        angles_from_matrix(U, schedule="circle")
    fixed = U @ np.diag([1, 1, 1, 1, -1.0])
    theta = angles_from_matrix(fixed, schedule="circle")
    assert np.abs(co.matrix(theta, schedule="circle") @ np.diag([1, 1, 1, 1, -1.0]) - U).max() <= 1e-10


def test_shape_errors():
    with pytest.raises(ShapeError):
        angles_from_matrix(np.eye(3)[:, :2])
    with pytest.raises(ShapeError):
        angles_from_matrix(np.ones(3))
    with pytest.raises(ShapeError):
        angles_from_frame(np.eye(4)[:, :2], 3)
    with pytest.raises(SizeError):
        angles_from_frame(np.eye(4)[:, :2], 5)


def test_failure_is_reported():
    with pytest.raises(InverseMapError, match="did not reach"):
        angles_from_matrix(haar(8, 0), schedule="circle", restarts=0, max_steps=1)


# --------------------------------------------------------------------------- solver pieces

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,m", [(7, 7), (8, 3), (6, 1)])
def test_jacobian_is_the_left_trivialised_derivative(kind, n, m):
    """Column p of J is rho(U^T dU/dtheta_p): check against central differences, and the
    matrix-free products against the dense J (J d and J^T w)."""
    sched = get_schedule(kind, n, None if m == n else m)
    prob = inv._Problem(sched, haar(n, 0)[:, :m])
    rng = np.random.default_rng(1)
    th = rng.uniform(-2, 2, sched.num_angles)
    J = prob.jacobian(th)
    assert J.shape == (sched.num_angles, sched.num_angles)
    U = prob.matrix(th)
    h = 1e-6
    for p in range(0, sched.num_angles, 3):
        e = np.zeros_like(th)
        e[p] = h
        dU = (prob.matrix(th + e) - prob.matrix(th - e)) / (2 * h)
        X = U.T @ dU
        np.testing.assert_allclose(prob.rho(X[:, :m]), J[:, p], atol=1e-8)
    d = rng.standard_normal(th.size)
    w = rng.standard_normal(th.size)
    np.testing.assert_allclose(prob.jvp_left(th, d), J @ d, atol=1e-12)
    np.testing.assert_allclose(prob.vjp_left(th, w), J.T @ w, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_sweep_is_monotone_and_round_optimal(kind):
    n = 8
    sched = get_schedule(kind, n)
    U = haar(n, 3)
    prob = inv._Problem(sched, U)
    th = np.zeros(sched.num_angles)
    fit = []
    for _ in range(5):
        prob.sweep(th)
        fit.append(np.trace(U.T @ prob.matrix(th)))
    assert all(b >= a - 1e-12 for a, b in zip(fit, fit[1:]))
    # after a sweep the last round is at its optimum: perturbing one of its angles lowers the fit
    last = slice(sched.round_offsets[-2], sched.round_offsets[-1])
    base = np.trace(U.T @ prob.matrix(th))
    for q in range(last.start, last.stop):
        for step in (1e-3, -1e-3):
            t2 = th.copy()
            t2[q] += step
            assert np.trace(U.T @ prob.matrix(t2)) <= base + 1e-12


def test_skew_log_handles_minus_one_eigenvalues():
    for X in [np.diag([-1.0, -1.0, 1.0]), np.diag([-1.0, -1.0, -1.0, -1.0]), haar(6, 2)]:
        L = inv._skew_log(X)
        np.testing.assert_allclose(L, -L.T, atol=1e-14)
        np.testing.assert_allclose(scipy.linalg.expm(L), X, atol=1e-12)


def test_matrix_free_solver_near_target():
    """The matrix-free LM (the large-n local phase) converges from zero for a target near I."""
    n = 10
    theta0 = 0.1 * np.random.default_rng(5).standard_normal(n * (n - 1) // 2)
    for kind in KINDS:
        U = co.matrix(theta0, schedule=kind)
        theta = angles_from_matrix(U, schedule=kind, method="matrix-free", restarts=0)
        assert np.abs(co.matrix(theta, schedule=kind) - U).max() <= 1e-10


def test_no_closed_form_n4_round_constraints():
    """The docstring's reason for a numerical solve: for n = 4 (circle), every V = B_1 B_0 satisfies
    det V[{0,2},{0,1}] = det V[{1,3},{0,1}] = 0, while a Haar matrix does not; these rank
    conditions on B_2^T U couple both angles of round 2."""
    sched = get_schedule("circle", 4)
    assert [tuple(zip(r.i, r.j)) for r in sched.rounds] == [((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))]
    rng = np.random.default_rng(0)
    th = sched.to_round_order(rng.uniform(-3, 3, 6))
    th[sched.round_offsets[2]:] = 0.0  # only rounds 0 and 1
    V = co.matrix(sched.from_round_order(th), schedule=sched)
    assert abs(np.linalg.det(V[np.ix_([0, 2], [0, 1])])) < 1e-14
    assert abs(np.linalg.det(V[np.ix_([1, 3], [0, 1])])) < 1e-14
    U = haar(4, 0)
    assert abs(np.linalg.det(U[np.ix_([0, 2], [0, 1])])) > 1e-3


def test_cupy_round_trip():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("no GPU")
    except Exception as exc:  # no driver
        pytest.skip(f"no GPU ({type(exc).__name__})")
    U = haar(5, 0)
    theta = angles_from_matrix(cupy.asarray(U), schedule="circle")
    assert isinstance(theta, cupy.ndarray)
    assert np.abs(co.matrix(cupy.asnumpy(theta), schedule="circle") - U).max() <= 1e-10


# --------------------------------------------------------------------------- unitary

def _unitary_fn():
    """The NumPy-level unitary forward, wherever the package keeps its module."""
    import importlib

    for name in ("cupyortho._unitary", "cupyortho.unitary"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "unitary"):
            return mod.unitary
    raise ImportError("no cupyortho unitary module")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [2, 3, 4])
def test_unitary_round_trip(kind, n):
    from scipy.stats import unitary_group

    from cupyortho.inverse import params_from_unitary

    unitary = _unitary_fn()

    for seed in range(2):
        U = unitary_group.rvs(n, random_state=seed)
        p = params_from_unitary(U, schedule=kind)
        assert p.shape == (n * n,) and p.dtype == np.float64
        assert np.abs(unitary(p, schedule=kind) - U).max() <= 1e-10


def test_unitary_checks_batch_and_real_input():
    from scipy.stats import unitary_group

    from cupyortho.inverse import params_from_unitary

    unitary = _unitary_fn()

    U = unitary_group.rvs(3, random_state=5)
    with pytest.raises(NotOrthogonalError, match="unitary"):
        params_from_unitary(U * 1.01, schedule="circle")
    batch = np.stack([U, np.eye(3, dtype=complex)])
    p = params_from_unitary(batch.astype(np.complex64), schedule="circle")
    assert p.shape == (2, 9) and p.dtype == np.float32
    assert np.abs(unitary(p.astype(np.float64), schedule="circle") - batch).max() <= 1e-6
    # a real rotation with det -1 is unitary: reachable (the diagonal phases carry the sign)
    R = haar(3, 0) @ np.diag([1, 1, -1.0])
    p = params_from_unitary(R, schedule="team")
    assert np.abs(unitary(p, schedule="team") - R).max() <= 1e-10


# --------------------------------------------------------------------------- torch right_inverse

@pytest.mark.parametrize("kind", KINDS)
def test_torch_assign_checkpoint_and_continue(kind, tmp_path):
    torch = pytest.importorskip("torch")
    ct = pytest.importorskip("cupyortho.torch")
    from torch.nn.utils import parametrize

    n = 6

    def make(init=None):
        lin = torch.nn.Linear(n, n, bias=False).double()
        parametrize.register_parametrization(lin, "weight", ct.OrthogonalParametrization(n, schedule=kind, init=init))
        return lin

    lin = make(init="identity")
    # assigning an orthogonal matrix runs right_inverse = angles_from_matrix
    U = torch.as_tensor(haar(n, 3))
    lin.weight = U
    assert (lin.weight - U).abs().max().item() <= 1e-10
    # a few training steps, then a checkpoint
    x = torch.as_tensor(np.random.default_rng(0).standard_normal((8, n)))
    y = torch.as_tensor(np.random.default_rng(1).standard_normal((8, n)))
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        ((lin(x) - y) ** 2).sum().backward()
        opt.step()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": lin.state_dict(), "opt": opt.state_dict()}, path)
    # reload into a fresh module (registered at the identity: no inverse map needed for reload)
    lin2 = make(init="identity")
    opt2 = torch.optim.SGD(lin2.parameters(), lr=0.1)
    ck = torch.load(path)
    lin2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["opt"])
    assert torch.equal(lin2.weight, lin.weight)
    w = lin.weight.detach()
    assert (w.T @ w - torch.eye(n, dtype=w.dtype)).abs().max().item() <= 1e-12
    # continue training both: identical trajectories
    for model, o in ((lin, opt), (lin2, opt2)):
        o.zero_grad()
        ((model(x) - y) ** 2).sum().backward()
        o.step()
    assert torch.equal(lin2.weight, lin.weight)
    # the reloaded weight can be reassigned (right_inverse again) and is reproduced
    lin2.weight = lin.weight.detach().clone()
    assert (lin2.weight - lin.weight).abs().max().item() <= 1e-10


def test_time_limit_raises():
    with pytest.raises(InverseMapError, match="time_limit"):
        angles_from_matrix(haar(14, 0), schedule="circle", time_limit=0.01)
