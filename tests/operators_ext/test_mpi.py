"""Driver: the distributed MgNO test file on 2 and 4 real MPI ranks."""

from __future__ import annotations

import pytest

from tests.helpers import run_pytest_mpi


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 4])
def test_distributed_mgno_on_ranks(n):
    run_pytest_mpi(n, "tests/operators_ext/test_mgno_distributed.py")
