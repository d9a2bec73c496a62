"""Cell masks for pressure-type solves, as in fluid simulation and the DCDM paper's scenes.

``FLUID`` cells are unknowns; ``SOLID`` cells impose zero normal flux (Neumann) on their faces; ``EMPTY`` (air)
cells impose zero pressure (Dirichlet) at their centres. Masks are integer tensors of the grid's shape, built from
shapes (painted in order, later shapes win) or from a voxel array / ``.npy`` / HDF5 file. With ``partition=`` (a
:class:`~deepkrylov.distributed.ProcessGrid`) each is built on this rank's block only (shapes evaluated at the block's
cell centres, files read block by block) and returned as a GridTensor ``(1, 1, *block)``: the same values as the
whole mask's block.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid

from .fields import _field_result, _read_block
from .grid import StructuredGrid

__all__ = ["FLUID", "SOLID", "EMPTY", "Sphere", "Box", "mask_from_shapes", "mask_from_voxels", "smoke_scene"]

FLUID, SOLID, EMPTY = 0, 1, 2
_KINDS = {"fluid": FLUID, "solid": SOLID, "empty": EMPTY}


def _kind(kind: Union[str, int]) -> int:
    if isinstance(kind, str):
        if kind not in _KINDS:
            raise ValueError(f"cell kind must be one of {tuple(_KINDS)}, but got {kind!r}")
        return _KINDS[kind]
    if kind not in (FLUID, SOLID, EMPTY):
        raise ValueError(f"cell kind must be FLUID (0), SOLID (1) or EMPTY (2), but got {kind!r}")
    return int(kind)


@dataclass(frozen=True)
class Sphere:
    """Cells whose centre lies within ``radius`` of ``center`` (physical units, tensor axis order)."""

    center: Sequence[float]
    radius: float
    kind: Union[str, int] = "solid"

    def inside(self, coords: list[torch.Tensor]) -> torch.Tensor:
        if len(self.center) != len(coords):
            raise ValueError(f"Sphere centre has {len(self.center)} coordinates for a {len(coords)}D grid")
        return sum((c - x0) ** 2 for c, x0 in zip(coords, self.center)) <= self.radius**2


@dataclass(frozen=True)
class Box:
    """Cells whose centre lies in ``[lo, hi]`` per axis (physical units, tensor axis order)."""

    lo: Sequence[float]
    hi: Sequence[float]
    kind: Union[str, int] = "solid"

    def inside(self, coords: list[torch.Tensor]) -> torch.Tensor:
        if len(self.lo) != len(coords) or len(self.hi) != len(coords):
            raise ValueError(f"Box corners need {len(coords)} coordinates")
        inside = None
        for c, a, b in zip(coords, self.lo, self.hi):
            axis = (c >= a) & (c <= b)
            inside = axis if inside is None else inside & axis
        return inside


def mask_from_shapes(
    grid: StructuredGrid, shapes: Sequence[Union[Sphere, Box]], default: Union[str, int] = "fluid", *,
    partition: Optional[ProcessGrid] = None,
) -> Union[torch.Tensor, GridTensor]:
    """Paint shapes (their union, later ones on top) onto a mask filled with ``default``; with ``partition``, this
    rank's block only (a GridTensor)."""
    centres = grid.centers(partition=partition)
    nd = len(centres)
    # broadcastable coordinates (one axis each): a shape's test allocates about one array of the block, not ndim
    coords = [c.view([-1 if b == a else 1 for b in range(nd)]) for a, c in enumerate(centres)]
    mask = torch.full(tuple(len(c) for c in centres), _kind(default), dtype=torch.uint8)
    for s in shapes:
        mask.masked_fill_(s.inside(coords), _kind(s.kind))
    return _field_result(mask, partition)


def mask_from_voxels(
    voxels: Union[str, Path, np.ndarray, torch.Tensor], grid: StructuredGrid, *,
    partition: Optional[ProcessGrid] = None, dataset: Optional[str] = None,
) -> Union[torch.Tensor, GridTensor]:
    """A mask from integer voxels with values FLUID/SOLID/EMPTY and the grid's shape: an array, a ``.npy`` file or
    an HDF5 file (``dataset``); with ``partition`` only this rank's block is read (see
    :func:`~deepkrylov.mesh.read_field`) and returned as a GridTensor."""
    if not isinstance(voxels, (str, Path, GridTensor)) and tuple(np.shape(voxels)) != grid.shape:
        raise ValueError(f"voxel array has shape {tuple(np.shape(voxels))}, but the grid has shape {grid.shape}")
    arr = _read_block(voxels, grid, partition, dataset)
    bad = ~((arr == FLUID) | (arr == SOLID) | (arr == EMPTY))
    bad_kind = (f"voxel values must be 0 (fluid), 1 (solid) or 2 (empty); found {sorted(set(arr[bad].tolist()))[:5]}"
                if bool(bad.any()) else "")
    if partition is not None and partition.size > 1:  # the same error on every rank
        found = [m for m in partition.comm.allgather_object(bad_kind) if m]
        bad_kind = found[0] if found else ""
    if bad_kind:
        raise ValueError(bad_kind)
    return _field_result(arr.to(torch.uint8), partition)


def smoke_scene(n: int, dim: int = 3, *, partition: Optional[ProcessGrid] = None) -> Union[torch.Tensor, GridTensor]:
    """The default DCDM-style scene on an ``n^dim`` box: a smoke domain with a spherical and a box-shaped solid
    obstacle, solid floor, and an open (empty, zero-pressure) top layer through which fluid leaves. With
    ``partition``, this rank's block (a GridTensor)."""
    if dim not in (2, 3) or n < 8:
        raise ValueError(f"smoke_scene needs dim 2 or 3 and n >= 8, but got dim={dim}, n={n}")
    grid = StructuredGrid((n,) * dim)
    centre = (0.45,) + (0.5,) * (dim - 1)
    shapes = [
        Sphere(centre, 0.15, "solid"),
        Box((0.7,) + (0.15,) * (dim - 1), (0.8,) + (0.45,) * (dim - 1), "solid"),
        Box((0.0,) * dim, (1.0 / n,) + (1.0,) * (dim - 1), "solid"),  # floor (lowest layer along axis 0)
        Box((1.0 - 1.0 / n,) + (0.0,) * (dim - 1), (1.0,) * dim, "empty"),  # open top
    ]
    return mask_from_shapes(grid, shapes, partition=partition)
