"""Cell masks for pressure-type solves, as in fluid simulation and the DCDM paper's scenes.

``FLUID`` cells are unknowns; ``SOLID`` cells impose zero normal flux (Neumann) on their faces; ``EMPTY`` (air)
cells impose zero pressure (Dirichlet) at their centres. Masks are integer tensors of the grid's shape, built from
shapes (painted in order, later shapes win) or from a voxel array / ``.npy`` file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

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
        inside = torch.ones_like(coords[0], dtype=torch.bool)
        for c, a, b in zip(coords, self.lo, self.hi):
            inside &= (c >= a) & (c <= b)
        return inside


def mask_from_shapes(grid: StructuredGrid, shapes: Sequence[Union[Sphere, Box]], default: Union[str, int] = "fluid") -> torch.Tensor:
    """Paint shapes (their union, later ones on top) onto a mask filled with ``default``."""
    mask = torch.full(grid.shape, _kind(default), dtype=torch.uint8)
    coords = grid.meshgrid()
    for s in shapes:
        mask[s.inside(coords)] = _kind(s.kind)
    return mask


def mask_from_voxels(voxels: Union[str, Path, np.ndarray, torch.Tensor], grid: StructuredGrid) -> torch.Tensor:
    """A mask from an integer voxel array (or ``.npy`` path) with values FLUID/SOLID/EMPTY and the grid's shape."""
    if isinstance(voxels, (str, Path)):
        voxels = np.load(voxels)
    arr = torch.as_tensor(np.asarray(voxels))
    if tuple(arr.shape) != grid.shape:
        raise ValueError(f"voxel array has shape {tuple(arr.shape)}, but the grid has shape {grid.shape}")
    bad = ~((arr == FLUID) | (arr == SOLID) | (arr == EMPTY))
    if bool(bad.any()):
        raise ValueError(f"voxel values must be 0 (fluid), 1 (solid) or 2 (empty); found {sorted(set(arr[bad].tolist()))[:5]}")
    return arr.to(torch.uint8)


def smoke_scene(n: int, dim: int = 3) -> torch.Tensor:
    """The default DCDM-style scene on an ``n^dim`` box: a smoke domain with a spherical and a box-shaped solid
    obstacle, solid floor, and an open (empty, zero-pressure) top layer through which fluid leaves."""
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
    return mask_from_shapes(grid, shapes)
