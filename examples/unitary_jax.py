"""A unitary fitted to a target with JAX.

The target is a unitary ``T`` in U(6) that the parametrization can reach (``T = unitary(p_true)``
for random parameters ``p_true``; any unitary is reachable, see ``docs/unitary.md``).  Starting
from ``p = 0`` (``U = I``), gradient descent with Adam on the ``n² = 36`` real parameters minimises
``||U(p) - T||_F^2``, with the gradient from ``jax.grad`` through :func:`cupyortho.jax.unitary`
(a ``jax.custom_vjp`` whose backward pass is cupyortho's reduction-free VJP), the step compiled
with ``jax.jit``.  Adam is written out here (ten lines) so nothing beyond JAX is needed.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

import cupyortho as co
import cupyortho.jax as cj
from _common import pyplot, save

jax.config.update("jax_enable_x64", True)

n = 6
P = co.num_unitary_params(n)
p_true = np.random.default_rng(0).normal(0.0, 0.6, P)
T = jnp.asarray(co.unitary(p_true))                   # complex128 (6, 6)


def loss(p):
    return jnp.sum(jnp.abs(cj.unitary(p) - T) ** 2)


@jax.jit
def adam_step(p, m, v, t, lr=0.03, b1=0.9, b2=0.999, eps=1e-12):
    value, g = jax.value_and_grad(loss)(p)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr * (m / (1 - b1 ** t)) / (jnp.sqrt(v / (1 - b2 ** t)) + eps)
    return p, m, v, value


p = jnp.zeros(P)
m = jnp.zeros(P)
v = jnp.zeros(P)
losses = []
t0 = time.perf_counter()
for t in range(1, 1501):
    lr = 0.03 if t < 1000 else 0.003
    p, m, v, value = adam_step(p, m, v, t, lr)
    losses.append(float(value))
elapsed = time.perf_counter() - t0

U = np.asarray(cj.unitary(p))
final = float(loss(p))
print(f"U({n}): {P} parameters, 1500 Adam steps (jit) in {elapsed:.2f} s")
print(f"||U - T||_F^2: start {losses[0]:.3f}, end {final:.2e}")
print(f"max |U^H U - I| = {np.abs(U.conj().T @ U - np.eye(n)).max():.1e}")

plt = pyplot()
fig, ax = plt.subplots(1, 3, figsize=(11, 3.4))
ax[0].semilogy(losses)
ax[0].set_xlabel("Adam step")
ax[0].set_ylabel("||U(p) - T||²")
ax[0].set_title("fit")
ax[1].imshow(np.abs(np.asarray(T) - U), cmap="magma")
ax[1].set_title("|T - U| at the end")
ax[2].imshow(np.angle(U), cmap="twilight", vmin=-np.pi, vmax=np.pi)
ax[2].set_title("phases of the learned U")
for a in ax[1:]:
    a.axis("off")
fig.tight_layout()
save("unitary_jax", fig, {"initial_loss": losses[0], "final_loss": final})
