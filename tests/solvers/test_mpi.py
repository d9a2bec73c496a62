"""Run the solver test files on 2 and 4 real MPI ranks (same solution and iteration count as one rank): all of them
with the mpi4py engine, and those without PETSc (PETSc needs MPI) with torch.distributed on 2 ranks, together
with the DCDM files (4 ranks of gloo on this 2-core machine would cost minutes)."""

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


TORCH_FILES = [f for f in FILES if "petsc" not in f] + ["tests/dcdm/test_network.py", "tests/dcdm/test_iteration.py"]


@pytest.mark.mpi
def test_on_two_ranks_with_torch_distributed():
    """The same solver and DCDM files through the torch.distributed engine (gloo): one launch."""
    run_pytest_mpi(2, TORCH_FILES, backend="torch", timeout=600)
