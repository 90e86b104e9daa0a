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


def _product(theta, schedule, factor):
    """U = B_{R-1} ... B_0 as a product of one explicit n x n matrix ``factor(n, i, j, angle)`` per
    rotation, in round order (float64)."""
    n = schedule.n
    u = np.eye(n)
    for rd in schedule.rounds:
        for i, j, a in zip(rd.i, rd.j, rd.angle):
            u = factor(n, i, j, float(theta[a])) @ u
    return u


def dense_matrix(theta, schedule):
    """U as a product of n(n-1)/2 explicit Givens matrices."""
    return _product(theta, schedule, givens)


def dense_matrix_expm(theta, schedule):
    """The same product, every factor from scipy.linalg.expm of its generator."""
    return _product(theta, schedule, lambda n, i, j, angle: scipy.linalg.expm(angle * generator(n, i, j)))


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


def multistart_least_squares(residual, jac, size, rng, tries=10):
    """The smallest max-abs residual that scipy's Levenberg-Marquardt reaches from up to ``tries``
    uniform random starts in [-pi, pi]^size (stopping early below 1e-10): a reachability check."""
    import scipy.optimize

    best = np.inf
    for _ in range(tries):
        r = scipy.optimize.least_squares(residual, rng.uniform(-np.pi, np.pi, size), jac=jac,
                                         xtol=1e-15, ftol=1e-15, gtol=1e-15, method="lm")
        best = min(best, np.abs(r.fun).max())
        if best < 1e-10:
            break
    return best
