r"""The inverse map: Givens angles whose matrix (or frame) equals a given rotation (or Stiefel frame).

Design rule: everything here runs on the host in float64 with NumPy/SciPy (SciPy imported inside
the solver functions, so importing this module costs NumPy only), one matrix at a time (a batch is
a loop); CuPy inputs are copied to the host and the angles copied back.  The solver is
deterministic: its starting points are fixed (``theta = 0``, then points drawn from
``numpy.random.default_rng(k)`` for restart ``k``), so the same input always gives the same angles.

Why no closed form.  A Givens QR reads angles off one at a time because each rotation creates a zero
that every later rotation preserves (the rows it mixes are already zero there).  In a round-robin
schedule every coordinate is touched in *every* round (a round is a perfect matching), so after
``log2(n)`` rounds every partial product :math:`B_{r}\cdots B_0` is structurally dense and no rotation
can create a zero that survives.  The set of matrices the first rounds can reach is cut out by rank
conditions instead: for ``n = 4`` (circle), :math:`B_1 B_0` is characterised by
``det V[{0,2},{0,1}] = det V[{1,3},{0,1}] = 0``, and peeling the last round,
:math:`V = B_2^T U`, turns these into two equations *bilinear* in the cosines/sines of both angles
of round 2: the angles of a round are coupled and must be solved together (a polynomial system whose
size grows with n).  So the map is inverted numerically.

Algorithm (``docs/init.md``), for a target ``Q*`` (``n x m``; ``m = n`` for SO(n)):

1. *Pseudo-arclength continuation* (dense; the default up to ``DENSE_LIMIT`` angles) from a start
   :math:`\theta_0` (first ``theta = 0``: the path starts at the identity) along the geodesic
   :math:`E(t) = U_0 \exp(tL)` from :math:`U_0 = U(\theta_0)` to (a completion of) the target,
   solving :math:`F(\theta, t) = \rho\big(U(\theta)^T E(t) E_m\big) = 0` (``rho`` takes the entries
   below the diagonal in the first ``m`` columns, skew-symmetrised in the top ``m x m`` block).  The
   Jacobian is the left-trivialised one, column ``p`` (pair ``(i,j)`` of round ``r``) is
   :math:`R_r^T K_{ij} R_r = r_j r_i^T - r_i r_j^T` (rows of :math:`R_r = B_{r-1}\cdots B_0`).  The
   solution curve meets folds (the Jacobian is singular there) where a plain homotopy in ``t``
   stalls; arclength continuation goes around them.  Newton polishes the end point.
2. Restarts from fixed seeds, with iterative deepening of the step budget.
3. Optional global phase (``sweeps=``): exact round-wise coordinate ascent.
   :math:`\langle Q^*, U(\theta) E_m\rangle = \mathrm{tr}(B_r M_r)` with
   :math:`M_r = R_r E_m Q^{*T} L_r`, :math:`L_r = B_{R-1}\cdots B_{r+1}`; the rotations of one round
   are disjoint, so each angle of round ``r`` is maximised in closed form,
   :math:`\theta_{ij} = \mathrm{atan2}(M_{ij}-M_{ji}, M_{ii}+M_{jj})`, and
   :math:`M_{r+1} = B_r M_r B_{r+1}^T` costs two rotation sweeps (a sweep costs about one VJP and
   never lowers the fit).  It stalls near singular points, so it is off by default.
4. Large n (``method="matrix-free"``): Levenberg-Marquardt with inexact LSQR solves on the same
   Jacobian applied by rotation sweeps (:meth:`_Problem.jvp_left`, :meth:`_Problem.vjp_left`),
   O(n^3) per product.  Converges for targets near the start, not for Haar targets.

Reach (measured, ``bench/inverse_bench.py``, ``docs/init.md``): Haar-random targets are solved up to
n = 16 in seconds (n = 20 sometimes, in minutes); the number of folds along the path, and
the cost, grow quickly with n.  Targets near the start are solved matrix-free up to n = 256.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from . import _dispatch
from . import _validate as _v
from . import _nulling
from . import schedule as _sched
from ._api import _check_m
from .backends import numpy_backend as _nb
from .errors import InverseMapError, MethodError, NotOrthogonalError, ScheduleError, SettingError, ShapeError, SizeError

__all__ = [
    "angles_from_matrix",
    "angles_from_frame",
    "params_from_unitary",
    "InverseMapError",
    "DENSE_LIMIT",
]

DENSE_LIMIT = 2100
"""Largest number of angles solved with dense Jacobians (n = 65 for SO(n)); above it, matrix-free."""


class _Problem:
    """One target (n x m, float64) and a (possibly restricted) schedule; angles in round-major order."""

    def __init__(self, sched, target):
        self.sched = sched
        self.n = sched.n
        self.m = target.shape[1]
        self.target = target
        ra, rb = np.tril_indices(self.n, -1)
        keep = rb < self.m
        self.ra, self.rb = ra[keep], rb[keep]
        self.top = self.ra < self.m            # rows inside the m x m block (skew part)
        self.weights = np.where(self.top, 2.0, 1.0)
        self.offsets = sched.round_offsets
        self.rounds = sched.rounds
        self.eye = np.eye(self.n)
        self.size = sched.num_angles

    def first_start(self):
        """theta = 0 (the identity): the path is the geodesic from I to the target."""
        return np.zeros(self.size)

    def inner(self, U, X):
        """U^T X (the left-trivialisation; U^H X for the unitary problem)."""
        return U.T @ X

    def path(self, U0):
        """The geodesic from U0 to the completed target."""
        return _Path(U0, _complete(self.target, U0))

    def matrix(self, th):
        """The full n x n matrix of the (restricted) schedule for round-major angles ``th``."""
        return _nb.apply(self.sched.from_round_order(th), self.eye, self.sched)

    def rho(self, X):
        """Index-set coordinates of an n x m matrix X (skew part in the top block)."""
        ra, rb = self.ra, self.rb
        out = X[ra, rb].copy()
        t = self.top
        out[t] = 0.5 * (X[ra[t], rb[t]] - X[rb[t], ra[t]])
        return out

    def residual(self, th):
        """(rho(U^T Q*), max-abs error of the frame, U)."""
        U = self.matrix(th)
        X = U.T @ self.target
        return self.rho(X), float(np.abs(U[:, : self.m] - self.target).max()), U

    def jacobian(self, th):
        """Dense left-trivialised Jacobian: column p (round r, pair (i, j)) holds the index-set
        entries of R_r^T K_ij R_r = r_j r_i^T - r_i r_j^T, r_i = row i of R_r = B_{r-1}...B_0."""
        ra, rb = self.ra, self.rb
        J = np.empty((ra.size, th.size))
        R = self.eye.copy()
        c, s = np.cos(th), np.sin(th)
        for r, rd in enumerate(self.rounds):
            a, b = self.offsets[r], self.offsets[r + 1]
            Ri, Rj = R[rd.i], R[rd.j]
            J[:, a:b] = (Rj[:, ra] * Ri[:, rb] - Ri[:, ra] * Rj[:, rb]).T
            _nb.rotate(R, rd.i, rd.j, c[a:b, None], s[a:b, None])
        return J

    def jvp_left(self, th, d):
        """Matrix-free J @ d: index-set entries of sum_r R_r^T K_r(d) R_r, by Horner's rule
        T <- K_r + B_r^T T B_r from the last round down."""
        c, s = np.cos(th), np.sin(th)
        T = np.zeros((self.n, self.n))
        for r in range(len(self.rounds) - 1, -1, -1):
            rd = self.rounds[r]
            a, b = self.offsets[r], self.offsets[r + 1]
            if r < len(self.rounds) - 1:
                _nb.rotate(T, rd.i, rd.j, c[a:b, None], -s[a:b, None])
                _nb.rotate(T, rd.i, rd.j, c[a:b], -s[a:b], axis=-1)
            T[rd.j, rd.i] += d[a:b]
            T[rd.i, rd.j] -= d[a:b]
        return T[self.ra, self.rb]

    def vjp_left(self, th, w):
        """Matrix-free J^T @ w: with W[ra, rb] = w, Z_r = R_r W R_r^T, angle p of round r gets
        Z_r[j, i] - Z_r[i, j]."""
        c, s = np.cos(th), np.sin(th)
        Z = np.zeros((self.n, self.n))
        Z[self.ra, self.rb] = w
        out = np.empty(th.size)
        for r, rd in enumerate(self.rounds):
            a, b = self.offsets[r], self.offsets[r + 1]
            out[a:b] = Z[rd.j, rd.i] - Z[rd.i, rd.j]
            _nb.rotate(Z, rd.i, rd.j, c[a:b, None], s[a:b, None])
            _nb.rotate(Z, rd.i, rd.j, c[a:b], s[a:b], axis=-1)
        return out

    def sweep(self, th):
        """One sweep of exact round-wise coordinate ascent of <Q*, U(th) E_m>; updates th in place."""
        rounds, off = self.rounds, self.offsets
        c, s = np.cos(th), np.sin(th)
        M = np.zeros((self.n, self.n))
        M[: self.m] = self.target.T @ self.matrix(th)           # E_m Q*^T U = E_m Q*^T L_0 B_0
        _nb.rotate(M, rounds[0].i, rounds[0].j, c[off[0]:off[1]], s[off[0]:off[1]], axis=-1)  # M_0 = E_m Q*^T L_0
        for r, rd in enumerate(rounds):
            a, b = off[r], off[r + 1]
            t = np.arctan2(M[rd.i, rd.j] - M[rd.j, rd.i], M[rd.i, rd.i] + M[rd.j, rd.j])
            th[a:b] = t
            c[a:b], s[a:b] = np.cos(t), np.sin(t)
            _nb.rotate(M, rd.i, rd.j, c[a:b, None], s[a:b, None])
            if r + 1 < len(rounds):
                nx = rounds[r + 1]
                a2, b2 = off[r + 1], off[r + 2]
                _nb.rotate(M, nx.i, nx.j, c[a2:b2], s[a2:b2], axis=-1)
        return th


# --------------------------------------------------------------------------- geometry helpers

def _skew_log(X):
    """Real skew-symmetric L with expm(L) = X for X in SO(n), from the real Schur form (which is
    block diagonal for a normal matrix): 2x2 blocks [[c,-s],[s,c]] give angle atan2(s, c); the
    eigenvalues -1 (an even number of 1x1 blocks) are paired into angle-pi rotations."""
    import scipy.linalg

    T, Z = scipy.linalg.schur(X, output="real")
    n = X.shape[0]
    Lt = np.zeros((n, n))
    k = 0
    minus = []
    while k < n:
        if k + 1 < n and abs(T[k + 1, k]) > 1e-13:
            phi = np.arctan2(0.5 * (T[k + 1, k] - T[k, k + 1]), 0.5 * (T[k, k] + T[k + 1, k + 1]))
            Lt[k + 1, k], Lt[k, k + 1] = phi, -phi
            k += 2
        else:
            if T[k, k] < 0:
                minus.append(k)
            k += 1
    for a, b in zip(minus[0::2], minus[1::2]):
        Lt[b, a], Lt[a, b] = np.pi, -np.pi
    L = Z @ Lt @ Z.T
    return 0.5 * (L - L.T)


def _complete(target, U0):
    """An n x n rotation whose first m columns are ``target`` and whose other columns are the
    orthonormal completion closest to those of U0 (orthogonal Procrustes); the sign of one
    completing column is flipped if needed so that det = +1.  For m = n it is the target."""
    n, m = target.shape
    if m == n:
        return target
    Qfull, _ = np.linalg.qr(target, mode="complete")
    N = Qfull[:, m:]                       # basis of the orthogonal complement
    u, _, vt = np.linalg.svd(N.T @ U0[:, m:])
    Z = N @ (u @ vt)
    T = np.concatenate([target, Z], axis=1)
    if np.linalg.det(T) < 0:
        T[:, -1] = -T[:, -1]
    return T


class _Path:
    """The geodesic E(t) = U0 expm(t L) from U0 to the completed target, via the eigen-decomposition
    of the Hermitian matrix iL (so E(t) costs one complex product)."""

    def __init__(self, U0, T):
        self.U0 = U0
        self.L = _skew_log(U0.T @ T)
        w, V = np.linalg.eigh(1j * self.L)
        self.w, self.V = w, V

    def __call__(self, t):
        e = (self.V * np.exp(-1j * t * self.w)) @ self.V.conj().T
        return self.U0 @ e.real


class _UPath:
    """Unitary geodesic E(t) = U0 expm(t L), L = log(U0^H T) anti-Hermitian, from the complex Schur
    form of the normal matrix U0^H T (diagonal: eigenvalues e^{i phi_k})."""

    def __init__(self, U0, T):
        import scipy.linalg

        D, Z = scipy.linalg.schur(U0.conj().T @ T, output="complex")
        self.phi = np.angle(np.diagonal(D))
        self.Z = Z
        self.U0 = U0
        self.L = (Z * (1j * self.phi)) @ Z.conj().T

    def __call__(self, t):
        return self.U0 @ ((self.Z * np.exp(1j * t * self.phi)) @ self.Z.conj().T)


class _UnitaryProblem:
    """Target in U(n) for the unitary parametrization (``cupyortho.unitary``), parameters in its
    public layout [theta, phi, delta].  Coordinates of u(n): the real and imaginary parts of the
    entries below the diagonal of the anti-Hermitian part, then its diagonal's imaginary parts (n^2).
    The Jacobian is built from n^2 batched unitary JVPs (dense, small n)."""

    def __init__(self, sched, target):
        from . import _unitary

        self._unitary = _unitary
        self.sched = sched
        self.n = self.m = sched.n
        self.target = target
        self.size = self.n * self.n
        self.li, self.lj = np.tril_indices(self.n, -1)

    def first_start(self):
        """theta = 1/2, phi = delta = 0: at theta = 0 the phases phi have no effect (a polar-coordinate
        singularity of the Jacobian), so the unitary solve starts away from it."""
        p = np.zeros(self.size)
        p[: self.n * (self.n - 1) // 2] = 0.5
        return p

    def inner(self, U, X):
        return U.conj().T @ X

    def path(self, U0):
        return _UPath(U0, self.target)

    def matrix(self, p):
        return self._unitary.unitary(p, n=self.n, schedule=self.sched)

    def rho(self, X):
        A = 0.5 * (X - X.conj().T)
        low = A[self.li, self.lj]
        return np.concatenate([low.real, low.imag, np.diagonal(A).imag])

    def residual(self, p):
        U = self.matrix(p)
        return self.rho(self.inner(U, self.target)), float(np.abs(U - self.target).max()), U

    def jacobian(self, p):
        U = self.matrix(p)
        P = p.size
        dU = self._unitary.unitary_jvp(np.broadcast_to(p, (P, P)), np.eye(P), n=self.n, schedule=self.sched)
        S = U.conj().T @ dU
        A = 0.5 * (S - np.conj(np.swapaxes(S, -1, -2)))
        low = A[:, self.li, self.lj]
        return np.concatenate([low.real, low.imag, np.diagonal(A, axis1=-2, axis2=-1).imag], axis=1).T


# --------------------------------------------------------------------------- local solvers

def _newton(prob, th, atol, iters=10):
    """Newton on F(th) = rho(U^T Q*) = 0 with the dense Jacobian, continued past ``atol`` while the
    error still drops (a polish to the accuracy the conditioning allows); returns (th, err)."""
    r, err, _ = prob.residual(th)
    for _ in range(iters):
        if err < 1e-15:
            break
        try:
            d = np.linalg.solve(prob.jacobian(th), r)
        except np.linalg.LinAlgError:
            break
        th2 = th + d
        r2, err2, _ = prob.residual(th2)
        if not err2 < (err if err > atol else 0.5 * err):
            break
        th, r, err = th2, r2, err2
    return th, err


def _continuation(prob, th0, atol, max_steps, deadline=None):
    """Pseudo-arclength continuation of F(th, t) = rho(U(th)^T E(t) E_m) = 0 from (th0, 0) to t = 1.

    One LU factorisation per step: at a point y of the curve, K = [[dF(y)], [tau_prev^T]] gives the
    tangent (K tau = e_last, so tau . tau_prev > 0 keeps the orientation through folds) and serves
    as the chord matrix of the corrector, which solves F = 0 on the hyperplane
    tau_prev . (y - y_pred) = 0.  dF/dth = -J (exact on the curve up to O(|F|)), dF/dt =
    rho(U^T E(t) L E_m).  A step is accepted only when the chord corrector converges to 1e-7 with
    contraction <= 0.7 and moves less than 0.3 h from the predictor: looser acceptance (0.5 h, 0.8,
    1e-6) saves ~25 % of the steps on long paths but lets the corrector jump between branches of
    the curve, after which the path wanders (n = 3: 431 steps without reaching t = 1 instead of 23).
    Returns angles with frame error <= atol, or None when the step budget
    runs out or the step length underflows.
    """
    import scipy.linalg

    m = prob.m
    U0 = prob.matrix(th0)
    path = prob.path(U0)
    L = path.L
    A = th0.size

    def F(y):
        U = prob.matrix(y[:-1])
        return prob.rho(prob.inner(U, path(y[-1])[:, :m])), U

    y = np.concatenate([th0, [0.0]])
    tau_prev = np.zeros(A + 1)
    tau_prev[-1] = 1.0
    h = 0.1
    K = None
    for _ in range(max_steps):
        if deadline is not None and time.monotonic() > deadline:
            return None
        if K is None:
            _, U = F(y)
            lt = prob.rho(prob.inner(U, (path(y[-1]) @ L)[:, :m]))
            K = np.zeros((A + 1, A + 1))
            K[:A, :A] = -prob.jacobian(y[:-1])
            K[:A, A] = lt
            K[A] = tau_prev
            try:
                lu = scipy.linalg.lu_factor(K, check_finite=False)
            except (np.linalg.LinAlgError, ValueError):
                return None
            e = np.zeros(A + 1)
            e[-1] = 1.0
            tau = scipy.linalg.lu_solve(lu, e, check_finite=False)
            tau /= np.linalg.norm(tau)
            if not np.all(np.isfinite(tau)):
                return None
        hh = h
        final = tau[-1] != 0 and (y[-1] - 1) * (y[-1] + hh * tau[-1] - 1) <= 0
        if final:
            hh = (1 - y[-1]) / tau[-1]
        yp = y + hh * tau
        if final:
            th, err = _newton(prob, yp[:-1], atol)
            if err <= atol:
                return th
            h *= 0.5
            continue
        yc = yp.copy()
        ok = False
        prev = np.inf
        for it in range(8):
            if not np.all(np.isfinite(yc)):
                break
            r, _ = F(yc)
            nr = float(np.abs(r).max())
            if nr < 1e-7:
                ok = True
                break
            if nr > 0.7 * prev or not np.isfinite(nr):
                break
            prev = nr
            yc -= scipy.linalg.lu_solve(lu, np.concatenate([r, [tau_prev @ (yc - yp)]]), check_finite=False)
        if ok and np.linalg.norm(yc - yp) < 0.3 * abs(hh) + 1e-12:
            y, tau_prev, K = yc, tau, None
            h = min(1.3 * h, 0.5)
        else:
            h *= 0.5
            if h < 1e-9:
                return None
    return None


class _OutOfTime(Exception):
    """Raised inside a matrix-free product when the deadline has passed (caught by the solver)."""


def _lm_matrix_free(prob, th, atol, iters, deadline=None):
    """Levenberg-Marquardt with LSQR (damped least squares) on the left-trivialised Jacobian applied
    matrix-free, continued past atol while the error halves; returns (th, err).  The deadline is
    checked before every Jacobian product, so a time limit is honoured to within one product."""
    import scipy.sparse.linalg

    def timed(f):
        def g(v, th):
            if deadline is not None and time.monotonic() > deadline:
                raise _OutOfTime
            return f(th, v)
        return g

    jvp, vjp = timed(prob.jvp_left), timed(prob.vjp_left)
    r, err, _ = prob.residual(th)
    lam = 1e-3
    A = th.size
    for _ in range(iters):
        if err <= 1e-3 * atol:
            break
        op = scipy.sparse.linalg.LinearOperator(
            (r.size, A), matvec=lambda d, th=th: jvp(d, th),
            rmatvec=lambda w, th=th: vjp(w, th), dtype=np.float64,
        )
        tol = max(1e-12, min(1e-2, err))  # inexact Gauss-Newton: solve only as well as needed
        try:
            d = scipy.sparse.linalg.lsqr(op, r, damp=np.sqrt(lam), atol=tol, btol=tol, iter_lim=300)[0]
        except _OutOfTime:
            break
        th2 = th + d
        r2, err2, _ = prob.residual(th2)
        if np.sum(prob.weights * r2**2) < np.sum(prob.weights * r**2):
            stalled = err <= atol and err2 > 0.5 * err
            th, r, err = th2, r2, err2
            lam = max(lam * 0.2, 1e-12)
            if stalled:  # polished past atol as far as rounding allows
                break
        else:
            if err <= atol:
                break
            lam *= 10
            if lam > 1e6:
                break
    return th, err


def _start(prob, k):
    """Fixed starting point ``k``: ``prob.first_start()`` for k = 0, else N(0, (pi / sqrt(3n))^2)
    parameters from default_rng(k)."""
    if k == 0:
        return prob.first_start()
    return np.random.default_rng(k).normal(0.0, np.pi / np.sqrt(3 * prob.n), prob.size)


def _solve(prob, atol, method, restarts, sweeps, max_steps, time_limit=None):
    """Round-major angles reproducing prob.target to max-abs atol (deterministic).

    Dense: the identity start (theta = 0) first with max_steps/4 steps (its path is the one that
    usually arrives, after 100-1500 steps for n = 12-16), then each random start with max_steps/8
    (a start whose path wanders is dropped early), then every start with max_steps.
    Matrix-free: LM from each start.
    """
    if method == "auto":
        method = "dense" if prob.size <= DENSE_LIMIT else "matrix-free"
    # One-time costs before the clock starts (seconds on a loaded machine, not the solve's): SciPy's
    # import, and the first matrix evaluation, which imports and compiles the CPU engine on first use.
    import scipy.linalg  # noqa: F401
    import scipy.sparse.linalg  # noqa: F401
    if time_limit is not None:
        prob.residual(prob.first_start())

    deadline = None if time_limit is None else time.monotonic() + float(time_limit)

    def start(k):
        # Regenerated on demand (deterministic in k), so restarts= costs no memory up front.
        th = _start(prob, k)
        for _ in range(sweeps):
            if deadline is not None and time.monotonic() > deadline:
                break
            prob.sweep(th)
        return th

    count = restarts + 1
    best = np.inf
    if method == "dense":
        plan = [(0, max(1, max_steps // 4))]
        plan += [(k, max(1, max_steps // 8)) for k in range(1, count)]
        plan += [(k, max_steps) for k in range(count)]
        for k, budget in plan:
            if deadline is not None and time.monotonic() > deadline:
                break
            th = start(k)
            _, err, _ = prob.residual(th)
            if err <= 1e-3:
                th2, err2 = _newton(prob, th, atol)
                if err2 <= atol:
                    return th2
            sol = _continuation(prob, th, atol, budget, deadline)
            if sol is not None:
                return sol
    else:
        for k in range(count):
            if deadline is not None and time.monotonic() > deadline:
                break
            th = start(k)
            th, err = _lm_matrix_free(prob, th, atol, iters=60, deadline=deadline)
            if err <= atol:
                return th
            best = min(best, err)
    raise InverseMapError(
        f"the inverse map did not reach max-abs error {atol:g} for n = {prob.n}, m = {prob.m} "
        f"({prob.sched.kind} schedule, method {method!r}) from {restarts + 1} starting points"
        + (f"; best error {best:.3g}" if np.isfinite(best) else "")
        + (f" within time_limit = {time_limit:g} s" if deadline is not None and time.monotonic() > deadline else "")
        + ". Raise restarts=, max_steps= or time_limit=, or see docs/init.md for the sizes this solver reaches."
    )


# --------------------------------------------------------------------------- public API

def _host(name, a):
    """(float64 NumPy copy of a, result dtype, was_cupy); integer, bool, complex and object arrays,
    masked arrays and None are refused (cupyortho.errors), as everywhere in the library."""
    return _v.as_host(name, a)


METHODS = ("auto", "dense", "matrix-free")
"""The solvers (``solver=``) of the inverse map."""


def _settings(tol, atol, solver, method, restarts, sweeps, max_steps, time_limit, solvers=METHODS):
    """Validated solver settings, as ``(tol, atol, solver, restarts, sweeps, max_steps, time_limit)``.

    ``method=`` is the old name of ``solver=`` (``method`` means the apply strategy elsewhere in
    cupyortho); it still works, with a DeprecationWarning.
    """
    if method is not None:
        warnings.warn("angles_from_matrix(method=...) is deprecated: the solver is chosen with solver=; "
                      "method= means the apply strategy elsewhere in cupyortho", DeprecationWarning, stacklevel=3)
        if solver != "auto" and solver != method:
            raise MethodError(f"solver = {solver!r} and its deprecated alias method = {method!r} disagree; pass solver= only")
        solver = method
    return (
        _v.real("tol", tol, minimum=0.0),
        _v.real("atol", atol, minimum=0.0),
        _v.choice("solver", solver, solvers, error=MethodError),
        _v.integer("restarts", restarts, 0, 10**6, SettingError),
        _v.integer("sweeps", sweeps, 0, 10**6, SettingError),
        _v.integer("max_steps", max_steps, 1, None, SettingError),
        _v.real("time_limit", time_limit, minimum=0.0, allow_none=True, allow_inf=True),
    )


def _check_orthonormal(name, Q, tol):
    """Max-abs of Q^T Q - I must be <= tol (NotOrthogonalError with the measured error otherwise)."""
    m = Q.shape[-1]
    G = np.swapaxes(Q, -1, -2) @ Q
    err = np.abs(G - np.eye(m)).max(axis=(-1, -2))
    worst = float(np.max(err)) if err.size else 0.0
    if not worst <= tol:
        what = "orthogonal (U^T U = I)" if Q.shape[-1] == Q.shape[-2] else "orthonormal columns (Q^T Q = I)"
        raise NotOrthogonalError(
            f"{name} must be {what} within tol = {tol:g} (max-abs of {name}^T {name} - I); "
            f"got error {worst:.3g}" + (" (worst matrix of the batch)" if err.ndim else "")
        )


def _check_reach(sched, dim, group):
    """Refuse a schedule with fewer rotations than ``dim`` (a truncation): its image is a thin subset of
    ``group``, so a generic target has no preimage (it would otherwise fail inside the solve)."""
    if sched.num_angles < dim:
        raise ScheduleError(
            f"schedule must reach every point of {group} (at least {dim} rotations) to be inverted; got "
            f"{sched!r} with {sched.num_angles}. A truncated schedule reaches only part of {group}: invert "
            "with the full schedule, or fit the truncation's angles by least squares on matrix()/unitary()"
        )


ORTHONORMAL_TO_ROUNDING = 1e-14
"""Targets with max-abs(Q^H Q - I) at most this are used as they are: their projection would move them by
about as much (Haar draws are orthonormal to ~1e-15), and it costs an SVD (2 s at n = 1024)."""


def _reorthonormalize(Q):
    """Nearest matrix with orthonormal columns (polar factor), so the solve targets an exact point; the
    matrices of the batch already orthonormal to ``ORTHONORMAL_TO_ROUNDING`` are kept as they are."""
    m = Q.shape[-1]
    err = np.abs(np.conj(np.swapaxes(Q, -1, -2)) @ Q - np.eye(m)).max(axis=(-1, -2), initial=0.0)
    far = err > ORTHONORMAL_TO_ROUNDING
    if not far.any():
        return Q
    out = np.array(Q, copy=True)
    u, _, vt = np.linalg.svd(Q[far], full_matrices=False)
    out[far] = u @ vt
    return out


def _finish(theta, dtype, was_cupy):
    theta = theta.astype(dtype, copy=False)
    if was_cupy:
        import cupy

        return cupy.asarray(theta)
    return theta


def _solve_each(sched, flat, atol, solver, restarts, sweeps, max_steps, time_limit):
    """Angles (public layout, wrapped to (-pi, pi]) of each target ``flat[b]`` by the numerical solve."""
    out = np.empty((flat.shape[0], sched.num_angles))
    for b in range(flat.shape[0]):
        prob = _Problem(sched, _reorthonormalize(flat[b]))
        th = _solve(prob, atol, solver, restarts, sweeps, max_steps, time_limit)
        out[b] = sched.from_round_order(np.angle(np.exp(1j * th)))
    return out


def angles_from_matrix(U, *, schedule=None, tol=1e-6, atol=1e-10, solver="auto", restarts=8, sweeps=0,
                       max_steps=8000, time_limit=None, method=None):
    r"""Angles :math:`\theta` with ``matrix(theta, schedule=schedule) == U`` (the inverse map of SO(n)).

    The map :math:`\theta \mapsto U(\theta) = B_{R-1}\cdots B_0` is onto SO(n) but not one-to-one; this
    returns one preimage, the same one every time for the same input (fixed starting points).  It is
    what :class:`cupyortho.torch` parametrizations call in ``right_inverse``.

    Args:
        U (array_like): ``(n, n)`` or a batch ``(..., n, n)``, real float32 or float64 (NumPy or CuPy).
            Must be in SO(n): orthogonal within ``tol`` and with determinant +1.  A matrix with
            det = -1 (a reflection) is not a product of rotations; use ``U @ diag(1, ..., 1, -1)``
            (flip the sign of the last column) and remember the flip.
        schedule (str | Schedule | None): the schedule of the angles (``"circle"``, ``"team"``, a
            :class:`~cupyortho.Schedule`, or None for the library default).  The same U gives
            different angles for different schedules.
        tol (float): accepted orthogonality error, max-abs of :math:`U^TU - I` (default 1e-6, so
            float32 matrices pass).  The target is projected to the nearest orthogonal matrix first
            (unless it is orthogonal to ``ORTHONORMAL_TO_ROUNDING = 1e-14`` already).
        atol (float): required max-abs error of ``matrix(theta) - U`` (against the projected U), in
            float64; default 1e-10.  Newton keeps polishing past it while the error drops (typically
            to 1e-15..1e-13).
        solver (str): ``"auto"`` (dense up to ``DENSE_LIMIT`` angles, else matrix-free),
            ``"dense"`` (arclength continuation) or ``"matrix-free"`` (LM with LSQR).
        restarts (int): extra starting points tried after ``theta = 0`` (0 to 10**6).
        sweeps (int): coordinate-ascent sweeps before the local solve (>= 0).
        max_steps (int): continuation step budget per starting point (>= 1).
        time_limit (float | None): seconds per matrix (> 0) after which ``InverseMapError`` is raised
            (None: no limit), honoured by both solvers to within one Jacobian product or step.
        method (str | None): deprecated alias of ``solver`` (``method=`` names the apply strategy
            elsewhere in cupyortho); warns.  Haar targets beyond the reach in ``docs/init.md`` can otherwise run
            for hours; the angles returned (when it succeeds) do not depend on it.

    Returns:
        ndarray ``(..., n(n-1)/2)`` in the upper-triangle layout, U's dtype (float64 for integer
        input), NumPy or CuPy like U.  Angles lie in :math:`(-\pi, \pi]`.

    Raises:
        ShapeError: U is not a (batch of) square matrices with n >= 2.
        ArrayTypeError, DtypeError, NonFiniteError: U is None or masked, not real floating, or not finite.
        SettingError, MethodError: a solver setting is out of range (tol, atol, time_limit
            must be positive; restarts, sweeps >= 0; max_steps >= 1; solver one of ``METHODS``).
        NotOrthogonalError: :math:`\max|U^TU - I| > tol`, or det U = -1 (message says which).
        InverseMapError: no starting point reached ``atol`` (see ``docs/init.md`` for reach).
    """
    tol, atol, solver, restarts, sweeps, max_steps, time_limit = _settings(
        tol, atol, solver, method, restarts, sweeps, max_steps, time_limit)
    A, dtype, was_cupy = _host("U", U)
    if A.ndim < 2 or A.shape[-1] != A.shape[-2] or A.shape[-1] < 2:
        raise ShapeError(f"U must have shape (..., n, n) with n >= 2; got {tuple(A.shape)}")
    n = A.shape[-1]
    _check_orthonormal("U", A, tol)
    det = np.linalg.det(A)
    if np.any(det < 0):
        raise NotOrthogonalError(
            f"U must be in SO(n) (det = +1); got det = {float(np.min(det)):.3g}. A reflection is not a "
            "product of rotations: pass U @ diag(1, ..., 1, -1) (last column negated) and apply the flip "
            "yourself, or use angles_from_frame(U[..., :, :n-1], n-1), which accepts either sign"
        )
    sched = _sched.get_schedule(schedule, n)
    _check_reach(sched, n * (n - 1) // 2, "SO(n)")
    batch = A.shape[:-2]
    flat = A.reshape((-1, n, n))
    if _nulling.is_brick(sched):  # exact constructive inverse, no solve (cupyortho/_nulling.py)
        out = _nulling.brick_angles(_reorthonormalize(flat))
        return _finish(out.reshape(batch + (sched.num_angles,)), dtype, was_cupy)
    out = _solve_each(sched, flat, atol, solver, restarts, sweeps, max_steps, time_limit)
    return _finish(out.reshape(batch + (sched.num_angles,)), dtype, was_cupy)


def angles_from_frame(Q, m, *, schedule=None, tol=1e-6, atol=1e-10, solver="auto", restarts=8, sweeps=0,
                      max_steps=8000, time_limit=None, method=None):
    r"""Angles :math:`\theta` with ``frame(theta, n, m, schedule=schedule) == Q`` (Stiefel inverse map).

    The frame is the first ``m`` columns of the rotation built from the ``num_angles(n, m)`` pairs
    ``i < j`` with ``i < m`` (:func:`cupyortho.frame`; for brick its band, ``docs/conventions.md``);
    every point of St(n, m) is reached.  For ``m < n`` there is no determinant condition: any
    orthonormal ``n x m`` matrix is accepted.  With ``schedule="brick"`` the frame is inverted exactly
    by nulling, for every m, in ``O(n m^2)`` (no solve; the solver settings other than ``tol`` are
    unused).

    Args:
        Q (array_like): ``(n, m)`` or ``(..., n, m)`` with orthonormal columns within ``tol``.
        m (int): number of columns, ``1 <= m <= n`` (must equal ``Q.shape[-1]``).
        schedule, tol, atol, solver, restarts, sweeps, max_steps, time_limit, method: as in
            :func:`angles_from_matrix`.

    Returns:
        ndarray ``(..., n*m - m(m+1)/2)``, Q's dtype, NumPy or CuPy like Q.
    """
    tol, atol, solver, restarts, sweeps, max_steps, time_limit = _settings(
        tol, atol, solver, method, restarts, sweeps, max_steps, time_limit)
    A, dtype, was_cupy = _host("Q", Q)
    if A.ndim < 2:
        raise ShapeError(f"Q must have shape (..., n, m); got {tuple(A.shape)}")
    n = A.shape[-2]
    if n < 2:
        raise SizeError(f"Q must have n >= 2 rows; got shape {tuple(A.shape)}")
    m = _check_m(n, m)
    if A.shape[-1] != m:
        raise ShapeError(f"Q must have m = {m} columns (axis -1); got shape {tuple(A.shape)}")
    _check_orthonormal("Q", A, tol)
    if m == n:
        return angles_from_matrix(Q, schedule=schedule, tol=tol, atol=atol, solver=solver,
                                  restarts=restarts, sweeps=sweeps, max_steps=max_steps, time_limit=time_limit)
    sched = _sched.get_schedule(schedule, n, m)
    _check_reach(sched, _sched.num_angles(n, m), "St(n, m)")
    batch = A.shape[:-2]
    flat = A.reshape((-1, n, m))
    if _nulling.is_brick(sched):  # exact constructive inverse of the band, no solve (cupyortho/_nulling.py)
        out = _nulling.brick_frame_angles(_reorthonormalize(flat))
        return _finish(out.reshape(batch + (sched.num_angles,)), dtype, was_cupy)
    out = _solve_each(sched, flat, atol, solver, restarts, sweeps, max_steps, time_limit)
    return _finish(out.reshape(batch + (sched.num_angles,)), dtype, was_cupy)


def params_from_unitary(U, *, schedule=None, tol=1e-6, atol=1e-10, restarts=8, max_steps=8000,
                        time_limit=None):
    r"""Parameters ``p`` with ``cupyortho.unitary(p, schedule=schedule) == U`` (U(n) inverse map).

    Same solver as :func:`angles_from_matrix` (dense pseudo-arclength continuation from ``p = 0``,
    i.e. from the identity, then fixed restarts), on the unitary parametrization
    :math:`U = D(\delta) B_{R-1}\cdots B_0` with complex Givens rotations; the Jacobian is assembled
    from ``n*n`` unitary JVPs, so this is meant for small n.  Every unitary matrix is reachable (no
    determinant condition); for SU(n) parameters (``special=True``, ``n*n - 1`` of them) drop the last
    diagonal phase after checking that ``sum(delta)`` is a multiple of 2 pi, i.e. det U = 1.

    Args:
        U (array_like): ``(n, n)`` or ``(..., n, n)`` complex (or real) unitary within ``tol``
            (max-abs of :math:`U^HU - I`).
        schedule, tol, atol, restarts, max_steps, time_limit: as in :func:`angles_from_matrix`.

    Returns:
        float ndarray ``(..., n*n)`` laid out ``[theta (A), phi (A), delta (n)]``, float32 for complex64
        input, float64 otherwise; NumPy or CuPy like U.  Entries lie in :math:`(-\pi, \pi]`.
    """
    tol, atol, _, restarts, _, max_steps, time_limit = _settings(
        tol, atol, "dense", None, restarts, 0, max_steps, time_limit)
    A, dtype, was_cupy = _v.as_host("U", U, complex_ok=True)
    if A.ndim < 2 or A.shape[-1] != A.shape[-2] or A.shape[-1] < 2:
        raise ShapeError(f"U must have shape (..., n, n) with n >= 2; got {tuple(A.shape)}")
    n = A.shape[-1]
    G = np.conj(np.swapaxes(A, -1, -2)) @ A
    worst = float(np.abs(G - np.eye(n)).max(initial=0.0))  # 0 for an empty batch
    if not worst <= tol:
        raise NotOrthogonalError(
            f"U must be unitary (U^H U = I) within tol = {tol:g} (max-abs of U^H U - I); got error {worst:.3g}"
        )
    sched = _sched.get_schedule(schedule, n)
    _check_reach(sched, n * (n - 1) // 2, "U(n)")
    batch = A.shape[:-2]
    flat = A.reshape((-1, n, n))
    if _nulling.is_brick(sched):  # exact constructive inverse, no solve (cupyortho/_nulling.py)
        out = _nulling.brick_unitary_params(_reorthonormalize(flat))
        return _finish(out.reshape(batch + (n * n,)), dtype, was_cupy)
    out = np.empty((flat.shape[0], n * n))
    for b in range(flat.shape[0]):
        prob = _UnitaryProblem(sched, _reorthonormalize(flat[b]))
        p = _solve(prob, atol, "dense", restarts, 0, max_steps, time_limit)
        out[b] = np.angle(np.exp(1j * p))
    return _finish(out.reshape(batch + (n * n,)), dtype, was_cupy)
