"""The tutorials in examples/ run as scripts and learn what they claim.

Each script runs in its own subprocess (as a user would run it), writes its figure and a results
JSON into a temporary folder (``CUPYORTHO_TUTORIAL_OUT``), and the test checks the learned result
against a threshold, not only the exit status.  The sizes are small (all four take ~40 s on the
2-core CI machine).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_tutorial(name, tmp_path, timeout=300):
    env = dict(os.environ)
    env["CUPYORTHO_TUTORIAL_OUT"] = str(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py")], cwd=EXAMPLES, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / f"{name}.png").stat().st_size > 1000, "no figure written"
    with open(tmp_path / f"{name}.json") as f:
        return json.load(f), proc.stdout


def test_procrustes_numpy_reaches_the_closed_form(tmp_path):
    res, out = run_tutorial("procrustes_numpy", tmp_path)
    assert res["gap"] < 1e-4 * res["optimum"] + 1e-6, res
    assert res["max_abs_R_minus_Rstar"] < 1e-2, res
    assert "closed form" in out


def test_stiefel_subspace_tracks_the_turn(tmp_path):
    res, _ = run_tutorial("stiefel_subspace", tmp_path)
    assert res["angle_before_turn_deg"] < 2.0, res
    assert res["angle_after_turn_deg"] > 45.0, res          # the subspace did turn
    assert res["angle_end_deg"] < 5.0, res                  # and the frame followed it


def test_unitary_jax_fits_the_target(tmp_path):
    pytest.importorskip("jax")
    res, _ = run_tutorial("unitary_jax", tmp_path)
    assert res["initial_loss"] > 1.0, res
    assert res["final_loss"] < 1e-6, res


def test_rnn_copying_torch_remembers(tmp_path):
    pytest.importorskip("torch")
    res, _ = run_tutorial("rnn_copying_torch", tmp_path)
    assert math.isclose(res["baseline"], 5 * math.log(4) / 20)
    assert res["final_loss"] < 0.25 * res["baseline"], res
    assert res["accuracy"] > 0.8, res
