"""Orthogonal Procrustes with the NumPy API and a hand-written gradient loop.

Given point clouds ``A`` and ``B = R_true @ A + noise`` (columns are points), find the rotation
``R`` in SO(n) that minimises ``||R A - B||_F^2``.  The rotation is ``U(theta)``; the loss uses
:func:`cupyortho.apply` (``U @ A`` without forming ``U``) and its gradient comes from
:func:`cupyortho.apply_vjp`.  Plain gradient descent with momentum on the angles; the answer is
compared with the closed-form solution (SVD of ``B Aᵀ``, with the sign fix that keeps det = +1).
"""

import time

import numpy as np

import cupyortho as co
from _common import pyplot, save

n, k = 8, 400
rng = np.random.default_rng(0)
R_true = co.haar_matrix(n, rng=1)                   # a Haar-random rotation in SO(8)
A = rng.standard_normal((n, k))
B = R_true @ A + 0.05 * rng.standard_normal((n, k))

# Closed form (Kabsch): R* = V diag(1, .., det) Wᵀ from the SVD B Aᵀ = V S Wᵀ.
V, S, Wt = np.linalg.svd(B @ A.T)
D = np.diag([1.0] * (n - 1) + [np.sign(np.linalg.det(V @ Wt))])
R_star = V @ D @ Wt
best = np.sum((R_star @ A - B) ** 2) / k

theta = np.zeros(co.num_angles(n))                  # U(0) = I
velocity = np.zeros_like(theta)
lr, beta = 0.05, 0.9
losses = []
t0 = time.perf_counter()
for step in range(1500):
    Y = co.apply(theta, A)                          # U(theta) @ A, O(n^2 k)
    residual = Y - B
    losses.append(np.sum(residual ** 2) / k)
    d_theta, _ = co.apply_vjp(theta, A, 2 * residual / k, output=Y)   # dL/dtheta
    velocity = beta * velocity - lr * d_theta
    theta = theta + velocity
elapsed = time.perf_counter() - t0

R = co.matrix(theta)
gap = losses[-1] - best
print(f"n = {n}, k = {k} points, 1500 steps in {elapsed:.2f} s")
print(f"loss at the start {losses[0]:.4f}, at the end {losses[-1]:.6f}, closed form {best:.6f}")
print(f"loss - closed form = {gap:.2e};  max |R - R*| = {np.abs(R - R_star).max():.2e}")
print(f"max |R^T R - I| = {np.abs(R.T @ R - np.eye(n)).max():.1e}, det R = {np.linalg.det(R):.12f}")

plt = pyplot()
fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
ax[0].semilogy(np.array(losses) - best + 1e-16)
ax[0].set_xlabel("step")
ax[0].set_ylabel("loss - closed-form optimum")
ax[0].set_title("gradient descent on the angles")
ax[1].imshow(np.hstack([R, np.full((n, 1), np.nan), R_star]), cmap="RdBu", vmin=-1, vmax=1)
ax[1].set_title("learned R (left) and the SVD solution (right)")
ax[1].axis("off")
fig.tight_layout()
save("procrustes_numpy", fig, {"final_loss": losses[-1], "optimum": best, "gap": gap,
                               "max_abs_R_minus_Rstar": float(np.abs(R - R_star).max())})
