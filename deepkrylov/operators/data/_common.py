"""Shared helpers of the generators: rank splitting under mpiexec and a rank-0 progress bar."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np


def rank_size(comm: Any = None) -> tuple[Any, int, int]:
    """``(comm, rank, size)`` of the running job (mpi4py COMM_WORLD under mpiexec, else serial)."""
    if comm is None:
        try:
            from deepkrylov.distributed import init

            comm = init(backend="auto").comm
        except Exception:  # pragma: no cover - no MPI at all
            return None, 0, 1
    return comm, int(comm.rank), int(comm.size)


def split(n: int, rank: int, size: int) -> tuple[int, int]:
    """Contiguous sample range ``[lo, hi)`` of ``rank`` among ``size`` ranks."""
    return n * rank // size, n * (rank + 1) // size


def gather_rows(comm: Any, part: np.ndarray, size: int) -> np.ndarray:
    """Concatenate each rank's rows in rank order on every rank."""
    if size == 1:
        return part
    return np.concatenate(comm.allgather_object(part), axis=0)


def progress(total: int, rank: int, desc: str, enabled: bool = True) -> Optional[Any]:
    if rank != 0 or not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)
