r"""Initializations of the angles: identity, small random, and Haar-random rotations and frames.

Design rule: every initializer returns angles in the public upper-triangle layout (NumPy float64 by
default, ``dtype=`` to change), takes its randomness only from the ``rng`` argument
(``None``, an int seed, or a ``numpy.random.Generator``) and never from global state.

Haar angles.  The Haar measure pulled back to the angles has density :math:`|\det J(\theta)|`,
which for round-robin schedules does not factor over the angles (it does for n <= 4, not for
n = 6: the mixed second difference of :math:`\log|\det J|` is O(1)), so there is no independent
per-angle law to sample.  :func:`haar_angles` therefore draws a Haar rotation (QR of a Gaussian
matrix with the signs of R's diagonal moved into Q, then one column negated when det = -1, which
is invariant under left multiplication by SO(n) and hence Haar on SO(n)) and maps it back with
:func:`cupyortho.inverse.angles_from_matrix`.  The matrix of the angles equals the drawn matrix to
``atol``, so it is Haar-distributed up to that error; the cost is that of the inverse map
(``docs/init.md``).  Naive uniform angles on :math:`(-\pi, \pi]` are *not* Haar (tested).

The brick schedule is the exception: its angles of Haar matrices are independent with known laws
(``docs/init.md``, "Per-angle Haar laws of brick"), drawn directly with ``per_angle=True``.
"""

from __future__ import annotations

import numpy as np

from . import _validate as _v
from . import schedule as _sched
from .errors import SettingError
from .inverse import angles_from_frame, angles_from_matrix, params_from_unitary

__all__ = [
    "identity_angles",
    "small_random_angles",
    "haar_matrix",
    "haar_angles",
    "haar_frame_angles",
    "haar_unitary_matrix",
    "haar_unitary_params",
    "identity_unitary_params",
]


# Every setting goes through cupyortho._validate: n, m (ints in range), shape (non-negative ints, the
# total size bounded before anything is allocated), scale (finite, > 0), rng, dtype (float32/64).

def _rng(rng):
    return _v.rng(rng)


def _count(n, m):
    n = _v.integer("n", n, 2)
    if m is not None:
        m = _v.integer("m", m, 1, n)
    return _sched.num_angles(n, m)


def _shape(shape, trailing=1):
    return _v.shape_setting("shape", shape, trailing)


def identity_angles(n, m=None, *, shape=(), dtype=np.float64):
    """Angles of the identity matrix (all zero): ``(*shape, num_angles(n, m))``.

    Every schedule maps zero angles to :math:`I` (and ``frame`` to :math:`I_{n,m}`).
    """
    count = _count(n, m)
    return np.zeros(_shape(shape, count) + (count,), dtype=_v.dtype_setting("dtype", dtype))


def small_random_angles(n, m=None, *, scale=1e-2, shape=(), rng=None, dtype=np.float64):
    r"""Angles drawn i.i.d. from :math:`N(0, \mathrm{scale}^2)`: a rotation near the identity,
    :math:`U = I + \sum_p \theta_p K_p + O(\mathrm{scale}^2)`, for symmetric-breaking starts.

    Returns ``(*shape, num_angles(n, m))``.
    """
    count = _count(n, m)
    scale = _v.real("scale", scale, minimum=0.0)
    dtype = _v.dtype_setting("dtype", dtype)
    return (_rng(rng).normal(0.0, scale, _shape(shape, count) + (count,))).astype(dtype)


def haar_matrix(n, *, shape=(), rng=None):
    r"""Haar-random rotations in SO(n), ``(*shape, n, n)`` float64.

    :math:`Z` Gaussian, :math:`Z = QR`, :math:`Q \leftarrow Q\,\mathrm{diag}(\mathrm{sign}\,R_{ii})`
    is Haar on O(n); negating the first column when :math:`\det Q = -1` maps it onto SO(n)
    equivariantly, so the result is Haar on SO(n).
    """
    n = _v.integer("n", n, 2)
    z = _rng(rng).standard_normal(_shape(shape, n * n) + (n, n))
    q, r = np.linalg.qr(z)
    d = np.sign(np.diagonal(r, axis1=-2, axis2=-1))
    d[d == 0] = 1
    q = q * d[..., None, :]
    neg = np.linalg.det(q) < 0
    q[neg, :, 0] *= -1
    return q


def _brick_haar_beta(n):
    r"""The exponent :math:`\beta_q` of each brick rotation (round-major): for Haar matrices the brick
    angles are independent with :math:`\sin^2\theta_q \sim \mathrm{Beta}(\beta_q, 1)` (U(n)) and
    :math:`\mathrm{Beta}(\beta_q/2, 1/2)` (SO(n)), where, for the rotation of pair ``(p, p+1)`` in
    round ``l`` of ``R`` rounds, :math:`\beta = |C_{in}| + |C_{out}| - n - 1` with
    :math:`C_{in} = [p - l, p + 1 + l]` and :math:`C_{out} = [p - a, p + 1 + a]`, ``a = R - 1 - l``
    (the coordinates its rotation can reach from the input and the output, clipped to ``[0, n)``);
    ``docs/init.md``, "Per-angle Haar laws of brick"."""
    s = _sched.brick_schedule(n)
    rnd = np.repeat(np.arange(s.num_rounds), np.diff(s.round_offsets))
    p = s.pair_i
    after = s.num_rounds - 1 - rnd
    c_in = np.minimum(n - 1, p + 1 + rnd) - np.maximum(0, p - rnd) + 1
    c_out = np.minimum(n - 1, p + 1 + after) - np.maximum(0, p - after) + 1
    return c_in + c_out - n - 1, rnd, s.num_rounds


def _per_angle_schedule(schedule, n):
    s = _sched.get_schedule(schedule, n)
    if s.kind != "brick" or s.m is not None:
        raise SettingError(
            f"per_angle=True needs the full brick schedule (schedule='brick'), the only one with derived "
            f"per-angle Haar laws; got {s!r}. Use per_angle=False (invert a Haar matrix)"
        )
    return s


def _brick_haar_real(n, shape, rng):
    """Independent per-angle draws of Haar SO(n) brick angles ``(*shape, n(n-1)/2)``."""
    beta, rnd, R = _brick_haar_beta(n)
    g = _rng(rng)
    shape = _shape(shape, beta.size)
    t = np.arcsin(np.sqrt(g.beta(beta / 2, 0.5, size=shape + beta.shape)))
    t = np.where(g.random(t.shape) < 0.5, t, np.pi - t)  # density ~ |sin t|^(beta - 1) on [0, pi)
    full = (rnd == 0) | (rnd == R - 1)  # first and last rounds: on the whole circle
    return np.where(full & (g.random(t.shape) < 0.5), -t, t)


def _brick_haar_unitary(n, special, shape, rng):
    """Independent per-angle draws of Haar U(n) (SU(n)) brick parameters."""
    beta, _, _ = _brick_haar_beta(n)
    g = _rng(rng)
    A = beta.size
    shape = _shape(shape, 2 * A + n)
    theta = np.arcsin(np.sqrt(g.beta(beta, 1.0, size=shape + (A,))))  # on [0, pi/2]
    phases = g.uniform(-np.pi, np.pi, size=shape + (A + n - (1 if special else 0),))
    return np.concatenate([theta, phases], axis=-1)


def haar_angles(n, *, schedule=None, rng=None, shape=(), dtype=np.float64, per_angle=False, **solver):
    r"""Angles whose matrix ``matrix(theta, schedule=schedule)`` is Haar-distributed on SO(n).

    Draws :func:`haar_matrix` and inverts it with :func:`~cupyortho.inverse.angles_from_matrix`
    (``solver`` keywords are passed on, e.g. ``time_limit=``).  Deterministic for a given ``rng``
    seed.  Practical for small n only (Haar targets are inverted up to n ~ 16, see
    ``docs/init.md``); for large n use :func:`identity_angles` or :func:`small_random_angles`.

    Args:
        n (int): size.  schedule: ``"circle"``, ``"team"``, a Schedule or None (default schedule).
        rng: None, int seed or ``numpy.random.Generator``.  shape: batch shape.
        dtype: of the result.
        per_angle (bool): with ``schedule="brick"`` only, draw each angle from its own independent law
            instead (``docs/init.md``, "Per-angle Haar laws of brick"): ``O(n^2)``, no matrix formed or
            inverted; the same distribution, not the same draws.  SettingError for other schedules.
    Returns:
        ndarray ``(*shape, n(n-1)/2)``.
    """
    dtype = _v.dtype_setting("dtype", dtype)
    if _v.flag("per_angle", per_angle):
        n = _v.integer("n", n, 2)
        _per_angle_schedule(schedule, n)
        return _brick_haar_real(n, shape, rng).astype(dtype)
    U = haar_matrix(n, shape=shape, rng=rng)
    return angles_from_matrix(U, schedule=schedule, **solver).astype(dtype)


def haar_frame_angles(n, m, *, schedule=None, rng=None, shape=(), dtype=np.float64, **solver):
    r"""Angles whose frame ``frame(theta, n, m, schedule=schedule)`` is uniform on St(n, m) (the first
    ``m`` columns of a Haar rotation, inverted by :func:`~cupyortho.inverse.angles_from_frame`: exact
    for brick at every m and n, numerical and small-n for circle/team).  Returns
    ``(*shape, num_angles(n, m))``."""
    _count(n, m)
    dtype = _v.dtype_setting("dtype", dtype)
    U = haar_matrix(n, shape=shape, rng=rng)
    m = int(m)
    return angles_from_frame(U[..., :, :m], m, schedule=schedule, **solver).astype(dtype)


def identity_unitary_params(n, *, special=False, shape=(), dtype=np.float64):
    """Parameters of the identity in the unitary layout ``[theta, phi, delta]`` (all zero):
    ``(*shape, n*n)`` (``n*n - 1`` with ``special=True``)."""
    count = _v.num_unitary_params(n, special)
    return np.zeros(_shape(shape, count) + (count,), dtype=_v.dtype_setting("dtype", dtype))


def haar_unitary_matrix(n, *, shape=(), rng=None):
    r"""Haar-random unitaries in U(n), ``(*shape, n, n)`` complex128: QR of a complex Gaussian matrix,
    :math:`Q \leftarrow Q\,\mathrm{diag}(R_{ii}/|R_{ii}|)` (Mezzadri's phase fix)."""
    n = _v.integer("n", n, 2)
    g = _rng(rng)
    shape = _shape(shape, 2 * n * n)
    z = (g.standard_normal(shape + (n, n)) + 1j * g.standard_normal(shape + (n, n))) / np.sqrt(2)
    q, r = np.linalg.qr(z)
    d = np.diagonal(r, axis1=-2, axis2=-1)
    d = np.where(d == 0, 1, d / np.abs(d))
    return q * d[..., None, :]


def haar_unitary_params(n, *, special=False, schedule=None, rng=None, shape=(), dtype=np.float64, per_angle=False,
                        **solver):
    r"""Parameters whose ``cupyortho.unitary(p, special=special, schedule=schedule)`` is Haar on U(n)
    (on SU(n) with ``special=True``): draws :func:`haar_unitary_matrix` and inverts it with
    :func:`~cupyortho.inverse.params_from_unitary` (small n).

    For SU(n) the Haar unitary ``Q`` is divided by an n-th root of ``det Q`` (``Q`` times a scalar
    phase that depends only on ``det Q``, so the result is Haar on SU(n): the centre of SU(n) acts
    trivially on the Haar measure), inverted, and the last diagonal phase dropped: it equals
    ``-sum`` of the others modulo 2 pi because ``det = 1``, which is exactly the SU(n) layout.

    ``per_angle=True`` (``schedule="brick"`` only): each parameter from its own independent law
    (``docs/init.md``): :math:`\sin^2\theta_q \sim \mathrm{Beta}(\beta_q, 1)` on :math:`[0, \pi/2]`,
    phases and diagonal phases uniform (for SU(n) the first ``n - 1`` diagonal phases: the law of Haar
    U(n) conditioned on det = 1, which is Haar on SU(n)); ``O(n^2)``.

    Returns:
        ``(*shape, n*n)`` (``n*n - 1`` with ``special=True``) in the layout ``[theta, phi, delta]``.
    """
    special = _v.flag("special", special)
    dtype = _v.dtype_setting("dtype", dtype)
    if _v.flag("per_angle", per_angle):
        n = _v.integer("n", n, 2)
        _per_angle_schedule(schedule, n)
        return _brick_haar_unitary(n, special, shape, rng).astype(dtype)
    U = haar_unitary_matrix(n, shape=shape, rng=rng)
    if special:
        det = np.linalg.det(U)
        U = U / np.exp(1j * np.angle(det) / U.shape[-1])[..., None, None]
    p = params_from_unitary(U, schedule=schedule, **solver)
    return (p[..., :-1] if special else p).astype(dtype)


def torus_angles(n, m=None, *, low=-np.pi, high=np.pi, shape=(), rng=None, dtype=np.float64):
    r"""A torus (block-diagonal) start, as geotorch's ``torus`` initialization: the angles of the
    planes ``(2i, 2i+1)`` drawn i.i.d. from :math:`\mathrm{Uniform}(\mathrm{low}, \mathrm{high})`
    (default :math:`(-\pi, \pi)`), every other angle zero.

    The planes ``(0, 1), (2, 3), ...`` are disjoint, so their rotations commute and the matrix is the
    same for every schedule: ``matrix(theta)`` is block diagonal with blocks
    :math:`\begin{pmatrix}\cos\theta_i & -\sin\theta_i\\ \sin\theta_i & \cos\theta_i\end{pmatrix}`
    (and a trailing 1 for odd ``n``).  geotorch samples the skew block :math:`\begin{pmatrix}0 & b\\
    -b & 0\end{pmatrix}` with :math:`b` from the same symmetric law, i.e. the rotation by
    :math:`-b`; the two laws coincide.  With ``m`` (a frame, ``frame(theta, n, m)``) only the planes
    with ``2i < m`` are in the Stiefel layout, and the frame is the first ``m`` columns of that block
    matrix.

    Args:
        n (int): size, ``n >= 2``.  m (int, optional): frame columns, ``1 <= m <= n``.
        low, high (float): bounds of the uniform law, ``low <= high``.
        shape: batch shape.  rng: None, int seed or ``numpy.random.Generator``.  dtype: of the result.

    Returns:
        ndarray ``(*shape, num_angles(n, m))``.

    Raises:
        cupyortho.errors.SizeError: bad ``n`` or ``m``.  cupyortho.errors.SettingError: non-finite
        bounds or ``low > high``, a bad ``shape`` or ``rng``.  cupyortho.errors.DtypeError: bad ``dtype``.
    """
    count = _count(n, m)
    n = int(n)
    low = _v.real("low", low, strict=False)
    high = _v.real("high", high, minimum=low, strict=False)
    dtype = _v.dtype_setting("dtype", dtype)
    rows = np.arange(0, n - 1, 2)
    if m is not None:
        rows = rows[rows < int(m)]
    index = _sched.pair_index(rows, rows + 1, n)
    out = np.zeros(_shape(shape) + (count,), dtype=np.float64)
    out[..., index] = _rng(rng).uniform(low, high, _shape(shape) + (rows.size,))
    return out.astype(dtype)


__all__ += ["torus_angles"]
