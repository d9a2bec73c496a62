"""``deepkrylov solve`` as a user runs it (a subprocess): exit status 3 when a method does not converge (0 with
--allow-diverged), bad input (a NaN right-hand side, an odd grid for DCDM, a missing or corrupt file) is a one-line
error with exit status 1 and no traceback, progress lines go to stderr; ``--matrix`` files are read by rows."""

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


def _one_line_error(out: subprocess.CompletedProcess, *expected: str) -> None:
    assert out.returncode == 1, out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("deepkrylov solve: "), out.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert out.stdout == ""


def test_input_errors_are_one_line(tmp_path):
    """Each bad input: one line naming the problem, exit 1, no traceback (one subprocess runs them all through
    deepkrylov.cli.main, to keep the test fast; the NaN test above runs the real command, whose exit status and
    stderr take the same path)."""
    A = laplacian((6, 6))
    sp.save_npz(tmp_path / "A.npz", sp.csr_matrix(A))
    sp.save_npz(tmp_path / "Acsc.npz", sp.csc_matrix(A))
    np.save(tmp_path / "b.npy", np.ones(36))
    np.save(tmp_path / "b7.npy", np.ones(49))
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    cases = {
        "odd": (["--dim", "3", "--n", "33", "--methods", "dcdm"], ["pools by 2", "must be even", "--n 32 or 34", "33"]),
        "nomatrix": (["--matrix", "missing.npz", "--rhs", "b.npy", "--methods", "cg"], ["--matrix file not found: missing.npz"]),
        "norhs": (["--matrix", "A.npz", "--methods", "cg"], ["--matrix needs --rhs"]),
        "model": (["--dim", "2", "--n", "16", "--methods", "dcdm", "--model", "bad.pt"],
                  ["--model bad.pt: cannot read it as a DCDM model", "corrupt"]),
        "learned": (["--dim", "2", "--n", "16", "--methods", "learned", "--learned-model", "bad.pt"],
                    ["--learned-model bad.pt: cannot read it as learned multigrid weights"]),
        "csc": (["--matrix", "Acsc.npz", "--rhs", "b.npy", "--methods", "cg"], ["stored as 'csc'", "A.tocsr()"]),
        "notzip": (["--matrix", "bad.npz", "--rhs", "b.npy", "--methods", "cg"], ["bad.npz: not an .npz archive"]),
        "fit": (["--matrix", "A.npz", "--rhs", "b7.npy", "--methods", "cg"], ["(36, 36) and right-hand side (49)"]),
        "mg": (["--matrix", "A.npz", "--rhs", "b.npy", "--methods", "mg"], ["mg need(s) a grid problem"]),
        "rtol": (["--dim", "2", "--n", "16", "--methods", "cg", "--rtol", "0"], ["--rtol must be positive"]),
        "small": (["--dim", "2", "--n", "4", "--methods", "cg"], ["--n must be at least 8"]),
        "mask": (["--mask", "nomask.npy", "--methods", "cg"], ["--mask file not found"]),
    }
    script = (
        "import contextlib, io, json, sys\n"
        "from deepkrylov.cli import main\n"
        "out = {}\n"
        "for key, argv in json.loads(sys.argv[1]).items():\n"
        "    err, std = io.StringIO(), io.StringIO()\n"
        "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):\n"
        "        code = main(['solve', *argv])\n"
        "    out[key] = [code, err.getvalue(), std.getvalue()]\n"
        "print(json.dumps(out))\n"
    )
    import json

    res = subprocess.run([sys.executable, "-c", script, json.dumps({k: v[0] for k, v in cases.items()})],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=ENV)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.splitlines()[-1])
    for key, (_, expected) in cases.items():
        code, err, std = got[key]
        _one_line_error(subprocess.CompletedProcess([], code, std, err), *expected)


@pytest.mark.parametrize("compressed", [True, False])
def test_npz_rows_read_by_range(tmp_path, compressed):
    """--matrix .npz: a rank reads indptr's range and its rows' slices only, equal to SciPy's rows."""
    from deepkrylov.solvers._cli import _read_npz_rows

    A = sp.random(50, 50, density=0.2, format="csr", random_state=np.random.default_rng(3)) + sp.eye(50)
    sp.save_npz(tmp_path / "A.npz", A.tocsr(), compressed=compressed)
    for r0, r1 in [(0, 50), (0, 17), (17, 33), (33, 50), (49, 50)]:
        indptr, indices, data, shape = _read_npz_rows(tmp_path / "A.npz", r0, r1)
        rows = sp.csr_matrix((data, indices, indptr), shape=(r1 - r0, 50))
        assert shape == (50, 50)
        assert (rows != A[r0:r1]).nnz == 0 and np.array_equal(rows.toarray(), A[r0:r1].toarray())
