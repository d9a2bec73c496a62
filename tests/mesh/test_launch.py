"""Mesh operators and random fields on 2 and 4 real MPI ranks equal the serial ones."""

import pytest

from tests.helpers import run_pytest_mpi

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("n", [2, 4])
def test_mesh_on_ranks(n):
    for suite in ("tests/mesh/test_stencil.py", "tests/mesh/test_random.py"):
        run_pytest_mpi(n, suite)
