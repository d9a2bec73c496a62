"""Mesh operators, local construction and random fields on 2 and 4 real MPI ranks equal the serial ones (one rank
is the serial run of the same files). The local-construction suite runs with both engines; the older suites with
the mpi4py engine (their communication is the halo exchange that tests/distributed runs on both)."""

import pytest

from tests.helpers import run_pytest_mpi

pytestmark = pytest.mark.mpi
SUITES = ["tests/mesh/test_stencil.py", "tests/mesh/test_local.py", "tests/mesh/test_random.py"]
BOTH_ENGINES = ["tests/mesh/test_local.py"]


@pytest.mark.parametrize("backend", ["mpi", "torch"])
@pytest.mark.parametrize("n", [2, 4])
def test_mesh_on_ranks(n, backend):
    # one launch for all files: start-up dominates their run time
    run_pytest_mpi(n, SUITES if backend == "mpi" else BOTH_ENGINES, backend=backend)
