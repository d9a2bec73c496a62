"""Shared test set-up.

Every test file can run serially (``pytest``) or on several ranks (``mpiexec -n N python -m pytest FILE``). Under
several ranks a failure on one rank aborts the whole job with its report, so no rank waits in a collective.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

_world = None


def world_size() -> int:
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "WORLD_SIZE"):
        if var in os.environ:
            return int(os.environ[var])
    return 1


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed and world_size() > 1:
        from mpi4py import MPI

        rank = MPI.COMM_WORLD.Get_rank()
        sys.stderr.write(f"\n[rank {rank}] FAILED {item.nodeid}\n{report.longreprtext}\n")
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)


@pytest.fixture(scope="session")
def ctx():
    """The communicator context for this run: backend from DEEPKRYLOV_TEST_BACKEND (mpi | torch | auto)."""
    global _world
    if _world is None:
        from deepkrylov.distributed import init

        backend = os.environ.get("DEEPKRYLOV_TEST_BACKEND", "auto")
        if world_size() == 1:
            backend = "self"
        _world = init(backend=backend)
    return _world


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)
    yield
