"""Model problems for the solvers: pressure-Poisson systems on obstacle scenes, like the DCDM paper's.

:func:`scene_problem` builds the operator (the unscaled fluid-pressure matrix: solid cells and domain walls are
zero-flux, empty cells zero pressure) and a right-hand side on a ``n^dim`` grid; the default is the smoke scene
of :func:`deepkrylov.mesh.smoke_scene`. The right-hand side is a smooth random field on the fluid cells (a stand-in
for a velocity divergence), zero elsewhere, with unit norm.

With ``partition=`` (a :class:`~deepkrylov.distributed.ProcessGrid`) both are built on this rank's block only:
the scene's mask from the block's cell centres, the operator from it (one halo exchange), and the right-hand side
a GridTensor on the partition, with the same numbers as the whole problem's blocks.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Union

import torch

from deepkrylov.distributed import GridTensor, ProcessGrid
from deepkrylov.mesh import (
    EMPTY, FLUID, SOLID, BoundaryConditions, Box, DiffusionOperator, Sphere, StructuredGrid, gaussian_random_field,
    laplacian, mask_from_shapes, smoke_scene,
)

__all__ = ["SCENES", "scene_problem", "random_scene"]

SCENES = ("smoke", "box")


def scene_problem(
    n: int, dim: int = 3, scene: str = "smoke", *, seed: int = 0, dtype: torch.dtype = torch.float64,
    mask: Any = None, partition: Optional[ProcessGrid] = None,
) -> tuple[DiffusionOperator, Union[torch.Tensor, GridTensor]]:
    """``(A, b)`` for the pressure system of ``scene`` (``smoke``: obstacles, open top; ``box``: all fluid with
    Dirichlet walls) on an ``n^dim`` grid, or of a given ``mask`` (FLUID/SOLID/EMPTY voxels: a whole tensor, or
    with ``partition`` a GridTensor block on it). With ``partition``, ``A`` and ``b`` (a GridTensor
    ``(1, 1, *block)``) hold this rank's block only."""
    if scene not in SCENES and mask is None:
        raise ValueError(f"scene must be one of {SCENES}, but got {scene!r}")
    grid = StructuredGrid((n,) * dim)
    kw = {"scaled": False, "dtype": dtype, "partition": partition}
    if mask is not None:
        A = laplacian(grid, BoundaryConditions.uniform(dim, "neumann"), mask, **kw)
    elif scene == "smoke":
        A = laplacian(grid, BoundaryConditions.uniform(dim, "neumann"), smoke_scene(n, dim, partition=partition), **kw)
    else:
        A = laplacian(grid, BoundaryConditions.uniform(dim, "dirichlet"), **kw)
    field = _smooth_field(grid, seed, partition)
    b = torch.where(A.mask == FLUID, field, torch.zeros_like(field)).to(dtype)[None, None]
    if partition is None:
        b = A.project(b)
        return A, b / b.norm()
    b = A.project(GridTensor(b, partition))
    return A, b / b.norm()


def _smooth_field(grid: StructuredGrid, seed: int, partition: Optional[ProcessGrid]) -> torch.Tensor:
    """The right-hand side's smooth random field (RBF, length 0.15) on this rank's block."""
    if partition is None:
        return gaussian_random_field(grid, kernel="rbf", length=0.15, seed=seed)[0]
    if "partition" in inspect.signature(gaussian_random_field).parameters:
        field = gaussian_random_field(grid, kernel="rbf", length=0.15, seed=seed, partition=partition)
        local = field.local if isinstance(field, GridTensor) else field
        return local.reshape(partition.local_shape)
    # drawn whole (its spectrum needs every cell) and sliced
    return gaussian_random_field(grid, kernel="rbf", length=0.15, seed=seed)[0][partition.local_slices].clone()


def random_scene(n: int, dim: int = 3, *, seed: int = 0,
                 partition: Optional[ProcessGrid] = None) -> Union[torch.Tensor, GridTensor]:
    """A random smoke-style scene on an ``n^dim`` box (FLUID/SOLID/EMPTY mask), for training and held-out tests:
    1-6 solid spheres and boxes of varied sizes, a solid floor of 0-3 layers (half the scenes), and air: an open
    top of 1-3 layers, or else (a quarter of the scenes) a few empty pockets, so the pressure system is
    nonsingular. The same seed gives the same scene at every ``n``. With ``partition``, this rank's block (a
    GridTensor; the shapes are drawn the same on every rank)."""
    if dim not in (2, 3) or n < 8:
        raise ValueError(f"random_scene needs dim 2 or 3 and n >= 8, but got dim={dim}, n={n}")
    g = torch.Generator().manual_seed(seed)

    def u(lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))

    shapes: list = []
    for _ in range(1 + int(u() * 6)):
        centre = tuple(u(0.15, 0.85) for _ in range(dim))
        if u() < 0.5:
            shapes.append(Sphere(centre, u(0.05, 0.2), "solid"))
        else:
            half = [u(0.03, 0.2) for _ in range(dim)]
            shapes.append(Box(tuple(c - h for c, h in zip(centre, half)), tuple(c + h for c, h in zip(centre, half)), "solid"))
    if u() < 0.5:
        layers = int(u() * 4)
        if layers:
            shapes.append(Box((0.0,) * dim, (layers / n,) + (1.0,) * (dim - 1), "solid"))
    if u() < 0.75:
        top = 1 + int(u() * 3)
        shapes.append(Box((1.0 - top / n,) + (0.0,) * (dim - 1), (1.0,) * dim, "empty"))
    else:
        for _ in range(1 + int(u() * 3)):
            shapes.append(Sphere(tuple(u(0.1, 0.9) for _ in range(dim)), u(0.05, 0.12), "empty"))
    grid = StructuredGrid((n,) * dim)
    out = mask_from_shapes(grid, shapes, partition=partition)
    mask = out.local[0, 0] if partition is not None else out
    any_empty, any_fluid = _any(partition, bool((mask == EMPTY).any()), bool((mask == FLUID).any()))
    if not any_empty:  # pockets too small to hold a cell centre: open the top
        if partition is None or partition.coords[0] == partition.dims[0] - 1:
            mask[-1] = EMPTY
        any_fluid = _any(partition, bool((mask == FLUID).any()))[0]
    if not any_fluid:
        mask[mask == SOLID] = FLUID
    return out


def _any(partition: Optional[ProcessGrid], *flags: bool) -> list[bool]:
    """Each flag or-ed over the partition's ranks."""
    if partition is None or partition.size == 1:
        return list(flags)
    every = partition.comm.allgather_object(flags)
    return [any(f[i] for f in every) for i in range(len(flags))]
