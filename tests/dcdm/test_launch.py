"""DCDM network, loss and solves on 2 and 4 real MPI ranks equal the serial ones."""

import pytest

from tests.helpers import run_pytest_mpi

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("n", [2, 4])
def test_dcdm_on_ranks(n):
    run_pytest_mpi(n, "tests/dcdm/test_network.py")
    run_pytest_mpi(n, "tests/dcdm/test_iteration.py")
    if n == 2:
        run_pytest_mpi(n, "tests/dcdm/test_petsc_plugin.py")
