"""The kernel registry: where the CUDA sources live and which template instantiations exist.

Design rule: the ``.cu``/``.cuh`` files under ``cupyortho/kernels`` are package data, read as text
(``importlib.resources``) and compiled by whoever runs them: :mod:`.device` with NVRTC on a GPU,
the CPU harness in ``tests/cudasim`` with g++, and ``tests/test_kernels_compile.py`` with NVRTC
without a GPU.  Kernels include each other only as ``#include "x.cuh"``, with the kernel directory
on the include path.  This module imports nothing but the standard library.
"""

from __future__ import annotations

import functools
import importlib.resources
import pathlib

__all__ = ["KERNELS", "DTYPES", "kernel_dir", "read_source", "name_expression", "files"]

#: CUDA scalar type of each supported dtype name.
DTYPES = {"float32": "float", "float64": "double"}

_TEMPLATES = {
    "rounds.cu": ("cos_sin", "apply_round", "apply_vjp_round", "apply_jvp_round", "matrix_vjp_round",
                  "reduce_partials"),
    "fused.cu": ("apply_fused", "apply_vjp_fused", "apply_jvp_fused", "matrix_vjp_fused"),
    "blocks.cu": ("build_blocks", "block_vjp"),
    # U(n): complex rotations over interleaved complex data, templated on the real type.
    "unitary.cu": ("unitary_apply_round", "unitary_apply_vjp_round", "unitary_apply_jvp_round",
                   "unitary_matrix_vjp_round"),
}

#: Every kernel instantiation: name expression (``"apply_round<double>"``) -> its .cu file name.
KERNELS: dict[str, str] = {
    f"{kernel}<{ctype}>": filename
    for filename, kernels in _TEMPLATES.items()
    for kernel in kernels
    for ctype in DTYPES.values()
}


def name_expression(kernel: str, dtype) -> str:
    """``"apply_round<float>"`` for ``kernel="apply_round"`` and a float32 dtype (or its name)."""
    key = getattr(dtype, "name", None) or str(dtype)
    return f"{kernel}<{DTYPES[key]}>"


def kernel_dir() -> pathlib.Path:
    """The directory holding the kernel sources (also the include directory)."""
    return pathlib.Path(str(importlib.resources.files("cupyortho") / "kernels"))


@functools.lru_cache(maxsize=None)
def read_source(filename: str) -> str:
    """Text of ``cupyortho/kernels/<filename>``."""
    return (kernel_dir() / filename).read_text()


def files() -> dict[str, list[str]]:
    """``.cu`` file name -> the name expressions it instantiates."""
    out: dict[str, list[str]] = {}
    for name, filename in KERNELS.items():
        out.setdefault(filename, []).append(name)
    return out
