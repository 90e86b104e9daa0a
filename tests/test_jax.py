"""JAX adapter: values against the NumPy reference, check_grads, jit, vmap, grad of a scalar loss.

float64 tests enable x64 locally with ``jax.enable_x64(True)`` (a context manager), so the global
setting seen by other tests is untouched.  GPU tests skip without a GPU (jaxlib here is CPU-only).
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
import jax.test_util  # noqa: E402

import cupyortho as co  # noqa: E402
import cupyortho.jax as cj  # noqa: E402
from cupyortho.errors import AngleCountError, DtypeError, ShapeError  # noqa: E402


def _has_gpu():
    try:
        return len(jax.devices("gpu")) > 0
    except RuntimeError:
        return False


gpu_only = pytest.mark.skipif(not _has_gpu(), reason="needs a GPU and a CUDA build of jaxlib (not on this machine)")


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


SCHEDULES = ["circle", "team", co.team_schedule(7, 2)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=str)
def test_forward_matches_numpy(rng, x64, schedule):
    n, m = 7, 3
    theta = rng.normal(size=(2, co.num_angles(n)))
    x = rng.normal(size=(3, 1, n, 4))
    tf = rng.normal(size=co.num_angles(n, m))
    np.testing.assert_allclose(cj.matrix(theta, schedule=schedule), co.matrix(theta, schedule=schedule), atol=1e-14)
    for transpose in (False, True):
        got = cj.apply(theta, x, transpose=transpose, schedule=schedule)
        assert got.shape == (3, 2, n, 4) and got.dtype == jnp.float64
        np.testing.assert_allclose(got, co.apply(theta, x, transpose=transpose, schedule=schedule), atol=1e-14)
    v = rng.normal(size=n)
    np.testing.assert_allclose(cj.apply(theta[0], v, schedule=schedule), co.apply(theta[0], v, schedule=schedule),
                               atol=1e-14)
    np.testing.assert_allclose(cj.frame(tf, n, m, schedule=schedule), co.frame(tf, n, m, schedule=schedule),
                               atol=1e-14)


def test_float32_default(rng):
    theta = rng.normal(size=co.num_angles(5)).astype(np.float32)
    u = cj.matrix(theta)
    assert u.dtype == jnp.float32
    np.testing.assert_allclose(u, co.matrix(theta), atol=1e-6)


@pytest.mark.parametrize("schedule", ["circle", "team"])
def test_check_grads_reverse(rng, x64, schedule):
    n = 5
    theta = jnp.asarray(rng.normal(size=(2, co.num_angles(n))))
    x = jnp.asarray(rng.normal(size=(3, 1, n, 2)))
    tf = jnp.asarray(rng.normal(size=co.num_angles(n, 2)))
    check = jax.test_util.check_grads
    check(lambda t: cj.matrix(t, schedule=schedule), (theta,), order=1, modes=["rev"])
    check(lambda t: cj.frame(t, n, 2, schedule=schedule), (tf,), order=1, modes=["rev"])
    for transpose in (False, True):
        check(lambda t, a: cj.apply(t, a, transpose=transpose, schedule=schedule), (theta, x), order=1, modes=["rev"])
    check(lambda t, v: cj.apply(t, v, schedule=schedule), (theta[0], x[0, 0, :, 0]), order=1, modes=["rev"])


def test_grad_of_scalar_loss_is_cupyortho_vjp(rng, x64):
    n = 6
    theta = rng.normal(size=co.num_angles(n))
    g = rng.normal(size=(n, n))
    x = rng.normal(size=(n, 3))
    gy = rng.normal(size=(n, 3))
    got = jax.grad(lambda t: jnp.sum(cj.matrix(t) * g))(theta)
    np.testing.assert_allclose(got, co.matrix_vjp(theta, g), atol=1e-13)
    dt, dx = jax.grad(lambda t, a: jnp.sum(cj.apply(t, a, transpose=True) * gy), argnums=(0, 1))(theta, x)
    ref_t, ref_x = co.apply_vjp(theta, x, gy, transpose=True)
    np.testing.assert_allclose(dt, ref_t, atol=1e-13)
    np.testing.assert_allclose(dx, ref_x, atol=1e-13)


def test_jit_matches_eager(rng, x64):
    n = 5
    theta = jnp.asarray(rng.normal(size=co.num_angles(n)))
    x = jnp.asarray(rng.normal(size=(n, 3)))

    def loss(t, a):
        return jnp.sum(cj.apply(t, a) ** 2 * jnp.arange(3.0)) + jnp.sum(cj.matrix(t)[0]) + jnp.sum(cj.frame(t[:7], n, 2))

    eager = jax.value_and_grad(loss, argnums=(0, 1))(theta, x)
    jitted = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(theta, x)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


def test_vmap_equals_loop(rng, x64):
    n, B = 5, 3
    thetas = jnp.asarray(rng.normal(size=(B, co.num_angles(n))))
    xs = jnp.asarray(rng.normal(size=(B, 2, n, 2)))
    theta = thetas[0]

    def loss(t, a):
        return jnp.sum(cj.apply(t, a) ** 2 * jnp.arange(2.0)) + jnp.sum(cj.matrix(t) ** 3)

    grad = jax.grad(loss, argnums=(0, 1))
    for in_axes, args in (((0, 0), (thetas, xs)), ((None, 0), (theta, xs)), ((0, None), (thetas, xs[0]))):
        mapped = jax.jit(jax.vmap(grad, in_axes=in_axes))(*args)
        for b in range(B):
            one = grad(*[a if ax is None else a[b] for a, ax in zip(args, in_axes)])
            np.testing.assert_allclose(mapped[0][b], one[0], atol=1e-12)
            np.testing.assert_allclose(mapped[1][b], one[1], atol=1e-12)
    # nested vmap over a vector x with a shared theta, and frames
    vs = jnp.asarray(rng.normal(size=(2, B, n)))
    nested = jax.vmap(jax.vmap(lambda v: cj.apply(theta, v)))(vs)
    np.testing.assert_allclose(nested, co.apply(np.asarray(theta), np.asarray(vs)[..., None])[..., 0], atol=1e-13)
    tfs = thetas[:, : co.num_angles(n, 2)]
    np.testing.assert_allclose(jax.vmap(lambda t: cj.frame(t, n, 2))(tfs), co.frame(np.asarray(tfs), n, 2), atol=1e-13)


def test_sum_of_vmapped_gradients_is_the_shared_gradient(rng, x64):
    n = 4
    theta = jnp.asarray(rng.normal(size=co.num_angles(n)))
    vs = jnp.asarray(rng.normal(size=(5, n)))
    per_example = jax.grad(lambda t: jnp.sum(jax.vmap(lambda v: cj.apply(t, v))(vs) ** 2 * jnp.arange(n)))(theta)
    batched = jax.grad(lambda t: jnp.sum(cj.apply(t, vs.T).T ** 2 * jnp.arange(n)))(theta)
    np.testing.assert_allclose(per_example, batched, atol=1e-12)


def test_forward_mode_and_second_order_are_refused(x64):
    theta = jnp.zeros(co.num_angles(4))
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(cj.matrix, (theta,), (theta,))
    f = lambda t: jnp.sum(cj.matrix(t) ** 2 * jnp.arange(4.0))  # noqa: E731
    with pytest.raises(ValueError, match="callbacks do not support JVP"):
        jax.grad(lambda t: jnp.sum(jax.grad(f)(t)))(theta)


def test_buffer_callback_path_on_cpu(rng, x64):
    """The GPU path's wiring (in-place outputs, vmap of the callback), run with NumPy buffers."""
    n = 5
    sched = co.circle_schedule(n)
    thetas = jnp.asarray(rng.normal(size=(3, co.num_angles(n))))
    g = jnp.asarray(rng.normal(size=(3, n, n)))

    def vjp(t, c):
        return co.matrix_vjp(t, c, schedule=sched, check_finite=False)

    out = cj._buffer_call(vjp, [jax.ShapeDtypeStruct(thetas.shape, thetas.dtype)], [2, 3], thetas, g)[0]
    np.testing.assert_allclose(out, co.matrix_vjp(np.asarray(thetas), np.asarray(g)), atol=1e-13)
    one = lambda t, c: cj._buffer_call(vjp, [jax.ShapeDtypeStruct(t.shape, t.dtype)], [1, 2], t, c)[0]  # noqa: E731
    mapped = jax.jit(jax.vmap(one, in_axes=(None, 0)))(thetas[0], g)
    np.testing.assert_allclose(mapped, co.matrix_vjp(np.broadcast_to(np.asarray(thetas[0]), (3, 10)), np.asarray(g)),
                               atol=1e-13)


def test_unitary_functions(rng, x64):
    import cupyortho._unitary as cu

    n = 4
    p = jnp.asarray(rng.normal(size=(2, n * n)))
    xc = jnp.asarray(rng.normal(size=(3, 1, n, 2)) + 1j * rng.normal(size=(3, 1, n, 2)))
    np.testing.assert_allclose(cj.unitary(p, schedule="team"), cu.unitary(np.asarray(p), schedule="team"), atol=1e-14)
    np.testing.assert_allclose(cj.unitary_apply(p, xc, adjoint=True),
                               cu.unitary_apply(np.asarray(p), np.asarray(xc), adjoint=True), atol=1e-14)
    check = jax.test_util.check_grads
    check(cj.unitary, (p,), order=1, modes=["rev"])
    check(lambda q: cj.unitary(q, special=True), (p[0, :-1],), order=1, modes=["rev"])
    for adjoint in (False, True):
        check(lambda q, a: cj.unitary_apply(q, a, adjoint=adjoint), (p, xc), order=1, modes=["rev"])
        check(lambda q, a: cj.unitary_apply(q, a, adjoint=adjoint), (p[0], jnp.real(xc[0, 0, :, 0])),
              order=1, modes=["rev"])

    def loss(q, a):
        return jnp.sum(jnp.abs(cj.unitary_apply(q, a)) ** 2 * jnp.arange(2.0)) + jnp.real(jnp.sum(cj.unitary(q) ** 2))

    grad = jax.grad(loss, argnums=(0, 1))
    mapped = jax.jit(jax.vmap(grad, in_axes=(None, 0)))(p[0], xc[:, 0])
    for b in range(3):
        one = grad(p[0], xc[b, 0])
        np.testing.assert_allclose(mapped[0][b], one[0], atol=1e-12)
        np.testing.assert_allclose(mapped[1][b], one[1], atol=1e-12)


def test_errors_name_the_argument():
    with pytest.raises(DtypeError, match="theta"):
        cj.matrix(jnp.zeros(3, dtype=jnp.int32))
    with pytest.raises(AngleCountError, match="theta"):
        cj.matrix(jnp.zeros(4))
    with pytest.raises(AngleCountError):
        cj.apply(jnp.zeros(3), jnp.zeros((4, 2)))
    with pytest.raises(ShapeError, match="broadcast"):
        cj.apply(jnp.zeros((2, 3)), jnp.zeros((3, 3, 1)))


@gpu_only
def test_gpu_matches_cpu(rng):  # pragma: no cover - needs a GPU
    pytest.importorskip("cupy")
    n = 9
    theta = rng.normal(size=(2, co.num_angles(n))).astype(np.float32)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    loss = lambda t, a: jnp.sum(cj.apply(t, a) ** 2) + jnp.sum(cj.matrix(t) * jnp.arange(n))  # noqa: E731
    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    gpu = f(jax.device_put(theta, jax.devices("gpu")[0]), jax.device_put(x, jax.devices("gpu")[0]))
    cpu = f(jax.device_put(theta, jax.devices("cpu")[0]), jax.device_put(x, jax.devices("cpu")[0]))
    for a, b in zip(jax.tree_util.tree_leaves(gpu), jax.tree_util.tree_leaves(cpu)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
