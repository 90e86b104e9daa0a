r"""Backends: one protocol, SO(n) and U(n) together, one module per array library.

A backend is a module chosen by the type of the arrays (:mod:`cupyortho.backends.cpu` for NumPy
arrays, the package :mod:`cupyortho.backends.cupy` for CuPy arrays; the protocol page is
``docs/backends.md``).  The public layer (:mod:`cupyortho._api`, :mod:`cupyortho._unitary`) validates, casts and
resolves everything, then calls the functions below.  How a backend carries out a pass (compiled
engine, blocked GEMM stages, round-by-round reference) is decided in :mod:`cupyortho._strategy`.

Attributes
----------
``xp`` (module)
    The array library (``numpy``, ``cupy``): the public layer converts with ``xp.asarray`` and
    multiplies with ``xp.matmul``.
``all_finite(a) -> bool``
    True when every entry of ``a`` is finite.
``complex_dtype(real_dtype) -> dtype``
    complex64 for float32, complex128 for float64.

Functions (``A = schedule.num_angles``; ``...`` are batch axes, broadcast like ``numpy.matmul``)
--------------------------------------------------------------------------------------------------
SO(n), all arrays of one real dtype (float32 or float64):

=====================================================================  ==============================
``matrix(theta, schedule)``                                            ``U`` ``(..., n, n)``
``apply(theta, x, schedule, transpose=False)``                         ``U x`` / ``U^T x`` ``(..., n, k)``
``matrix_vjp(theta, cotangent, schedule, output=None)``                ``d_theta`` shaped like theta
``apply_vjp(theta, x, cotangent, schedule, transpose=False,            ``(d_theta, d_x)`` shaped like
output=None)``                                                         theta and x
``matrix_jvp(theta, theta_tangent, schedule)``                         ``dU`` ``(..., n, n)``
``apply_jvp(theta, x, theta_tangent, x_tangent, schedule,              ``dy`` ``(..., n, k)``
transpose=False)``
=====================================================================  ==============================

U(n), ``params`` real ``(..., n*n)`` laid out ``[theta (A), phi (A), delta (n)]``, complex arrays of
the matching precision (``docs/unitary.md``):

===========================================================================  ========================
``unitary(params, schedule, cdtype)``                                        ``U`` ``(..., n, n)``
``unitary_apply(params, x, schedule, adjoint=False)``                        ``U x`` / ``U^H x``
``unitary_vjp(params, cotangent, schedule, output=None)``                    ``d_params`` (real)
``unitary_apply_vjp(params, x, cotangent, schedule, adjoint=False,           ``(d_params, d_x)``
output=None)``
``unitary_jvp(params, params_tangent, schedule, cdtype)``                    ``dU``
``unitary_apply_jvp(params, x, params_tangent, x_tangent, schedule,          ``dy``
adjoint=False)``
===========================================================================  ========================

Argument conventions
--------------------
* ``theta``/``params`` carry the angles on their last axis in the public layout (angle of pair
  ``(i, j)`` at ``schedule`` 's ``angle_index``); ``schedule`` is a resolved
  :class:`~cupyortho.schedule.Schedule` built for ``n = x.shape[-2]`` (possibly restricted to ``m``,
  for frames: then only ``num_angles`` angles exist).
* ``x``, ``cotangent``, ``output``, tangents are ``(..., n, k)`` (vectors are made ``(n, 1)`` by the
  public layer); ``x_tangent`` may be None for zero.  ``output`` is the forward result passed back
  to skip recomputing it; it is trusted.
* Cotangents follow ``docs/unitary.md`` for complex arrays (``dL/dRe + i dL/dIm``).
* VJP results are summed over broadcast batch axes to the shapes of the inputs they belong to.

What the public layer guarantees (so backends do not check)
-----------------------------------------------------------
Arrays of the backend's library, of one supported dtype (complex of the params' precision for the
U(n) arrays), finite when ``check_finite``; shapes consistent with ``schedule`` and broadcastable
batch axes; ``n >= 2``.  What a backend guarantees: nothing it is given is written to; results are
fresh arrays of the input dtype (real ``d_params``).
"""
