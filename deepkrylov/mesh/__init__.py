"""deepkrylov.mesh: structured grids, boundary conditions, obstacle masks, stencil operators, random fields."""

from .boundary import BC_KINDS, BoundaryConditions
from .fields import read_field
from .grid import StructuredGrid
from .masks import EMPTY, FLUID, SOLID, Box, Sphere, mask_from_shapes, mask_from_voxels, smoke_scene
from .operator import LinearOperator
from .random import darcy_coefficient, gaussian_random_field
from .stencil import DiffusionOperator, laplacian

__all__ = [
    "StructuredGrid", "BoundaryConditions", "BC_KINDS", "read_field",
    "FLUID", "SOLID", "EMPTY", "Sphere", "Box", "mask_from_shapes", "mask_from_voxels", "smoke_scene",
    "LinearOperator", "DiffusionOperator", "laplacian",
    "gaussian_random_field", "darcy_coefficient",
]
