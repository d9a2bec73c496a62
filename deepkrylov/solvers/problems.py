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
    FLUID, BoundaryConditions, DiffusionOperator, StructuredGrid, gaussian_random_field, laplacian, smoke_scene,
)

__all__ = ["SCENES", "scene_problem"]

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
