"""Timing shared by the distributed benchmarks: every repetition is the slowest rank's time for one call."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence


def slowest_rank_times(fns: Sequence[Callable[[], Any]], comm: Any, reps: int, warmup: int = 1) -> list[list[float]]:
    """Per function, ``reps`` samples of the slowest rank's seconds for one call (after ``warmup`` calls each).

    The functions run in turn within each repetition, so that they see the same machine state (a shared VM's
    speed drifts over seconds). ``comm``: a deepkrylov ``Comm`` or an mpi4py communicator.
    """
    if hasattr(comm, "allgather_object"):
        barrier, gather = comm.barrier, comm.allgather_object
    else:
        barrier, gather = comm.Barrier, comm.allgather
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, out in zip(fns, samples):
            barrier()
            t0 = time.perf_counter()
            fn()
            out.append(max(gather(time.perf_counter() - t0)))
    return samples
