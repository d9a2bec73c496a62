"""DCDM network, loss and solves on 2 and 4 real MPI ranks equal the serial ones."""

import pytest

from tests.helpers import run_pytest_mpi

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("n", [2, 4])
def test_dcdm_on_ranks(n):
    files = ["tests/dcdm/test_network.py", "tests/dcdm/test_iteration.py"]
    run_pytest_mpi(n, files + (["tests/dcdm/test_petsc_plugin.py"] if n == 2 else []))  # one launch
