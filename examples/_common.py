"""Shared plumbing of the tutorials: where they write their figure and results.

Each tutorial writes ``<name>.png`` and ``<name>.json`` (what it learned, read by
``tests/test_tutorials.py``) into ``$CUPYORTHO_TUTORIAL_OUT``, or into a fresh temporary folder
when the variable is not set, and prints the folder.
"""

import json
import os
import tempfile


def out_dir():
    path = os.environ.get("CUPYORTHO_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="cupyortho-tutorial-")
    os.makedirs(path, exist_ok=True)
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(name, fig, results):
    """Save the figure and the results; print where they went."""
    path = out_dir()
    fig.savefig(os.path.join(path, f"{name}.png"), dpi=100)
    with open(os.path.join(path, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    print(f"figure and results written to {path}/{name}.png, .json")
