"""Run the tutorials of ``examples/`` at build time; the pages include their code, output and figure.

Each ``examples/<name>.py`` (not starting with ``_``) runs in a subprocess with
``CUPYORTHO_TUTORIAL_OUT=docs/_generated/tutorials``; its printed output goes to
``<name>.txt`` there, next to the ``<name>.png`` it draws.  A run is skipped when neither the
script nor any source file of the package changed since the last one (a hash is kept next to the
output).  A failing tutorial is a build warning (an error under ``-W``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)


def _digest(script: Path, package: Path) -> str:
    h = hashlib.sha256()
    for path in [script, script.parent / "_common.py", *sorted(package.rglob("*.py")),
                 *sorted(package.rglob("*.cu"))]:
        h.update(str(path.relative_to(script.parent.parent)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def generate(app):
    docs = Path(app.srcdir)
    root = docs.parent
    out = docs / "_generated" / "tutorials"
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CUPYORTHO_TUTORIAL_OUT=str(out), MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    for script in sorted((root / "examples").glob("[!_]*.py")):
        name = script.stem
        stamp = out / f"{name}.sha256"
        digest = _digest(script, root / "cupyortho")
        if stamp.exists() and stamp.read_text() == digest and (out / f"{name}.txt").exists():
            continue
        logger.info(f"running tutorial {name}")
        proc = subprocess.run([sys.executable, str(script)], cwd=script.parent, env=env,
                              capture_output=True, text=True, timeout=600)
        text = proc.stdout.replace(str(out), "<output folder>")
        (out / f"{name}.txt").write_text(text)
        if proc.returncode != 0:
            logger.warning(f"tutorial {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            stamp.unlink(missing_ok=True)
        else:
            stamp.write_text(digest)


def setup(app):
    app.connect("builder-inited", generate)
    return {"parallel_read_safe": True, "version": "1"}
