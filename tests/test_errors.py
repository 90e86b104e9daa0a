"""One table of every bad call: (id, call, expected cupyortho.errors class, words the message must contain).

The rule under test (``docs/conventions.md``, "API rules"): bad input raises a ``cupyortho.errors``
class whose message names the argument, what was expected and what was received.  Every public
function of the NumPy layer, the U(n) functions, the inverse map, the initializers and the JAX
adapter appears here; ``tests/test_fuzz.py`` generates further bad calls from argument specs.
"""

import numpy as np
import pytest

import cupyortho as co
from cupyortho import errors as E
from cupyortho import init as I
from cupyortho import inverse as inv

N = 4
A = co.num_angles(N)          # 6
P = N * N                     # U(4) parameters
T = np.zeros(A)
X = np.zeros((N, 2))
U4 = np.eye(N)
MASKED = np.ma.masked_array(np.zeros(A), mask=[True] + [False] * (A - 1))


def _jax():
    return pytest.importorskip("cupyortho.jax")


BAD_CALLS = [
    # --- arrays: None, masked, unconvertible, dtype, rank
    ("matrix-None", lambda: co.matrix(None), E.ArrayTypeError, ["theta", "float32 or float64", "None"]),
    ("matrix-masked", lambda: co.matrix(MASKED), E.ArrayTypeError, ["theta", "masked array", "mask"]),
    ("matrix-str", lambda: co.matrix("abc"), E.ArrayTypeError, ["theta", "'abc'"]),
    ("matrix-ragged", lambda: co.matrix([[0.0], [0.0, 1.0]]), E.ArrayTypeError, ["theta", "cannot be converted"]),
    ("matrix-int", lambda: co.matrix(np.zeros(A, dtype=int)), E.DtypeError, ["theta", "float32 or float64", "int64"]),
    ("matrix-complex", lambda: co.matrix(np.zeros(A, complex)), E.DtypeError, ["theta", "complex128", "real"]),
    ("matrix-f16", lambda: co.matrix(np.zeros(A, np.float16)), E.DtypeError, ["theta", "float16 is not supported"]),
    ("matrix-scalar", lambda: co.matrix(np.float64(0.0)), E.ShapeError, ["theta", "at least one dimension", "scalar"]),
    ("matrix-nan", lambda: co.matrix(np.full(A, np.nan)), E.NonFiniteError, ["theta", "NaN", "check_finite=False"]),
    ("apply-x-None", lambda: co.apply(T, None), E.ArrayTypeError, ["x", "None"]),
    ("apply-x-masked", lambda: co.apply(T, np.ma.masked_array(X)), E.ArrayTypeError, ["x", "masked"]),
    ("apply_vjp-cot-None", lambda: co.apply_vjp(T, X, None), E.ArrayTypeError, ["cotangent", "None"]),
    ("matrix_vjp-cot-int", lambda: co.matrix_vjp(T, np.zeros((N, N), int)), E.DtypeError, ["cotangent", "int64"]),
    ("matrix_jvp-tan-None", lambda: co.matrix_jvp(T, None), E.ArrayTypeError, ["tangent", "None"]),
    ("apply_jvp-xt-str", lambda: co.apply_jvp(T, X, T, "x"), E.ArrayTypeError, ["x_tangent", "'x'"]),
    ("unitary-None", lambda: co.unitary(None), E.ArrayTypeError, ["params", "None"]),
    ("unitary-complex", lambda: co.unitary(np.zeros(P, complex)), E.DtypeError, ["params", "complex128", "real"]),
    ("unitary_apply-x-masked", lambda: co.unitary_apply(np.zeros(P), np.ma.masked_array(X)), E.ArrayTypeError,
     ["x", "masked"]),
    ("unitary_vjp-cot-None", lambda: co.unitary_vjp(np.zeros(P), None), E.ArrayTypeError, ["cotangent", "None"]),
    # --- counts, sizes, shapes
    ("matrix-count", lambda: co.matrix(np.zeros(7)), E.AngleCountError, ["theta", "n(n-1)/2", "got 7", "n = 4 needs 6"]),
    ("matrix-n-float", lambda: co.matrix(T, n=4.0), E.SizeError, ["n", "integer", "4.0"]),
    ("matrix-n-bool", lambda: co.matrix(T, n=True), E.SizeError, ["n", "integer", "True"]),
    ("matrix-n-schedule", lambda: co.matrix(T, n=5, schedule=co.circle_schedule(4)), E.SizeError,
     ["n = 5", "built for n = 4"]),
    ("matrix-schedule-int", lambda: co.matrix(T, schedule=3), E.ScheduleError, ["schedule", "3"]),
    ("matrix-schedule-name", lambda: co.matrix(T, schedule="bogus"), E.ScheduleError, ["schedule", "'bogus'"]),
    ("frame-m-big", lambda: co.frame(T, N, 5), E.SizeError, ["m", "1 <= m <= n = 4", "m = 5"]),
    ("frame-missing-m", lambda: co.frame(T, N), E.SizeError, ["frame needs n and m", "m = None"]),
    ("frame-count", lambda: co.frame(np.zeros(4), N, 2), E.AngleCountError, ["theta", "n*m - m(m+1)/2 = 5", "(4,)"]),
    ("apply-x-rows", lambda: co.apply(np.zeros(0), np.zeros(1)), E.SizeError, ["x", "n >= 2", "(1,)"]),
    ("apply-broadcast", lambda: co.apply(np.zeros((3, A)), np.zeros((2, N, 1))), E.ShapeError,
     ["batch axes do not broadcast", "theta (3,)", "x (2,)"]),
    ("apply_vjp-cot-shape", lambda: co.apply_vjp(T, X, np.zeros((N, 3))), E.ShapeError, ["cotangent", "(4, 2)", "(4, 3)"]),
    ("matrix_vjp-output-shape", lambda: co.matrix_vjp(T, U4, output=U4[:, :3]), E.ShapeError, ["output", "(4, 4)", "(4, 3)"]),
    ("frame_vjp-output-shape", lambda: co.frame_vjp(np.zeros(5), np.zeros((N, 2)), N, 2, output=np.zeros((N, 3))),
     E.ShapeError, ["output", "(4, 2)", "(4, 3)"]),
    ("unitary_vjp-output-shape", lambda: co.unitary_vjp(np.zeros(P), U4, output=np.zeros((3, 3))), E.ShapeError,
     ["output", "(4, 4)", "(3, 3)"]),
    ("matrix_jvp-tan-shape", lambda: co.matrix_jvp(T, np.zeros(5)), E.ShapeError, ["tangent", "(6,)", "(5,)"]),
    ("unitary-count", lambda: co.unitary(np.zeros(10)), E.AngleCountError, ["params", "n*n", "got 10"]),
    ("unitary-special-count", lambda: co.unitary(np.zeros(P), special=True), E.AngleCountError,
     ["params", "n*n - 1", "got 16"]),
    ("unitary-restricted", lambda: co.unitary(np.zeros(P), schedule=co.circle_schedule(4).restrict(2)),
     E.ScheduleError, ["schedule", "all pairs", "m=2"]),
    ("num_unitary_params-n", lambda: co.num_unitary_params(1), E.SizeError, ["n", ">= 2", "got 1"]),
    # --- flags and strategies
    ("apply-transpose", lambda: co.apply(T, X, transpose="yes"), E.SettingError, ["transpose", "True or False", "'yes'"]),
    ("matrix-check_finite", lambda: co.matrix(T, check_finite=None), E.SettingError, ["check_finite", "None"]),
    ("unitary-special", lambda: co.unitary(np.zeros(P), special=2), E.SettingError, ["special", "True or False", "2"]),
    ("unitary_apply-adjoint", lambda: co.unitary_apply(np.zeros(P), X, adjoint="no"), E.SettingError, ["adjoint", "'no'"]),
    ("apply-method", lambda: co.apply(T, X, method="fast"), E.MethodError, ["method", "'fast'", "auto"]),
    # --- the inverse map
    ("inverse-int", lambda: inv.angles_from_matrix(np.eye(N, dtype=int)), E.DtypeError, ["U", "float32 or float64", "int64"]),
    ("inverse-None", lambda: inv.angles_from_matrix(None), E.ArrayTypeError, ["U", "None"]),
    ("inverse-masked", lambda: inv.angles_from_matrix(np.ma.masked_array(U4)), E.ArrayTypeError, ["U", "masked"]),
    ("inverse-nan", lambda: inv.angles_from_matrix(np.full((N, N), np.nan)), E.NonFiniteError, ["U", "NaN"]),
    ("inverse-atol", lambda: inv.angles_from_matrix(U4, atol=-1.0), E.SettingError, ["atol", "> 0.0", "-1.0"]),
    ("inverse-tol", lambda: inv.angles_from_matrix(U4, tol=float("nan")), E.SettingError, ["tol", "finite", "nan"]),
    ("inverse-restarts", lambda: inv.angles_from_matrix(U4, restarts=-1), E.SettingError, ["restarts", "[0, 1000000]", "-1"]),
    ("inverse-max_steps", lambda: inv.angles_from_matrix(U4, max_steps=0), E.SettingError, ["max_steps", ">= 1", "0"]),
    ("inverse-sweeps", lambda: inv.angles_from_matrix(U4, sweeps=1.5), E.SettingError, ["sweeps", "integer", "1.5"]),
    ("inverse-time_limit", lambda: inv.angles_from_matrix(U4, time_limit=-3), E.SettingError, ["time_limit", "> 0.0", "-3"]),
    ("inverse-solver", lambda: inv.angles_from_matrix(U4, solver="magic"), E.MethodError, ["solver", "'magic'", "dense"]),
    ("inverse-shape", lambda: inv.angles_from_matrix(np.eye(3)[:, :2]), E.ShapeError, ["U", "(..., n, n)", "(3, 2)"]),
    ("frame-inverse-m", lambda: inv.angles_from_frame(U4[:, :2], 3), E.ShapeError, ["Q", "m = 3", "(4, 2)"]),
    ("unitary-inverse-int", lambda: inv.params_from_unitary(np.eye(N, dtype=int)), E.DtypeError, ["U", "int64"]),
    ("unitary-inverse-atol", lambda: inv.params_from_unitary(U4, atol=0), E.SettingError, ["atol", "> 0.0", "0"]),
    ("inverse-not-orthogonal", lambda: inv.angles_from_matrix(2 * U4), E.NotOrthogonalError, ["U", "tol", "error"]),
    # --- initializers
    ("identity-shape", lambda: I.identity_angles(N, shape=(-1,)), E.ShapeError, ["shape", "non-negative", "-1"]),
    ("identity-shape-str", lambda: I.identity_angles(N, shape="ab"), E.ShapeError, ["shape", "'ab'"]),
    ("identity-dtype", lambda: I.identity_angles(N, dtype=int), E.DtypeError, ["dtype", "float32", "int"]),
    ("identity-m", lambda: I.identity_angles(N, m=5), E.SizeError, ["m", "[1, 4]", "5"]),
    ("identity-n", lambda: I.identity_angles(1), E.SizeError, ["n", ">= 2", "1"]),
    ("small-scale", lambda: I.small_random_angles(N, scale=-1.0), E.SettingError, ["scale", "> 0.0", "-1.0"]),
    ("small-scale-inf", lambda: I.small_random_angles(N, scale=np.inf), E.SettingError, ["scale", "finite", "inf"]),
    ("small-rng", lambda: I.small_random_angles(N, rng="seed"), E.SettingError, ["rng", "Generator", "'seed'"]),
    ("small-rng-negative", lambda: I.small_random_angles(N, rng=-1), E.SettingError, ["rng", "non-negative", "-1"]),
    ("haar-huge", lambda: I.haar_matrix(10**5), E.SizeError, ["shape", "entries", "at most"]),
    ("haar-shape-huge", lambda: I.identity_angles(N, shape=(10**6, 10**6)), E.SizeError, ["shape", "at most"]),
    ("haar-frame-m", lambda: I.haar_frame_angles(N, 0), E.SizeError, ["m", "[1, 4]", "0"]),
    ("haar-unitary-special", lambda: I.haar_unitary_params(2, special="yes"), E.SettingError, ["special", "'yes'"]),
    ("identity-unitary-dtype", lambda: I.identity_unitary_params(N, dtype="complex64"), E.DtypeError, ["dtype", "complex64"]),
    # --- JAX adapter (same rules and messages)
    ("jax-None", lambda: _jax().matrix(None), E.ArrayTypeError, ["theta", "None"]),
    ("jax-masked", lambda: _jax().matrix(MASKED), E.ArrayTypeError, ["theta", "masked"]),
    ("jax-str", lambda: _jax().matrix("abc"), E.ArrayTypeError, ["theta", "str"]),
    ("jax-ragged", lambda: _jax().matrix([[0.0], [0.0, 1.0]]), E.ArrayTypeError, ["theta", "cannot be converted"]),
    ("jax-int", lambda: _jax().matrix(np.zeros(A, dtype=np.int32)), E.DtypeError, ["theta", "int32"]),
    ("jax-count", lambda: _jax().matrix(np.zeros(7, np.float32)), E.AngleCountError, ["theta", "got 7"]),
    ("jax-frame-m", lambda: _jax().frame(np.zeros(5, np.float32), N, 9), E.SizeError, ["m", "m = 9"]),
    ("jax-apply-rows", lambda: _jax().apply(np.zeros(0, np.float32), np.zeros(1, np.float32)), E.SizeError,
     ["x", "n >= 2"]),
    ("jax-apply-broadcast", lambda: _jax().apply(np.zeros((2, 3), np.float32), np.zeros((3, 3, 1), np.float32)),
     E.ShapeError, ["broadcast", "theta (2,)", "x (3,)"]),
    ("jax-transpose", lambda: _jax().apply(np.zeros(3, np.float32), np.zeros(3, np.float32), transpose="yes"),
     E.SettingError, ["transpose", "'yes'"]),
    ("jax-unitary-count", lambda: _jax().unitary(np.zeros(10, np.float32)), E.AngleCountError, ["params", "got 10"]),
    ("jax-unitary_apply-x", lambda: _jax().unitary_apply(np.zeros(P, np.float32), np.zeros((N, 1), int)),
     E.DtypeError, ["x", "int64"]),
    ("jax-schedule", lambda: _jax().matrix(np.zeros(3, np.float32), schedule="bogus"), E.ScheduleError, ["'bogus'"]),
]


@pytest.mark.parametrize("call,error,words", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_call(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, E.CupyorthoError)
    message = str(info.value)
    for w in words:
        assert w in message, (w, message)
