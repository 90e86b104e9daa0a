"""The device the CuPy backend's algorithms run against: compiled kernels plus an array module.

Design rule: algorithm code (:mod:`.so`, :mod:`.un`, :mod:`.launch`) never touches CuPy's
``RawModule`` directly; it sees a *device object* ``dev`` with

* ``dev.xp`` -- the array module (``cupy`` here; ``numpy`` in the CPU harness of ``tests/cudasim``),
* ``dev.get_function(name_expression)`` -- a callable ``f(grid, block, args, shared_mem=0)`` with
  CuPy ``RawKernel``'s call signature,
* ``dev.key`` -- hashable identity (for caches of per-schedule device data),
* ``dev.max_shared_memory`` -- usable dynamic shared memory per block in bytes (the opt-in limit),
* ``dev.multiprocessor_count`` -- number of SMs (used to size tiles).

:class:`CupyDevice` compiles each ``.cu`` file once per device with NVRTC (all its template
instantiations via ``name_expressions``) and memoizes the module; CuPy adds its own flags
(``--std=c++17``, ``-arch=sm_XX``, ``-ftz=true``) and caches the binary on disk.
"""

from __future__ import annotations

import hashlib
import threading

from ...errors import BackendUnavailableError
from .kernels import KERNELS, files, kernel_dir, read_source

__all__ = ["CupyDevice", "get_device"]

_DEFAULT_SHARED = 48 * 1024
_devices: dict = {}
_lock = threading.Lock()


def _source_with_header_digest(filename: str) -> str:
    """The source of ``filename`` prefixed by a digest of every ``.cuh`` header, so that CuPy's
    on-disk cache (keyed by the source text and options, not by included files) is invalidated
    when a header changes."""
    digest = hashlib.sha256()
    for header in sorted(kernel_dir().glob("*.cuh")):
        digest.update(header.name.encode())
        digest.update(header.read_bytes())
    return f"// cupyortho headers sha256 {digest.hexdigest()}\n" + read_source(filename)


class CupyDevice:
    """One CUDA device: memoized NVRTC modules and its shared-memory and SM limits.

    Args:
        device_id (int): CUDA device ordinal.
    """

    def __init__(self, device_id: int):
        import cupy

        self.xp = cupy
        self.id = int(device_id)
        self.key = ("cuda", self.id)
        self._cupy = cupy
        runtime = cupy.cuda.runtime
        self.compute_capability = cupy.cuda.Device(self.id).compute_capability
        self.max_shared_memory = int(
            runtime.deviceGetAttribute(runtime.cudaDevAttrMaxSharedMemoryPerBlockOptin, self.id))
        self.multiprocessor_count = int(
            runtime.deviceGetAttribute(runtime.cudaDevAttrMultiProcessorCount, self.id))
        self._modules: dict = {}
        self._functions: dict = {}
        self._lock = threading.Lock()

    def __repr__(self):
        return f"CupyDevice({self.id}, sm_{self.compute_capability})"

    def synchronize(self):
        """Wait for the current stream (used once after uploading cached per-schedule tables, so
        that later calls on other streams see them complete)."""
        self._cupy.cuda.get_current_stream().synchronize()

    def context(self):
        """A context manager making this device current (``cupy.cuda.Device``)."""
        return self._cupy.cuda.Device(self.id)

    def _module(self, filename: str):
        module = self._modules.get(filename)
        if module is None:
            with self.context():
                module = self._cupy.RawModule(
                    code=_source_with_header_digest(filename),
                    options=(f"-I{kernel_dir()}",),
                    name_expressions=files()[filename],
                )
            self._modules[filename] = module
        return module

    def get_function(self, name_expression: str):
        """The compiled kernel ``name_expression`` (a key of ``KERNELS``), as a ``RawKernel``.

        Each kernel is allowed the device's full opt-in dynamic shared memory, so launchers may
        request more than the default 48 KiB.
        """
        function = self._functions.get(name_expression)
        if function is None:
            if name_expression not in KERNELS:
                raise BackendUnavailableError(
                    f"kernel {name_expression!r} is not in the registry (cupyortho.backends.cupy.kernels); "
                    f"known: {sorted(KERNELS)}")
            with self._lock:
                function = self._functions.get(name_expression)
                if function is None:
                    with self.context():
                        function = self._module(KERNELS[name_expression]).get_function(name_expression)
                        limit = self.max_shared_memory - int(function.shared_size_bytes)
                        if limit > _DEFAULT_SHARED:
                            function.max_dynamic_shared_size_bytes = limit
                    self._functions[name_expression] = function
        return function


def get_device(array=None) -> CupyDevice:
    """The :class:`CupyDevice` of ``array`` (a CuPy array), or of CuPy's current device."""
    import cupy

    device_id = array.device.id if array is not None else cupy.cuda.Device().id
    device = _devices.get(device_id)
    if device is None:
        with _lock:
            device = _devices.get(device_id)
            if device is None:
                device = CupyDevice(device_id)
                _devices[device_id] = device
    return device
