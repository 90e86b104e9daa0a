"""Input checking and purity of every public function: clear errors, inputs never modified."""

import sys
import subprocess

import numpy as np
import pytest

import cupyortho as co
from cupyortho.errors import (
    AngleCountError, CupyorthoError, DtypeError, NonFiniteError, ScheduleError, ShapeError, SizeError,
)

N = 5
A = co.num_angles(N)


def _inputs(rng, dtype=np.float64):
    return dict(
        theta=rng.normal(size=(2, A)).astype(dtype),
        x=rng.normal(size=(N, 3)).astype(dtype),
        gy=rng.normal(size=(2, N, 3)).astype(dtype),
        gu=rng.normal(size=(2, N, N)).astype(dtype),
        tf=rng.normal(size=(2, co.num_angles(N, 2))).astype(dtype),
        gq=rng.normal(size=(2, N, 2)).astype(dtype),
    )


CALLS = {
    "matrix": lambda d, s: co.matrix(d["theta"], schedule=s),
    "apply": lambda d, s: co.apply(d["theta"], d["x"], schedule=s),
    "apply_T": lambda d, s: co.apply(d["theta"], d["x"], transpose=True, schedule=s),
    "frame": lambda d, s: co.frame(d["tf"], N, 2, schedule=s),
    "matrix_vjp": lambda d, s: co.matrix_vjp(d["theta"], d["gu"], schedule=s),
    "apply_vjp": lambda d, s: co.apply_vjp(d["theta"], d["x"], d["gy"], schedule=s),
    "apply_vjp_out": lambda d, s: co.apply_vjp(d["theta"], d["x"], d["gy"], schedule=s, output=d["gy"] * 0.5),
    "matrix_vjp_out": lambda d, s: co.matrix_vjp(d["theta"], d["gu"], schedule=s, output=d["gu"] * 0.5),
    "frame_vjp": lambda d, s: co.frame_vjp(d["tf"], d["gq"], N, 2, schedule=s),
    "matrix_jvp": lambda d, s: co.matrix_jvp(d["theta"], d["theta"] * 0.3, schedule=s),
    "apply_jvp": lambda d, s: co.apply_jvp(d["theta"], d["x"], d["theta"] * 0.3, d["x"] * 2, schedule=s),
    "frame_jvp": lambda d, s: co.frame_jvp(d["tf"], d["tf"] * 0.3, N, 2, schedule=s),
}


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("kind", ["circle", "team"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inputs_are_not_modified(name, kind, dtype, rng):
    d = _inputs(rng, dtype)
    before = {k: v.copy() for k, v in d.items()}
    out = CALLS[name](d, kind)
    for k in d:
        assert np.array_equal(d[k], before[k]), f"{name} modified {k}"
    outs = out if isinstance(out, tuple) else (out,)
    for o in outs:
        assert o.dtype == dtype
        assert all(not np.shares_memory(o, v) for v in d.values())


def test_read_only_inputs_work(rng):
    d = _inputs(rng)
    for v in d.values():
        v.flags.writeable = False
    for name, call in CALLS.items():
        call(d, None)


def test_non_contiguous_inputs(rng):
    theta = rng.normal(size=(A, 2)).T  # Fortran-ordered batch
    x = rng.normal(size=(3, N)).T
    y = co.apply(theta, x)
    np.testing.assert_allclose(y, co.matrix(np.ascontiguousarray(theta)) @ np.ascontiguousarray(x), atol=1e-13)


def _raises(exc, fragments, call):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    for f in fragments:
        assert f in msg, (f, msg)
    assert isinstance(info.value, CupyorthoError)


def test_angle_count_errors(rng):
    _raises(AngleCountError, ["n(n-1)/2", "got 7", "n = 4 needs 6", "n = 5 needs 10"], lambda: co.matrix(np.zeros(7)))
    _raises(AngleCountError, ["10 angles for n = 5", "(6,)"], lambda: co.matrix(np.zeros(6), n=5))
    _raises(AngleCountError, ["10 angles", "n (from x.shape) = 5", "(6,)"], lambda: co.apply(np.zeros(6), np.zeros(5)))
    _raises(AngleCountError, ["n*m - m(m+1)/2 = 7", "m = 2", "(6,)"], lambda: co.frame(np.zeros(6), 5, 2))
    _raises(AngleCountError, ["got 0"], lambda: co.matrix(np.zeros(0)))
    _raises(SizeError, ["disagrees", "n = 4"], lambda: co.matrix(np.zeros(6), n=5, schedule=co.circle_schedule(4)))


def test_shape_errors(rng):
    t = np.zeros(A)
    _raises(ShapeError, ["theta", "scalar"], lambda: co.matrix(np.float64(1.0)))
    _raises(ShapeError, ["cotangent", "(5, 5)", "(5, 4)"], lambda: co.matrix_vjp(t, np.zeros((N, 4))))
    _raises(ShapeError, ["cotangent", "(5, 3)", "(2, 5, 3)"], lambda: co.apply_vjp(t, np.zeros((N, 3)), np.zeros((2, N, 3))))
    _raises(ShapeError, ["output", "(5, 3)"], lambda: co.apply_vjp(t, np.zeros((N, 3)), np.zeros((N, 3)), output=np.zeros(N)))
    _raises(ShapeError, ["tangent", "(10,)", "(9,)"], lambda: co.matrix_jvp(t, np.zeros(9)))
    _raises(ShapeError, ["theta_tangent"], lambda: co.apply_jvp(t, np.zeros(N), np.zeros(9)))
    _raises(ShapeError, ["x_tangent", "(5,)", "(4,)"], lambda: co.apply_jvp(t, np.zeros(N), t, np.zeros(4)))
    _raises(ShapeError, ["cotangent", "frame", "(5, 2)"], lambda: co.frame_vjp(np.zeros(7), np.zeros((N, 3)), N, 2))
    _raises(ShapeError, ["batch axes do not broadcast", "(3,)", "(2,)"],
            lambda: co.apply(np.zeros((3, A)), np.zeros((2, N, 1))))
    _raises(SizeError, ["n >= 2", "(1,)"], lambda: co.apply(np.zeros(0), np.zeros(1)))


@pytest.mark.parametrize("dtype,fragment", [
    (np.int64, "int64"), (np.bool_, "bool"), (object, "object"), (np.complex128, "complex128"),
    (np.float16, "float16 is not supported"),
])
def test_dtype_errors(dtype, fragment):
    bad = np.zeros(A, dtype=dtype)
    _raises(DtypeError, ["theta", "float32 or float64", fragment], lambda: co.matrix(bad))
    _raises(DtypeError, ["x", fragment], lambda: co.apply(np.zeros(A), np.zeros(N, dtype=dtype)))
    _raises(DtypeError, ["cotangent", fragment], lambda: co.matrix_vjp(np.zeros(A), np.zeros((N, N), dtype=dtype)))


def test_non_finite_inputs(rng):
    t = np.zeros(A)
    bad_t = t.copy()
    bad_t[3] = np.nan
    bad_x = np.zeros(N)
    bad_x[0] = np.inf
    _raises(NonFiniteError, ["theta", "NaN or infinity", "check_finite=False"], lambda: co.matrix(bad_t))
    _raises(NonFiniteError, ["x"], lambda: co.apply(t, bad_x))
    _raises(NonFiniteError, ["cotangent"], lambda: co.matrix_vjp(t, np.full((N, N), np.nan)))
    assert np.isnan(co.matrix(bad_t, check_finite=False)).any()
    with np.errstate(invalid="ignore"):
        assert not np.isfinite(co.apply(t, bad_x, check_finite=False)).all()


def test_size_and_schedule_errors():
    _raises(SizeError, ["m", "1 <= m <= n = 5", "m = 6"], lambda: co.frame(np.zeros(10), 5, 6))
    _raises(SizeError, ["m must be an integer >= 1, got 0"], lambda: co.frame(np.zeros(10), 5, 0))
    _raises(SizeError, ["n must be an integer >= 2, got 1"], lambda: co.frame(np.zeros(0), 1, 1))
    _raises(ScheduleError, ["'bogus'"], lambda: co.matrix(np.zeros(A), schedule="bogus"))
    _raises(SizeError, ["n (from x.shape) = 5", "built for n = 4"],
            lambda: co.apply(np.zeros(6), np.zeros(N), schedule=co.circle_schedule(4)))


def test_errors_are_builtin_subclasses():
    assert issubclass(AngleCountError, ValueError) and issubclass(DtypeError, TypeError)
    with pytest.raises(ValueError):
        co.matrix(np.zeros(7))


def test_import_is_light():
    code = ("import sys, cupyortho; heavy = [m for m in ('scipy', 'torch', 'jax', 'cupy') if m in sys.modules]; "
            "print(heavy); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_method_and_output_arguments(rng):
    from cupyortho.errors import MethodError
    theta = rng.normal(size=A)
    _raises(MethodError, ["method", "'fast'", "auto"], lambda: co.apply(theta, np.zeros(N), method="fast"))
    g = rng.normal(size=(N, N))
    u = co.matrix(theta)
    for kind in ("circle", "team"):
        uk = co.matrix(theta, schedule=kind)
        np.testing.assert_allclose(co.matrix_vjp(theta, g, schedule=kind, output=uk),
                                   co.matrix_vjp(theta, g, schedule=kind), atol=1e-13)
    _raises(ShapeError, ["output", "(5, 5)", "(5, 4)"], lambda: co.matrix_vjp(theta, g, output=u[:, :4]))


# --------------------------------------------------------------------------- API rules (docs/conventions.md)

def test_vjp_outputs_have_the_dtype_of_their_primal_input(rng):
    n = 5
    t32 = rng.normal(size=co.num_angles(n)).astype(np.float32)
    g64 = rng.normal(size=(n, n))
    x64 = rng.normal(size=(n, 2))
    assert co.matrix_vjp(t32, g64).dtype == np.float32
    d_t, d_x = co.apply_vjp(t32, x64, rng.normal(size=(n, 2)))
    assert d_t.dtype == np.float32 and d_x.dtype == np.float64
    assert co.frame_vjp(t32[:co.num_angles(n, 2)], rng.normal(size=(n, 2)), n, 2).dtype == np.float32
    p32 = rng.normal(size=n * n).astype(np.float32)
    assert co.unitary_vjp(p32, rng.normal(size=(n, n)) + 0j).dtype == np.float32
    # the value is the float64 gradient rounded once
    np.testing.assert_allclose(co.matrix_vjp(t32, g64), co.matrix_vjp(t32.astype(np.float64), g64), rtol=1e-6, atol=1e-6)
    # JVPs: the output's dtype, result_type of all inputs
    assert co.matrix_jvp(t32, t32.astype(np.float64)).dtype == np.float64
    assert co.unitary_jvp(p32, p32).dtype == np.complex64


def test_output_on_every_vjp(rng):
    n, m = 6, 2
    tf = rng.normal(size=co.num_angles(n, m))
    g = rng.normal(size=(n, m))
    q = co.frame(tf, n, m)
    np.testing.assert_allclose(co.frame_vjp(tf, g, n, m, output=q), co.frame_vjp(tf, g, n, m), atol=1e-13)
    p = rng.normal(size=n * n)
    gu = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    np.testing.assert_allclose(co.unitary_vjp(p, gu, output=co.unitary(p)), co.unitary_vjp(p, gu), atol=1e-13)


def test_frame_sizes_from_a_restricted_schedule(rng):
    n, m = 7, 3
    s = co.team_schedule(n, 2).restrict(m)
    tf = rng.normal(size=co.num_angles(n, m))
    np.testing.assert_array_equal(co.frame(tf, schedule=s), co.frame(tf, n, m, schedule=s))
    g = rng.normal(size=(n, m))
    np.testing.assert_array_equal(co.frame_vjp(tf, g, schedule=s), co.frame_vjp(tf, g, n, m, schedule=s))
    np.testing.assert_array_equal(co.frame_jvp(tf, tf, schedule=s), co.frame_jvp(tf, tf, n, m, schedule=s))
    np.testing.assert_array_equal(co.frame(tf, n=n, m=m), co.frame(tf, n, m))  # keywords work too


def test_empty_inputs_give_zeros_of_the_output_shapes():
    for kind in ("circle", "team", None):
        assert co.matrix(np.zeros((0, 10)), schedule=kind).shape == (0, 5, 5)
        assert co.frame(np.zeros((0, 7)), 5, 2, schedule=kind).shape == (0, 5, 2)
        d_t, d_x = co.apply_vjp(np.zeros((0, 10)), np.ones((5, 3)), np.zeros((0, 5, 3)), schedule=kind)
        assert d_t.shape == (0, 10) and d_x.shape == (5, 3) and not d_x.any()
        d_t, d_x = co.apply_vjp(np.ones(10), np.ones((5, 0)), np.zeros((5, 0)), schedule=kind)
        assert d_t.shape == (10,) and not d_t.any() and d_x.shape == (5, 0)
        assert co.unitary_apply(np.zeros((0, 25)), np.ones((5, 2)), schedule=kind).shape == (0, 5, 2)
    assert co.matrix(np.zeros((2, 0, 1))).shape == (2, 0, 2, 2)


def test_subclasses_are_converted_and_masked_arrays_refused(rng):
    from cupyortho.errors import ArrayTypeError
    theta = rng.normal(size=(2, 10))
    np.testing.assert_array_equal(co.matrix(np.matrix(theta)), co.matrix(theta))
    masked = np.ma.masked_invalid(np.where(np.arange(10) == 3, np.nan, theta[0]))
    _raises(ArrayTypeError, ["theta", "masked"], lambda: co.matrix(masked))


def test_haar_unitary_params_special(rng):
    from cupyortho import init
    p = init.haar_unitary_params(3, special=True, rng=7, time_limit=120)
    assert p.shape == (8,)
    u = co.unitary(p, special=True)
    np.testing.assert_allclose(np.linalg.det(u), 1, atol=1e-12)
    q = init.haar_unitary_matrix(3, rng=7)
    q = q / np.exp(1j * np.angle(np.linalg.det(q)) / 3)
    np.testing.assert_allclose(u, q, atol=1e-9)  # the SU(n) projection of the same Haar draw


def test_method_is_the_strategy_and_solver_the_inverse_solver():
    from cupyortho import inverse
    from cupyortho.errors import MethodError
    with pytest.warns(DeprecationWarning, match="solver="):
        a = inverse.angles_from_matrix(np.eye(3), method="dense")
    np.testing.assert_array_equal(a, inverse.angles_from_matrix(np.eye(3), solver="dense"))
    _raises(MethodError, ["solver", "'rounds'"], lambda: inverse.angles_from_matrix(np.eye(3), solver="rounds"))
