"""Vectors: a GridTensor's block as a DMDA-ordered global ``PETSc.Vec`` and back, sharing memory where the layouts
allow (CPU, float64, contiguous, one sample and one channel: a DMDA global vector stores each rank's block
x-fastest, exactly like ``GridTensor.local``)."""

from __future__ import annotations

from typing import Any, Optional

import torch

from deepkrylov.distributed import GridTensor, ProcessGrid

from ._core import _sizes, _zero_copy_ok, import_petsc, petsc_comm
from .layout import _grid_for_vec


def _each_sample(fn: Any, local: torch.Tensor) -> torch.Tensor:
    """``fn`` (one PETSc call on a ``(1, 1, *block)`` block) on every sample and channel of ``local``."""
    if local.shape[:2] == (1, 1):
        return fn(local)
    return torch.cat([fn(local[i:i + 1, c:c + 1]) for i in range(local.shape[0])
                      for c in range(local.shape[1])]).reshape(local.shape)


def _through_petsc(op: Any, xvec: Any, yvec: Any, local: torch.Tensor) -> torch.Tensor:
    """``op(xvec, yvec)`` with the work vectors lent ``local`` (zero-copy where possible) and a fresh result
    buffer; returns the result in ``local``'s dtype and device."""
    src = local if _zero_copy_ok(local) else local.detach().to("cpu", torch.float64).contiguous()
    dst = torch.empty_like(src)
    xvec.placeArray(src.numpy().reshape(-1))
    yvec.placeArray(dst.numpy().reshape(-1))
    try:
        op(xvec, yvec)
    finally:
        xvec.resetArray()
        yvec.resetArray()
    return dst.to(device=local.device, dtype=local.dtype)


def to_petsc_vec(x: GridTensor, copy: bool = False) -> Any:
    """A DMDA-ordered global ``PETSc.Vec`` over ``x``'s data (one sample, one channel).

    Shares memory (writes through either are seen through the other) when ``x.local`` is a contiguous CPU
    float64 tensor and ``copy`` is False; otherwise the data are copied (PETSc here is real double on the CPU).
    """
    PETSc = import_petsc()
    if not isinstance(x, GridTensor):
        raise TypeError(f"x must be a GridTensor, but got {type(x).__name__}")
    if x.local.shape[:2] != (1, 1):
        raise ValueError(f"to_petsc_vec needs one sample and one channel, but got local shape {tuple(x.local.shape)}")
    nloc, n = _sizes(x.grid)
    t = x.local
    if copy or not _zero_copy_ok(t):
        t = t.detach().to(device="cpu", dtype=torch.float64).contiguous().clone()
    arr = t.numpy().reshape(-1)
    vec = PETSc.Vec().createWithArray(arr, size=(nloc, n), comm=petsc_comm(x.grid))
    vec.setAttr("__deepkrylov_owner__", t)  # keep the torch storage alive as long as the Vec
    return vec


def from_petsc_vec(vec: Any, grid: Optional[ProcessGrid] = None, copy: bool = False) -> GridTensor:
    """A GridTensor over a PETSc global vector's local array (zero copy unless ``copy``).

    ``grid`` defaults to the vector's DMDA layout, or a 1D layout with its ownership ranges.
    """
    import_petsc()
    grid = grid if grid is not None else _grid_for_vec(vec)
    nloc, n = _sizes(grid)
    if vec.getLocalSize() != nloc or vec.getSize() != n:
        raise ValueError(
            f"vector sizes (local {vec.getLocalSize()}, global {vec.getSize()}) do not match the grid "
            f"(local {nloc} = {grid.local_shape}, global {n})"
        )
    t = torch.from_numpy(vec.getArray())
    if copy:
        t = t.clone()
    return GridTensor(t.reshape((1, 1) + grid.local_shape), grid)
