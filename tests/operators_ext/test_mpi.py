"""Driver: the distributed MgNO and FNO files (with domain-parallel training) on 2 and 4 real MPI ranks, one engine
each (the files run on 1 rank in the serial pass); two launches, so each engine is covered without doubling them."""

from __future__ import annotations

import pytest

from tests.helpers import run_pytest_mpi


@pytest.mark.mpi
@pytest.mark.parametrize("n,backend", [(2, "torch"), (4, "mpi")])
def test_distributed_mgno_on_ranks(n, backend):
    run_pytest_mpi(n, ["tests/operators_ext/test_mgno_distributed.py", "tests/operators_ext/test_fno_distributed.py"],
                   backend=backend)  # one launch for both files
