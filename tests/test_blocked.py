"""The blocked (team-schedule) CPU path against the round-by-round NumPy reference.

``cupyortho.backends.blocked`` regroups the rounds of a team schedule into block-diagonal stages and
computes with batched GEMMs; ``numpy_backend.rounds_*`` applies the same rounds one by one.  For
every operation (matrix, apply both ways, frames through restricted schedules, every VJP and JVP)
both must agree, at every granularity ``u`` (block half-size) the path can run with, in float64
(to 1e-12) and float32 (against the float64 reference), with batched angles, at sizes around the
team size (``t-1, t, t+1, 2t-1, 2t, 2t+1``, odd ``n``, ``n = 2, 3``).  Also: the recursive team
schedule is a 1-factorization whose local structure matches ``team_local_rounds``; the block
primitives (blocks from angles, angle cotangents from a block cotangent) agree with dense products
and finite differences; inputs are never written to; the ``method`` strategy of the public apply
functions gives the same results either way.
"""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cupyortho as co
from cupyortho import schedule as S
from cupyortho.backends import blocked as bl
from cupyortho.backends import numpy_backend as nb
from cupyortho import _strategy


def _sizes():
    out = [(2, 1), (3, 2), (2, 2), (5, 1)]
    for t in (2, 4, 8):
        for n in (t - 1, t, t + 1, 2 * t - 1, 2 * t, 2 * t + 1, 3 * t + 3):
            if n >= 2:
                out.append((n, t))
    return sorted(set(out))


SIZES = _sizes()


def _granularities(t):
    return [u for u in (1, 2, 4, 8) if u <= t]


def _tol(dtype):
    return 1e-12 if dtype == np.float64 else 2e-5


def _close(a, b, dtype, scale=1.0):
    np.testing.assert_allclose(a, b, rtol=0, atol=_tol(dtype) * max(1.0, scale))


# ----------------------------------------------------------------------------- the schedule

def _check_factorization(s, n):
    seen = np.zeros((n, n), dtype=int)
    for rd in s.rounds:
        used = np.concatenate([rd.i, rd.j])
        assert used.size == np.unique(used).size, "pairs of a round must be disjoint"
        assert np.all(rd.i < rd.j)
        seen[rd.i, rd.j] += 1
    iu = np.triu_indices(n, 1)
    assert np.all(seen[iu] == 1) and seen.sum() == n * (n - 1) // 2


@pytest.mark.parametrize("n,t", SIZES + [(64, 16), (100, 4), (130, 32)])
def test_recursive_team_schedule_is_a_one_factorization(n, t):
    s = S.team_schedule(n, t)
    _check_factorization(s, n)
    if s.padded_n == n:
        assert s.num_rounds == n - 1


@pytest.mark.parametrize("t", [1, 2, 4, 8, 16])
def test_team_local_rounds_describe_the_schedule(t):
    """Intra-team rounds are team_local_rounds' RR(t) in every team; a meeting of teams a < b plays
    a*t + q against b*t + (q + shifts[l]) mod t in its l-th round, shifts = bit reversal."""
    n = 4 * t
    s = S.team_schedule(n, t)
    rr_i, rr_j, shifts = S.team_local_rounds(t)
    np.testing.assert_array_equal(shifts, S.bit_reversal(t))
    assert sorted(shifts.tolist()) == list(range(t))
    rounds = s.rounds
    for r in range(t - 1):
        got = sorted(zip(rounds[r].i.tolist(), rounds[r].j.tolist()))
        want = sorted((base + a, base + b) for base in range(0, n, t) for a, b in zip(rr_i[r], rr_j[r]))
        assert got == want
    q = np.arange(t)
    for k in range(3):  # three team rounds
        block = rounds[t - 1 + k * t: t - 1 + (k + 1) * t]
        first = {(int(i) // t, int(j) // t) for i, j in zip(block[0].i, block[0].j)}
        for l, rd in enumerate(block):
            want = sorted((a * t + qq, b * t + (qq + shifts[l]) % t) for a, b in first for qq in q)
            assert sorted(zip(rd.i.tolist(), rd.j.tolist())) == want


def test_bit_reversal():
    np.testing.assert_array_equal(S.bit_reversal(8), [0, 4, 2, 6, 1, 5, 3, 7])
    np.testing.assert_array_equal(S.bit_reversal(1), [0])


@pytest.mark.parametrize("n", [2, 3, 5, 33, 64, 65, 100, 127, 128, 129, 1000, 1030, 2048, 3000])
def test_default_team_size_rule(n):
    """A power of two <= 64, 2t < 2n; padding within n/16 whenever any candidate achieves it."""
    t = S.default_team_size(n)
    assert t & (t - 1) == 0 and 1 <= t <= S.DEFAULT_TEAM_SIZE
    padded = S.team_schedule(n).padded_n
    cands = []
    c = 1
    while c <= S.DEFAULT_TEAM_SIZE and (c == 1 or c < n):
        T = -(-n // c)
        cands.append((c, (T + T % 2) * c))
        c *= 2
    if any(16 * N <= 17 * n for _, N in cands):
        assert 16 * padded <= 17 * n
        assert t == max(c for c, N in cands if 16 * N <= 17 * n)
    else:
        assert padded == min(N for _, N in cands)


def test_default_team_size_examples():
    assert [S.default_team_size(n) for n in (2048, 1024, 1030, 100, 3)] == [64, 64, 32, 4, 2]


# ----------------------------------------------------------------------------- primitives

def _dense_meeting(thetas, u):
    """The block of one meeting of a = 0..u-1 against b = u..2u-1, natural local order, by rounds."""
    m = np.eye(2 * u)
    shifts = S.bit_reversal(u)
    for s_ in shifts:
        for q in range(u):
            i, j = q, u + (q + s_) % u
            c, s = np.cos(thetas[q, (q + s_) % u]), np.sin(thetas[q, (q + s_) % u])
            mi, mj = m[i].copy(), m[j].copy()
            m[i], m[j] = c * mi - s * mj, s * mi + c * mj
    return m


@pytest.mark.parametrize("u", [1, 2, 4, 8, 16])
def test_build_meet_is_the_product_of_its_rounds(u, rng):
    a = np.arange(u)[None, :]
    b = (u + np.arange(u))[None, :]
    li, lj = bl._meet_leaves(a, b)
    thetas = rng.uniform(-np.pi, np.pi, (u, u))  # thetas[q, r]: angle of (a_q, b_r)
    leaves = thetas[li[0], lj[0] - u]
    lev = u.bit_length() - 1
    blk = bl.build_meet(bl._to_layout(leaves, lev), lev)[0]
    order, _ = bl._storage(u)
    dense = _dense_meeting(thetas, u)
    np.testing.assert_allclose(blk, dense[np.ix_(order, order)], atol=1e-13)


@pytest.mark.parametrize("u", [1, 2, 4, 8])
def test_meet_vjp_finite_differences(u, rng):
    """Leaf cotangents from A = W - W^T (W = G P^T) match central differences of <G, P(angles)>."""
    lev = u.bit_length() - 1
    ang = rng.uniform(-np.pi, np.pi, (u * u, 3))
    g = rng.standard_normal((3, 2 * u, 2 * u))
    p = bl.build_meet(ang, lev)
    w = g @ np.swapaxes(p, -1, -2)
    d = bl.meet_vjp(ang, w - np.swapaxes(w, -1, -2), lev)
    eps = 1e-6
    fd = np.empty_like(ang)
    for idx in itertools.product(range(u * u), range(3)):
        e = np.zeros_like(ang)
        e[idx] = eps
        fd[idx] = (np.sum(g * bl.build_meet(ang + e, lev)) - np.sum(g * bl.build_meet(ang - e, lev))) / (2 * eps)
    np.testing.assert_allclose(d, fd, atol=1e-8)


@pytest.mark.parametrize("v", [2, 4, 8, 16])
def test_rr_blocks_and_vjp(v, rng):
    c = np.arange(v)[None, :]
    i, j = bl._rr_leaves(c)
    full = rng.uniform(-np.pi, np.pi, (v, v))
    ang = full[i[0], j[0]]
    blk = bl.build_rr(ang, v)
    dense = np.eye(v)
    for rd in S._rr_rounds(c):
        for a, b in zip(rd[0], rd[1]):
            cs, sn = np.cos(full[a, b]), np.sin(full[a, b])
            ra, rb = dense[a].copy(), dense[b].copy()
            dense[a], dense[b] = cs * ra - sn * rb, sn * ra + cs * rb
    np.testing.assert_allclose(blk, dense, atol=1e-13)
    g = rng.standard_normal((v, v))
    w = g @ blk.T
    d = bl.rr_vjp(ang, w - w.T, v)
    eps = 1e-6
    fd = np.array([(np.sum(g * bl.build_rr(ang + eps * e, v)) - np.sum(g * bl.build_rr(ang - eps * e, v))) / (2 * eps)
                   for e in np.eye(ang.size)])
    np.testing.assert_allclose(d, fd, atol=1e-8)


@pytest.mark.parametrize("u", [1, 2, 4, 8])
def test_block_jvp_matches_difference_quotient(u, rng):
    lev = u.bit_length() - 1
    ang = rng.uniform(-np.pi, np.pi, (u * u, 2))
    dang = rng.standard_normal(ang.shape)
    blk, dblk = bl.build_meet(ang, lev, dang)
    np.testing.assert_allclose(blk, bl.build_meet(ang, lev), atol=1e-14)
    eps = 1e-6
    fd = (bl.build_meet(ang + eps * dang, lev) - bl.build_meet(ang - eps * dang, lev)) / (2 * eps)
    np.testing.assert_allclose(dblk, fd, atol=1e-8)


# ----------------------------------------------------------------------------- every op vs reference

def _theta(rng, A, dtype, batch=()):
    return rng.uniform(-np.pi, np.pi, batch + (A,)).astype(dtype)


@pytest.mark.parametrize("n,t", SIZES)
def test_matrix_and_apply_against_reference_all_granularities(n, t, rng):
    s = S.team_schedule(n, t)
    th = _theta(rng, s.num_angles, np.float64, (2,))
    ref = nb.rounds_matrix(th, s)
    x = rng.standard_normal((2, n, 3))
    for u in _granularities(t):
        _close(bl.matrix(th, s, u=u), ref, np.float64)
        _close(bl.apply(th, x, s, u=u), ref @ x, np.float64)
        _close(bl.apply(th, x, s, transpose=True, u=u), np.swapaxes(ref, -1, -2) @ x, np.float64)
    from cupyortho.backends import engine
    chosen = {"blocked": bl, "engine": engine}[_strategy.cpu_impl("matrix", s)]
    np.testing.assert_array_equal(nb.matrix(th, s), chosen.matrix(th, s))  # dispatch


@pytest.mark.parametrize("n,t", SIZES)
@pytest.mark.parametrize("transpose", [False, True])
def test_apply_vjp_and_jvp_against_reference(n, t, transpose, rng):
    s = S.team_schedule(n, t)
    th = _theta(rng, s.num_angles, np.float64, (2,))
    x = rng.standard_normal((2, n, 3))
    g = rng.standard_normal((2, n, 3))
    tt = rng.standard_normal(th.shape)
    xt = rng.standard_normal(x.shape)
    d_ref, dx_ref = nb.rounds_apply_vjp(th, x, g, s, transpose)
    j_ref = nb.rounds_apply_jvp(th, x, tt, xt, s, transpose)
    j0_ref = nb.rounds_apply_jvp(th, x, tt, None, s, transpose)
    for u in _granularities(t):
        d, dx = bl.apply_vjp(th, x, g, s, transpose, u=u)
        _close(d, d_ref, np.float64, 10)
        _close(dx, dx_ref, np.float64)
        y = bl.apply(th, x, s, transpose, u=u)
        d2, dx2 = bl.apply_vjp(th, x, g, s, transpose, output=y, u=u)
        _close(d2, d_ref, np.float64, 10)
        _close(bl.apply_jvp(th, x, tt, xt, s, transpose, u=u), j_ref, np.float64, 10)
        _close(bl.apply_jvp(th, x, tt, None, s, transpose, u=u), j0_ref, np.float64, 10)


@pytest.mark.parametrize("n,t", SIZES)
def test_matrix_vjp_and_jvp_against_reference(n, t, rng):
    """The reduction-free materialized VJP (A <- S^T A S per stage) and the matrix JVP."""
    s = S.team_schedule(n, t)
    th = _theta(rng, s.num_angles, np.float64, (2,))
    g = rng.standard_normal((2, n, n))
    tt = rng.standard_normal(th.shape)
    d_ref = nb.rounds_matrix_vjp(th, g, s)
    j_ref = nb.rounds_matrix_jvp(th, tt, s)
    for u in _granularities(t):
        _close(bl.matrix_vjp(th, g, s, u=u), d_ref, np.float64, 10)
        _close(bl.matrix_vjp(th, g, s, output=nb.rounds_matrix(th, s), u=u), d_ref, np.float64, 10)
        _close(bl.matrix_jvp(th, tt, s, u=u), j_ref, np.float64, 10)


@pytest.mark.parametrize("n,t", [(9, 4), (16, 4), (17, 8), (33, 16)])
def test_float32_against_float64_reference(n, t, rng):
    s = S.team_schedule(n, t)
    th = _theta(rng, s.num_angles, np.float64, (2,))
    x = rng.standard_normal((n, 4))
    g = rng.standard_normal((2, n, 4))
    gm = rng.standard_normal((2, n, n))
    tt = rng.standard_normal(th.shape)
    f = np.float32
    th32, x32, g32, gm32, tt32 = (a.astype(f) for a in (th, x, g, gm, tt))
    for u in _granularities(t):
        for out, ref in [
            (bl.matrix(th32, s, u=u), nb.rounds_matrix(th, s)),
            (bl.apply(th32, x32, s, u=u), nb.rounds_apply(th, x, s)),
            (bl.apply(th32, x32, s, True, u=u), nb.rounds_apply(th, x, s, True)),
            (bl.apply_vjp(th32, x32, g32, s, u=u)[0], nb.rounds_apply_vjp(th, x, g, s)[0]),
            (bl.apply_vjp(th32, x32, g32, s, True, u=u)[1], nb.rounds_apply_vjp(th, x, g, s, True)[1]),
            (bl.matrix_vjp(th32, gm32, s, u=u), nb.rounds_matrix_vjp(th, gm, s)),
            (bl.matrix_jvp(th32, tt32, s, u=u), nb.rounds_matrix_jvp(th, tt, s)),
        ]:
            assert out.dtype == f
            np.testing.assert_allclose(out, ref, atol=2e-5 * max(1, n / 8) * (1 + np.abs(ref).max()))


@pytest.mark.parametrize("n,t,m", [(9, 4, 1), (9, 4, 3), (16, 4, 5), (17, 8, 8), (12, 2, 11), (7, 4, 7)])
def test_frames_through_restricted_schedules(n, t, m, rng):
    s = S.team_schedule(n, t).restrict(m)
    th = _theta(rng, s.num_angles, np.float64, (3,))
    eye = np.eye(n, m)
    g = rng.standard_normal((3, n, m))
    tt = rng.standard_normal(th.shape)
    ref = nb.rounds_apply(th, eye, s)
    for u in _granularities(t):
        _close(bl.apply(th, eye, s, u=u), ref, np.float64)
        d, _ = bl.apply_vjp(th, eye, g, s, u=u)
        _close(d, nb.rounds_apply_vjp(th, eye, g, s)[0], np.float64, 10)
        _close(bl.apply_jvp(th, eye, tt, None, s, u=u), nb.rounds_apply_jvp(th, eye, tt, None, s), np.float64, 10)
    q = co.frame(th, n, m, schedule=S.team_schedule(n, t))
    _close(q, ref, np.float64)
    _close(q.swapaxes(-1, -2) @ q, np.broadcast_to(np.eye(m), (3, m, m)), np.float64)


def test_broadcasting_batches(rng):
    """theta (2, 1, A) with x (3, n, k): outputs (2, 3, n, k); cotangents summed back to the inputs."""
    n, t = 10, 4
    s = S.team_schedule(n, t)
    th = _theta(rng, s.num_angles, np.float64, (2, 1))
    x = rng.standard_normal((3, n, 2))
    g = rng.standard_normal((2, 3, n, 2))
    y = bl.apply(th, x, s)
    assert y.shape == (2, 3, n, 2)
    _close(y, nb.rounds_apply(th, x, s), np.float64)
    d, dx = bl.apply_vjp(th, x, g, s)
    d_ref, dx_ref = nb.rounds_apply_vjp(th, x, g, s)
    assert d.shape == th.shape and dx.shape == x.shape
    _close(d, d_ref, np.float64, 10)
    _close(dx, dx_ref, np.float64, 10)
    th1 = th[0, 0]
    gm = rng.standard_normal((n, n))
    _close(bl.matrix_vjp(th1, gm, s), nb.rounds_matrix_vjp(th1, gm, s), np.float64, 10)


@settings(deadline=None, max_examples=15)
@given(n=st.integers(2, 40), logt=st.integers(0, 4), seed=st.integers(0, 2**31 - 1))
def test_property_blocked_equals_rounds(n, logt, seed):
    t = 2 ** logt
    s = S.team_schedule(n, t)
    r = np.random.default_rng(seed)
    th = r.uniform(-np.pi, np.pi, s.num_angles)
    x = r.standard_normal((n, 2))
    g = r.standard_normal((n, 2))
    _close(bl.apply(th, x, s), nb.rounds_apply(th, x, s), np.float64)
    d, dx = bl.apply_vjp(th, x, g, s, True)
    d_ref, dx_ref = nb.rounds_apply_vjp(th, x, g, s, True)
    _close(d, d_ref, np.float64, 10)
    _close(dx, dx_ref, np.float64)
    gm = r.standard_normal((n, n))
    _close(bl.matrix_vjp(th, gm, s), nb.rounds_matrix_vjp(th, gm, s), np.float64, 10)


def test_matrix_vjp_finite_differences(rng):
    """Directly against central differences (float64), independent of the reference."""
    n, t = 11, 4
    s = S.team_schedule(n, t)
    th = _theta(rng, s.num_angles, np.float64)
    g = rng.standard_normal((n, n))
    d = bl.matrix_vjp(th, g, s)
    eps = 1e-6
    fd = np.array([(np.sum(g * bl.matrix(th + eps * e, s)) - np.sum(g * bl.matrix(th - eps * e, s))) / (2 * eps)
                   for e in np.eye(th.size)])
    np.testing.assert_allclose(d, fd, atol=1e-8)


def test_larger_team_sizes_against_reference(rng):
    """The GEMM levels of the block recursion (u = 16, 32) on one moderately large case."""
    n, t = 70, 32
    s = S.team_schedule(n, t)
    th = _theta(rng, s.num_angles, np.float64)
    g = rng.standard_normal((n, n))
    x = rng.standard_normal((n, 3))
    for u in (16, 32):
        _close(bl.matrix(th, s, u=u), nb.rounds_matrix(th, s), np.float64, 10)
        _close(bl.matrix_vjp(th, g, s, u=u), nb.rounds_matrix_vjp(th, g, s), np.float64, 100)
        _close(bl.apply_vjp(th, x, g[:, :3], s, u=u)[0], nb.rounds_apply_vjp(th, x, g[:, :3], s)[0], np.float64, 100)


def test_threaded_block_work_equals_serial(rng, monkeypatch):
    """Block construction and block-to-angle maps split over threads give the same numbers."""
    n, t = 40, 8
    s = S.team_schedule(n, t)
    th = _theta(rng, s.num_angles, np.float64, (2,))
    g = rng.standard_normal((2, n, n))
    x = rng.standard_normal((2, n, 3))
    serial = (bl.matrix(th, s), bl.matrix_vjp(th, g, s), bl.apply_vjp(th, x, x, s)[0])
    monkeypatch.setattr(bl, "_MIN_SPLIT", 1)
    monkeypatch.setattr(bl, "THREADS", 3)
    threaded = (bl.matrix(th, s), bl.matrix_vjp(th, g, s), bl.apply_vjp(th, x, x, s)[0])
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- strategy (method=)

@pytest.mark.parametrize("kind", ["circle", "team"])
@pytest.mark.parametrize("transpose", [False, True])
def test_method_materialize_equals_rounds(kind, transpose, rng):
    n = 9
    th = rng.uniform(-3, 3, (2, co.num_angles(n)))
    x = rng.standard_normal((3, 2, n, 4))
    g = rng.standard_normal((3, 2, n, 4))
    tt = rng.standard_normal(th.shape)
    xt = rng.standard_normal(x.shape)
    kw = dict(transpose=transpose, schedule=kind)
    ym, yr = (co.apply(th, x, method=m, **kw) for m in ("materialize", "rounds"))
    np.testing.assert_allclose(ym, yr, atol=1e-12)
    (dm, dxm), (dr, dxr) = (co.apply_vjp(th, x, g, method=m, **kw) for m in ("materialize", "rounds"))
    np.testing.assert_allclose(dm, dr, atol=1e-11)
    np.testing.assert_allclose(dxm, dxr, atol=1e-12)
    jm, jr = (co.apply_jvp(th, x, tt, xt, method=m, **kw) for m in ("materialize", "rounds"))
    np.testing.assert_allclose(jm, jr, atol=1e-11)
    v = x[0, 0, :, 0]  # vector x
    np.testing.assert_allclose(co.apply(th[0], v, method="materialize", **kw),
                               co.apply(th[0], v, method="rounds", **kw), atol=1e-12)


def test_method_auto_rule_and_errors(rng):
    n = 8
    th = np.zeros(co.num_angles(n))
    assert _strategy.apply_method("auto", th, np.zeros((n, 7))) == "rounds"
    assert _strategy.apply_method("auto", th, np.zeros((n, 8))) == "materialize"
    assert _strategy.apply_method("auto", th, np.zeros((2, n, 4))) == "materialize"  # 2 matrices share one U
    assert _strategy.apply_method("auto", np.zeros((2, th.size)), np.zeros((2, n, 4))) == "rounds"
    assert _strategy.apply_method("rounds", th, np.zeros((n, 100))) == "rounds"
    with pytest.raises(ValueError, match="method must be one of"):
        co.apply(th, np.zeros(n), method="dense")


# ----------------------------------------------------------------------------- the one team-block plan

from cupyortho.backends import team_plan as tp  # noqa: E402


def _by_kernel_tables(theta, s):
    """U built by applying, stage by stage and local round by local round, the rotations the
    kernel tables describe (independent of the block recursion)."""
    tab = tp.kernel_tables(s)
    u = np.eye(tab.N)
    for st in range(tab.S):
        for nb_ in range(tab.NB):
            for l in range(tab.t):
                for p in range(tab.t):
                    q = tab.block_angle[st, nb_, l, p]
                    if q < 0:
                        continue
                    i = tab.coords[st, nb_, tab.local_i[st, nb_, l, p]]
                    j = tab.coords[st, nb_, tab.local_j[st, nb_, l, p]]
                    c, sn = np.cos(theta[q]), np.sin(theta[q])
                    ri, rj = u[i].copy(), u[j].copy()
                    u[i], u[j] = c * ri - sn * rj, sn * ri + c * rj
    return u[: s.n, : s.n]


@pytest.mark.parametrize("n,t,m", [(2, 1, None), (5, 1, None), (9, 4, None), (9, 4, 3), (16, 4, None),
                                   (17, 8, 5), (20, 2, None)])
def test_kernel_tables_reproduce_the_schedule(n, t, m, rng):
    s = S.team_schedule(n, t)
    if m is not None:
        s = s.restrict(m)
    tab = tp.kernel_tables(s)
    assert (tab.t, tab.L, tab.N, tab.NB) == (t, 2 * t, s.padded_n, s.padded_n // (2 * t))
    assert np.all(np.diff(tab.coords, axis=-1) > 0)
    assert np.all(tab.local_i < tab.local_j)
    for st in range(tab.S):  # each local round is a perfect matching of the block's L coordinates
        for l in range(t):
            used = np.concatenate([tab.local_i[st, :, l], tab.local_j[st, :, l]], axis=-1)
            assert np.all(np.sort(used, axis=-1) == np.arange(2 * t))
    ang = tab.block_angle[tab.block_angle >= 0]
    assert np.array_equal(np.sort(ang), np.arange(s.num_angles)), "every angle exactly once"
    th = _theta(rng, s.num_angles, np.float64)
    np.testing.assert_allclose(_by_kernel_tables(th, s), nb.rounds_matrix(th, s), atol=1e-12)


def test_plans_are_cached_on_the_schedule_and_read_only():
    s = S.team_schedule(40, 8)
    p = tp.plan(s, 4)
    assert tp.plan(s, 4) is p and bl.plan(s, 4) is p and tp.plan(s, 8) is not p
    assert tp.kernel_tables(s) is tp.kernel_tables(s)
    assert tp.plan(s.restrict(5), 4) is not p
    for arr in (p.meet_slots, p.meet_rows, p.rr_slots, tp.kernel_tables(s).block_angle):
        with pytest.raises(ValueError):
            arr[(0,) * arr.ndim] = 1


def test_plan_bad_input():
    from cupyortho.errors import ScheduleError, SizeError

    with pytest.raises(ScheduleError, match="team Schedule"):
        tp.plan(S.circle_schedule(8), 1)
    with pytest.raises(ScheduleError, match="team Schedule"):
        tp.kernel_tables("team")
    s = S.team_schedule(16, 4)
    for u in (0, 3, 8):
        with pytest.raises(SizeError, match="u must be a power of two"):
            tp.plan(s, u)


# ----------------------------------------------------------------------------- compiled materialize (u = t)

def _eb():
    return bl._engine()


@pytest.mark.parametrize("n,t", [(16, 8), (40, 8), (64, 16), (70, 32)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compiled_round_blocks_and_block_vjp_match_numpy(n, t, dtype, rng):
    """engine.blocks.rounds_blocks / rounds_blocks_vjp (meeting blocks built round by round, the
    slab path's block work) against the NumPy block recursion of the same schedule's plan; any split
    of the blocks into job ranges gives bitwise the same numbers."""
    s = S.team_schedule(n, t)
    pl, rd = bl.plan(s, t), bl._rounds(s)
    K, NB, L, A = pl.num_meet, pl.meet_teams.shape[1], 2 * t, s.num_angles
    R, Bt = K * NB, 2
    theta = rng.uniform(-np.pi, np.pi, (Bt, A))
    ang = bl._ext(theta)[:, pl.meet_slots[:, :R]]  # (Bt, t*t, R): leaves of the recursion
    ref = bl._natural(bl.build_meet(ang, pl.levels), t)  # float64
    th = theta.astype(dtype)
    blocks = bl._block_range(np.ascontiguousarray(th), pl, s, 0, R, 1)
    _close(blocks, ref, dtype)
    c, sn = bl._coefficients(bl._ext(th), rd.slots)
    split = np.full((Bt * R, L, L), np.nan, dtype)
    for j0, j1 in bl._ranges(Bt * R, 3):
        _eb().rounds_blocks(c, sn, rd.pi, rd.pj, split, rd.cw, j0, j1)
    np.testing.assert_array_equal(split.reshape(blocks.shape), blocks)
    # VJP: leaf cotangents of the recursion, mapped to angle slots, against the kernel's per-rotation ones
    w = rng.standard_normal((Bt, R, L, L)) @ np.swapaxes(ref, -1, -2)
    a = w - np.swapaxes(w, -1, -2)
    order, _ = bl._storage(t)
    dref_leaf = bl.meet_vjp(ang, a[..., order, :][..., order], pl.levels)  # (Bt, t*t, R)
    dref = np.zeros((Bt, A + 1))
    dref[:, pl.meet_slots[:, :R]] = dref_leaf
    a32 = np.ascontiguousarray(a.astype(dtype).reshape(Bt * R, L, L))
    out = []
    for parts in (1, 2):
        d = np.full((Bt * R, t * t), np.nan, dtype)
        blk = np.full((Bt * R, L, L), np.nan, dtype)
        for j0, j1 in bl._ranges(Bt * R, parts):
            _eb().rounds_blocks_vjp(c, sn, rd.pi, rd.pj, a32, d, blk, rd.cw, dtype(0), j0, j1)
        out.append((d, blk))
    for x, y in zip(*out):
        np.testing.assert_array_equal(x, y)
    d, blk = out[0]
    got = np.zeros((Bt, A + 1))
    got[:, rd.slots] = d.reshape(Bt, R, t * t)
    valid = np.zeros(A + 1, bool)
    valid[rd.slots] = True
    valid[A] = False
    leaves = np.unique(pl.meet_slots[:, :R])
    np.testing.assert_array_equal(np.flatnonzero(valid), leaves[leaves < A])  # the same angles
    _close(got[:, valid], dref[:, valid], dtype, 4 * t)
    _close(blk, ref.reshape(Bt * R, L, L), dtype)  # the undone identity is the block (to rounding)


def _fast_sizes():
    t = bl.FAST_MIN_TEAM
    return [(n, t) for n in (t + 1, 2 * t + 1, 3 * t + 3)] + [(33, 16)]


@pytest.mark.parametrize("n,t", _fast_sizes())
def test_compiled_matrix_path_is_taken_and_matches_reference(n, t, rng, monkeypatch):
    s = S.team_schedule(n, t)
    assert bl._fast(bl.plan(s, t))
    th = _theta(rng, s.num_angles, np.float64, (2,))
    g = rng.standard_normal((2, n, n))
    ref, dref = nb.rounds_matrix(th, s), nb.rounds_matrix_vjp(th, g, s)
    _close(bl.matrix(th, s), ref, np.float64, 10)
    _close(bl.matrix_vjp(th, g, s), dref, np.float64, 100)
    _close(bl.matrix_vjp(th, g, s, output=ref), dref, np.float64, 100)
    for m in (1, n // 2):
        sm = s.restrict(m)
        thm = th[:, : sm.num_angles]
        _close(bl.matrix_vjp(thm, g, sm), nb.rounds_matrix_vjp(thm, g, sm), np.float64, 100)
    v = rng.standard_normal(th.shape)
    jref = nb.rounds_matrix_jvp(th, v, s)
    _close(bl.matrix_jvp(th, v, s), jref, np.float64, 100)
    _close(bl.matrix_jvp(th, v[0], s), nb.rounds_matrix_jvp(th, np.broadcast_to(v[0], th.shape), s),
           np.float64, 100)  # the tangent broadcast against a batch of angles
    th32, g32 = th.astype(np.float32), g.astype(np.float32)
    _close(bl.matrix(th32, s), ref, np.float32, 10)
    _close(bl.matrix_vjp(th32, g32, s), dref, np.float32, 100)
    _close(bl.matrix_jvp(th32, v.astype(np.float32), s), jref, np.float32, 100)
    # and the NumPy stages give the same numbers
    slow = (bl.matrix(th, s), bl.matrix_vjp(th, g, s), bl.matrix_jvp(th, v, s))
    monkeypatch.setattr(bl, "FAST_MIN_TEAM", 10**9)
    assert not bl._fast(bl.plan(s, t))
    _close(slow[0], bl.matrix(th, s), np.float64, 10)
    _close(slow[1], bl.matrix_vjp(th, g, s), np.float64, 100)
    _close(slow[2], bl.matrix_jvp(th, v, s), np.float64, 100)


def test_antisymmetric_half_sweep_equals_full_conjugation(rng):
    """One step of the two-sided sweep from the upper block triangle only equals S^T A S."""
    n, t = 64, 8
    s = S.team_schedule(n, t)
    pl = bl.plan(s, t)
    th = _theta(rng, s.num_angles, np.float64)
    N, L, T = pl.N, 2 * t, pl.N // t
    k = 3
    blk = bl._stage_blocks(th[None], pl, k, s)[0]
    lay, nxt_lay = pl.meet_teams[k].reshape(-1), pl.meet_teams[k - 1].reshape(-1)
    w = rng.standard_normal((N, N))
    a = w - w.T
    out = np.full((N, N), np.nan)
    a_in = a.copy()
    a_in[np.tril_indices(N, -L)] = np.nan  # the strict lower block triangle must not be read
    for I in range(N // L):
        a_in[I * L:(I + 1) * L, I * L:(I + 1) * L] = a[I * L:(I + 1) * L, I * L:(I + 1) * L]
    bl._conjugate(a_in, blk, bl._inverse(nxt_lay)[lay], t, out)
    S_ = np.zeros((N, N))
    for j in range(N // L):
        S_[j * L:(j + 1) * L, j * L:(j + 1) * L] = blk[j]
    full = S_.T @ a @ S_  # in the current layout
    rows_cur = (lay[:, None] * t + np.arange(t)).reshape(-1)
    rows_nxt = (nxt_lay[:, None] * t + np.arange(t)).reshape(-1)
    pos = np.empty(N, dtype=int)
    pos[rows_cur] = np.arange(N)
    expect = full[np.ix_(pos[rows_nxt], pos[rows_nxt])]
    upper = np.zeros((N, N), dtype=bool)
    for I in range(N // L):
        upper[I * L:(I + 1) * L, I * L:] = True
    np.testing.assert_allclose(out[upper], expect[upper], atol=1e-12)
    diag = np.concatenate([out[I * L:(I + 1) * L, I * L:(I + 1) * L] for I in range(N // L)])
    np.testing.assert_array_equal(diag, -np.concatenate(
        [out[I * L:(I + 1) * L, I * L:(I + 1) * L].T for I in range(N // L)]))  # exactly antisymmetric


def test_compiled_matrix_vjp_finite_differences_and_dot(rng):
    """float64 central differences along random directions and along single angles (one per
    stage kind), for the VJP and the JVP (both on the slab path), and <d_theta, v> = <G, dU[v]>."""
    n, t = 17, 8
    s = S.team_schedule(n, t)
    assert bl._fast(bl.plan(s, t))
    th = _theta(rng, s.num_angles, np.float64)
    g = rng.standard_normal((n, n))
    d = bl.matrix_vjp(th, g, s)
    eps = 1e-6
    dirs = list(rng.standard_normal((6, th.size))) + [np.eye(th.size)[q] for q in (0, 1, 20, th.size - 1)]
    for v in dirs:
        fd = (np.sum(g * bl.matrix(th + eps * v, s)) - np.sum(g * bl.matrix(th - eps * v, s))) / (2 * eps)
        np.testing.assert_allclose(d @ v, fd, atol=1e-7 * max(1.0, np.abs(v).sum()))
        fdu = (bl.matrix(th + eps * v, s) - bl.matrix(th - eps * v, s)) / (2 * eps)
        np.testing.assert_allclose(bl.matrix_jvp(th, v, s), fdu, atol=1e-7 * max(1.0, np.abs(v).sum()))
    v = rng.standard_normal(th.shape)
    np.testing.assert_allclose(d @ v, np.sum(g * bl.matrix_jvp(th, v, s)), rtol=1e-10)


def test_compiled_matrix_path_is_thread_count_invariant_and_pure(rng):
    """The slab path splits its blocks, GEMMs and scatters over cupyortho's worker threads
    (cupyortho.threads): 1 and 2 workers give bitwise equal results, inputs are not modified."""
    import cupyortho as co

    n, t = 40, 8
    s = S.team_schedule(n, t)
    th = _theta(rng, s.num_angles, np.float64, (2,))
    g = rng.standard_normal((2, n, n))
    u = bl.matrix(th, s)
    copies = [a.copy() for a in (th, g, u)]
    res, used = [], []
    for k in (1, 2):
        with co.threads(k):
            used.append(bl._workers())
            res.append((bl.matrix(th, s), bl.matrix_vjp(th, g, s), bl.matrix_vjp(th, g, s, output=u),
                        bl.matrix_jvp(th, g[:, 0, :1] * th, s)))
    assert used == [1, min(2, bl.THREADS)]
    for a, b in zip(res[0], res[-1]):
        np.testing.assert_array_equal(a, b)
    for a, c in zip((th, g, u), copies):
        np.testing.assert_array_equal(a, c)


def test_slab_path_splits_work_over_workers(rng, monkeypatch):
    """With 2 workers every parallel step of the slab path hands chunks to the pool (so the test
    above compares a real split), and BLAS runs single-threaded inside it."""
    import cupyortho as co
    from cupyortho import _threads

    if bl.THREADS < 2:
        pytest.skip("one CPU: no worker split")
    n, t = 40, 8
    s = S.team_schedule(n, t)
    th = _theta(rng, s.num_angles, np.float64)
    g = rng.standard_normal((n, n))
    seen = []
    real = bl._run

    def spy(fn, chunks):
        seen.append((len(chunks), _threads.blas_threads()))
        return real(fn, chunks)

    monkeypatch.setattr(bl, "_run", spy)
    with co.threads(2):
        bl.matrix_vjp(th, g, s)
    assert seen and all(k == 2 for k, _ in seen)
    assert all(all(c == 1 for c in blas) for _, blas in seen)


def test_slab_path_waits_for_every_worker_on_error():
    """_run re-raises a worker's exception only after every chunk is done."""
    import time

    done = []

    def fn(c):
        if c == 0:
            raise ValueError("chunk 0")
        time.sleep(0.05)
        done.append(c)

    with pytest.raises(ValueError, match="chunk 0"):
        bl._run(fn, [0, 1, 2])
    assert sorted(done) == [1, 2]


def test_without_numba_the_numpy_stages_run(rng, monkeypatch):
    """The slab path needs Numba; without it (the strategy's fallback) the NumPy stages give U."""
    from cupyortho import _strategy

    n, t = 24, 8
    s = S.team_schedule(n, t)
    th = _theta(rng, s.num_angles, np.float64)
    monkeypatch.setattr(_strategy, "engine_available", lambda: False)
    assert not bl._fast(bl.plan(s, t))
    monkeypatch.setattr(bl, "_engine", lambda: (_ for _ in ()).throw(ImportError("no numba")))
    _close(bl.matrix(th, s), nb.rounds_matrix(th, s), np.float64, 10)
