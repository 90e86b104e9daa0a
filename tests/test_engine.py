"""The compiled CPU engine (cupyortho/backends/engine) against the NumPy reference.

The same test bodies run on every CPU implementation of the backend protocol (``IMPLS``: the
round-by-round reference, the engine, and the blocked stages where they apply), compared with the
reference ``rounds_*`` / ``numpy_unitary`` functions: float32, float64, complex64, complex128, every
schedule kind (circle, team at several team sizes, restricted frames), edge sizes of every split
(n = 2, 3, odd, team size +- 1; k = 1, non-multiples of the engine's chunk width, more columns than
``MAX_GRAD_CHUNKS`` chunks).  Plus float64 finite differences, JVP/VJP dot tests, bitwise equality
for 1 and 2 Numba threads and run to run, inputs left unchanged, and the import rule.
"""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

from cupyortho import schedule as S
from cupyortho.backends import blocked, cpu, numpy_backend as nb, numpy_unitary as nu

numba = pytest.importorskip("numba")
from cupyortho.backends import engine as E  # noqa: E402

REFERENCE = types.SimpleNamespace(
    apply=nb.rounds_apply, apply_vjp=nb.rounds_apply_vjp, apply_jvp=nb.rounds_apply_jvp,
    matrix=nb.rounds_matrix, matrix_vjp=nb.rounds_matrix_vjp, matrix_jvp=nb.rounds_matrix_jvp,
    unitary=nu.unitary, unitary_apply=nu.unitary_apply, unitary_apply_vjp=nu.unitary_apply_vjp,
    unitary_apply_jvp=nu.unitary_apply_jvp, unitary_jvp=nu.unitary_jvp,
    unitary_vjp=lambda p, g, s, output=None: nu.unitary_vjp(p, g, s),
)
IMPLS = {"engine": E, "cpu": cpu, "blocked": blocked}
TOL = {np.float32: 2e-5, np.float64: 1e-12, np.complex64: 2e-5, np.complex128: 1e-12}


def schedules(n):
    """Every kind: circle, brick, team (several team sizes), restricted, truncated, and user rounds
    (with pairs written ``(j, i)``, a plane met twice: an angle layout that is not the triangle's)."""
    out = [S.circle_schedule(n), S.brick_schedule(n), S.team_schedule(n), S.team_schedule(n, 1),
           S.team_schedule(n, 2), S.circle_schedule(n).truncate(min(2, S.circle_schedule(n).num_rounds))]
    user = [[(1, 0)], [(0, 1)]] + ([[(0, n - 1), (2, 1)], [(n - 2, 0)]] if n >= 4 else [[(n - 1, 0)]])
    out.append(S.Schedule.from_rounds(n, user))
    if n >= 4:
        out += [S.team_schedule(n, 4), S.circle_schedule(n).restrict(n // 2), S.team_schedule(n, 2).restrict(2)]
    return out


def close(got, want, dtype, what, scale=1.0):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got - want).max(initial=0) / max(1.0, np.abs(want).max(initial=0))
    assert err <= TOL[dtype] * scale, f"{what}: relative error {err:.3g}"


def rand(rng, shape, dtype):
    if np.dtype(dtype).kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------- SO(n) sweeps

# (n, k, theta batch, x batch): n = 2, 3, odd, team size +- 1 (4, 8), k = 1 and chunk edges
CASES = [
    (2, 1, (), ()), (3, 2, (2,), ()), (5, 17, (), (2,)), (7, 16, (2, 1), (3,)), (8, 33, (), ()),
    (9, 130, (), ()), (4, 0, (), ()),
]


@pytest.mark.parametrize("impl", ["engine", "cpu", "blocked"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,k,tb,xb", CASES)
def test_apply_passes_match_reference(impl, dtype, n, k, tb, xb):
    rng = np.random.default_rng(n * 100 + k)
    for sched in schedules(n):
        if impl == "blocked" and sched.kind != "team":
            continue
        mod = IMPLS[impl]
        A = sched.num_angles
        theta = rng.uniform(-np.pi, np.pi, tb + (A,)).astype(dtype)
        x = rand(rng, xb + (n, k), dtype)
        out = np.broadcast_shapes(tb, xb) + (n, k)
        g = rand(rng, out, dtype)
        tt = rand(rng, tb + (A,), dtype)
        xt = rand(rng, xb + (n, k), dtype)
        keep = [a.copy() for a in (theta, x, g, tt, xt)]
        for tr in (False, True):
            what = f"{sched} T={tr}"
            y = mod.apply(theta, x, sched, tr)
            close(y, REFERENCE.apply(theta, x, sched, tr), dtype, "apply " + what)
            d_t, d_x = mod.apply_vjp(theta, x, g, sched, tr)
            e_t, e_x = REFERENCE.apply_vjp(theta, x, g, sched, tr)
            close(d_t, e_t, dtype, "apply_vjp theta " + what, scale=10)
            close(d_x, e_x, dtype, "apply_vjp x " + what)
            d_t2, d_x2 = mod.apply_vjp(theta, x, g, sched, tr, output=y)
            close(d_t2, e_t, dtype, "apply_vjp(output) " + what, scale=10)
            for xtan in (xt, None):
                close(mod.apply_jvp(theta, x, tt, xtan, sched, tr),
                      REFERENCE.apply_jvp(theta, x, tt, xtan, sched, tr), dtype, "apply_jvp " + what, scale=10)
        for a, b in zip((theta, x, g, tt, xt), keep):
            np.testing.assert_array_equal(a, b)  # inputs unchanged


@pytest.mark.parametrize("impl", ["engine", "cpu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [2, 3, 8, 9])
def test_matrix_passes_match_reference(impl, dtype, n):
    rng = np.random.default_rng(n)
    for sched in schedules(n):
        if sched.m is not None:
            continue
        mod = IMPLS[impl]
        theta = rng.uniform(-np.pi, np.pi, (2, sched.num_angles)).astype(dtype)
        g = rand(rng, (2, n, n), dtype)
        u = mod.matrix(theta, sched)
        close(u, REFERENCE.matrix(theta, sched), dtype, f"matrix {sched}")
        close(mod.matrix_vjp(theta, g, sched), REFERENCE.matrix_vjp(theta, g, sched), dtype,
              f"matrix_vjp {sched}", scale=10)
        close(mod.matrix_vjp(theta, g, sched, output=u), REFERENCE.matrix_vjp(theta, g, sched), dtype,
              f"matrix_vjp(output) {sched}", scale=10)
        close(mod.matrix_jvp(theta, theta, sched), REFERENCE.matrix_jvp(theta, theta, sched), dtype,
              f"matrix_jvp {sched}", scale=10)


# --------------------------------------------------------------------------- U(n)

@pytest.mark.parametrize("impl", ["engine", "cpu"])
@pytest.mark.parametrize("cdtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("n,k,pb,xb", [(2, 1, (), ()), (3, 17, (2,), ()), (8, 5, (), (2,)), (9, 130, (), ())])
def test_unitary_passes_match_reference(impl, cdtype, n, k, pb, xb):
    mod = IMPLS[impl]
    rdt = np.float32 if cdtype == np.complex64 else np.float64
    rng = np.random.default_rng(n * 7 + k)
    for sched in schedules(n):
        if sched.num_angles != n * (n - 1) // 2:  # the U(n) layout holds n(n-1)/2 angles (docs/unitary.md)
            continue
        p = rng.uniform(-np.pi, np.pi, pb + (n * n,)).astype(rdt)
        x = rand(rng, xb + (n, k), cdtype)
        g = rand(rng, np.broadcast_shapes(pb, xb) + (n, k), cdtype)
        pt = rand(rng, pb + (n * n,), rdt)
        keep = [a.copy() for a in (p, x, g, pt)]
        for adj in (False, True):
            what = f"{sched} adjoint={adj}"
            y = mod.unitary_apply(p, x, sched, adj)
            close(y, REFERENCE.unitary_apply(p, x, sched, adj), cdtype, "unitary_apply " + what)
            want = REFERENCE.unitary_apply_vjp(p, x, g, sched, adj)
            for out in (None, y):
                d_p, d_x = mod.unitary_apply_vjp(p, x, g, sched, adj, out)
                close(d_p, want[0], cdtype, "unitary_apply_vjp params " + what, scale=10)
                close(d_x, want[1], cdtype, "unitary_apply_vjp x " + what)
            close(mod.unitary_apply_jvp(p, x, pt, x, sched, adj),
                  REFERENCE.unitary_apply_jvp(p, x, pt, x, sched, adj), cdtype, "unitary_apply_jvp " + what,
                  scale=10)
        gu = rand(rng, pb + (n, n), cdtype)
        close(mod.unitary(p, sched, cdtype), REFERENCE.unitary(p, sched, cdtype), cdtype, f"unitary {sched}")
        close(mod.unitary_vjp(p, gu, sched), REFERENCE.unitary_vjp(p, gu, sched), cdtype,
              f"unitary_vjp {sched}", scale=10)
        close(mod.unitary_jvp(p, pt, sched, cdtype), REFERENCE.unitary_jvp(p, pt, sched, cdtype), cdtype,
              f"unitary_jvp {sched}", scale=10)
        for a, b in zip((p, x, g, pt), keep):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- derivatives

@pytest.mark.parametrize("kind", ["circle", "team"])
def test_finite_differences_and_dot(kind):
    """float64: the engine's VJP against central differences of <G, apply(theta, x)>, and
    <JVP(t), G> = <t, VJP(G)> for SO(n) and U(n)."""
    rng = np.random.default_rng(3)
    n, k = 7, 3
    sched = S.get_schedule(kind, n)
    theta = rng.uniform(-np.pi, np.pi, sched.num_angles)
    x = rng.standard_normal((n, k))
    g = rng.standard_normal((n, k))
    d_t, d_x = E.apply_vjp(theta, x, g, sched)
    h = 1e-6
    for q in rng.choice(sched.num_angles, 5, replace=False):
        e = np.zeros_like(theta)
        e[q] = h
        fd = (np.sum(g * E.apply(theta + e, x, sched)) - np.sum(g * E.apply(theta - e, x, sched))) / (2 * h)
        assert abs(fd - d_t[q]) < 1e-7 * max(1, abs(fd))
    tt = rng.standard_normal(theta.shape)
    xt = rng.standard_normal(x.shape)
    lhs = np.sum(E.apply_jvp(theta, x, tt, xt, sched) * g)
    assert abs(lhs - (tt @ d_t + np.sum(xt * d_x))) < 1e-10 * max(1, abs(lhs))
    # U(n): Re<conj(G), JVP> = <t, d_params> + Re<conj(d_x), x_t>
    p = rng.uniform(-np.pi, np.pi, n * n)
    z = rand(rng, (n, k), np.complex128)
    gz = rand(rng, (n, k), np.complex128)
    pt = rng.standard_normal(n * n)
    zt = rand(rng, (n, k), np.complex128)
    for adj in (False, True):
        d_p, d_z = E.unitary_apply_vjp(p, z, gz, sched, adj)
        lhs = np.real(np.sum(np.conj(gz) * E.unitary_apply_jvp(p, z, pt, zt, sched, adj)))
        rhs = pt @ d_p + np.real(np.sum(np.conj(d_z) * zt))
        assert abs(lhs - rhs) < 1e-10 * max(1, abs(lhs))
        q = int(rng.integers(n * n))
        e = np.zeros(n * n)
        e[q] = h
        f = lambda pp: np.real(np.sum(np.conj(gz) * E.unitary_apply(pp, z, sched, adj)))  # noqa: E731
        assert abs((f(p + e) - f(p - e)) / (2 * h) - d_p[q]) < 1e-7


# --------------------------------------------------------------------------- determinism

def test_bitwise_identical_for_thread_counts_and_runs():
    """Gradient partials are summed per fixed column chunk in a fixed order: 1 and 2 threads, and a
    second run on a differently aligned copy, give the same bits."""
    rng = np.random.default_rng(5)
    n, k = 33, 150  # k > MAX_GRAD_CHUNKS * CHUNK and not a multiple of the chunk width
    sched = S.team_schedule(n, 4)
    theta = rng.uniform(-np.pi, np.pi, (2, sched.num_angles)).astype(np.float32)
    x = rng.standard_normal((2, n, k)).astype(np.float32)
    g = rng.standard_normal((2, n, k)).astype(np.float32)
    p = rng.uniform(-np.pi, np.pi, n * n)
    z = rand(rng, (n, k), np.complex128)
    before = numba.get_num_threads()

    def run(xx):
        return (E.apply_vjp(theta, xx, g, sched) + E.unitary_apply_vjp(p, z, z, sched)
                + (E.apply(theta, xx, sched), E.apply_jvp(theta, xx, theta, None, sched)))

    try:
        numba.set_num_threads(1)
        one = run(x)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = run(x)
        buf = np.empty(x.size + 3, dtype=np.float32)[3:].reshape(x.shape)  # another alignment
        buf[...] = x
        again = run(buf)
    finally:
        numba.set_num_threads(before)
    for a, b, c in zip(one, two, again):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_locality_order_is_bitwise_round_order():
    """The L1 locality order computes exactly the product of round order (disjoint rotations commute
    exactly), for team and circle schedules; stages of a team schedule are whole meeting blocks."""
    rng = np.random.default_rng(6)
    n = 40
    for sched in (S.team_schedule(n, 8), S.circle_schedule(n), S.team_schedule(n, 4).restrict(9)):
        theta = rng.uniform(-np.pi, np.pi, sched.num_angles)
        x = rng.standard_normal((1, n, 16))
        outs = []
        for budget in (n, 16, 4, 2):
            plan = E._plan_cached(sched, budget)
            t = theta[plan.aidx][None]
            y = x.copy()
            E._k().so_apply(y, np.cos(t), np.sin(t), 1.0, np.zeros(1, np.int64), plan.kind, plan.idx, 16, 8, False)
            outs.append(y)
        for y in outs[1:]:
            np.testing.assert_array_equal(y, outs[0])
    stage, _ = E._k().locality_stages(16, *(np.asarray(a) for a in (
        S.team_schedule(16, 4).pair_i, S.team_schedule(16, 4).pair_j, S.team_schedule(16, 4).round_offsets)), 8)
    assert stage.max() + 1 < S.team_schedule(16, 4).num_rounds  # rounds were grouped


def test_team_meetings_run_as_register_blocks():
    """The planner turns every 4-round meeting block of a team schedule into one 8-row block op
    (and nothing else: circle pairs, the intra-team round robin's first stage, a block whose pairs are
    written (j, i)); results agree with the reference either way, in both directions."""
    rng = np.random.default_rng(7)
    K = E._k()
    n = 64
    team = S.team_schedule(n, 8)
    plan = E._so_plan(team, np.float32)
    blocks = int(plan.kind.sum())
    first = n // 8 * 28  # RR(8) of every 8 coordinates: 7 rounds of 4 pairs, no 4-round block
    assert blocks * K.BLOCK_ROTS == team.num_angles - first
    assert plan.kind.size == blocks + first and plan.idx.size == 8 * blocks + 2 * first
    assert int(E._so_plan(S.circle_schedule(n), np.float32).kind.sum()) == 0
    # blocks with batches (theta (2, 1, A) against x (3, n, k)), several tiles (k = 37), both dtypes
    for dtype in (np.float32, np.float64):
        th = rng.uniform(-np.pi, np.pi, (2, 1, team.num_angles)).astype(dtype)
        x, g = rand(rng, (3, n, 37), dtype), rand(rng, (2, 3, n, 37), dtype)
        for tr in (False, True):
            close(E.apply(th, x, team, tr), nb.rounds_apply(th, x, team, tr), dtype, "batched apply")
            got = E.apply_vjp(th, x, g, team, tr, output=E.apply(th, x, team, tr))
            for a, b in zip(got, nb.rounds_apply_vjp(th, x, g, team, tr)):
                close(a, b, dtype, "batched apply_vjp", scale=4)
            tt = rand(rng, (2, 3, team.num_angles), dtype)  # a tangent batch wider than theta's
            close(E.apply_jvp(th, x, tt, g[0], team, tr), nb.rounds_apply_jvp(th, x, tt, g[0], team, tr),
                  dtype, "batched apply_jvp", scale=10)
    # one block of the pattern, and the same rotations with one pair written (j, i): not a block
    rounds = [[(2 * q, 2 * ((q + sh) % 4) + 1) for q in range(4)] for sh in (0, 2, 1, 3)]
    swapped = [list(r) for r in rounds]
    swapped[2][1] = swapped[2][1][::-1]
    for rr, want in ((rounds, 1), (swapped, 0)):
        sched = S.Schedule.from_rounds(8, rr)
        assert int(E._so_plan(sched, np.float64).kind.sum()) == want
        th = rng.uniform(-np.pi, np.pi, sched.num_angles)
        x, g = rng.standard_normal((8, 21)), rng.standard_normal((8, 21))
        for tr in (False, True):
            close(E.apply(th, x, sched, tr), nb.rounds_apply(th, x, sched, tr), np.float64, "apply")
            for a, b in zip(E.apply_vjp(th, x, g, sched, tr), nb.rounds_apply_vjp(th, x, g, sched, tr)):
                close(a, b, np.float64, "apply_vjp")


@pytest.mark.parametrize("dtype,ulps", [(np.float32, 2), (np.float64, 2)])
def test_compiled_cos_sin_match_numpy(dtype, ulps):
    """The kernels' cos/sin (gathered through the processing order) are within ``ulps`` units in
    the last place of the exact values, on small, large (past the reduction's range: libm), huge,
    signed-zero, inf and NaN angles, in float32 and float64."""
    rng = np.random.default_rng(9)
    K = E._k()
    x = np.concatenate([rng.uniform(-4, 4, 3000), rng.uniform(-9000, 9000, 3000),
                        rng.uniform(-2e5, 2e5, 1000), [0.0, -0.0, 3e38, -3e38, np.inf, -np.inf, np.nan],
                        np.arange(-40, 40) * np.pi / 2]).astype(dtype)
    theta = np.stack([x, x[::-1]])  # two batch rows
    aidx = rng.permutation(x.size).astype(np.int32)
    c = np.empty((2, x.size), dtype=dtype)
    s = np.empty_like(c)
    for fn in (K.coefficients_serial, K.coefficients):
        c[...] = 7
        s[...] = 7
        fn(theta, aidx, c, s)
        t = theta[:, aidx].astype(np.float64)
        with np.errstate(invalid="ignore"):
            wc, ws = np.cos(t), np.sin(t)
        for got, want in ((c, wc), (s, ws)):
            fin = np.isfinite(want)
            np.testing.assert_array_equal(np.isnan(got), ~fin)
            tol = ulps * np.finfo(dtype).eps * np.maximum(np.abs(want[fin]), np.finfo(dtype).tiny)
            assert np.all(np.abs(got[fin] - want[fin]) <= np.maximum(tol, ulps * np.finfo(dtype).eps / 2))


def test_coefficients_follow_theta_changed_in_place():
    """The backward pass reuses the forward's cos/sin only for equal angle values: changing theta
    in place between the calls gives the gradient of the new theta."""
    rng = np.random.default_rng(8)
    sched = S.team_schedule(16, 4)
    theta = rng.uniform(-np.pi, np.pi, sched.num_angles)
    x, g = rng.standard_normal((16, 5)), rng.standard_normal((16, 5))
    y = E.apply(theta, x, sched)
    d_same = E.apply_vjp(theta, x, g, sched, output=y)[0]
    close(d_same, nb.rounds_apply_vjp(theta, x, g, sched)[0], np.float64, "same theta")
    theta[3] += 0.5
    y2 = nb.rounds_apply(theta, x, sched)
    d_new = E.apply_vjp(theta, x, g, sched, output=y2)[0]
    close(d_new, nb.rounds_apply_vjp(theta, x, g, sched)[0], np.float64, "theta changed in place")


def test_public_api_runs_the_engine():
    """With Numba present the strategy sends NumPy sweeps, U(n) and mid-size team U to the engine."""
    from cupyortho import _strategy

    sched = S.team_schedule(64)
    assert _strategy.cpu_impl("apply_vjp", sched, np.float32, 8) == "engine"
    assert _strategy.cpu_impl("unitary_apply", sched, np.complex64, 8) == "engine"
    assert _strategy.cpu_impl("matrix", sched, np.float32) == "engine"
    assert _strategy.cpu_impl("matrix", S.team_schedule(4096), np.float32) == "engine"
    assert _strategy.cpu_impl("matrix_vjp", S.team_schedule(4096), np.float32) == "blocked"
    assert _strategy.cpu_impl("matrix_vjp", S.team_schedule(2048), np.float32) == "engine"
    assert _strategy.cpu_impl("matrix_jvp", S.team_schedule(4096), np.float32) == "engine"
    assert _strategy.cpu_impl("matrix_vjp", S.circle_schedule(4096), np.float32) == "engine"


def test_import_does_not_load_numba():
    code = "import sys, cupyortho; assert 'numba' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
