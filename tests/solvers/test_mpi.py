"""Run the solver test files on 2 and 4 real MPI ranks (same solution and iteration count as one rank)."""

from __future__ import annotations

import pytest

from tests.helpers import run_pytest_mpi


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize(
    "target", ["tests/solvers/test_krylov.py", "tests/solvers/test_petsc.py", "tests/solvers/test_mesh_solve.py",
               "tests/solvers/test_multigrid.py", "tests/solvers/test_learned_multigrid.py"],
)
def test_on_ranks(n, target):
    run_pytest_mpi(n, target, backend="mpi", timeout=300)
