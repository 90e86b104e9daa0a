"""Sphinx configuration of the cupyortho site.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (what ``.ci/run`` does).

The API reference is generated from the ``__all__`` of each public module at build time
(``_ext/apiref.py``), so a function added to a module's ``__all__`` appears without editing the
docs; a public name without a docstring is a build warning (an error under ``-W``).  The pictures
of the schedules are drawn at build time from the schedule data (``_ext/schedule_figures.py``).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))     # the checkout's cupyortho, not an installed one
sys.path.insert(0, os.path.join(HERE, "_ext"))

import cupyortho  # noqa: E402

project = "cupyortho"
author = "the cupyortho authors"
copyright = "2026, the cupyortho authors"
release = cupyortho.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "apiref",
    "schedule_figures",
    "tutorials",
    "bench_page",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# _generated/ holds pictures, tutorial outputs and included fragments, not pages of their own.
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]
templates_path = []

# Markdown pages: $...$ math, and heading anchors so pages can link to sections (design.md#...).
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# Docstrings are Google style ("Args:", "Returns:", "Raises:").
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
autosummary_generate = True
# Optional frameworks are real imports of the adapters; the docs need them installed (docs extra).
autodoc_mock_imports = []

html_theme = "alabaster"
html_static_path = ["_static"]
html_title = f"cupyortho {release}"
