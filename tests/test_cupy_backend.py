"""The CuPy backend against the NumPy reference: on the CPU harness, and on a GPU when there is one.

One set of test bodies runs the backend's algorithm code (``cupyortho.backends.cupy.so._impl_*``) twice:

* ``cudasim``: with the CPU harness of ``tests/cudasim`` as the device (numpy arrays, the same
  ``.cu`` kernels compiled with g++, threads in shuffled order, real barriers).  Runs in CI.
* ``gpu``: with the real :class:`~cupyortho.backends.cupy.device.CupyDevice` on CuPy arrays.  Skipped,
  with the reason, when CuPy or a GPU is missing.

The operation-by-size sweeps of every kernel on both devices (every path, sizes on both sides of
the tile and block boundaries) are in tests/test_kernels_on_cpu.py; this module checks what the
algorithms add around them: batch broadcasting, frames, empty inputs, tile planning, bitwise
reproducibility, the team-block tables, random shapes (hypothesis).  Tolerances:
float64 ``1e-12`` (relative to the size of the values; apply/VJP sums of ``n`` rotations each), float32
``2e-5`` for apply and ``1e-4`` relative for angle cotangents (sums over columns and rounds).
GPU-only tests at the end go through the public API: dispatch, non-contiguous inputs, another device,
a non-default stream, and mixing NumPy with CuPy arguments.  The devices are the ``cudasim`` and
``gpu`` entries of the ``BACKENDS`` table of tests/conftest.py; purity (inputs not modified) is tested
for every backend in tests/test_backends.py.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import cupyortho as co
from cupyortho import schedule as S
from cupyortho.backends import team_plan
from cupyortho.backends.cupy import so as cb
from cupyortho.errors import BackendMismatchError, MethodError, ScheduleError
from conftest import BACKENDS, gpu_reason


#: The round-by-round reference (``numpy_backend.rounds_*``), so these tests do not depend on the
#: CPU backend's GEMM paths.
nb = BACKENDS["reference"]()


# ----------------------------------------------------------------------------- devices

GPU_REASON = gpu_reason()
needs_gpu = pytest.mark.skipif(GPU_REASON is not None, reason=f"GPU test: {GPU_REASON}")


@pytest.fixture(params=["cudasim", "gpu"])
def make_ops(request):
    """A factory of the CuPy backend on the CPU harness or the GPU (tests/conftest.py ``BACKENDS``):
    ``make_ops(seed=..., multiprocessor_count=...)``; NumPy arrays in and out."""
    return BACKENDS[request.param]


@pytest.fixture
def ops(make_ops):
    return make_ops()


# ----------------------------------------------------------------------------- helpers

TOL = {np.float64: 1e-12, np.float32: 2e-5}
DTYPES = [np.float64, np.float32]


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _angles(rng, sched, batch=(), dtype=np.float64):
    return rng.uniform(-np.pi, np.pi, size=tuple(batch) + (sched.num_angles,)).astype(dtype)


def assert_close(actual, expected, dtype, scale=1.0, what=""):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    ref = max(1.0, float(np.abs(expected).max(initial=0.0)))
    err = float(np.abs(actual - expected).max(initial=0.0))
    assert err <= TOL[dtype] * scale * ref, f"{what}: max error {err:.3g} (scale {ref:.3g}) > {TOL[dtype] * scale:.3g}"


def _schedules(n):
    out = [S.circle_schedule(n), S.team_schedule(n)]
    if n >= 5:
        out.append(S.team_schedule(n, 2 if n < 40 else 8))  # several team stages, padding
    return out


# ----------------------------------------------------------------------------- apply

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,t", [(2, 2, None), (5, 9, 2), (17, 17, 4), (33, 40, None)])
def test_team_apply_with_many_columns_matches_numpy(ops, n, k, t, dtype, rng):
    # Team schedules with k >= n: the backend sweeps the rounds (whether to go through U instead is
    # decided by cupyortho._strategy, not by the backend), with batch axes on either side.
    sched = S.team_schedule(n, t)
    for tb, xb in [((), ()), ((2,), ()), ((), (3,)), ((2, 1), (1, 2))]:
        theta = _angles(rng, sched, batch=tb, dtype=dtype)
        x = _rand(rng, xb + (n, k), dtype)
        batch = np.broadcast_shapes(tb, xb)
        g = _rand(rng, batch + (n, k), dtype)
        for transpose in (False, True):
            e_y = nb.apply(theta, x, sched, transpose)
            e_theta, e_x = nb.apply_vjp(theta, x, g, sched, transpose)
            what = f"{sched} {tb} {xb} T={transpose}"
            assert_close(ops.apply(theta, x, sched, transpose), e_y, dtype, what=what)
            d_theta, d_x = ops.apply_vjp(theta, x, g, sched, transpose, None)
            assert d_theta.shape == theta.shape and d_x.shape == x.shape
            assert_close(d_theta, e_theta, dtype, scale=5 * k, what="d_theta " + what)
            assert_close(d_x, e_x, dtype, scale=5, what="d_x " + what)


def test_unknown_paths_are_refused(ops, rng):
    sched = S.circle_schedule(4)
    with pytest.raises(MethodError, match="path must be one of"):
        ops.apply(_angles(rng, sched), np.eye(4), sched, False, path="dense")
    with pytest.raises(MethodError, match="path must be one of"):
        ops.matrix(_angles(rng, sched), sched, path="dense")
    with pytest.raises(ScheduleError, match="team schedule"):
        ops.matrix(_angles(rng, sched), sched, path="blocked")


@settings(deadline=None)
@given(
    n=st.integers(2, 40),
    k=st.integers(1, 12),
    batches=st.sampled_from([((), ()), ((2,), ()), ((), (3,)), ((2, 1), (1, 3)), ((1,), (2,))]),
    kind=st.sampled_from(["circle", "team"]),
    path=st.sampled_from(["fused", "rounds", None]),
    transpose=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_shapes_match_numpy(n, k, batches, kind, path, transpose, dtype, seed):
    ops = BACKENDS["cudasim"](seed % 1000)
    rng = np.random.default_rng(seed)
    sched = S.get_schedule(kind, n)
    tb, xb = batches
    theta = _angles(rng, sched, batch=tb, dtype=dtype)
    x = _rand(rng, xb + (n, k), dtype)
    g = _rand(rng, np.broadcast_shapes(tb, xb) + (n, k), dtype)
    t = _rand(rng, theta.shape, dtype)
    assert_close(ops.apply(theta, x, sched, transpose, path=path), nb.apply(theta, x, sched, transpose), dtype)
    d = ops.apply_vjp(theta, x, g, sched, transpose, None, path=path)
    e = nb.apply_vjp(theta, x, g, sched, transpose)
    assert_close(d[0], e[0], dtype, scale=10 * k * (1 + len(tb) + len(xb)))
    assert_close(d[1], e[1], dtype, scale=5)
    assert_close(ops.apply_jvp(theta, x, t, None, sched, transpose, path=path),
                 nb.apply_jvp(theta, x, t, None, sched, transpose), dtype, scale=10)


# ----------------------------------------------------------------------------- materialized

def _paths(sched):
    return ["fused", "rounds"] + (["blocked"] if sched.kind == "team" else [])


def test_batched_matrix_and_vjp(ops, rng):
    for sched in _schedules(9):
        theta = _angles(rng, sched, batch=(2, 3))
        g = _rand(rng, (2, 3, 9, 9), np.float64)
        for path in _paths(sched):
            assert_close(ops.matrix(theta, sched, path=path), nb.matrix(theta, sched), np.float64)
            assert_close(ops.matrix_vjp(theta, g, sched, path=path), nb.matrix_vjp(theta, g, sched),
                         np.float64, scale=50)


# ----------------------------------------------------------------------------- batches, frames

@pytest.mark.parametrize("path", ["fused", "rounds"])
def test_batch_axes_broadcast_and_reduce(ops, path, rng):
    n, k = 6, 3
    sched = S.circle_schedule(n)
    cases = [((3, 1), (1, 2)), ((), (4,)), ((4,), ()), ((2, 1), (2, 5))]
    for tb, xb in cases:
        theta = _angles(rng, sched, batch=tb)
        x = _rand(rng, xb + (n, k), np.float64)
        batch = np.broadcast_shapes(tb, xb)
        g = _rand(rng, batch + (n, k), np.float64)
        t_theta = _rand(rng, theta.shape, np.float64)
        assert_close(ops.apply(theta, x, sched, False, path=path), nb.apply(theta, x, sched), np.float64)
        d = ops.apply_vjp(theta, x, g, sched, False, None, path=path)
        e = nb.apply_vjp(theta, x, g, sched)
        assert d[0].shape == theta.shape and d[1].shape == x.shape
        assert_close(d[0], e[0], np.float64, scale=50, what=f"d_theta {tb} {xb}")
        assert_close(d[1], e[1], np.float64, scale=10, what=f"d_x {tb} {xb}")
        assert_close(ops.apply_jvp(theta, x, t_theta, None, sched, False, path=path),
                     nb.apply_jvp(theta, x, t_theta, None, sched), np.float64, scale=10)


@pytest.mark.parametrize("path", ["fused", "rounds"])
def test_frames_use_the_restricted_schedule(ops, path, rng):
    for n, m in [(5, 2), (9, 4), (33, 3)]:
        for kind in ("circle", "team"):
            sched = S.get_schedule(kind, n, m)
            theta = _angles(rng, sched)
            eye = np.eye(n, m)
            g = _rand(rng, (n, m), np.float64)
            assert_close(ops.apply(theta, eye, sched, False, path=path), nb.apply(theta, eye, sched), np.float64)
            d = ops.apply_vjp(theta, eye, g, sched, False, None, path=path)
            assert_close(d[0], nb.apply_vjp(theta, eye, g, sched)[0], np.float64, scale=20)


def test_empty_batches_and_columns(ops):
    for sched in (S.circle_schedule(6), S.team_schedule(6, 2)):
        A = sched.num_angles
        th0 = np.zeros((0, A))
        x = np.ones((6, 3))
        g0 = np.ones((0, 6, 3))
        for path in ("fused", "rounds"):
            assert ops.apply(th0, x, sched, False, path=path).shape == (0, 6, 3)
            d = ops.apply_vjp(th0, x, g0, sched, False, None, path=path)
            assert d[0].shape == (0, A) and d[1].shape == (6, 3)
            np.testing.assert_array_equal(d[1], 0)
            x0 = np.ones((6, 0))
            d = ops.apply_vjp(np.ones(A), x0, x0, sched, False, None, path=path)
            assert d[0].shape == (A,) and d[1].shape == (6, 0)
            np.testing.assert_array_equal(d[0], 0)
        assert ops.matrix(th0, sched).shape == (0, 6, 6)
        assert ops.matrix_vjp(th0, np.ones((0, 6, 6)), sched).shape == (0, A)


# ----------------------------------------------------------------------------- tiles, determinism

def test_wide_tiles_and_partial_last_tile(make_ops, rng):
    # One advertised SM: the fused kernels take tiles of several columns, the last one partial.
    ops = make_ops(multiprocessor_count=1)
    n, k = 17, 11
    sched = S.circle_schedule(n)
    theta = _angles(rng, sched)
    x, g = _rand(rng, (n, k), np.float64), _rand(rng, (n, k), np.float64)
    if ops.name == "cudasim":
        assert cb._tile_width(ops.dev, n, k, 1, 2, 8, A=sched.num_angles) == 6  # tiles of 6 + 5 columns
    assert_close(ops.apply(theta, x, sched, False, path="fused"), nb.apply(theta, x, sched), np.float64)
    d = ops.apply_vjp(theta, x, g, sched, False, None, path="fused")
    e = nb.apply_vjp(theta, x, g, sched)
    assert_close(d[0], e[0], np.float64, scale=50)
    assert_close(d[1], e[1], np.float64)


def test_tile_width_limits():
    class Dev:
        max_shared_memory = 48 * 1024
        multiprocessor_count = 100

    dev = Dev()
    # Too big for shared memory -> per-round path; forcing 'fused' is an error.
    assert cb._tile_width(dev, 8192, 4, 1, 1, 8) is None
    with pytest.raises(MethodError, match="shared memory"):
        cb._tile_width(dev, 8192, 4, 1, 1, 8, path="fused")
    assert cb._tile_width(dev, 64, 4, 1, 1, 8, path="rounds") is None
    # Never wider than k or than shared memory allows.
    for n, k, buffers, itemsize in [(64, 1000, 1, 8), (64, 3, 2, 4), (1000, 10**5, 2, 8)]:
        tk = cb._tile_width(dev, n, k, 1, buffers, itemsize)
        assert 1 <= tk <= k and buffers * n * tk * itemsize <= dev.max_shared_memory
    # Backward partial sums: ntiles * A * itemsize stays within the budget (or 8 gradients).
    n, k, A = 256, 4096, 256 * 255 // 2
    tk = cb._tile_width(dev, n, k, 1, 2, 4, A=A)
    budget = max(cb.PARTIAL_BYTES, 8 * A * 4)
    assert tk is None or -(-k // tk) * A * 4 <= budget


@pytest.mark.parametrize("width", [1, 3, 64])
def test_forced_tile_width(make_ops, width, rng, monkeypatch):
    ops = make_ops()
    monkeypatch.setattr(cb, "TILE_WIDTH", width)
    n, k = 10, 7
    sched = S.circle_schedule(n)
    theta = _angles(rng, sched)
    x, g = _rand(rng, (n, k), np.float64), _rand(rng, (n, k), np.float64)
    if ops.name == "cudasim":
        assert cb._tile_width(ops.dev, n, k, 1, 2, 8, A=sched.num_angles) == min(width, k)
    d = ops.apply_vjp(theta, x, g, sched, False, None, path="fused")
    e = nb.apply_vjp(theta, x, g, sched)
    assert_close(d[0], e[0], np.float64, scale=50)
    assert_close(d[1], e[1], np.float64)
    t = _rand(rng, theta.shape, np.float64)
    assert_close(ops.apply_jvp(theta, x, t, None, sched, False, path="fused"),
                 nb.apply_jvp(theta, x, t, None, sched), np.float64, scale=10)


def test_partial_budget_falls_back_to_rounds(make_ops, rng, monkeypatch):
    ops = make_ops()
    monkeypatch.setattr(cb, "PARTIAL_BYTES", 1)  # only 8 gradients' worth of partial sums allowed
    n, k = 12, 40
    sched = S.circle_schedule(n)
    theta = _angles(rng, sched)
    x, g = _rand(rng, (n, k), np.float64), _rand(rng, (n, k), np.float64)
    if ops.name == "cudasim":
        tk = cb._tile_width(ops.dev, n, k, 1, 2, 8, A=sched.num_angles)
        assert tk is not None and -(-k // tk) <= 8
    d = ops.apply_vjp(theta, x, g, sched, False, None)
    e = nb.apply_vjp(theta, x, g, sched)
    assert_close(d[0], e[0], np.float64, scale=100)


def test_backward_is_bitwise_reproducible(make_ops, rng):
    # Different thread/block orders (harness seeds; repeated GPU runs) give identical bits:
    # the column sums have a fixed order and no atomics.
    n, k = 33, 40
    results = []
    for seed in (1, 2, 3):
        ops = make_ops(seed=seed, multiprocessor_count=1)
        for sched in (S.circle_schedule(n), S.team_schedule(n, 4)):
            theta = _angles(np.random.default_rng(5), sched, dtype=np.float32)
            x = _rand(np.random.default_rng(6), (n, k), np.float32)
            g = _rand(np.random.default_rng(7), (n, k), np.float32)
            gm = _rand(np.random.default_rng(8), (n, n), np.float32)
            out = [ops.apply_vjp(theta, x, g, sched, False, None, path=p)[0] for p in ("fused", "rounds")]
            out += [ops.matrix_vjp(theta, gm, sched, path=p) for p in _paths(sched)]
            results.append([np.asarray(o).tobytes() for o in out])
    assert results[0] == results[2] and results[1] == results[3] and results[0] == results[4]


# ----------------------------------------------------------------------------- team tables

@pytest.mark.parametrize("n,t", [(2, 1), (5, 2), (8, 4), (17, 4), (33, 8), (64, 16)])
def test_team_block_tables_cover_every_angle_once(n, t):
    sched = S.team_schedule(n, t)
    tab = team_plan.kernel_tables(sched)
    angles = tab.block_angle[tab.block_angle >= 0]
    np.testing.assert_array_equal(np.sort(angles), np.arange(sched.num_angles))
    for s in range(tab.S):
        np.testing.assert_array_equal(np.sort(tab.coords[s].ravel()), np.arange(tab.N))
        assert (np.diff(tab.coords[s], axis=1) > 0).all()  # local order = global order
    assert tab.local_i.shape == tab.local_j.shape == tab.block_angle.shape == (tab.S, tab.NB, t, t)
    assert (tab.local_i < tab.local_j).all()
    both = np.concatenate([tab.local_i, tab.local_j], axis=-1)
    np.testing.assert_array_equal(np.sort(both, axis=-1), np.broadcast_to(np.arange(2 * t), both.shape))
    # Each present angle sits on the coordinates of its plane (i, j).
    iu, ju = np.triu_indices(n, 1)
    s_, b_, l_, p_ = np.nonzero(tab.block_angle >= 0)
    q = tab.block_angle[s_, b_, l_, p_]
    np.testing.assert_array_equal(tab.coords[s_, b_, tab.local_i[s_, b_, l_, p_]], iu[q])
    np.testing.assert_array_equal(tab.coords[s_, b_, tab.local_j[s_, b_, l_, p_]], ju[q])


def test_team_block_tables_follow_the_round_order():
    # Stage by stage, local round by local round, the present pairs are the schedule's rounds in
    # order (empty rounds dropped), so the product of the blocks is the schedule's U.
    for n, t in [(9, 2), (17, 4), (33, 8)]:
        sched = S.team_schedule(n, t)
        tab = team_plan.kernel_tables(sched)
        seen = []
        for s in range(tab.S):
            for l in range(t):
                a = tab.block_angle[s, :, l]
                if (a >= 0).any():
                    seen.append(np.sort(a[a >= 0]))
        expected = [np.sort(rd.angle) for rd in sched.rounds]
        assert len(seen) == len(expected)
        for got, want in zip(seen, expected):
            np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- GPU-only (public API)

def _public_inputs(rng, n, k):
    """Angles of the default schedule for n, and x and a cotangent (n, k)."""
    return rng.uniform(-3, 3, co.num_angles(n)), rng.standard_normal((n, k)), rng.standard_normal((n, k))


@needs_gpu
def test_public_api_dispatches_to_cupy(rng):
    import cupy

    n, k = 20, 5
    theta, x, g = _public_inputs(rng, n, k)
    for kind in ("circle", "team"):
        u = co.matrix(cupy.asarray(theta), schedule=kind)
        assert isinstance(u, cupy.ndarray) and u.device.id == cupy.cuda.Device().id
        np.testing.assert_allclose(u.get(), co.matrix(theta, schedule=kind), atol=1e-12)
        y = co.apply(cupy.asarray(theta), cupy.asarray(x[:, 0]), schedule=kind)
        np.testing.assert_allclose(y.get(), co.apply(theta, x[:, 0], schedule=kind), atol=1e-12)
        d = co.apply_vjp(cupy.asarray(theta), cupy.asarray(x), cupy.asarray(g), schedule=kind)
        e = co.apply_vjp(theta, x, g, schedule=kind)
        np.testing.assert_allclose(d[0].get(), e[0], atol=1e-11)
        np.testing.assert_allclose(d[1].get(), e[1], atol=1e-12)
        q = co.frame(cupy.asarray(theta[: co.num_angles(n, 3)]), n, 3, schedule=kind)
        np.testing.assert_allclose(q.get(), co.frame(theta[: co.num_angles(n, 3)], n, 3, schedule=kind),
                                   atol=1e-12)
        gq = rng.standard_normal((n, 3))
        th3 = theta[: co.num_angles(n, 3)]
        np.testing.assert_allclose(co.frame_vjp(cupy.asarray(th3), cupy.asarray(gq), n, 3, schedule=kind).get(),
                                   co.frame_vjp(th3, gq, n, 3, schedule=kind), atol=1e-11)
        gu = rng.standard_normal((n, n))
        np.testing.assert_allclose(co.matrix_vjp(cupy.asarray(theta), cupy.asarray(gu), schedule=kind).get(),
                                   co.matrix_vjp(theta, gu, schedule=kind), atol=1e-10)
        t = rng.standard_normal(theta.shape)
        np.testing.assert_allclose(co.matrix_jvp(cupy.asarray(theta), cupy.asarray(t), schedule=kind).get(),
                                   co.matrix_jvp(theta, t, schedule=kind), atol=1e-11)
        np.testing.assert_allclose(
            co.apply_jvp(cupy.asarray(theta), cupy.asarray(x), cupy.asarray(t), cupy.asarray(g),
                         transpose=True, schedule=kind).get(),
            co.apply_jvp(theta, x, t, g, transpose=True, schedule=kind), atol=1e-11)
        u32 = co.matrix(cupy.asarray(theta, dtype=np.float32), schedule=kind)
        assert u32.dtype == np.float32
        np.testing.assert_allclose(u32.get(), co.matrix(theta, schedule=kind), atol=2e-5)


@needs_gpu
def test_mixing_numpy_and_cupy_is_an_error(rng):
    import cupy

    n = 5
    theta = rng.uniform(-3, 3, co.num_angles(n))
    with pytest.raises(BackendMismatchError, match="x is a numpy array"):
        co.apply(cupy.asarray(theta), np.eye(n))
    with pytest.raises(BackendMismatchError):
        co.matrix_vjp(theta, cupy.eye(n))


@needs_gpu
def test_non_contiguous_inputs(rng):
    import cupy

    n, k = 24, 6
    theta = rng.uniform(-3, 3, (2, co.num_angles(n)))
    big = rng.standard_normal((k * 2, n))  # x = big[::2].T is strided and transposed
    x = big[::2].T
    th_dev = cupy.asarray(np.repeat(theta, 2, axis=0))[::2]
    x_dev = cupy.asarray(big)[::2].T
    assert not x_dev.flags.c_contiguous and not th_dev.flags.c_contiguous
    for kind in ("circle", "team"):
        np.testing.assert_allclose(co.apply(th_dev, x_dev, schedule=kind).get(),
                                   co.apply(theta, x, schedule=kind), atol=1e-12)
        np.testing.assert_allclose(co.matrix(th_dev, schedule=kind).get(), co.matrix(theta, schedule=kind),
                                   atol=1e-12)


@needs_gpu
def test_arrays_on_another_device(rng):
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("GPU test: needs two CUDA devices")
    n, k = 16, 3
    theta = rng.uniform(-3, 3, co.num_angles(n))
    x = rng.standard_normal((n, k))
    with cupy.cuda.Device(1):
        th1, x1 = cupy.asarray(theta), cupy.asarray(x)
    m = co.num_angles(n, 3)
    with cupy.cuda.Device(0):  # current device 0, data on device 1
        y = co.apply(th1, x1)
        u = co.matrix(th1, schedule="team")
        q = co.frame(th1[:m], n, 3)  # the public layer's identity frame is made on device 0
        d_theta, d_x = co.apply_vjp(th1, x1, x1)
    assert y.device.id == 1 and u.device.id == 1 and q.device.id == 1 and d_theta.device.id == 1
    np.testing.assert_allclose(q.get(), co.frame(theta[:m], n, 3), atol=1e-12)
    np.testing.assert_allclose(d_theta.get(), co.apply_vjp(theta, x, x)[0], atol=1e-11)
    np.testing.assert_allclose(y.get(), co.apply(theta, x), atol=1e-12)
    np.testing.assert_allclose(u.get(), co.matrix(theta, schedule="team"), atol=1e-12)


@needs_gpu
def test_non_default_stream(rng):
    import cupy

    n, k = 40, 8
    theta, x, g = _public_inputs(rng, n, k)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        th, xx, gg = cupy.asarray(theta), cupy.asarray(x), cupy.asarray(g)
        y = co.apply(th, xx)
        d_theta, d_x = co.apply_vjp(th, xx, gg)
        u = co.matrix(th, schedule="team")
        du = co.matrix_vjp(th, cupy.asarray(g @ g.T), schedule="team")
        host = [a.get(stream=stream) for a in (y, d_theta, d_x, u, du)]
    stream.synchronize()
    e_theta, e_x = co.apply_vjp(theta, x, g)
    np.testing.assert_allclose(host[0], co.apply(theta, x), atol=1e-12)
    np.testing.assert_allclose(host[1], e_theta, atol=1e-11)
    np.testing.assert_allclose(host[2], e_x, atol=1e-12)
    np.testing.assert_allclose(host[3], co.matrix(theta, schedule="team"), atol=1e-12)
    np.testing.assert_allclose(host[4], co.matrix_vjp(theta, g @ g.T, schedule="team"), atol=1e-10)
