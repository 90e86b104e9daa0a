"""Device plumbing of the torch adapter: tensors in, cupyortho's array functions run, tensors out.

CPU tensors are handed to the NumPy backend as zero-copy views (``tensor.numpy()`` of the detached
tensor) and the results come back with ``torch.from_numpy`` (no copy).  CUDA tensors go to the CuPy
backend through DLPack, with CuPy running on *torch's current stream*
(``cupy.cuda.Stream.from_external``), so the kernels are ordered with the surrounding torch work and
the caching allocator cannot hand the inputs' memory to anyone before they finish; the inputs are
referenced until the op returns.  The CUDA path has not been run here (no GPU): treat it as untested
until the GPU suite has run it.
"""

import numpy as np
import torch

from .. import _threads
from ..errors import BackendMismatchError, BackendUnavailableError


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """A zero-copy NumPy view of a CPU tensor (cupyortho never writes to its inputs)."""
    return t.detach().resolve_conj().resolve_neg().numpy()


def _from_numpy(a: np.ndarray) -> torch.Tensor:
    a = np.ascontiguousarray(a)
    if not a.flags.writeable:  # torch.from_numpy warns on read-only memory
        a = a.copy()
    return torch.from_numpy(a)


class _CudaStreamRef:
    """A raw stream handle exposed through the CUDA stream protocol."""

    def __init__(self, ptr: int):
        self._ptr = int(ptr)

    def __cuda_stream__(self):
        return (0, self._ptr)


def _unaliased(xp, out, inputs):
    """``out`` with any output that may share memory with an input copied: a custom op's outputs
    must not alias its inputs (cupyortho returns fresh arrays; this guards that contract)."""
    def fresh(o):
        return o.copy() if any(xp.may_share_memory(o, a) for a in inputs) else o

    return tuple(fresh(o) for o in out) if isinstance(out, tuple) else fresh(out)


def same_device(**tensors) -> torch.device:
    """The one device of the named tensors; :class:`BackendMismatchError` naming them otherwise.

    Checked by the public functions *before* an op is dispatched: a ``meta`` tensor beside a CPU
    tensor would otherwise be dispatched to the op's fake kernel and return uninitialised memory.
    """
    items = list(tensors.items())
    name0, t0 = items[0]
    for name, t in items[1:]:
        if t.device != t0.device:
            raise BackendMismatchError(
                f"{name0} and {name} must be on one device; got {name0} on {t0.device} and {name} on {t.device}"
            )
    return t0.device


def _call(fn, *tensors: torch.Tensor):
    """Run ``fn`` (a cupyortho function of arrays) on tensors; returns a tensor or a tuple of tensors.

    CPU: NumPy views in, ``torch.from_numpy`` out, the work on torch's thread budget
    (``torch.get_num_threads()``, :func:`cupyortho._threads.budget`).  CUDA: CuPy views through DLPack, on torch's
    current stream of the tensors' device.
    """
    device = tensors[0].device
    for t in tensors[1:]:
        if t.device != device:
            raise BackendMismatchError(f"all tensors must be on one device; got {device} and {t.device}")
    if device.type == "cpu":
        arrays = [_to_numpy(t) for t in tensors]
        # cupyortho's CPU pools run on torch's thread budget, one pool at a time (docs/threads.md).
        budget = torch.get_num_threads()
        try:
            with _threads.budget(budget):
                out = _unaliased(np, fn(*arrays), arrays)
        finally:
            # numba's OpenMP layer shares torch's libgomp: starting or resizing numba's pool can reset
            # torch's count (seen: 1 -> 2 at the first engine call); torch's budget is torch's own.
            if torch.get_num_threads() != budget:
                torch.set_num_threads(budget)
        return tuple(_from_numpy(o) for o in out) if isinstance(out, tuple) else _from_numpy(out)
    if device.type == "cuda":
        try:
            import cupy
        except ImportError as exc:
            raise BackendUnavailableError(
                f"CUDA tensors need CuPy (pip install cupy-cuda12x); importing it failed: {exc}"
            ) from exc
        torch_stream = torch.cuda.current_stream(device)
        with cupy.cuda.Device(device.index):
            with cupy.cuda.Stream.from_external(_CudaStreamRef(torch_stream.cuda_stream)):
                # ``keep`` holds the (possibly copied) contiguous inputs until the kernels are queued;
                # later reuse of their memory by torch is ordered on this same stream.
                keep = [t.detach().contiguous() for t in tensors]
                arrays = [cupy.from_dlpack(t) for t in keep]
                out = _unaliased(cupy, fn(*arrays), arrays)
                if isinstance(out, tuple):
                    return tuple(torch.from_dlpack(cupy.ascontiguousarray(o)) for o in out)
                return torch.from_dlpack(cupy.ascontiguousarray(out))
    raise BackendUnavailableError(
        f"cupyortho.torch runs on CPU and CUDA tensors; got a tensor on {device}"
    )
