"""Model problems for the solvers: pressure-Poisson systems on obstacle scenes, like the DCDM paper's.

:func:`scene_problem` builds the operator (the unscaled fluid-pressure matrix: solid cells and domain walls are
zero-flux, empty cells zero pressure) and a right-hand side on a ``n^dim`` grid; the default is the smoke scene
of :func:`deepkrylov.mesh.smoke_scene`. The right-hand side is a smooth random field on the fluid cells (a stand-in
for a velocity divergence; :func:`smooth_field`, random Fourier features of an RBF covariance: evaluated cell by
cell, so it costs one field and no FFT at any size), zero elsewhere, with unit norm.

With ``partition=`` (a :class:`~deepkrylov.distributed.ProcessGrid`) both are built on this rank's block only:
the scene's mask from the block's cell centres, the operator from it (one halo exchange), and the right-hand side
a GridTensor on the partition, with the same numbers as the whole problem's blocks.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch

from deepkrylov.distributed import GridTensor, ProcessGrid, as_grid_tensor
from deepkrylov.mesh import (
    EMPTY, FLUID, SOLID, BoundaryConditions, Box, DiffusionOperator, Sphere, StructuredGrid, laplacian,
    mask_from_shapes, smoke_scene,
)

__all__ = ["SCENES", "scene_problem", "random_scene", "smooth_field"]

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
    b = smooth_field(grid, seed=seed, partition=partition).masked_fill_(~A.fluid, 0.0).to(dtype)[None, None]
    bg, restore = as_grid_tensor(b if partition is None else GridTensor(b, partition), grid.shape)
    bg = A.project(bg)
    sq = torch.linalg.vector_norm(bg.local).square().reshape(1)  # no squared copy of the field
    bg.grid.comm.allreduce_(sq)
    bg.local.div_(sq.sqrt())
    return A, restore(bg)


def smooth_field(grid: StructuredGrid, *, length: float = 0.15, features: int = 64, seed: int = 0,
                 partition: Optional[ProcessGrid] = None) -> torch.Tensor:
    """A smooth random field with approximately the RBF covariance ``exp(-|x - y|^2 / (2 length^2))``, by random
    Fourier features (Rahimi and Recht, 2007): ``sqrt(2 / M) sum_j cos(2 pi w_j . x + phi_j)`` with ``M =
    features`` Gaussian wave vectors ``w_j ~ N(0, (2 pi length)^-2 I)`` and uniform phases, drawn from ``seed``.

    Evaluated at the cell centres of this rank's block (the whole grid without ``partition``), one separable
    product per feature: no FFT, no communication, about one field of memory, and the same bits on any partition.
    Returns a tensor of the block's shape."""
    if length <= 0 or features < 1:
        raise ValueError(f"need length > 0 and features >= 1, but got length={length}, features={features}")
    g = torch.Generator().manual_seed(seed)
    nd = grid.ndim
    omega = torch.randn((features, nd), generator=g, dtype=torch.float64) / (2 * math.pi * length)
    phase = torch.rand(features, generator=g, dtype=torch.float64) * (2 * math.pi)
    centres = grid.centers(partition=partition)
    field = torch.zeros(tuple(len(c) for c in centres), dtype=torch.float64)
    for j in range(features):
        # exp(i (2 pi w.x + phi)) as a product of per-axis factors; its real part added without a complex field
        waves = [torch.exp(1j * (2 * math.pi * omega[j, a]) * c).view([-1 if b == a else 1 for b in range(nd)])
                 for a, c in enumerate(centres)]
        head = waves[0] * torch.exp(1j * phase[j])
        for w in waves[1:-1]:
            head = head * w
        if nd == 1:
            field.add_(head.real)
        else:
            last = waves[-1]
            field.addcmul_(head.real, last.real).addcmul_(head.imag, last.imag, value=-1.0)
    return field.mul_(math.sqrt(2.0 / features))


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
    mask = as_grid_tensor(out, grid.shape)[0].local[0, 0]  # this rank's block (a view: edited in place)
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
