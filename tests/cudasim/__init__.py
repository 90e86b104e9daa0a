r"""cudasim: run the package's CUDA C kernels on the CPU, so CI without a GPU still executes them.

Design rule: the kernel text is the one the GPU compiles.  It is compiled with the machine's g++
against ``cuda_cpu.h`` (threadIdx/blockIdx/..., ``__shared__``, ``__syncthreads``, warp shuffles and
votes, atomics, the math API), with two textual rewrites of shared-memory declarations (see
:func:`rewrite_source`): ``extern __shared__ T name[];`` becomes a pointer to the block's dynamic
shared buffer, and each static ``__shared__`` variable is registered so that it is poisoned (0xFF
bytes, NaN) before every block, like the dynamic buffer.  Every CUDA thread is a fiber, so barriers
really wait for the whole block; between barriers the threads run in a seeded random order, so a
missing barrier or a race changes the result for some seed.  Blocks of a grid run one after
another, in a shuffled order.

What the harness checks on every launch, because each is a silent bug on a GPU:

* the number of arguments and, per parameter, the type: an array must be C-contiguous with the
  pointee's dtype (``const double*`` <- float64), a scalar must be the numpy scalar type of the
  parameter (``int`` <- ``np.int32``; a Python ``int`` is ``long long`` and a ``float`` is
  ``double``, as CuPy passes them);
* launch limits (block <= 1024 threads, dynamic shared memory <= 48 KiB unless
  ``max_dynamic_shared_size_bytes`` was raised, grid y/z <= 65535);
* a barrier reached by only part of a block, or threads waiting at different barriers;
* writes outside an array argument (each array is copied between 0xFF guard bytes for the launch,
  so out-of-bounds floating-point reads see NaN, and guard bytes changed by the kernel are an
  error), writes past the dynamic shared memory size, writes into a read-only argument.

Entry points: :class:`CpuDevice` (``xp = numpy``; ``get_function(name_expression)`` like the CuPy
backend's device), :func:`build_module` (any source and name expressions).  Compiled modules are
cached on disk by content hash (``$CUDASIM_CACHE_DIR``, default ``~/.cache/cudasim``).  Launches
are serialised by a process-wide lock (each module has one runtime state).
"""

from __future__ import annotations

import collections
import ctypes
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import threading
from typing import Iterable, NamedTuple

import numpy as np

__all__ = [
    "CpuDevice",
    "Module",
    "Kernel",
    "KernelError",
    "KernelArgumentError",
    "CompileError",
    "build_module",
    "rewrite_source",
    "HEADER",
    "TEST_KERNEL_DIR",
]

HERE = pathlib.Path(__file__).resolve().parent
HEADER = HERE / "cuda_cpu.h"
TEST_KERNEL_DIR = HERE / "kernels"

#: The CUDA default limit of dynamic shared memory per block without opting in.
DEFAULT_SHARED_LIMIT = 48 * 1024
#: The largest opt-in dynamic shared memory per block the harness accepts (sm_90: 227 KiB).
MAX_SHARED = 232448
GUARD_BYTES = 4096


class CompileError(RuntimeError):
    """g++ rejected the kernel source (the message holds its diagnostics)."""


class KernelError(RuntimeError):
    """The kernel did something undefined or out of bounds (divergent barrier, guard bytes written)."""


class KernelArgumentError(TypeError):
    """A launch whose arguments or configuration do not match the kernel (a silent bug on a GPU)."""


# ------------------------------------------------------------------------------------------------
# Source handling

_ALIGN = r"__align__\s*\((?:[^()]|\([^()]*\))*\)"
_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+((?:" + _ALIGN + r"\s*)*)([^;\[\]{}()]*?)\s*\b(\w+)\s*\[\s*\]\s*;"
)
_STATIC_SHARED = re.compile(r"\b__shared__\s+([^;{}]*?);")
_COMMENT_OR_LITERAL = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)
_DECLARATOR_NAME = re.compile(r"(\w+)\s*(?:\[[^\]]*\]\s*)*$")


def _blank_comments(text: str) -> str:
    """``text`` with comments and literals replaced by spaces (newlines kept): positions match."""
    return _COMMENT_OR_LITERAL.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def _split_top_level(decl: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in decl:
        if ch in "[(<":
            depth += 1
        elif ch in "])>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def rewrite_source(text: str) -> str:
    """The two rewrites, each on its own line so diagnostics keep their line numbers:

    * ``extern __shared__ [__align__(a)] T name[];`` -> ``T* const name = <dynamic shared buffer>;``
    * ``__shared__ T a[N], b;`` keeps its declaration (``__shared__`` expands to ``static``) and gets
      ``static ::cudasim::SharedPoison ...(&a, sizeof(a));`` appended per declarator, which
      registers the variable so that it is filled with 0xFF bytes (NaN) before every block.

    Comments and string literals are never rewritten."""
    code = _blank_comments(text)
    edits = []  # (start, end, replacement)
    for m in _EXTERN_SHARED.finditer(code):
        ctype, name = m.group(2).strip(), m.group(3)
        edits.append((m.start(), m.end(),
                      f"{ctype}* const {name} = reinterpret_cast<{ctype}*>(::cudasim::dynamic_shared());"))
    taken = [(a, b) for a, b, _ in edits]
    counter = 0
    for m in _STATIC_SHARED.finditer(code):
        if any(a <= m.start() < b for a, b in taken):
            continue
        regs = []
        for part in _split_top_level(m.group(1)):
            nm = _DECLARATOR_NAME.search(part.strip())
            if nm is None:
                continue
            name = nm.group(1)
            regs.append(f" static ::cudasim::SharedPoison cudasim_shared_poison_{counter}_(&{name}, sizeof({name}));")
            counter += 1
        edits.append((m.end(), m.end(), "".join(regs)))
    out, pos = [], 0
    for a, b, rep in sorted(edits):
        out.append(text[pos:a])
        out.append(rep)
        pos = b
    out.append(text[pos:])
    return "".join(out)


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise CompileError("no C++ compiler found (set CXX or install g++)")
    return cxx


_compiler_version_cache: dict[str, str] = {}


def _compiler_version(cxx: str) -> str:
    if cxx not in _compiler_version_cache:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
        _compiler_version_cache[cxx] = out.stdout
    return _compiler_version_cache[cxx]


def cache_dir() -> pathlib.Path:
    d = os.environ.get("CUDASIM_CACHE_DIR")
    path = pathlib.Path(d) if d else pathlib.Path.home() / ".cache" / "cudasim"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        path = pathlib.Path(tempfile.gettempdir()) / f"cudasim-{os.getuid()}"
        path.mkdir(parents=True, exist_ok=True)
        return path


def _included_text(include_dirs) -> bytes:
    """Every header under the include directories, so editing an included .cuh rebuilds."""
    h = hashlib.sha256()
    for d in include_dirs:
        for p in sorted(pathlib.Path(d).glob("*")):
            if p.suffix in (".cuh", ".h", ".hpp") and p.is_file():
                h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.digest()


MODES = {
    # name: extra g++ flags
    "fast": ["-O2"],
    # ucontext fibers and AddressSanitizer (bounds of static __shared__ arrays and of the stack);
    # such a module must be loaded into a process started with libasan preloaded.
    "asan": ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer", "-DCUDASIM_UCONTEXT"],
    "ucontext": ["-O2", "-DCUDASIM_UCONTEXT"],
    # ThreadSanitizer: reports every pair of unordered accesses by different CUDA threads (one a
    # write), whether or not it changes the result; load into a process with libtsan preloaded.
    "tsan": ["-O1", "-g", "-fsanitize=thread"],
}


def _generated_source(source: str, names: list[str], filename: str) -> str:
    lines = [
        f'#include "{HEADER}"',
        f'#line 1 "{filename}"',
        rewrite_source(source),
        "",
        '#line 1 "<cudasim launch wrappers>"',
    ]
    for i, name in enumerate(names):
        lines += [
            f"static void cudasim_body_{i}() {{ ::cudasim::invoke(&{name}, ::cudasim::rt.argv); }}",
            f"CUDASIM_EXPORT const char* cudasim_sig_{i}() {{ return ::cudasim::signature(&{name}); }}",
            f"CUDASIM_EXPORT int cudasim_launch_{i}(unsigned gx, unsigned gy, unsigned gz, unsigned bx,",
            "        unsigned by, unsigned bz, size_t shmem, uint64_t seed, char* err, size_t errlen,",
            "        void** argv) {",
            f"    return ::cudasim::launch(cudasim_body_{i}, argv, gx, gy, gz, bx, by, bz, shmem, seed,",
            "                             err, errlen);",
            "}",
        ]
    return "\n".join(lines) + "\n"


_modules: dict[str, "Module"] = {}
_lock = threading.RLock()


def build_module(source: str, name_expressions: Iterable[str], include_dirs=(), filename="<kernel>.cu",
                 mode: str = "fast") -> "Module":
    """Compile ``source`` (CUDA C text) for the CPU and load it; ``name_expressions`` are the kernels
    to expose (``"k<double>"`` for templates, ``"k"`` for ``extern "C"`` kernels), as for CuPy's
    ``RawModule(code=..., name_expressions=...)``.  Cached in memory and on disk by content hash."""
    names = sorted(set(name_expressions))
    include_dirs = [str(pathlib.Path(d).resolve()) for d in include_dirs]
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    cxx = _compiler()
    flags = ["-std=gnu++17", "-shared", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing",
             *MODES[mode], *(f"-I{d}" for d in include_dirs)]
    text = _generated_source(source, names, filename)
    h = hashlib.sha256()
    for part in (HEADER.read_bytes(), text.encode(), _included_text(include_dirs), " ".join(flags).encode(),
                 _compiler_version(cxx).encode()):
        h.update(hashlib.sha256(part).digest())
    key = h.hexdigest()[:32]
    with _lock:
        if key in _modules:
            return _modules[key]
        d = cache_dir()
        so = d / f"{key}.so"
        if not so.exists():
            with tempfile.TemporaryDirectory(dir=d) as tmp:
                cpp = pathlib.Path(tmp) / "kernel.cpp"
                cpp.write_text(text)
                out = pathlib.Path(tmp) / "kernel.so"
                proc = subprocess.run([cxx, *flags, str(cpp), "-o", str(out)], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise CompileError(f"g++ failed on {filename} ({', '.join(names)}):\n{proc.stderr[-8000:]}")
                os.replace(out, so)
        module = Module(so, names, filename)
        _modules[key] = module
        return module


# ------------------------------------------------------------------------------------------------
# Modules and kernels

class Param(NamedTuple):
    pointer: bool
    const: bool
    code: str  # "f8", "i4", "u8", "b1", "v0" (void), "V16" (other types, by size)

    def __str__(self):
        return _CTYPE_NAMES.get(self.code, self.code) + ((" const*" if self.const else "*") if self.pointer else "")


_CTYPE_NAMES = {"f4": "float", "f8": "double", "i4": "int", "i8": "long long", "u4": "unsigned int",
                "u8": "unsigned long long", "i1": "signed char", "u1": "unsigned char", "i2": "short",
                "u2": "unsigned short", "b1": "bool", "v0": "void"}


def _parse_signature(sig: str) -> tuple[Param, ...]:
    params = []
    for item in filter(None, sig.split(",")):
        kind, code = item.split(":")
        params.append(Param(kind.startswith("p"), kind.endswith("const"), code))
    return tuple(params)


class Module:
    """A compiled, loaded .so holding the kernels of one source file."""

    def __init__(self, path, names, filename):
        self.path = pathlib.Path(path)
        self.filename = filename
        self.lib = ctypes.CDLL(str(path))
        self.kernels = {}
        for i, name in enumerate(names):
            sig = getattr(self.lib, f"cudasim_sig_{i}")
            sig.restype = ctypes.c_char_p
            launch = getattr(self.lib, f"cudasim_launch_{i}")
            launch.restype = ctypes.c_int
            launch.argtypes = [ctypes.c_uint] * 6 + [ctypes.c_size_t, ctypes.c_uint64, ctypes.c_char_p,
                                                     ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
            self.kernels[name] = (launch, _parse_signature(sig().decode()))

    def get_function(self, name: str, **kwargs) -> "Kernel":
        if name not in self.kernels:
            raise KeyError(f"{name!r} is not a name expression of {self.filename}; it has {sorted(self.kernels)}")
        launch, params = self.kernels[name]
        return Kernel(self, name, launch, params, **kwargs)


def _dim3(value, what, limits):
    if not isinstance(value, (tuple, list)) or not 1 <= len(value) <= 3:
        raise KernelArgumentError(f"{what} must be a tuple of 1 to 3 ints (as for cupy.RawKernel), got {value!r}")
    dims = []
    for v in value:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise KernelArgumentError(f"{what} must hold ints, got {value!r}")
        dims.append(int(v))
    dims += [1] * (3 - len(dims))
    for axis, (v, lim) in enumerate(zip(dims, limits)):
        if not 1 <= v <= lim:
            raise KernelArgumentError(f"{what}[{axis}] must be in [1, {lim}], got {v} (from {value!r})")
    return dims


def _scalar_code(value):
    """numpy-style code of a scalar argument as CuPy would pass it, or None when it is not a scalar."""
    if isinstance(value, np.generic):
        dt = np.dtype(type(value))
        return f"{dt.kind}{dt.itemsize}", np.asarray(value).tobytes()
    if isinstance(value, bool):
        return "b1", np.bool_(value).tobytes()
    if isinstance(value, int):
        return "i8", np.int64(value).tobytes()
    if isinstance(value, float):
        return "f8", np.float64(value).tobytes()
    return None


def _pointee_matches(param: Param, dtype: np.dtype) -> bool:
    if param.code == "v0":
        return True
    code = f"{dtype.kind}{dtype.itemsize}"
    if param.code.startswith("V"):
        return int(param.code[1:]) == dtype.itemsize
    return code == param.code


class Kernel:
    """A kernel of a :class:`Module`, called like ``cupy.RawKernel``: ``k(grid, block, args, shared_mem=0)``.

    Attributes mirror the CuPy ones launchers may read or set: ``max_threads_per_block`` (1024),
    ``max_dynamic_shared_size_bytes`` (settable opt-in, as on a GPU).  ``seed`` fixes the thread
    order; ``on_launch(kernel)`` is called before each launch (coverage bookkeeping).
    """

    max_threads_per_block = 1024
    #: Static shared memory is not measured by the harness (function-local statics).
    shared_size_bytes = 0

    def __init__(self, module, name, launch, params, seed=0, on_launch=None):
        self.module = module
        self.name = name
        self._launch = launch
        self.params = params
        self.seed = seed
        self.on_launch = on_launch
        self.max_dynamic_shared_size_bytes = 0
        self.launches = 0

    def __repr__(self):
        return f"<cudasim kernel {self.name}({', '.join(map(str, self.params))}) from {self.module.filename}>"

    def __call__(self, grid, block, args, shared_mem=0, stream=None, enable_cooperative_groups=False):
        name = self.name
        g = _dim3(grid, f"{name}: grid", (2**31 - 1, 65535, 65535))
        b = _dim3(block, f"{name}: block", (1024, 1024, 64))
        nthreads = b[0] * b[1] * b[2]
        if nthreads > self.max_threads_per_block:
            raise KernelArgumentError(f"{name}: block {tuple(block)} has {nthreads} threads, more than "
                                      f"max_threads_per_block = {self.max_threads_per_block}")
        if isinstance(shared_mem, (bool, np.bool_)) or not isinstance(shared_mem, (int, np.integer)) or shared_mem < 0:
            raise KernelArgumentError(f"{name}: shared_mem must be an int >= 0, got {shared_mem!r}")
        shared_mem = int(shared_mem)
        limit = max(DEFAULT_SHARED_LIMIT, int(self.max_dynamic_shared_size_bytes))
        if shared_mem > limit:
            raise KernelArgumentError(
                f"{name}: shared_mem = {shared_mem} bytes exceeds {limit} (above 48 KiB a kernel must first set "
                f"max_dynamic_shared_size_bytes; CUDA_ERROR_INVALID_VALUE on a GPU)")
        if self.max_dynamic_shared_size_bytes > MAX_SHARED:
            raise KernelArgumentError(f"{name}: max_dynamic_shared_size_bytes = {self.max_dynamic_shared_size_bytes} "
                                      f"exceeds the largest opt-in of any GPU ({MAX_SHARED})")
        if not isinstance(args, (tuple, list)):
            raise KernelArgumentError(f"{name}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self.params):
            raise KernelArgumentError(f"{name}: takes {len(self.params)} arguments "
                                      f"({', '.join(map(str, self.params))}), got {len(args)}")
        keep = []  # ctypes objects alive for the call
        argv = (ctypes.c_void_p * max(1, len(args)))()
        arrays = []  # (position, array)
        for pos, (value, param) in enumerate(zip(args, self.params)):
            where = f"{name}: argument {pos} ({param})"
            if isinstance(value, np.ndarray):
                if not param.pointer:
                    raise KernelArgumentError(f"{where} is a scalar, got an array of shape {value.shape}")
                if not value.flags.c_contiguous:
                    raise KernelArgumentError(f"{where}: array must be C-contiguous (kernels ignore strides), "
                                              f"got strides {value.strides} for shape {value.shape}")
                if not _pointee_matches(param, value.dtype):
                    raise KernelArgumentError(f"{where}: got an array of dtype {value.dtype}")
                arrays.append((pos, value))
            elif value is None:
                if not param.pointer:
                    raise KernelArgumentError(f"{where} is a scalar, got None")
                slot = ctypes.c_void_p(0)
                keep.append(slot)
                argv[pos] = ctypes.addressof(slot)
            else:
                sc = _scalar_code(value)
                if sc is None:
                    raise KernelArgumentError(f"{where}: unsupported argument type {type(value).__name__}")
                code, raw = sc
                if param.pointer:
                    raise KernelArgumentError(f"{where} is a pointer, got a scalar {value!r}")
                if code != param.code:
                    got = _CTYPE_NAMES.get(code, code)
                    raise KernelArgumentError(
                        f"{where}: got {type(value).__name__} {value!r}, passed as {got}; pass "
                        f"numpy.{np.dtype(param.code).name}(...) (a mismatched scalar is read as garbage on a GPU)")
                buf = ctypes.create_string_buffer(raw, max(8, len(raw)))
                keep.append(buf)
                argv[pos] = ctypes.addressof(buf)
        groups = _guarded_copies(arrays)
        for grp in groups:
            for pos, off in grp.members:
                slot = ctypes.c_void_p(grp.data_address + off)
                keep.append(slot)
                argv[pos] = ctypes.addressof(slot)
        if self.on_launch is not None:
            self.on_launch(self)
        seed = (self.seed * 1_000_003 + self.launches) & (2**64 - 1)
        self.launches += 1
        err = ctypes.create_string_buffer(2048)
        with _lock:
            rc = self._launch(*g, *b, shared_mem, seed, err, len(err), argv)
        if rc != 0:
            raise KernelError(f"{name} (grid {tuple(grid)}, block {tuple(block)}, shared_mem {shared_mem}): "
                              f"{err.value.decode(errors='replace')}")
        for grp in groups:
            grp.finish(name, args, self.params)


class _Group:
    """One or more array arguments sharing memory, copied together between guard bytes."""

    def __init__(self, lo, hi, members_arrays):
        self.lo, self.hi = lo, hi
        size = hi - lo
        self.size = size
        self.buffer = np.full(GUARD_BYTES * 2 + size + 256, 0xFF, dtype=np.uint8)
        base = self.buffer.ctypes.data
        self.offset = GUARD_BYTES + (-(base + GUARD_BYTES) % 256)  # 256-aligned like cudaMalloc
        self.data_address = base + self.offset
        if size:
            ctypes.memmove(self.data_address, lo, size)
        self.members = [(pos, a.ctypes.data - lo) for pos, a in members_arrays]
        self.arrays = members_arrays
        self.writeable = all(a.flags.writeable for _, a in members_arrays)
        self.original = None if self.writeable else self.buffer[self.offset:self.offset + size].copy()

    def finish(self, name, args, params):
        buf = self.buffer
        before = buf[:self.offset]
        after = buf[self.offset + self.size:]
        if (before != 0xFF).any() or (after != 0xFF).any():
            which = ", ".join(f"argument {pos} ({params[pos]}, shape {args[pos].shape})" for pos, _ in self.members)
            lo_bad = np.flatnonzero(before != 0xFF)
            hi_bad = np.flatnonzero(after != 0xFF)
            detail = []
            if lo_bad.size:
                detail.append(f"{self.offset - lo_bad.min()} bytes before the start")
            if hi_bad.size:
                detail.append(f"{hi_bad.max() + 1} bytes past the end")
            raise KernelError(f"{name} wrote out of bounds of {which}: up to {' and '.join(detail)}")
        data = buf[self.offset:self.offset + self.size]
        if not self.writeable:
            if not np.array_equal(data, self.original):
                which = ", ".join(f"argument {pos} ({params[pos]})" for pos, _ in self.members)
                raise KernelError(f"{name} wrote into a read-only array: {which}")
            return
        if self.size:
            ctypes.memmove(self.lo, self.data_address, self.size)


def _guarded_copies(arrays):
    """Group array arguments whose byte ranges overlap (in-place aliasing must survive the copy)."""
    spans = sorted(((a.ctypes.data, a.ctypes.data + a.nbytes, pos, a) for pos, a in arrays), key=lambda t: t[:2])
    groups, cur = [], None
    for lo, hi, pos, a in spans:
        if cur is not None and lo < cur[1] and a.nbytes:
            cur[1] = max(cur[1], hi)
            cur[2].append((pos, a))
        else:
            if cur is not None:
                groups.append(cur)
            cur = [lo, hi, [(pos, a)]]
    if cur is not None:
        groups.append(cur)
    return [_Group(lo, hi, members) for lo, hi, members in groups]


# ------------------------------------------------------------------------------------------------
# The device object the CuPy backend's algorithms run against

class CpuDevice:
    """A stand-in for the CuPy backend's device: ``xp`` is numpy and ``get_function(name_expression)``
    returns the kernel compiled for the CPU from the same ``.cu`` text.

    Args:
        seed (int): thread- and block-order seed; each launch derives its own from it.
        kernels (dict, optional): name expression -> .cu file name; default
            ``cupyortho.backends.cupy.kernels.KERNELS``.
        kernel_dir (path, optional): where the sources are (also the include directory); default
            ``cupyortho.backends.cupy.kernels.kernel_dir()``.
        mode (str): ``"fast"`` (default), ``"ucontext"`` or ``"asan"`` (see :data:`MODES`).
        launched (Counter, optional): name expression -> number of launches, updated on each launch.
        max_shared_memory (int): the opt-in dynamic shared memory per block the launchers may plan
            for (default 227 KiB, an H100/H200).
        multiprocessor_count (int): the SM count the launchers size tiles by (default 132).
        source_transform (callable, optional): ``(filename, text) -> text`` applied to each .cu
            before compiling (mutation tests: remove a barrier and watch the comparison fail).

    The device protocol of ``cupyortho/backends/cupy/device.py``: ``xp``, ``get_function``, ``key``,
    ``max_shared_memory``, ``multiprocessor_count``.
    """

    name = "cudasim"
    xp = np

    def __init__(self, seed: int = 0, *, kernels=None, kernel_dir=None, mode="fast", launched=None,
                 max_shared_memory: int = MAX_SHARED, multiprocessor_count: int = 132,
                 source_transform=None):
        if kernels is None or kernel_dir is None:
            from cupyortho.backends.cupy import kernels as _kernels

            kernels = _kernels.KERNELS if kernels is None else kernels
            kernel_dir = _kernels.kernel_dir() if kernel_dir is None else kernel_dir
        self.kernels = dict(kernels)
        self.kernel_dir = pathlib.Path(kernel_dir)
        self.seed = int(seed)
        self.mode = mode
        self.launched = collections.Counter() if launched is None else launched
        self.max_shared_memory = int(max_shared_memory)
        self.multiprocessor_count = int(multiprocessor_count)
        self.source_transform = source_transform
        # Device data cached by the backend is numpy whatever the seed: one key for all CpuDevices.
        self.key = ("cudasim",)
        self._functions = {}

    def __repr__(self):
        return (f"CpuDevice(seed={self.seed}, mode={self.mode!r}, max_shared_memory={self.max_shared_memory}, "
                f"multiprocessor_count={self.multiprocessor_count})")

    def module_for(self, filename: str) -> Module:
        names = [n for n, f in self.kernels.items() if f == filename]
        path = self.kernel_dir / filename
        text = path.read_text()
        if self.source_transform is not None:
            text = self.source_transform(filename, text)
        return build_module(text, names, include_dirs=[self.kernel_dir], filename=str(path), mode=self.mode)

    def get_function(self, name_expression: str) -> Kernel:
        if name_expression not in self._functions:
            if name_expression not in self.kernels:
                raise KeyError(f"unknown kernel {name_expression!r}; known: {sorted(self.kernels)}")
            module = self.module_for(self.kernels[name_expression])
            self._functions[name_expression] = module.get_function(
                name_expression, seed=self.seed, on_launch=self._record)
        return self._functions[name_expression]

    def _record(self, kernel):
        self.launched[kernel.name] += 1

    def synchronize(self):
        """Launches are synchronous on the CPU."""
