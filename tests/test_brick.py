"""The brick (Clements) schedule, its exact inverse and Haar angles, user rounds and truncations.

Every matrix is checked against a dense product of explicit Givens matrices written here from the
schedule's *definition* (not read from the Schedule object): brick round ``l`` pairs ``(i, i+1)`` for
``i = l mod 2, l mod 2 + 2, ...``; the paper's reference code and the D-Wave layer from their stated
conventions (``docs/conventions.md``, "Loading other libraries' angles").
"""

import pickle
from collections import deque

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy import stats
from scipy.stats import special_ortho_group, unitary_group

import cupyortho as co
from cupyortho.backends import numpy_backend as nb
from cupyortho.backends import numpy_unitary as nu
from cupyortho.errors import AngleCountError, NotOrthogonalError, ScheduleError, SizeError
from oracle import central_gradient, givens


# ----------------------------------------------------------------------------- dense oracles

def brick_slots(n):
    """(round, i) of every brick rotation, round-major, from the definition."""
    return [(l, i) for l in range(n) for i in range(l % 2, n - 1, 2)]


def brick_dense(theta, n, slots=None):
    u = np.eye(n)
    for (l, i), t in zip(brick_slots(n) if slots is None else slots, theta):
        u = givens(n, i, i + 1, t) @ u
    return u


def cgivens(n, i, j, t, p):
    g = np.eye(n, dtype=complex)
    g[i, i] = g[j, j] = np.cos(t)
    g[i, j] = -np.sin(t) * np.exp(-1j * p)
    g[j, i] = np.sin(t) * np.exp(1j * p)
    return g


def brick_unitary_dense(params, n):
    a = n * (n - 1) // 2
    u = np.eye(n, dtype=complex)
    for (l, i), t, p in zip(brick_slots(n), params[:a], params[a:2 * a]):
        u = cgivens(n, i, i + 1, t, p) @ u
    return np.diag(np.exp(1j * params[2 * a:])) @ u


# ----------------------------------------------------------------------------- the schedule

@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 9])
def test_brick_layout(n):
    s = co.brick_schedule(n)
    assert s is co.get_schedule("brick", n) and s.kind == "brick" and s.layout == "round"
    assert s.n == n and s.num_angles == n * (n - 1) // 2 == co.num_angles(n)
    assert s.num_rounds == (1 if n == 2 else n)
    got = [(r, int(i)) for r, rd in enumerate(s.rounds) for i in rd.i]
    assert got == brick_slots(n)
    assert np.array_equal(s.pair_j, s.pair_i + 1) and np.array_equal(s.angle_index, np.arange(s.num_angles))
    for rd in s.rounds:  # disjoint pairs
        assert np.unique(np.concatenate([rd.i, rd.j])).size == 2 * rd.i.size


@pytest.mark.parametrize("n", [2, 3, 4, 7, 8])
def test_brick_matrix_apply_and_derivatives(n, rng):
    theta = rng.uniform(-np.pi, np.pi, co.num_angles(n))
    U = co.matrix(theta, schedule="brick")
    np.testing.assert_allclose(U, brick_dense(theta, n), atol=1e-14)
    s = co.brick_schedule(n)
    np.testing.assert_allclose(co.matrix(theta, schedule=s), U, atol=0)  # n inferred from S
    x = rng.normal(size=(n, 3))
    np.testing.assert_allclose(co.apply(theta, x, schedule="brick"), U @ x, atol=1e-13)
    np.testing.assert_allclose(co.apply(theta, x, schedule=s, transpose=True), U.T @ x, atol=1e-13)
    g = rng.normal(size=(n, n))
    d = co.matrix_vjp(theta, g, schedule=s)
    np.testing.assert_allclose(d, central_gradient(lambda t: np.sum(g * brick_dense(t, n)), theta), atol=1e-8)
    t = rng.normal(size=theta.shape)
    assert abs(np.sum(co.matrix_jvp(theta, t, schedule=s) * g) - np.sum(d * t)) < 1e-12
    gy = rng.normal(size=(n, 3))
    dth, dx = co.apply_vjp(theta, x, gy, schedule=s)
    assert abs(np.sum(co.apply_jvp(theta, x, t, None, schedule=s) * gy) - np.sum(dth * t)) < 1e-12
    np.testing.assert_allclose(dx, U.T @ gy, atol=1e-13)


@pytest.mark.parametrize("n", [2, 3, 6])
def test_brick_unitary(n, rng):
    p = rng.uniform(-np.pi, np.pi, n * n)
    np.testing.assert_allclose(co.unitary(p, schedule="brick"), brick_unitary_dense(p, n), atol=1e-14)
    g = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    d = co.unitary_vjp(p, g, schedule="brick")
    fd = central_gradient(lambda q: np.real(np.sum(np.conj(g) * brick_unitary_dense(q, n))), p)
    np.testing.assert_allclose(d, fd, atol=1e-8)


# ----------------------------------------------------------------------------- exact inverse

def _roundtrip_error(n, seed):
    U = special_ortho_group.rvs(n, random_state=seed)
    th = co.angles_from_matrix(U, schedule="brick")
    assert th.shape == (co.num_angles(n),) and np.all(np.abs(th) <= np.pi)
    return float(np.abs(nb.rounds_matrix(th, co.brick_schedule(n)) - U).max())


@pytest.mark.parametrize("n", list(range(2, 13)) + [16, 31, 64])
def test_brick_inverse_is_exact(n):
    for seed in range(6 if n <= 12 else 1):
        assert _roundtrip_error(n, 1000 * n + seed) <= 1e-12


def test_brick_inverse_at_1024():
    U = co.haar_matrix(1024, rng=7)
    th = co.angles_from_matrix(U, schedule="brick")
    # the compiled matrix (checked against the round-by-round reference by the backend tests): 10x faster
    assert float(np.abs(co.matrix(th, schedule="brick") - U).max()) <= 1e-10


def test_brick_inverse_batched_float32_and_sign_patterns(rng):
    # diagonal sign patterns (every det +1 pattern for n = 4) exercise the final absorption of D
    for signs in [(1, 1, 1, 1), (-1, -1, 1, 1), (1, -1, -1, 1), (1, 1, -1, -1), (-1, 1, -1, 1),
                  (-1, 1, 1, -1), (1, -1, 1, -1), (-1, -1, -1, -1)]:
        U = np.diag(np.asarray(signs, dtype=float))
        th = co.angles_from_matrix(U, schedule="brick")
        np.testing.assert_allclose(co.matrix(th, schedule="brick"), U, atol=1e-15)
    U = co.haar_matrix(5, shape=(2, 3), rng=rng)
    th = co.angles_from_matrix(U, schedule="brick")
    assert th.shape == (2, 3, 10)
    np.testing.assert_allclose(co.matrix(th, schedule="brick"), U, atol=1e-13)
    th32 = co.angles_from_matrix(U.astype(np.float32), schedule="brick")
    assert th32.dtype == np.float32
    np.testing.assert_allclose(co.matrix(th32.astype(float), schedule="brick"), U, atol=1e-5)


def test_brick_inverse_refuses_reflections():
    U = np.diag([1.0, 1.0, -1.0])
    with pytest.raises(NotOrthogonalError, match="det"):
        co.angles_from_matrix(U, schedule="brick")


@pytest.mark.parametrize("n", [2, 3, 5, 8, 33])
def test_brick_unitary_inverse_is_exact(n):
    U = unitary_group.rvs(n, random_state=n)
    p = co.params_from_unitary(U, schedule="brick")
    assert p.shape == (n * n,)
    assert np.abs(co.unitary(p, schedule="brick") - U).max() <= 1e-12


def test_brick_unitary_inverse_at_256():
    U = co.haar_unitary_matrix(256, rng=3)
    assert np.abs(co.unitary(co.params_from_unitary(U, schedule="brick"), schedule="brick") - U).max() <= 1e-11


# ----------------------------------------------------------------------------- Haar angles

def _ks(a, b):
    return stats.ks_2samp(a, b).pvalue


def _law_checks(ours, ref, uniform):
    """Per slot, two-sample KS of |angle|: haar samples agree with the reference on every slot
    (Bonferroni over slots), and uniform angles are rejected on some slot (the statistic separates)."""
    A = ours.shape[-1]
    agree = min(_ks(np.abs(ours[:, q]), np.abs(ref[:, q])) for q in range(A))
    reject = min(_ks(np.abs(uniform[:, q]), np.abs(ref[:, q])) for q in range(A))
    assert agree > 1e-3 / A
    assert reject < 1e-8


def test_brick_haar_angles_against_scipy():
    """The laws of the brick angles: haar_angles against the angles of scipy's special_ortho_group
    samples, and the same statistic rejecting uniform angles."""
    n, count = 6, 1500
    ours = co.haar_angles(n, schedule="brick", shape=count, rng=1)
    ref = co.angles_from_matrix(special_ortho_group.rvs(n, size=count, random_state=2), schedule="brick")
    _law_checks(ours, ref, np.random.default_rng(3).uniform(-np.pi, np.pi, ours.shape))
    u = co.matrix(ours, schedule="brick")  # and the matrices: |U[0, 0]|^2 against scipy's
    assert _ks(u[:, 0, 0] ** 2, special_ortho_group.rvs(n, size=count, random_state=4)[:, 0, 0] ** 2) > 1e-3


def test_brick_haar_unitary_params_against_scipy():
    n, count = 4, 1200
    ours = co.haar_unitary_params(n, schedule="brick", shape=count, rng=5)
    ref = co.params_from_unitary(unitary_group.rvs(n, size=count, random_state=6), schedule="brick")
    a = co.num_angles(n)  # the rotation angles theta (phases are uniform for Haar)
    _law_checks(ours[:, :a], ref[:, :a], np.random.default_rng(7).uniform(-np.pi, np.pi, (count, a)))


def _matrix_statistics(U):
    """Statistics of Haar matrices: every |U_ij|^2, Re tr U, |tr U|^2, Re tr U^2, |a 2x2 minor|^2 (n > 2:
    at n = 2 it is |det U|^2 = 1)."""
    n = U.shape[-1]
    tr, tr2 = np.trace(U, axis1=-2, axis2=-1), np.trace(U @ U, axis1=-2, axis2=-1)
    minor = U[:, 0, 0] * U[:, -1, -1] - U[:, 0, -1] * U[:, -1, 0]
    return [np.abs(U[:, i, j]) ** 2 for i in range(n) for j in range(n)] + [
        tr.real, np.abs(tr) ** 2, tr2.real] + ([np.abs(minor) ** 2] if n > 2 else [])


def _same_law(ours, ref, uniform):
    """Two-sample KS of every statistic: ours agrees with the reference (Bonferroni), uniform angles do
    not (``uniform=None`` where they are Haar: SO(2))."""
    agree = [_ks(a, b) for a, b in zip(_matrix_statistics(ours), _matrix_statistics(ref))]
    assert min(agree) > 1e-3 / len(agree)
    if uniform is not None:
        assert min(_ks(a, b) for a, b in zip(_matrix_statistics(uniform), _matrix_statistics(ref))) < 1e-8


@pytest.mark.parametrize("n", [2, 3, 6])
def test_brick_per_angle_haar_laws(n):
    """haar_angles / haar_unitary_params(per_angle=True): independent per-angle draws whose matrices
    follow scipy's special_ortho_group / unitary_group on every statistic of _matrix_statistics, which
    rejects uniform angles; and per slot the same laws as the exact inverse of Haar matrices."""
    count, a = 1500, co.num_angles(n)
    ours = co.haar_angles(n, schedule="brick", per_angle=True, shape=count, rng=21)
    ref = special_ortho_group.rvs(n, size=count, random_state=22).reshape(count, n, n)
    uniform = np.random.default_rng(23).uniform(-np.pi, np.pi, (count, a))
    _same_law(co.matrix(ours, schedule="brick"), ref, co.matrix(uniform, schedule="brick") if n > 2 else None)
    inverted = co.haar_angles(n, schedule="brick", shape=count, rng=24)
    assert min(_ks(ours[:, q], inverted[:, q]) for q in range(a)) > 1e-3 / a
    ours = co.haar_unitary_params(n, schedule="brick", per_angle=True, shape=count, rng=25)
    ref = unitary_group.rvs(n, size=count, random_state=26).reshape(count, n, n)
    uniform = np.random.default_rng(27).uniform(-np.pi, np.pi, (count, n * n))
    _same_law(co.unitary(ours, schedule="brick"), ref, co.unitary(uniform, schedule="brick"))
    inverted = co.haar_unitary_params(n, schedule="brick", shape=count, rng=28)
    assert min(_ks(ours[:, q], inverted[:, q]) for q in range(n * n)) > 1e-3 / (n * n)
    su = co.haar_unitary_params(n, special=True, schedule="brick", per_angle=True, shape=count, rng=29)
    U = co.unitary(su, special=True, schedule="brick")
    np.testing.assert_allclose(np.linalg.det(U), 1.0, atol=1e-12)
    ref = ref / np.exp(1j * np.angle(np.linalg.det(ref)) / n)[:, None, None]  # Haar on SU(n)
    _same_law(U, ref, co.unitary(uniform[:, :-1], special=True, schedule="brick"))


def test_per_angle_needs_brick():
    with pytest.raises(co.errors.SettingError, match="per_angle"):
        co.haar_angles(5, per_angle=True)
    with pytest.raises(co.errors.SettingError, match="per_angle"):
        co.haar_unitary_params(5, schedule=co.brick_schedule(5).truncate(2), per_angle=True)
    th = co.haar_angles(300, schedule="brick", per_angle=True, rng=0, dtype=np.float32)
    assert th.shape == (co.num_angles(300),) and th.dtype == np.float32


def test_haar_angles_at_large_n():
    th = co.haar_angles(200, schedule="brick", rng=0)
    U = co.haar_matrix(200, rng=0)
    assert np.abs(co.matrix(th, schedule="brick") - U).max() < 1e-12


# ----------------------------------------------------------------------------- Stiefel restriction

def band_slots(n, m):
    lo, hi = -2 * ((m - 1) // 2), 2 * (m // 2)
    return [(l, i) for (l, i) in brick_slots(n) if lo <= l - i <= hi]


@pytest.mark.parametrize("n,m", [(2, 1), (3, 1), (3, 2), (5, 2), (6, 3), (8, 1), (8, 4), (9, 5), (9, 8), (17, 6)])
def test_brick_frame_is_the_band(n, m, rng):
    s = co.get_schedule("brick", n, m)
    assert s.m == m and s.num_angles == co.num_angles(n, m)
    slots = band_slots(n, m)
    assert [(r, int(i)) for r, rd in enumerate(co.brick_schedule(n).rounds) for i in rd.i
            if (r, int(i)) in set(slots)] == slots
    theta = rng.uniform(-np.pi, np.pi, s.num_angles)
    q = co.frame(theta, n, m, schedule="brick")
    np.testing.assert_allclose(q, brick_dense(theta, n, slots)[:, :m], atol=1e-13)
    g = rng.normal(size=(n, m))
    d = co.frame_vjp(theta, g, n, m, schedule="brick")
    np.testing.assert_allclose(
        d, central_gradient(lambda t: np.sum(g * brick_dense(t, n, slots)[:, :m]), theta), atol=1e-8)


def test_brick_band_has_dim_stiefel_rotations():
    for n in range(2, 13):
        for m in range(1, n + 1):
            s = co.get_schedule("brick", n, m)
            assert s.num_angles == len(band_slots(n, m)) == co.num_angles(n, m), (n, m)
            assert [(int(i), int(j)) for i, j in zip(s.pair_i, s.pair_j)] == [(i, i + 1) for _, i in band_slots(n, m)]


def test_brick_frame_inverse_is_exact():
    """angles_from_frame inverts the band by nulling (every m for n = 2..20, a spread of m up to
    n = 64; m = n through angles_from_matrix): the frame of the angles equals the Haar frame, and the
    dense oracle of the band's definition at n <= 10.  This is also the band's coverage of St(n, m)."""
    worst = 0.0
    for n in list(range(2, 21)) + [31, 32, 47, 64]:
        U = co.haar_matrix(n, rng=n)
        U[:, 0] *= -1  # frames of either orientation: no determinant condition for m < n
        ms = range(1, n + 1) if n <= 20 else sorted({1, 2, 3, 4, n // 4, n // 2, n // 2 + 1, n - 3, n - 2, n - 1, n})
        for m in ms:
            Q = U[:, :m] if m < n else U @ np.diag([-1.0] + [1.0] * (n - 1))
            th = co.angles_from_frame(Q, m, schedule="brick")
            assert th.shape == (co.num_angles(n, m),)
            got = co.frame(th, n, m, schedule="brick")
            if n <= 10 and m < n:
                np.testing.assert_allclose(got, brick_dense(th, n, band_slots(n, m))[:, :m], atol=1e-13)
            worst = max(worst, float(np.abs(got - Q).max()))
    assert worst <= 1e-12


def test_brick_frame_inverse_at_1024_and_batched(rng):
    for n, m in ((1024, 1), (1024, 16), (256, 128)):  # (1024, 512) takes ~1 s: measured in the note
        U = co.haar_matrix(n, rng=3)
        th = co.angles_from_frame(U[:, :m], m, schedule="brick")
        assert np.abs(co.frame(th, n, m, schedule="brick") - U[:, :m]).max() <= 1e-12
    Q = co.haar_matrix(7, shape=(2, 3), rng=rng)[..., :3].astype(np.float32)
    th = co.angles_from_frame(Q, 3, schedule="brick")
    assert th.shape == (2, 3, co.num_angles(7, 3)) and th.dtype == np.float32
    assert np.abs(co.frame(th.astype(np.float64), 7, 3, schedule="brick") - Q).max() < 1e-5


def test_brick_frame_plan_keeps_its_zeros():
    """The claim behind the frame nulling (cupyortho/_nulling.py), checked on sparsity patterns:
    built backwards from I[:, :m] (strict lower part zero, the rest nonzero), every step of the plan
    creates exactly the entry it nulls, so no step undoes an earlier zero, for n <= 16 and every m."""
    from cupyortho import _nulling

    for n in range(2, 17):
        for m in range(1, n):
            (kind, qs, ps, targets), sched = _nulling._frame_plan(n, m)
            assert sorted(qs.tolist()) == list(range(sched.num_angles))
            P = np.triu(np.ones((n, m), bool))
            for k, p, t in zip(kind[::-1], ps[::-1], targets[::-1]):
                if k == 0:
                    new = P[:, p] | P[:, p + 1]
                    made = {(int(r), int(p)) for r in np.flatnonzero(new & ~P[:, p])}
                    made |= {(int(r), int(p) + 1) for r in np.flatnonzero(new & ~P[:, p + 1])}
                    P[:, p] = P[:, p + 1] = new
                    assert made == {(int(t), int(p))}, (n, m)
                else:
                    new = P[p] | P[p + 1]
                    made = {(int(p), int(c)) for c in np.flatnonzero(new & ~P[p])}
                    made |= {(int(p) + 1, int(c)) for c in np.flatnonzero(new & ~P[p + 1])}
                    P[p] = P[p + 1] = new
                    assert made == {(int(p) + 1, int(t))}, (n, m)
            assert P.all()


def test_brick_haar_frame_angles_against_scipy():
    """haar_frame_angles(schedule="brick") is exact at every m: per-slot laws against the angles of
    scipy's Haar frames, the same statistic rejecting uniform angles, and the frames themselves."""
    n, m, count = 6, 2, 1500
    ours = co.haar_frame_angles(n, m, schedule="brick", shape=count, rng=11)
    ref = co.angles_from_frame(special_ortho_group.rvs(n, size=count, random_state=12)[:, :, :m], m,
                               schedule="brick")
    _law_checks(ours, ref, np.random.default_rng(13).uniform(-np.pi, np.pi, ours.shape))
    q = co.frame(ours, n, m, schedule="brick")
    ref_q = special_ortho_group.rvs(n, size=count, random_state=14)[:, :, :m]
    assert _ks(q[:, -1, 1] ** 2, ref_q[:, -1, 1] ** 2) > 1e-3


# ----------------------------------------------------------------------------- user rounds

def test_from_rounds_sign_rule_and_repeats(rng):
    rounds = [[(0, 1), (3, 2)], [(2, 1)], [(0, 1), (2, 3)], []]
    s = co.Schedule.from_rounds(4, rounds)
    assert s.kind == "rounds" and s.layout == "round" and s.num_angles == 5 and s.num_rounds == 3
    theta = rng.uniform(-np.pi, np.pi, 5)
    pairs = [p for rd in rounds for p in rd]
    u = np.eye(4)
    for (i, j), t in zip(pairs, theta):
        u = givens(4, i, j, t) @ u  # (i, j) as written
    np.testing.assert_allclose(co.matrix(theta, schedule=s), u, atol=1e-15)
    # sign rule: (j, i) is the rotation of (i, j) by -theta
    flipped = co.Schedule.from_rounds(4, [[(0, 1), (2, 3)], [(1, 2)], [(0, 1), (2, 3)]])
    t2 = theta.copy()
    t2[[1, 2]] *= -1
    np.testing.assert_allclose(co.matrix(t2, schedule=flipped), u, atol=1e-15)
    assert co.Schedule.from_rounds(4, rounds) is s and pickle.loads(pickle.dumps(s)) == s
    with pytest.raises(AngleCountError):
        co.matrix(np.zeros(6), schedule=s)


@pytest.mark.parametrize(
    "rounds, exc, text",
    [
        ([[(0, 1), (1, 2)]], ScheduleError, "coordinate 1 twice"),
        ([[(0, 4)]], SizeError, "index 4"),
        ([[(-1, 2)]], SizeError, "index -1"),
        ([[(2, 2)]], ScheduleError, "(2, 2)"),
        ([[(0, 1, 2)]], ScheduleError, "shape (1, 3)"),
        ([[(0.0, 1.0)]], ScheduleError, "integer"),
        ("01", ScheduleError, "sequence"),
        (5, ScheduleError, "sequence"),
    ],
)
def test_from_rounds_validation(rounds, exc, text):
    with pytest.raises(exc) as info:
        co.Schedule.from_rounds(4, rounds)
    assert text in str(info.value)


def paper_rounds(N):
    """The paper's reference code (Hamze 2021, microsoft/Givens-Orthogonal-Backprop, circle method):
    tournament step s pairs block b = 0..Nt/2-1 as i = 0 (b = 0) or b + s, j = Nt - 1 - b + s, both
    reduced by Nt - 1 when >= Nt (Nt = N rounded up to even), sorted, dropping j >= N; the steps run
    s = Nt-2 down to 0, the first acting first."""
    Nt = N + N % 2
    out = []
    for s in range(Nt - 2, -1, -1):
        pairs = []
        for b in range(Nt // 2):
            i = 0 if b == 0 else b + s
            j = Nt - 1 - b + s
            i, j = (i - (Nt - 1) if i >= Nt else i), (j - (Nt - 1) if j >= Nt else j)
            i, j = min(i, j), max(i, j)
            if j < N:
                pairs.append((i, j))
        out.append(pairs)
    return out


def paper_dense(thetas, N):
    """The reference code's forward as stated: for s = Nt-2..0, U <- G_s U, G rotating rows
    (U_i, U_j) -> (c U_i - s U_j, s U_i + c U_j) with theta at i*N - (i+2)(i+1)/2 + j."""
    u = np.eye(N)
    for rd in paper_rounds(N):
        for i, j in rd:
            u = givens(N, i, j, thetas[i * N - (i + 2) * (i + 1) // 2 + j]) @ u
    return u


def dwave_blocks(n):
    """The D-Wave layer's circle method: N = n rounded up to even, sequence 0..N-1; a block zips the
    first half with the reversed second half; then the sequence's tail rotates right by one; N - 1
    blocks, pairs with the dummy N - 1 (odd n) dropped, kept in the written (i, j) order."""
    N = n + n % 2
    seq = list(range(N))
    tail = deque(seq[1:])
    blocks = []
    for _ in range(N - 1):
        pairs = list(zip(seq[: N // 2], seq[N // 2:][::-1]))
        blocks.append([p for p in pairs if N - 1 not in p] if n % 2 else pairs)
        tail.rotate(1)
        seq[1:] = list(tail)
    return blocks


def dwave_dense(angles, n):
    """The D-Wave forward as stated: U = I; for block b, columns (U_i, U_j) <- (c U_i + s U_j,
    -s U_i + c U_j) with the angles of block b at b*(n//2) + k: U = R_0 R_1 ... (block 0 acts last)."""
    u = np.eye(n)
    for b, block in enumerate(dwave_blocks(n)):
        for k, (i, j) in enumerate(block):
            t = angles[b * (n // 2) + k]
            c, s = np.cos(t), np.sin(t)
            ui, uj = u[:, i].copy(), u[:, j].copy()
            u[:, i], u[:, j] = c * ui + s * uj, -s * ui + c * uj
    return u


@pytest.mark.parametrize("n", [4, 5, 8, 13, 32, 64])
def test_load_paper_reference_angles(n, rng):
    thetas = rng.uniform(-np.pi, np.pi, co.num_angles(n))
    s = co.Schedule.from_rounds(n, paper_rounds(n))  # the recipe of docs/conventions.md
    ours = thetas[co.pair_index(s.pair_i, s.pair_j, n)]
    assert np.abs(co.matrix(ours, schedule=s) - paper_dense(thetas, n)).max() <= 1e-15


@pytest.mark.parametrize("n", [4, 5, 8, 13, 32, 64])
def test_load_dwave_angles(n, rng):
    angles = rng.uniform(-np.pi, np.pi, co.num_angles(n))
    blocks = dwave_blocks(n)
    s = co.Schedule.from_rounds(n, blocks[::-1])  # the recipe of docs/conventions.md
    ours = angles.reshape(len(blocks), n // 2)[::-1].reshape(-1)
    assert np.abs(co.matrix(ours, schedule=s) - dwave_dense(angles, n)).max() <= 1e-15


# ----------------------------------------------------------------------------- truncations

@pytest.mark.parametrize("kind,n,k", [("circle", 8, 1), ("circle", 9, 3), ("team", 16, 5), ("brick", 7, 4),
                                      ("team", 12, 11)])
def test_truncate(kind, n, k, rng):
    base = co.get_schedule(kind, n)
    s = base.truncate(k)
    assert s.kind == "truncated" and s.base is base and s.depth == k and s.num_rounds == k
    assert s.num_angles == int(base.round_offsets[k]) <= k * (n // 2)
    if kind == "circle" and n % 2 == 0:
        assert s.num_angles == k * (n // 2)
    theta = rng.uniform(-np.pi, np.pi, s.num_angles)
    u = np.eye(n)
    for (i, j), t in zip(zip(base.pair_i[: s.num_angles], base.pair_j[: s.num_angles]), theta):
        u = givens(n, int(i), int(j), t) @ u
    np.testing.assert_allclose(co.matrix(theta, schedule=s), u, atol=1e-14)
    x = rng.normal(size=(2, n, 3))
    np.testing.assert_allclose(co.apply(theta, x, schedule=s, method="rounds"), u @ x, atol=1e-13)
    g = rng.normal(size=(n, n))
    np.testing.assert_allclose(co.matrix_vjp(theta, g, schedule=s),
                               central_gradient(lambda t: np.sum(g * co.matrix(t, schedule=s)), theta), atol=1e-8)
    with pytest.raises(AngleCountError, match=r"\[theta \(%d\), phi \(%d\), delta \(%d\)\]" % (
            s.num_angles, s.num_angles, n)):
        co.unitary(np.zeros(n * n), schedule=s) if s.num_angles < co.num_angles(n) else co.unitary(
            np.zeros(n * n + 1), schedule=s)
    with pytest.raises(SizeError, match="num_rounds"):
        base.truncate(base.num_rounds + 1)
    with pytest.raises(AngleCountError, match="angles"):
        co.matrix(np.zeros(s.num_angles + 1), schedule=s)


# ----------------------------------------------------------------------------- tokens

def test_tokens_name_every_schedule():
    many = [co.circle_schedule(7), co.team_schedule(12, 2), co.brick_schedule(6), co.get_schedule("brick", 6, 2),
            co.get_schedule("team", 100, 3), co.team_schedule(16, 4).truncate(3),
            co.Schedule.from_rounds(5, [[(4, 0)], [(1, 2), (3, 4)]]), co.brick_schedule(9).truncate(2).restrict(3)]
    for s in many:
        assert co.from_token(s.token) is s
        assert co.get_schedule(s.token, s.n) is s
    assert co.brick_schedule(6).token == "brick:6" and co.team_schedule(12, 2).token == "team:12:t=2"
    for bad in ["brick", "brick:x", "spiral:4", "team:8:q=2", "circle:8:t=2", "rounds:4:#0000"]:
        with pytest.raises(ScheduleError):
            co.from_token(bad)


_ELSEWHERE = """
import hashlib, json, sys
import cupyortho as co
user = co.Schedule.from_rounds(6, [[(5, 0), (1, 2)], [(2, 3)], [(0, 1)]])
made = [co.team_schedule(64, 8).truncate(5), co.brick_schedule(9).truncate(2).restrict(3),
        co.get_schedule("brick", 8, 3).truncate(2), user, user.truncate(2).restrict(4)]
tokens = [s.token for s in made]
co.schedule.MAX_TOKEN_CHARS = 40  # too small for user rounds: a digest token, valid only here
big = co.Schedule.from_rounds(7, [[(0, 6), (1, 5)], [(2, 4)], [(3, 6)]]).token
theirs = co.from_token(sys.argv[1])  # a token written by the parent (in a torch state_dict)
pairs = hashlib.sha1(theirs.pair_i.tobytes() + theirs.pair_j.tobytes()).hexdigest()
print(json.dumps([tokens, big, pairs, theirs.num_angles]))
"""


def test_tokens_resolve_in_another_process():
    """Tokens describe their schedule: written by one process, resolved by another (a token stored in
    a torch state_dict, a DDP message), both ways.  User rounds beyond MAX_TOKEN_CHARS get a digest
    whose error says what to do."""
    import base64
    import hashlib
    import json
    import os
    import subprocess
    import sys
    import zlib

    torch = pytest.importorskip("torch")
    import cupyortho.torch as ct

    mine = co.circle_schedule(16).truncate(2)
    token = ct.Orthogonal(16, schedule=mine).state_dict()["_extra_state"]["kind"]
    assert token == mine.token == "circle:16|trunc=2"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(co.__file__))] + sys.path))
    out = subprocess.run([sys.executable, "-c", _ELSEWHERE, token], capture_output=True, text=True, env=env,
                         timeout=240, check=True).stdout
    tokens, big, pairs, count = json.loads(out.strip().splitlines()[-1])
    assert count == mine.num_angles
    assert pairs == hashlib.sha1(mine.pair_i.tobytes() + mine.pair_j.tobytes()).hexdigest()
    user = co.Schedule.from_rounds(6, [[(5, 0), (1, 2)], [(2, 3)], [(0, 1)]])
    here = [co.team_schedule(64, 8).truncate(5), co.brick_schedule(9).truncate(2).restrict(3),
            co.get_schedule("brick", 8, 3).truncate(2), user, user.truncate(2).restrict(4)]
    assert tokens[0] == "team:64:t=8|trunc=5" and tokens[1] == "brick:9|trunc=2|m=3"
    for tok, s in zip(tokens, here):
        r = co.from_token(tok)
        assert r is s and r.token == tok
        np.testing.assert_array_equal(r.pair_i, s.pair_i)
        np.testing.assert_array_equal(r.pair_j, s.pair_j)
    assert big.startswith("rounds:7:#")
    with pytest.raises(ScheduleError, match="Pass the Schedule object itself"):
        co.from_token(big)
    wrong_counts = base64.urlsafe_b64encode(zlib.compress(np.array([2, 1, 1, 0, 1], "<u4").tobytes())).decode()
    for bad in ["rounds:6:z=!!", "rounds:6:z=AAAA", f"rounds:6:z={wrong_counts}", "brick:8|cut=2",
                "brick:8|trunc=x", "rounds:6:q=1"]:
        with pytest.raises(ScheduleError, match="token"):
            co.from_token(bad)


def test_truncated_theta_applies_through_tokens(rng):
    s = co.circle_schedule(10).truncate(4)
    theta = rng.uniform(-1, 1, s.num_angles)
    np.testing.assert_array_equal(co.matrix(theta, schedule=s.token), co.matrix(theta, schedule=s))


# ----------------------------------------------------------------------------- every backend

def _new_schedules():
    return [co.brick_schedule(9), co.brick_schedule(34), co.circle_schedule(33).truncate(5),
            co.team_schedule(40, 4).truncate(9), co.Schedule.from_rounds(6, [[(5, 0), (1, 2)], [(2, 3)], [(0, 1)]])]


def _close(a, b, scale=1.0):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    assert np.abs(a - b).max(initial=0.0) <= 1e-12 * scale * max(1.0, np.abs(b).max(initial=0.0))


def test_every_backend_runs_the_new_schedules(backend, rng):
    """brick, truncations and user rounds on every backend of tests/conftest.py (the CuPy kernels on
    the CPU harness included) against the NumPy reference, every internal path."""
    for s in _new_schedules():
        n = s.n
        theta = rng.uniform(-np.pi, np.pi, (2, s.num_angles))
        x, g = rng.normal(size=(2, n, 5)), rng.normal(size=(2, n, 5))
        t, gu = rng.normal(size=theta.shape), rng.normal(size=(2, n, n))
        checks = {
            "apply": lambda kw: [(backend.apply(theta, x, s, tr, **kw), nb.rounds_apply(theta, x, s, tr))
                                 for tr in (False, True)],
            "apply_vjp": lambda kw: list(zip(backend.apply_vjp(theta, x, g, s, True, **kw),
                                             nb.rounds_apply_vjp(theta, x, g, s, True))),
            "apply_jvp": lambda kw: [(backend.apply_jvp(theta, x, t, None, s, **kw),
                                      nb.rounds_apply_jvp(theta, x, t, None, s))],
            "matrix": lambda kw: [(backend.matrix(theta, s, **kw), nb.rounds_matrix(theta, s))],
            "matrix_vjp": lambda kw: [(backend.matrix_vjp(theta, gu, s, **kw), nb.rounds_matrix_vjp(theta, gu, s))],
        }
        ran = 0
        for op, check in checks.items():
            if not backend.supports(op, s):
                continue
            for kw in backend.variants(op, s):
                for a, b in check(kw):
                    _close(a, b, scale=n)
                ran += 1
        assert ran > 0 or backend.name == "blocked"  # the blocked path takes plain team schedules only
        if backend.name == "blocked":
            assert not any(backend.supports(op, s) for op in checks)


def _unitary_schedules():
    return [co.brick_schedule(5), co.brick_schedule(8), co.brick_schedule(8).truncate(3),
            co.circle_schedule(9).truncate(4), co.team_schedule(16, 4).truncate(6),
            co.Schedule.from_rounds(6, [[(5, 0), (1, 2)], [(2, 3)], [(0, 1)]])]


def test_every_backend_runs_unitary_brick(backend, rng):
    """U(n) on brick, truncations and user rounds, every backend against the NumPy reference (which
    test_truncated_unitary checks against a dense oracle)."""
    ran = 0
    for s in _unitary_schedules():
        n, P = s.n, co.num_unitary_params(s.n, schedule=s)
        if not backend.supports("unitary_apply_vjp", s):
            continue
        ran += 1
        p, t = rng.uniform(-np.pi, np.pi, P), rng.standard_normal(P)
        z = rng.standard_normal((n, 3)) + 1j * rng.standard_normal((n, 3))
        g = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
        _close(backend.unitary_apply(p, z, s), nu.unitary_apply(p, z, s))
        _close(backend.unitary_vjp(p, g, s), nu.unitary_vjp(p, g, s), scale=n)
        for a, b in zip(backend.unitary_apply_vjp(p, z, z, s, True), nu.unitary_apply_vjp(p, z, z, s, True)):
            _close(a, b, scale=n)
        _close(backend.unitary_apply_jvp(p, z, t, z, s), nu.unitary_apply_jvp(p, z, t, z, s), scale=n)
        _close(backend.unitary(p, s, np.complex128), nu.unitary(p, s, np.complex128))
        _close(backend.unitary_jvp(p, t, s, np.complex128), nu.unitary_jvp(p, t, s, np.complex128), scale=n)
    assert ran == len(_unitary_schedules()) or backend.name == "blocked"


def _unitary_dense(p, s):
    """U = D(delta) B_{R-1} ... B_0 from the truncated layout [theta (A), phi (A), delta (n)], pairs
    applied as written (rows (a, b) of a pair (a, b), whatever their order)."""
    n, A = s.n, s.num_angles
    u = np.eye(n, dtype=complex)
    for q, (a, b) in enumerate(zip(s.pair_i.tolist(), s.pair_j.tolist())):
        u = cgivens(n, a, b, p[q], p[A + q]) @ u
    return np.diag(np.exp(1j * p[2 * A:])) @ u


@pytest.mark.parametrize("k", [1, 3])
def test_truncated_unitary(k, rng):
    """U(n)/SU(n) on truncated schedules: [theta (A), phi (A), delta (n)], the first rounds' angles
    and phases of the full layout (brick: the first A entries of each), then the full diagonal."""
    for s in (co.brick_schedule(7).truncate(k), co.circle_schedule(6).truncate(k),
              co.team_schedule(16, 4).truncate(k), co.Schedule.from_rounds(4, [[(3, 0), (1, 2)], [(0, 1)]])):
        n, A = s.n, s.num_angles
        assert co.num_unitary_params(n, schedule=s) == 2 * A + n
        assert co.num_unitary_params(n, True, schedule=s.token) == 2 * A + n - 1
        p = rng.uniform(-np.pi, np.pi, 2 * A + n)
        U = co.unitary(p, schedule=s)
        np.testing.assert_allclose(U, _unitary_dense(p, s), atol=1e-14)
        z = rng.standard_normal((n, 2)) + 1j * rng.standard_normal((n, 2))
        np.testing.assert_allclose(co.unitary_apply(p, z, schedule=s), U @ z, atol=1e-13)
        np.testing.assert_allclose(co.unitary_apply(p, z, schedule=s, adjoint=True), U.conj().T @ z, atol=1e-13)
        g = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
        fd = central_gradient(lambda q: np.real(np.sum(np.conj(g) * _unitary_dense(q, s))), p)
        np.testing.assert_allclose(co.unitary_vjp(p, g, schedule=s), fd, atol=1e-8)
        ps = p[:-1]  # SU(n): delta[n-1] = -sum(delta[:n-1])
        Us = co.unitary(ps, special=True, schedule=s)
        full = np.concatenate([ps, [-ps[2 * A:].sum()]])
        np.testing.assert_allclose(Us, _unitary_dense(full, s), atol=1e-14)
        fd = central_gradient(lambda q: np.real(np.sum(np.conj(g) * co.unitary(q, special=True, schedule=s))), ps)
        np.testing.assert_allclose(co.unitary_vjp(ps, g, special=True, schedule=s), fd, atol=1e-8)
    full = co.brick_schedule(7)  # brick's truncation is the prefix of the full layout
    t = full.truncate(k)
    p = rng.uniform(-np.pi, np.pi, 49)
    A, F = t.num_angles, full.num_angles
    keep = np.concatenate([p[:A], p[F:F + A], p[2 * F:]])
    pz = p.copy()
    pz[A:F] = 0.0
    pz[F + A:2 * F] = 0.0
    np.testing.assert_allclose(co.unitary(keep, schedule=t), co.unitary(pz, schedule="brick"), atol=1e-14)
    with pytest.raises(ScheduleError, match="Stiefel"):
        co.unitary(np.zeros(49), schedule=co.get_schedule("brick", 7, 3))
    with pytest.raises(ScheduleError, match="reach every point of U"):  # a truncation is not onto U(n)
        co.params_from_unitary(co.haar_unitary_matrix(7, rng=0), schedule=t)
    with pytest.raises(ScheduleError, match="reach every point of SO"):
        co.angles_from_matrix(co.haar_matrix(7, rng=0), schedule=t)


def test_torch_and_jax_run_truncated_unitary(rng):
    torch = pytest.importorskip("torch")
    import cupyortho.torch as ct

    s = co.brick_schedule(6).truncate(2)
    p = rng.uniform(-np.pi, np.pi, co.num_unitary_params(6, schedule=s))
    g = rng.standard_normal((6, 6)) + 1j * rng.standard_normal((6, 6))
    t = torch.tensor(p, requires_grad=True)
    u = ct.unitary(t, schedule=s)
    np.testing.assert_allclose(u.detach().numpy(), co.unitary(p, schedule=s), atol=1e-14)
    (u * torch.tensor(np.conj(g))).real.sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), co.unitary_vjp(p, g, schedule=s), atol=1e-12)
    layer = ct.Unitary(6, schedule=s, dtype=torch.float64)
    assert layer.theta.shape == (2 * s.num_angles + 6,)
    x = torch.randn(3, 6, dtype=torch.float64)
    np.testing.assert_allclose(layer(x).detach().numpy(), x.numpy() @ co.unitary(layer.theta.detach().numpy(),
                                                                                    schedule=s).T, atol=1e-12)
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import cupyortho.jax as cj

    f = lambda q: jax.numpy.real(jax.numpy.sum(jax.numpy.conj(g) * cj.unitary(q, schedule=s)))  # noqa: E731
    np.testing.assert_allclose(np.asarray(jax.grad(f)(jax.numpy.asarray(p))), co.unitary_vjp(p, g, schedule=s),
                               atol=1e-12)


# ----------------------------------------------------------------------------- adapters

def _adapter_schedules():
    return [co.brick_schedule(5), co.circle_schedule(6).truncate(2),
            co.Schedule.from_rounds(4, [[(3, 0), (1, 2)], [(0, 1)], [(2, 3)]])]


def test_torch_ops_carry_any_schedule(rng):
    torch = pytest.importorskip("torch")
    import cupyortho.torch as ct

    for s in _adapter_schedules():
        theta = rng.uniform(-np.pi, np.pi, s.num_angles)
        t = torch.tensor(theta, requires_grad=True)
        u = ct.matrix(t, schedule=s)
        np.testing.assert_allclose(u.detach().numpy(), co.matrix(theta, schedule=s), atol=1e-14)
        g = rng.normal(size=(s.n, s.n))
        (u * torch.tensor(g)).sum().backward()
        np.testing.assert_allclose(t.grad.numpy(), co.matrix_vjp(theta, g, schedule=s), atol=1e-12)
        x = torch.tensor(rng.normal(size=(s.n, 3)))
        np.testing.assert_allclose(ct.apply(t.detach(), x, schedule=s.token).numpy(),
                                   co.apply(theta, x.numpy(), schedule=s), atol=1e-13)


def test_jax_carries_any_schedule(rng):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import cupyortho.jax as cj

    for s in _adapter_schedules():
        theta = rng.uniform(-np.pi, np.pi, s.num_angles)
        np.testing.assert_allclose(np.asarray(cj.matrix(jax.numpy.asarray(theta), schedule=s)),
                                   co.matrix(theta, schedule=s), atol=1e-14)
        g = rng.normal(size=(s.n, s.n))
        d = jax.grad(lambda t: (cj.matrix(t, schedule=s) * g).sum())(jax.numpy.asarray(theta))
        np.testing.assert_allclose(np.asarray(d), co.matrix_vjp(theta, g, schedule=s), atol=1e-12)


def test_torch_layer_with_a_truncated_schedule(rng):
    torch = pytest.importorskip("torch")
    import cupyortho.torch as ct

    s = co.get_schedule(None, 64).truncate(4)
    layer = ct.Orthogonal(64, schedule=s)
    assert layer.theta.shape == (s.num_angles,) == (4 * 32,)
    with torch.no_grad():
        layer.theta.copy_(torch.tensor(rng.uniform(-1, 1, s.num_angles)))
    u = layer.matrix().detach().double().numpy()
    np.testing.assert_allclose(u, co.matrix(layer.theta.detach().double().numpy(), schedule=s), atol=1e-6)


# ----------------------------------------------------------------------------- properties

@st.composite
def user_rounds(draw):
    n = draw(st.integers(2, 7))
    rounds = []
    for _ in range(draw(st.integers(1, 6))):
        perm = draw(st.permutations(list(range(n))))
        P = draw(st.integers(0, n // 2))
        rounds.append([(perm[2 * q], perm[2 * q + 1]) for q in range(P)])  # any orientation
    return n, rounds


@given(user_rounds(), st.integers(0, 2**31 - 1))
def test_from_rounds_matches_the_dense_product(nr, seed):
    n, rounds = nr
    pairs = [p for rd in rounds for p in rd]
    if not pairs:
        with pytest.raises(AngleCountError):
            co.matrix(np.zeros(1), schedule=co.Schedule.from_rounds(n, rounds))
        return
    s = co.Schedule.from_rounds(n, rounds)
    theta = np.random.default_rng(seed).uniform(-np.pi, np.pi, len(pairs))
    u = np.eye(n)
    for (i, j), t in zip(pairs, theta):
        u = givens(n, i, j, t) @ u
    np.testing.assert_allclose(co.matrix(theta, schedule=s), u, atol=1e-14)
    assert co.from_token(s.token) is s and pickle.loads(pickle.dumps(s)) is s
    k = max(1, s.num_rounds // 2)
    tr = s.truncate(k)
    v = np.eye(n)
    for (i, j), t in zip(pairs[: tr.num_angles], theta[: tr.num_angles]):
        v = givens(n, i, j, t) @ v
    np.testing.assert_allclose(co.matrix(theta[: tr.num_angles], schedule=tr), v, atol=1e-14)


@given(st.integers(2, 24), st.integers(0, 2**31 - 1), st.floats(0, 1))
def test_brick_nulling_round_trip_property(n, seed, where):
    U = co.haar_matrix(n, rng=seed)
    th = co.angles_from_matrix(U, schedule="brick")
    assert np.abs(co.matrix(th, schedule="brick") - U).max() <= 1e-12
    m = 1 + int(where * (n - 2))  # a frame of the band, 1 <= m <= n - 1, either orientation
    Q = U[:, :m] * np.where(np.random.default_rng(seed).random(m) < 0.5, -1.0, 1.0)
    assert np.abs(co.frame(co.angles_from_frame(Q, m, schedule="brick"), n, m, schedule="brick") - Q).max() <= 1e-12
    V = co.haar_unitary_matrix(n, rng=seed)
    assert np.abs(co.unitary(co.params_from_unitary(V, schedule="brick"), schedule="brick") - V).max() <= 1e-12


def test_torch_state_dict_of_a_derived_schedule_refuses_another(rng):
    torch = pytest.importorskip("torch")
    import cupyortho.torch as ct
    from cupyortho.errors import CupyorthoError

    a = ct.Orthogonal(16, schedule=co.circle_schedule(16).truncate(2))
    b = ct.Orthogonal(16, schedule=co.team_schedule(16, 4).truncate(2))  # same angle count, another U
    assert a.theta.shape == b.theta.shape
    ct.Orthogonal(16, schedule=co.circle_schedule(16).truncate(2)).load_state_dict(a.state_dict())
    with pytest.raises(CupyorthoError, match="schedule"):
        b.load_state_dict(a.state_dict())
