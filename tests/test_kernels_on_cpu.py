"""Every CUDA kernel of the package, run on the CPU by the harness in tests/cudasim (and, for the
operation families, on a GPU when there is one), against the NumPy reference.

The CuPy backend's algorithms (``cupyortho.backends.cupy.so/un._impl_*``, which take the device object first) run
unchanged with :class:`cudasim.CpuDevice`: numpy arrays, the launchers' own grid/block/shared-memory
choices, and the same ``.cu`` text compiled with g++.  Threads of a block run as fibers in a seeded
random order between barriers, so a missing ``__syncthreads`` shows as a mismatch.  Results are
compared with the round-by-round reference (``numpy_backend.rounds_*``) for float32 and float64 at sizes on both sides of
every tile and block boundary (n = 2, 3, 31, 32, 33, 64, 65, 130; k = 1, 7, 33), both schedules,
both paths (fused, per-round) and the blocked team path.  The last test checks that every entry of
``KERNELS`` was launched, and a mutation test removes each barrier of the package's kernels in turn
and requires the comparison to fail.
"""

import collections
import itertools
import re

import numpy as np
import pytest

import cudasim

from cupyortho.backends import numpy_unitary as nu
from cupyortho.backends.cupy import kernels as _kernels, so as cb, un as cu
from cupyortho.schedule import circle_schedule, team_schedule
from conftest import BACKENDS

#: The round-by-round reference (numpy_backend.rounds_*), not the CPU backend's compiled or GEMM paths.
nb = BACKENDS["reference"]()

KERNELS = _kernels.KERNELS
LAUNCHED = collections.Counter()  # name expression -> launches, over the whole module

NS = (2, 3, 31, 32, 33, 64, 65, 130)
KS = (1, 7, 33)
DTYPES = (np.float32, np.float64)
#: Device shapes for the launchers: one SM makes wide column tiles (TK > 1, a ragged last tile),
#: 132 SMs narrow ones (TK = 1), a small shared memory narrow tiles from the other side.
DEVICES = (
    dict(multiprocessor_count=1),
    dict(multiprocessor_count=132),
    dict(multiprocessor_count=1, max_shared_memory=8 * 1024),
)


def device(seed, config=0):
    return cudasim.CpuDevice(seed, kernels=KERNELS, launched=LAUNCHED, **DEVICES[config % len(DEVICES)])


@pytest.fixture(params=["cudasim", "gpu"])
def on(request):
    """``on(seed, config)``: the CuPy backend's algorithms (tests/conftest.py ``BACKENDS``, NumPy arrays in
    and out) on the CPU harness shaped like ``DEVICES[config]``, or on the GPU (skipped without one;
    the real device keeps its own limits)."""
    if request.param == "gpu":
        return lambda seed, config=0: BACKENDS["gpu"]()
    return lambda seed, config=0: BACKENDS["cudasim"](seed, kernels=KERNELS, launched=LAUNCHED,
                                                       **DEVICES[config % len(DEVICES)])


def schedules(n):
    """Both kinds; for the team schedule also a small team size, so a stage has several blocks."""
    out = [circle_schedule(n), team_schedule(n)]
    if n >= 8:
        out.append(team_schedule(n, 4 if n < 64 else 16))
    return out


def tol(dtype, n):
    return (2e-5 if dtype == np.float32 else 1e-12) * max(1.0, np.sqrt(n))


def assert_close(got, want, dtype, n, what, bound=None):
    """``got`` equals ``want`` to ``bound`` (default ``tol(dtype, n)``), relative to max(1, max|want|)."""
    bound = tol(dtype, n) if bound is None else bound
    assert isinstance(got, np.ndarray), what
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert np.isfinite(got).all(), f"{what}: non-finite entries (a read of poisoned memory?)"
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    err = float(np.abs(got.astype(np.complex128) - want.astype(np.complex128)).max(initial=0.0)) / scale
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


def inputs(rng, schedule, k, dtype, case):
    """theta, x and cotangent/tangent arrays; the batch layout varies with the case number so both
    shared angles (cs_bstride = 0) and per-batch angles are exercised."""
    n, A = schedule.n, schedule.num_angles
    layout = case % 3
    tshape = (2, A) if layout == 0 else (A,)
    xshape = (2, n, k) if layout == 1 else (n, k)
    theta = rng.uniform(-np.pi, np.pi, tshape).astype(dtype)
    x = rng.standard_normal(xshape).astype(dtype)
    return theta, x


CASES = list(itertools.product(NS, KS, DTYPES))


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"n{n}-k{k}-{np.dtype(d).name}" for n, k, d in CASES])
def test_apply_family(case, on):
    """apply, apply_vjp (with and without ``output=``), apply_jvp on both paths, both directions,
    circle and team schedules, vs the reference."""
    n, k, dtype = CASES[case]
    rng = np.random.default_rng(case)
    # the apply kernels see a schedule only through its pair tables: circle and the default team
    # schedule suffice here (the small-team schedule matters for the blocked matrix path)
    for si, schedule in enumerate(schedules(n)[:2]):
        theta, x = inputs(rng, schedule, k, dtype, case + si)
        transpose = bool((case + si) % 2)
        for pi, path in enumerate(("fused", "rounds")):
            ops = on(seed=case * 7 + si * 2 + pi, config=case + si)
            label = f"{schedule!r} path={path} transpose={transpose}"
            got = ops.apply(theta, x, schedule, transpose, path=path)
            want = nb.apply(theta, x, schedule, transpose)
            assert_close(got, want, dtype, n, f"apply {label}")

            cot = rng.standard_normal(want.shape).astype(dtype)
            output = want if (case + pi) % 2 else None
            got_t, got_x = ops.apply_vjp(theta, x, cot, schedule, transpose, output, path=path)
            want_t, want_x = nb.apply_vjp(theta, x, cot, schedule, transpose)
            assert_close(got_t, want_t, dtype, n * k, f"apply_vjp d_theta {label}")
            assert_close(got_x, want_x, dtype, n, f"apply_vjp d_x {label}")

            dt = rng.standard_normal(theta.shape[-1:]).astype(dtype)
            dx = rng.standard_normal(x.shape).astype(dtype) if pi else None
            got = ops.apply_jvp(theta, x, dt, dx, schedule, transpose, path=path)
            # the kernels see one tangent for the whole batch (dt_bstride = 0); the reference gets
            # it broadcast explicitly
            want = nb.apply_jvp(theta, x, np.broadcast_to(dt, theta.shape), dx, schedule, transpose)
            assert_close(got, want, dtype, n, f"apply_jvp {label}")


MATRIX_CASES = list(itertools.product(NS, DTYPES))


@pytest.mark.parametrize("case", range(len(MATRIX_CASES)),
                         ids=[f"n{n}-{np.dtype(d).name}" for n, d in MATRIX_CASES])
def test_matrix_family(case, on):
    """matrix, matrix_vjp (with and without ``output=U``), matrix_jvp vs the reference: the default
    path (blocked stages for team schedules: build_blocks, block_vjp), and the fused and per-round
    sweeps (matrix_vjp_fused, matrix_vjp_round) for every schedule."""
    n, dtype = MATRIX_CASES[case]
    rng = np.random.default_rng(1000 + case)
    for si, schedule in enumerate(schedules(n)):
        ops = on(seed=case * 5 + si, config=case + si)
        theta = rng.uniform(-np.pi, np.pi, ((2, schedule.num_angles) if (case + si) % 2 else schedule.num_angles))
        theta = theta.astype(dtype)
        want = nb.matrix(theta, schedule)
        cot = rng.standard_normal(want.shape[-2:]).astype(dtype)
        d_want = nb.matrix_vjp(theta, cot, schedule)
        # the sweeps on every schedule up to n = 65; beyond, as before, the per-round one on circle only
        paths = (None, "fused", "rounds") if n <= 65 else (None, "rounds") if schedule.kind == "circle" else (None,)
        for path in paths:
            label = f"{schedule!r} path={path}"
            assert_close(ops.matrix(theta, schedule, path=path), want, dtype, n, f"matrix {label}")
            assert_close(ops.matrix_vjp(theta, cot, schedule, path=path), d_want, dtype, n * n, f"matrix_vjp {label}")
            if path is None:
                assert_close(ops.matrix_vjp(theta, cot, schedule, want, path=path), d_want, dtype, n * n,
                             f"matrix_vjp(output=U) {label}")
        dt = rng.standard_normal(theta.shape).astype(dtype)
        for path in (None, "rounds"):
            assert_close(ops.matrix_jvp(theta, dt, schedule, path=path), nb.matrix_jvp(theta, dt, schedule),
                         dtype, n, f"matrix_jvp {schedule!r} path={path}")


@pytest.mark.parametrize("n,m", [(33, 5), (65, 64), (130, 3)])
def test_stiefel_restriction(n, m):
    """Restricted schedules (pairs i < m only): padding angles of -1 in the block tables."""
    rng = np.random.default_rng(n + m)
    for si, schedule in enumerate(s.restrict(m) for s in schedules(n)):
        dev = device(seed=si, config=si)
        theta = rng.uniform(-np.pi, np.pi, schedule.num_angles)
        x = rng.standard_normal((n, 7))
        assert_close(cb._impl_apply(dev, theta, x, schedule), nb.apply(theta, x, schedule), np.float64, n, "apply")
        want = nb.matrix(theta, schedule)
        assert_close(cb._impl_matrix(dev, theta, schedule), want, np.float64, n, "matrix")
        cot = rng.standard_normal((n, n))
        assert_close(cb._impl_matrix_vjp(dev, theta, cot, schedule), nb.matrix_vjp(theta, cot, schedule),
                     np.float64, n * n, f"matrix_vjp {schedule!r}")


@pytest.mark.parametrize("seed", range(4))
def test_barrier_kernels_for_several_seeds(seed):
    """The kernels with barriers (fused sweeps, block kernels), one mid-size case, several orders."""
    n, k = 33, 7
    rng = np.random.default_rng(seed)
    for config in range(len(DEVICES)):
        dev = device(seed=100 + seed, config=config)
        for schedule in (circle_schedule(n), team_schedule(n, 4)):
            theta = rng.uniform(-np.pi, np.pi, schedule.num_angles)
            x = rng.standard_normal((n, k))
            assert_close(cb._impl_apply(dev, theta, x, schedule, False, "fused"), nb.apply(theta, x, schedule),
                         np.float64, n, "apply")
            got = cb._impl_apply_vjp(dev, theta, x, x, schedule, False, None, "fused")
            want = nb.apply_vjp(theta, x, x, schedule)
            assert_close(got[0], want[0], np.float64, n * k, "apply_vjp d_theta")
            assert_close(cb._impl_apply_jvp(dev, theta, x, theta, x, schedule, False, "fused"),
                         nb.apply_jvp(theta, x, theta, x, schedule), np.float64, n, "apply_jvp")
            cot = rng.standard_normal((n, n))
            assert_close(cb._impl_matrix(dev, theta, schedule), nb.matrix(theta, schedule), np.float64, n, "matrix")
            assert_close(cb._impl_matrix_vjp(dev, theta, cot, schedule), nb.matrix_vjp(theta, cot, schedule),
                         np.float64, n * n, "matrix_vjp")


# --------------------------------------------------------------------------------------- U(n)

UNITARY_CASES = [(n, k, d) for (n, k, d) in CASES if (n, k) in
                 {(2, 1), (3, 7), (31, 33), (32, 1), (33, 7), (64, 7), (65, 1), (130, 1)}
                 and (n, d) != (130, np.float32)]


def _complex_normal(rng, shape, cdtype):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(cdtype)


@pytest.mark.parametrize("case", range(len(UNITARY_CASES)),
                         ids=[f"n{n}-k{k}-{np.dtype(d).name}" for n, k, d in UNITARY_CASES])
def test_unitary_family(case):
    """U(n) vs numpy_unitary: unitary, its VJP (with and without ``output=U``) and JVP; unitary_apply
    both ways, its VJP and JVP; every schedule kind; batch axes on params, on x, or on both
    (broadcast against each other)."""
    n, k, dtype = UNITARY_CASES[case]
    rng = np.random.default_rng(2000 + case)
    cdt = nu.complex_dtype(dtype)
    bound = (3e-5 if dtype == np.float32 else 1e-13) * np.sqrt(n)  # the U(n) harness test's bound, every output
    large = n > 65  # one direction, two schedules, unbatched params: the harness is slow there
    for si, schedule in enumerate(schedules(n)[:2] if large else schedules(n)):
        dev = device(seed=case * 3 + si, config=case + si)
        layout = 1 if large else (case + si) % 3
        pshape = ((2, n * n), (n * n,), (1, 2, n * n))[layout]
        xshape = ((n, k), (2, n, k), (3, 1, n, k))[layout]
        p = rng.uniform(-np.pi, np.pi, pshape).astype(dtype)
        t = rng.standard_normal(pshape).astype(dtype)
        x = _complex_normal(rng, xshape, cdt)
        tx = _complex_normal(rng, xshape, cdt)
        gu = _complex_normal(rng, pshape[:-1] + (n, n), cdt)
        u = nu.unitary(p, schedule, cdt)
        assert_close(cu._impl_unitary(dev, p, schedule, cdt), u, dtype, n, "unitary", bound=bound)
        d_ref = nu.unitary_vjp(p, gu, schedule)
        assert_close(cu._impl_unitary_vjp(dev, p, gu, schedule), d_ref, dtype, n * n, "unitary_vjp", bound=bound)
        assert_close(cu._impl_unitary_vjp(dev, p, gu, schedule, u), d_ref, dtype, n * n, "unitary_vjp(output=U)", bound=bound)
        assert_close(cu._impl_unitary_jvp(dev, p, t, schedule, cdt), nu.unitary_jvp(p, t, schedule, cdt), dtype, n,
                     "unitary_jvp", bound=bound)
        for adjoint in ((bool(case % 2),) if large else (False, True)):
            label = f"{schedule!r} layout={layout} adjoint={adjoint}"
            want = nu.unitary_apply(p, x, schedule, adjoint)
            assert_close(cu._impl_unitary_apply(dev, p, x, schedule, adjoint), want, dtype, n, f"unitary_apply {label}", bound=bound)
            gy = _complex_normal(rng, want.shape, cdt)
            got = cu._impl_unitary_apply_vjp(dev, p, x, gy, schedule, adjoint)
            ref = nu.unitary_apply_vjp(p, x, gy, schedule, adjoint)
            assert_close(got[0], ref[0], dtype, n * k, f"unitary_apply_vjp d_params {label}", bound=bound)
            assert_close(got[1], ref[1], dtype, n, f"unitary_apply_vjp d_x {label}", bound=bound)
            assert_close(cu._impl_unitary_apply_jvp(dev, p, x, t, tx, schedule, adjoint),
                         nu.unitary_apply_jvp(p, x, t, tx, schedule, adjoint), dtype, n, f"unitary_apply_jvp {label}", bound=bound)


# ----------------------------------------------------------------- mutation: remove each barrier

_BARRIER = re.compile(r"__syncthreads\(\)\s*;")


def _mutable(filename, text):
    """Number the barriers: barrier i runs unless the module's ``cudasim_mutant_`` equals i.
    Files without barriers are left alone (and so share the unmutated, already compiled module)."""
    if not _BARRIER.search(text):
        return text
    counter = itertools.count()
    body = _BARRIER.sub(lambda m: f"if (cudasim_mutant_ != {next(counter)}) __syncthreads();", text)
    head = ("static int cudasim_mutant_ = -1;\n"
            "CUDASIM_EXPORT void cudasim_set_mutant(int i) { cudasim_mutant_ = i; }\n")
    return head + body


def _barrier_ops(dev, rng):
    """Every operation whose kernels have barriers, compared with NumPy; yields failures."""
    n, k = 33, 7
    for schedule in (circle_schedule(n), team_schedule(n, 4)):
        theta = rng.uniform(-np.pi, np.pi, schedule.num_angles)
        x = rng.standard_normal((n, k))
        cot = rng.standard_normal((n, n))
        checks = [
            (lambda: cb._impl_apply(dev, theta, x, schedule, False, "fused"), lambda: nb.apply(theta, x, schedule)),
            (lambda: cb._impl_apply_vjp(dev, theta, x, x, schedule, False, None, "fused")[0],
             lambda: nb.apply_vjp(theta, x, x, schedule)[0]),
            (lambda: cb._impl_apply_jvp(dev, theta, x, theta, None, schedule, False, "fused"),
             lambda: nb.apply_jvp(theta, x, theta, None, schedule)),
        ]
        # team: the blocked path (build_blocks, block_vjp); circle: fused sweeps (matrix_vjp_fused)
        checks += [(lambda: cb._impl_matrix(dev, theta, schedule), lambda: nb.matrix(theta, schedule)),
                   (lambda: cb._impl_matrix_vjp(dev, theta, cot, schedule),
                    lambda: nb.matrix_vjp(theta, cot, schedule))]
        for got, want in checks:
            try:
                assert_close(got(), want(), np.float64, n * n, "mutant")
            except (AssertionError, cudasim.KernelError) as e:
                yield e


def _files_with_barriers():
    return sorted({f for f in KERNELS.values() if _BARRIER.search(_kernels.read_source(f))})


@pytest.mark.parametrize("filename", _files_with_barriers())
def test_removing_any_barrier_is_caught(filename):
    """Mutation test on the package's own kernels: with any one ``__syncthreads()`` removed, some
    operation gives a wrong result (or a divergence error) for some seed; unmutated, none does."""
    count = len(_BARRIER.findall(_kernels.read_source(filename)))
    survivors = []
    for mutant in range(-1, count):
        caught = 0
        for seed in range(3):
            dev = cudasim.CpuDevice(seed, kernels=KERNELS, source_transform=_mutable, multiprocessor_count=1)
            dev.module_for(filename).lib.cudasim_set_mutant(mutant)
            try:
                caught += sum(1 for _ in _barrier_ops(dev, np.random.default_rng(seed)))
            finally:
                dev.module_for(filename).lib.cudasim_set_mutant(-1)
            if caught and mutant >= 0:
                break
        if mutant == -1:
            assert caught == 0, f"{filename} failed with every barrier in place"
        elif not caught:
            survivors.append(mutant)
    assert not survivors, (f"{filename}: removing barrier(s) {survivors} (0-based, in source order) went "
                           "unnoticed: the barrier is not needed, or _barrier_ops does not run its kernel")


# ---------------------------------------------------------------------------------- coverage

def test_every_kernel_was_launched():
    """Runs last in this module (pytest keeps file order): the union of launches covers the
    registry (``cupyortho.backends.cupy.kernels.KERNELS``)."""
    if not LAUNCHED:
        pytest.skip("no kernel tests ran in this session (deselected)")
    missing = sorted(set(KERNELS) - set(LAUNCHED))
    unknown = sorted(set(LAUNCHED) - set(KERNELS))
    assert not unknown, unknown
    assert not missing, f"kernels never launched on the CPU: {missing}"
