"""Mesh operators, local construction and random fields on 2 and 4 real MPI ranks, with both engines, equal the
serial ones (one rank is the serial run of the same files)."""

import pytest

from tests.helpers import run_pytest_mpi

pytestmark = pytest.mark.mpi
SUITES = ["tests/mesh/test_stencil.py", "tests/mesh/test_local.py", "tests/mesh/test_random.py"]


@pytest.mark.parametrize("backend", ["mpi", "torch"])
@pytest.mark.parametrize("n", [2, 4])
def test_mesh_on_ranks(n, backend):
    # one launch for all files: start-up dominates their run time
    run_pytest_mpi(n, SUITES, backend=backend)
