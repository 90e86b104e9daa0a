"""Dask arrays through apply, apply_vjp and apply_jvp (cupyortho/dask.py, docs/dask.md).

Small cases compare with the NumPy result on the whole array; the large case (x of shape
(1024, 200000) in chunks of 10000 columns, 820 MB per float32 array) generates its chunks lazily,
checks every output chunk against the NumPy result for that chunk as it is computed, and measures
the peak resident memory, which must stay far below the size of one whole array.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading

import numpy as np
import pytest

import cupyortho as co
from cupyortho import errors

da = pytest.importorskip("dask.array")
import dask  # noqa: E402

RNG = np.random.default_rng(20261201)


def _case(n, k, dtype=np.float64, batch=()):
    theta = RNG.uniform(-np.pi, np.pi, co.num_angles(n)).astype(dtype)
    x = RNG.standard_normal(batch + (n, k)).astype(dtype)
    g = RNG.standard_normal(batch + (n, k)).astype(dtype)
    tt = RNG.standard_normal(theta.shape).astype(dtype)
    xt = RNG.standard_normal(batch + (n, k)).astype(dtype)
    return theta, x, g, tt, xt


@pytest.mark.parametrize("method", ["materialize", "rounds", "auto"])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("schedule", ["circle", "team"])
def test_matches_numpy_on_the_whole_array(method, transpose, schedule):
    n, k = 9, 37
    theta, x, g, tt, xt = _case(n, k)
    xd = da.from_array(x, chunks=(n, 5))
    gd = da.from_array(g, chunks=(n, 11))              # other chunks: rechunked to x's
    kw = dict(transpose=transpose, schedule=schedule)
    y = co.apply(theta, xd, method=method, **kw)        # the public function dispatches to dask
    assert isinstance(y, da.Array) and y.chunks == xd.chunks
    np.testing.assert_allclose(y.compute(), co.apply(theta, x, **kw), rtol=0, atol=1e-13)
    d_theta, d_x = co.apply_vjp(theta, xd, gd, method=method, **kw)
    assert isinstance(d_theta, da.Array) and isinstance(d_x, da.Array) and d_x.chunks == xd.chunks
    r_theta, r_x = co.apply_vjp(theta, x, g, **kw)
    np.testing.assert_allclose(d_theta.compute(), r_theta, rtol=0, atol=1e-12)
    np.testing.assert_allclose(d_x.compute(), r_x, rtol=0, atol=1e-13)
    for tangent, dtangent in ((None, None), (xt, da.from_array(xt, chunks=(n, 8)))):
        dy = co.apply_jvp(theta, xd, tt, dtangent, method=method, **kw)
        np.testing.assert_allclose(dy.compute(), co.apply_jvp(theta, x, tt, tangent, **kw), rtol=0, atol=1e-12)


def test_vector_batched_float32_and_in_memory_cotangent():
    n = 6
    theta, x, g, tt, xt = _case(n, 10, np.float32, batch=(4,))
    xd = da.from_array(x, chunks=(2, n, 3))             # chunked along a batch axis and k
    y = co.apply(theta, xd)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.compute(), co.apply(theta, x), atol=2e-6)
    d_theta, d_x = co.apply_vjp(theta, xd, g)           # cotangent in memory
    r_theta, r_x = co.apply_vjp(theta, x, g)
    assert d_theta.dtype == np.float32 and d_x.dtype == np.float32
    np.testing.assert_allclose(d_theta.compute(), r_theta, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(d_x.compute(), r_x, atol=2e-6)
    v = x[0, :, 0].astype(np.float64)
    vd = da.from_array(v, chunks=n)
    np.testing.assert_allclose(co.apply(theta.astype(np.float64), vd).compute(),
                               co.apply(theta.astype(np.float64), v), atol=1e-13)
    d_theta, d_v = co.apply_vjp(theta.astype(np.float64), vd, np.ones(n))
    r_theta, r_v = co.apply_vjp(theta.astype(np.float64), v, np.ones(n))
    assert d_v.shape == (n,)
    np.testing.assert_allclose(d_theta.compute(), r_theta, atol=1e-12)
    np.testing.assert_allclose(d_v.compute(), r_v, atol=1e-13)


def test_results_are_lazy_and_inputs_unchanged():
    n, k = 8, 40
    calls = []

    def gen(block_info=None):
        calls.append(block_info[None]["chunk-location"])
        j = block_info[None]["chunk-location"][1]
        return np.random.default_rng(j).standard_normal(block_info[None]["chunk-shape"])

    xd = da.map_blocks(gen, dtype=np.float64, chunks=((n,), (10,) * 4))
    theta = RNG.standard_normal(co.num_angles(n))
    theta0 = theta.copy()
    for method in ("materialize", "rounds"):
        y = co.apply(theta, xd, method=method)
        d_theta, d_x = co.apply_vjp(theta, xd, xd, method=method)
        dy = co.apply_jvp(theta, xd, theta, xd, method=method)
        assert calls == []                               # nothing ran yet
        dask.compute(y, d_theta, d_x, dy)
        assert len(calls) > 0
        calls.clear()
    np.testing.assert_array_equal(theta, theta0)


def test_d_theta_is_a_deterministic_tree_reduction():
    n, k = 16, 600
    theta, x, g, _, _ = _case(n, k)
    xd = da.from_array(x, chunks=(n, 37))
    for method in ("materialize", "rounds"):
        d_theta, _ = co.apply_vjp(theta, xd, g, method=method)
        runs = [d_theta.compute(scheduler=s) for s in ("threads", "sync", "threads")]
        for r in runs[1:]:
            np.testing.assert_array_equal(r, runs[0])    # bit for bit, whatever the scheduler
        # the graph combines the chunk parts in pairs: log2(#chunks) levels of additions
        adds = [key for key in dict(d_theta.__dask_graph__()) if str(key).startswith("_add-")]
        nchunks = len(xd.chunks[1])
        assert len(adds) == nchunks - 1


def test_errors():
    n = 6
    theta, x, g, tt, _ = _case(n, 12)
    xd = da.from_array(x, chunks=(n, 4))
    with pytest.raises(errors.ShapeError, match="row axis n"):
        co.apply(theta, da.from_array(x, chunks=(3, 4)))
    with pytest.raises(errors.ShapeError, match="row axis n"):
        co.apply_vjp(theta, da.from_array(x, chunks=(3, 4)), g)
    with pytest.raises(errors.BackendMismatchError, match="theta"):
        co.apply(da.from_array(theta), xd)
    with pytest.raises(errors.ShapeError, match="one angle vector"):
        co.apply(np.stack([theta, theta]), xd)
    with pytest.raises(errors.DtypeError, match="x must have dtype"):
        co.apply(theta, xd.astype(np.int64))
    with pytest.raises(errors.DtypeError, match="x must have dtype"):
        co.apply(theta, xd.astype(np.float16))
    with pytest.raises(errors.ShapeError, match="cotangent"):
        co.apply_vjp(theta, xd, g[:, :5])
    with pytest.raises(errors.ShapeError, match="theta_tangent"):
        co.apply_jvp(theta, xd, tt[:-1])
    with pytest.raises(errors.AngleCountError):
        co.apply(theta[:-1], xd)
    with pytest.raises(errors.MethodError):
        co.apply(theta, xd, method="fast")
    bad = x.copy()
    bad[2, 7] = np.nan
    y = co.apply(theta, da.from_array(bad, chunks=(n, 4)))          # checked when computed
    with pytest.raises(errors.NonFiniteError, match="x"):
        y.compute()
    co.apply(theta, da.from_array(bad, chunks=(n, 4)), check_finite=False).compute()


def test_import_cupyortho_does_not_import_dask():
    code = ("import sys, numpy as np, cupyortho as co; co.apply(np.zeros(3), np.ones((3, 2))); "
            "assert 'dask' not in sys.modules, 'dask imported'")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


class _ChunkChecker:
    """A ``da.store`` target: checks each stored chunk against NumPy as it arrives, then drops it.

    ``reference(j, block)`` returns ``(computed, expected)`` for chunk ``j`` (a sample of columns
    recomputed by NumPy; the full chunk would double the test's time), and may record more."""

    def __init__(self, reference, c):
        self.reference = reference
        self.c = c
        self.max_err = 0.0
        self.chunks = []
        self.lock = threading.Lock()

    def __setitem__(self, index, block):
        j = index[-1].start // self.c
        got, expected = self.reference(j, block)
        err = float(np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max())))
        with self.lock:
            self.max_err = max(self.max_err, err)
            self.chunks.append(j)


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_large_array_chunk_by_chunk_with_one_chunks_memory():
    """x (1024, 200000) float32 in chunks of 10000 columns: outputs checked chunk by chunk."""
    n, k, c, s = 1024, 200_000, 10_000, 256            # s sampled columns per chunk for the reference
    dtype = np.float32
    nb = k // c
    mb_whole = n * k * np.dtype(dtype).itemsize / 2**20  # 781 MiB per array
    theta = np.random.default_rng(1).uniform(-np.pi, np.pi, co.num_angles(n)).astype(dtype)
    tt = np.random.default_rng(2).standard_normal(theta.shape).astype(dtype)

    def block(seed, j):
        return np.random.default_rng([seed, j]).standard_normal((n, c), dtype=dtype)

    def lazy(seed):
        return da.map_blocks(lambda block_info=None: block(seed, block_info[None]["chunk-location"][1]),
                             dtype=dtype, chunks=((n,), (c,) * nb))

    x, g = lazy(1), lazy(2)
    U = co.matrix(theta).astype(np.float64)
    dU = co.matrix_jvp(theta, tt).astype(np.float64)
    g_dot_dy = []                                       # <g_c, dy_c> per chunk, for the dot test

    def ref_y(j, yb):
        return yb[:, :s], U @ block(1, j)[:, :s]

    def ref_dy(j, dyb):
        g_dot_dy.append(float(np.vdot(block(2, j).astype(np.float64), dyb)))
        return dyb[:, :s], dU @ block(1, j)[:, :s]

    def ref_dx(j, dxb):
        return dxb[:, :s], U.T @ block(2, j)[:, :s]

    rss0 = _rss_mb()
    y = co.apply(theta, x)
    dy = co.apply_jvp(theta, x, tt)
    d_theta, d_x = co.apply_vjp(theta, x, g)
    assert y.chunks == x.chunks and d_x.chunks == x.chunks and dy.chunks == x.chunks
    checks = [_ChunkChecker(ref_y, c), _ChunkChecker(ref_dy, c), _ChunkChecker(ref_dx, c)]
    # two passes over the data, each holding about one chunk at a time: the forward outputs, then
    # the VJP (d_theta's reduction and d_x from one read of each chunk).
    da.store([y, dy], checks[:2], lock=False, scheduler="sync")
    stores = da.store([d_x], checks[2:], lock=False, compute=False)
    _, d_theta_value = dask.compute(stores, d_theta, scheduler="sync")
    peak = _rss_mb() - rss0
    lhs = float(np.dot(d_theta_value.astype(np.float64), tt))      # <d_theta, t> = <g, dU x>
    rhs = float(np.sum(g_dot_dy))
    print(f"peak RSS growth {peak:.0f} MiB (one whole array {mb_whole:.0f} MiB); max rel. errors "
          f"y {checks[0].max_err:.1e} dy {checks[1].max_err:.1e} d_x {checks[2].max_err:.1e}; "
          f"dot test {lhs:.6e} vs {rhs:.6e}; load {os.getloadavg()}")
    for ch in checks:
        assert sorted(ch.chunks) == list(range(nb))      # every chunk stored and checked once
        assert ch.max_err < 1e-5, ch.max_err
    assert d_theta_value.shape == theta.shape and d_theta_value.dtype == dtype
    assert abs(lhs - rhs) < 1e-4 * abs(rhs)
    assert peak < 0.5 * mb_whole, f"peak RSS grew by {peak:.0f} MiB"
