"""Generate the API reference pages from the public modules' ``__all__`` at build time.

One page per public module (``docs/api/<module>.rst``, rewritten on every build and ignored by git):
a summary table and then every public name, documented by autodoc from its docstring.  A name
added to ``__all__`` therefore appears by itself; a public function or class without a docstring,
or a name in ``__all__`` that the module does not define, is reported as a warning, which
``sphinx-build -W`` turns into an error.
"""

from __future__ import annotations

import importlib
import inspect
import os
import types

from sphinx.util import logging

logger = logging.getLogger(__name__)

# (module, title, what the page says first)
MODULES = [
    ("cupyortho", "cupyortho: the NumPy/CuPy API",
     "Orthogonal, Stiefel and unitary maps, their VJPs and JVPs, schedules, inverse maps and "
     "initializers. Arrays are NumPy or CuPy; the backend follows the arrays."),
    ("cupyortho.torch", "cupyortho.torch: PyTorch adapter",
     "Differentiable torch functions, the ``Orthogonal`` layer and the parametrization for "
     "``torch.nn.utils.parametrize``. See :doc:`../adapters`."),
    ("cupyortho.jax", "cupyortho.jax: JAX adapter",
     "``jax.custom_vjp`` functions that work under ``jit`` and ``vmap``. See :doc:`../adapters`."),
    ("cupyortho.dask", "cupyortho.dask: Dask arrays",
     "``apply``, ``apply_vjp`` and ``apply_jvp`` for a ``dask.array`` chunked along its columns. "
     "The public functions of :mod:`cupyortho` call these when a Dask array arrives."),
    ("cupyortho.errors", "cupyortho.errors: exceptions",
     "Every check that rejects caller input raises one of these classes; the message names the "
     "argument, what was expected and what was received."),
]

SKIP = {"__version__"}


def _kind(obj):
    if isinstance(obj, types.ModuleType):
        return None
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if callable(obj):
        return "function"
    return "data"


def _page(modname, title, intro):
    mod = importlib.import_module(modname)
    names = [n for n in getattr(mod, "__all__", []) if n not in SKIP]
    entries = []
    for name in names:
        if not hasattr(mod, name):
            logger.warning(f"{modname}.__all__ names {name!r}, which the module does not define")
            continue
        obj = getattr(mod, name)
        kind = _kind(obj)
        if kind is None:
            continue
        if kind != "data" and not (inspect.getdoc(obj) or "").strip():
            logger.warning(f"public {kind} {modname}.{name} has no docstring")
        entries.append((name, kind))
    lines = [title, "=" * len(title), "", f".. module:: {modname}", "", intro, ""]
    if mod.__doc__:
        lines += [f".. automodule:: {modname}", "   :no-members:", "   :no-index:", ""]
    lines += [".. autosummary::", "   :nosignatures:", ""]
    lines += [f"   {name}" for name, _ in entries]
    lines.append("")
    for name, kind in entries:
        if kind == "class":
            lines += [f".. autoclass:: {modname}.{name}", "   :members:", "   :show-inheritance:", ""]
        elif kind == "exception":
            lines += [f".. autoexception:: {modname}.{name}", "   :show-inheritance:", ""]
        elif kind == "function":
            lines += [f".. autofunction:: {modname}.{name}", ""]
        else:
            lines += [f".. autodata:: {modname}.{name}", "   :no-value:", ""]
    return "\n".join(lines)


def generate(app):
    out = os.path.join(app.srcdir, "api")
    os.makedirs(out, exist_ok=True)
    toc = ["API reference", "=============", "",
           "Generated from the docstrings of every name in each public module's ``__all__``.", "",
           ".. toctree::", "   :maxdepth: 1", ""]
    for modname, title, intro in MODULES:
        try:
            text = _page(modname, title, intro)
        except ImportError as exc:
            logger.warning(f"cannot import {modname} for the API reference: {exc}")
            continue
        _write(os.path.join(out, f"{modname}.rst"), text)
        toc.append(f"   {modname}")
    _write(os.path.join(out, "index.rst"), "\n".join(toc) + "\n")


def _write(path, text):
    """Write only when changed, so Sphinx does not rebuild untouched pages."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def setup(app):
    app.connect("builder-inited", generate)
    return {"parallel_read_safe": True, "version": "1"}
