"""Model problems for the solvers: pressure-Poisson systems on obstacle scenes, like the DCDM paper's.

:func:`scene_problem` builds the operator (the unscaled fluid-pressure matrix: solid cells and domain walls are
zero-flux, empty cells zero pressure) and a right-hand side on a ``n^dim`` grid; the default is the smoke scene
of :func:`deepkrylov.mesh.smoke_scene`. The right-hand side is a smooth random field on the fluid cells (a stand-in
for a velocity divergence), zero elsewhere, with unit norm.
"""

from __future__ import annotations

from typing import Optional

import torch

from deepkrylov.mesh import (
    EMPTY, FLUID, SOLID, BoundaryConditions, Box, Sphere, mask_from_shapes, DiffusionOperator, StructuredGrid, gaussian_random_field, laplacian, smoke_scene,
)

__all__ = ["SCENES", "scene_problem", "random_scene"]

SCENES = ("smoke", "box")


def scene_problem(
    n: int, dim: int = 3, scene: str = "smoke", *, seed: int = 0, dtype: torch.dtype = torch.float64,
    mask: Optional[torch.Tensor] = None,
) -> tuple[DiffusionOperator, torch.Tensor]:
    """``(A, b)`` for the pressure system of ``scene`` (``smoke``: obstacles, open top; ``box``: all fluid with
    Dirichlet walls) on an ``n^dim`` grid, or of a given ``mask`` (FLUID/SOLID/EMPTY voxels)."""
    if scene not in SCENES and mask is None:
        raise ValueError(f"scene must be one of {SCENES}, but got {scene!r}")
    grid = StructuredGrid((n,) * dim)
    if mask is not None:
        A = laplacian(grid, BoundaryConditions.uniform(dim, "neumann"), mask, scaled=False, dtype=dtype)
    elif scene == "smoke":
        A = laplacian(grid, BoundaryConditions.uniform(dim, "neumann"), smoke_scene(n, dim), scaled=False, dtype=dtype)
    else:
        A = laplacian(grid, BoundaryConditions.uniform(dim, "dirichlet"), scaled=False, dtype=dtype)
    field = gaussian_random_field(grid, kernel="rbf", length=0.15, seed=seed)[0]
    b = torch.where(A.mask == FLUID, field, torch.zeros_like(field)).to(dtype)
    b = A.project(b[None, None])
    return A, b / b.norm()


def random_scene(n: int, dim: int = 3, *, seed: int = 0) -> torch.Tensor:
    """A random smoke-style scene on an ``n^dim`` box (FLUID/SOLID/EMPTY mask), for training and held-out tests:
    1-6 solid spheres and boxes of varied sizes, a solid floor of 0-3 layers (half the scenes), and air: an open
    top of 1-3 layers, or else (a quarter of the scenes) a few empty pockets, so the pressure system is
    nonsingular. The same seed gives the same scene at every ``n``."""
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
    mask = mask_from_shapes(StructuredGrid((n,) * dim), shapes)
    if not bool((mask == EMPTY).any()):  # pockets too small to hold a cell centre: open the top
        mask[-1] = EMPTY
    if not bool((mask == FLUID).any()):
        mask[mask == SOLID] = FLUID
    return mask
