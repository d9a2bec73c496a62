"""``deepkrylov solve`` as a user runs it (a subprocess): exit status 3 when a method does not converge (0 with
--allow-diverged), a NaN right-hand side is a one-line input error, progress lines go to stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from deepkrylov.solvers._cli import EXIT_NOT_CONVERGED, METHODS, SOLVE_METHODS, _Progress

from .problems import laplacian

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1",
           PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))


def solve(*args: str, cwd=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "deepkrylov.cli", "solve", "--dim", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=ENV)


def test_not_converged_exits_3_unless_allowed():
    out = solve("--n", "16", "--methods", "cg", "pcg", "--max-it", "2")
    assert out.returncode == EXIT_NOT_CONVERGED == 3, out.stdout + out.stderr
    assert "DIVERGED_ITS" in out.stdout  # the table is printed all the same
    assert "not converged: cg (DIVERGED_ITS after 2 iterations), pcg (DIVERGED_ITS" in out.stderr
    assert "Traceback" not in out.stderr
    allowed = solve("--n", "16", "--methods", "cg", "--max-it", "2", "--allow-diverged")
    assert allowed.returncode == 0, allowed.stderr
    ok = solve("--n", "16", "--methods", "cg", "icc")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("CONVERGED_RTOL") == (2 if "skipping icc" not in ok.stderr else 1)


def test_exit_status_is_documented():
    out = subprocess.run([sys.executable, "-m", "deepkrylov.cli", "solve", "--help"], capture_output=True, text=True,
                         timeout=120, env=ENV)
    assert out.returncode == 0
    help_text = " ".join(out.stdout.split())
    assert "exit status: 0 when every method converged; 3 when a method did not" in help_text
    assert "--allow-diverged" in help_text


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_rhs_file_is_an_input_error(tmp_path, bad):
    A = laplacian((6, 6))
    sp.save_npz(tmp_path / "A.npz", sp.csr_matrix(A))
    b = np.ones(36)
    b[7] = bad
    np.save(tmp_path / "b.npy", b)
    out = solve("--matrix", "A.npz", "--rhs", "b.npy", "--methods", "cg", cwd=tmp_path)
    assert out.returncode not in (0, EXIT_NOT_CONVERGED), out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == ["deepkrylov solve: the right-hand side b.npy has 1 NaN or Inf entries (of 36); it must be finite"]
    assert out.stdout == ""


def test_methods_are_a_table():
    assert METHODS == tuple(SOLVE_METHODS) and set(METHODS) >= {"dcdm", "cg", "pcg", "icc", "gamg", "hypre"}
    assert all(callable(f) for f in SOLVE_METHODS.values())


def test_progress_lines(capsys):
    """Off a terminal: a line per interval with the method, iteration and relative residual, then a final line."""
    progress = _Progress("dcdm", 1, 2, enabled=True, interval=0.0)
    for it, r in enumerate([2.0, 1.0, 0.02]):
        progress(it, r)

    class Res:
        iterations = 2
        reason = type("R", (), {"name": "CONVERGED_RTOL"})

    progress.done(Res)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("[1/2] dcdm: iteration 0, relative residual 1.000e+00")
    assert lines[2].startswith("[1/2] dcdm: iteration 2, relative residual 1.000e-02")
    assert lines[-1].startswith("[1/2] dcdm: 2 iterations, CONVERGED_RTOL")
    quiet = _Progress("cg", 2, 2, enabled=True, interval=60.0)
    quiet(0, 1.0)
    quiet.done(Res)
    silent = _Progress("cg", 2, 2, enabled=False, interval=0.0)
    silent(0, 1.0)
    assert capsys.readouterr().err == ""  # fast methods (and other ranks) print nothing
