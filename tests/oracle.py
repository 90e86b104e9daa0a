"""Independent oracles for the tests: dense products of explicit Givens matrices, finite differences.

Nothing here uses cupyortho's backends; only the schedule's *pairing* (which rotation comes in which
round) is read, since it defines the parametrization.
"""

import numpy as np
import scipy.linalg


def generator(n, i, j):
    """K_ij = e_j e_i^T - e_i e_j^T, so exp(theta K_ij) rotates x_i -> c x_i - s x_j, x_j -> s x_i + c x_j."""
    k = np.zeros((n, n))
    k[j, i] = 1.0
    k[i, j] = -1.0
    return k


def givens(n, i, j, theta):
    g = np.eye(n)
    c, s = np.cos(theta), np.sin(theta)
    g[i, i] = c
    g[j, j] = c
    g[i, j] = -s
    g[j, i] = s
    return g


def dense_matrix(theta, schedule):
    """U = B_{R-1} ... B_0 as a product of n(n-1)/2 explicit n x n Givens matrices (float64)."""
    n = schedule.n
    u = np.eye(n)
    for rd in schedule.rounds:
        for i, j, a in zip(rd.i, rd.j, rd.angle):
            u = givens(n, i, j, float(theta[a])) @ u
    return u


def dense_matrix_expm(theta, schedule):
    """The same product, every factor from scipy.linalg.expm of its generator."""
    n = schedule.n
    u = np.eye(n)
    for rd in schedule.rounds:
        for i, j, a in zip(rd.i, rd.j, rd.angle):
            u = scipy.linalg.expm(float(theta[a]) * generator(n, i, j)) @ u
    return u


def central_gradient(f, theta, h=1e-6):
    """Central finite differences of a scalar function f (float64), one coordinate at a time."""
    theta = np.asarray(theta, dtype=np.float64)
    g = np.empty_like(theta)
    flat = theta.reshape(-1)
    gflat = g.reshape(-1)
    for p in range(flat.size):
        e = np.zeros_like(flat)
        e[p] = h
        gflat[p] = (f((flat + e).reshape(theta.shape)) - f((flat - e).reshape(theta.shape))) / (2 * h)
    return g
