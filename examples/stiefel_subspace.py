"""Subspace tracking: a Stiefel frame fitted to streaming data (PCA-like).

Samples ``x = Q_true z + noise`` arrive in minibatches, with ``z`` of variance (9, 4, 1) on an
``m = 3``-dimensional subspace of R^16.  Halfway through, the subspace turns (a new ``Q_true``).
A frame ``Q = frame(theta, n, m)``, a point of St(16, 3) with ``n m - m(m+1)/2 = 42`` angles,
follows it by stochastic gradient ascent on the captured variance ``tr(Qᵀ C Q)`` of each
minibatch covariance ``C`` (Oja's rule, but on the angles: ``Q`` stays orthonormal exactly, no
re-orthogonalisation).  The gradient is :func:`cupyortho.frame_vjp` of ``dL/dQ = 2 C Q``.
Progress is measured by the largest principal angle between ``Q`` and the true subspace.
"""

import time

import numpy as np

import cupyortho as co
from _common import pyplot, save

n, m, batch, steps = 16, 3, 256, 1200
scales = np.array([3.0, 2.0, 1.0])
rng = np.random.default_rng(0)
truths = [co.haar_matrix(n, rng=s)[:, :m] for s in (1, 2)]   # the subspace before / after the turn


def largest_principal_angle(Q, P):
    """Largest principal angle (radians) between the column spaces of Q and P (orthonormal)."""
    cosines = np.linalg.svd(Q.T @ P, compute_uv=False)
    return float(np.arccos(np.clip(cosines.min(), -1.0, 1.0)))


theta = co.small_random_angles(n, m, scale=0.1, rng=3)        # near the first m columns of I
lr = 0.1
angles, variance = [], []
t0 = time.perf_counter()
for step in range(steps):
    P = truths[0] if step < steps // 2 else truths[1]
    X = P @ (scales[:, None] * rng.standard_normal((m, batch))) + 0.1 * rng.standard_normal((n, batch))
    C = X @ X.T / batch                                         # minibatch covariance
    Q = co.frame(theta, n, m)
    variance.append(float(np.trace(Q.T @ C @ Q)))
    angles.append(largest_principal_angle(Q, P))
    theta = theta + lr * co.frame_vjp(theta, 2 * C @ Q, n, m)  # ascent on tr(Qᵀ C Q)
elapsed = time.perf_counter() - t0

Q = co.frame(theta, n, m)
half = steps // 2
before = largest_principal_angle(co.frame(theta, n, m), truths[1])
print(f"St({n}, {m}): {co.num_angles(n, m)} angles, {steps} minibatches of {batch} in {elapsed:.2f} s")
print(f"largest principal angle to the true subspace: start {np.degrees(angles[0]):.1f} deg, "
      f"before the turn {np.degrees(angles[half - 1]):.2f} deg, just after {np.degrees(angles[half]):.1f} deg, "
      f"end {np.degrees(before):.2f} deg")
print(f"max |QᵀQ - I| = {np.abs(Q.T @ Q - np.eye(m)).max():.1e}")

plt = pyplot()
fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
ax[0].semilogy(np.degrees(angles))
ax[0].axvline(half, color="gray", ls="--", lw=0.8)
ax[0].set_xlabel("minibatch")
ax[0].set_ylabel("largest principal angle (deg)")
ax[0].set_title("tracking the subspace (turn at the dashed line)")
ax[1].plot(variance)
ax[1].axhline(float(np.sum(scales ** 2) + m * 0.01), color="gray", ls=":", lw=0.8)
ax[1].set_xlabel("minibatch")
ax[1].set_ylabel("captured variance tr(QᵀCQ)")
fig.tight_layout()
save("stiefel_subspace", fig, {"angle_before_turn_deg": float(np.degrees(angles[half - 1])),
                               "angle_after_turn_deg": float(np.degrees(angles[half])),
                               "angle_end_deg": float(np.degrees(before))})
