"""Run the solver test files on 2 and 4 real MPI ranks (same solution and iteration count as one rank)."""

from __future__ import annotations

import pytest

from tests.helpers import run_pytest_mpi

FILES = ["tests/solvers/test_krylov.py", "tests/solvers/test_petsc.py", "tests/solvers/test_petsc_mg.py",
         "tests/solvers/test_mesh_solve.py",
         "tests/solvers/test_multigrid.py", "tests/solvers/test_learned_multigrid.py"]


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 4])
def test_on_ranks(n):
    """All solver files in one launch per rank count (a failure names its file and test)."""
    run_pytest_mpi(n, FILES, backend="mpi", timeout=600)
