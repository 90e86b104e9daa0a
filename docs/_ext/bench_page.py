"""Collect the benchmark results of ``bench/results/`` into the site at build time.

Every ``bench/results/*.md`` table is included (newest name first: ``results.md``, then the
tagged runs) and every ``*.png`` plot is copied to ``docs/_generated/bench/`` and shown, so
results the benchmarks write appear without editing the docs.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def generate(app):
    docs = Path(app.srcdir)
    results = docs.parent / "bench" / "results"
    out = docs / "_generated" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    plots = sorted(results.glob("*.png"))
    if plots:
        lines += ["## Plots", ""]
        for png in plots:
            shutil.copy2(png, out / png.name)
            lines += [f"### {png.stem}", "", f"![{png.stem}](_generated/bench/{png.name})", ""]
    for md in sorted(results.glob("*.md"), key=lambda p: (p.stem != "results", p.stem)):
        lines += [f"## Tables: `bench/results/{md.name}`", "",
                  f"```{{include}} ../bench/results/{md.name}", ":heading-offset: 1", "```", ""]
    text = "\n".join(lines) + "\n"
    target = out / "results.md"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def setup(app):
    app.connect("builder-inited", generate)
    return {"parallel_read_safe": True, "version": "1"}
