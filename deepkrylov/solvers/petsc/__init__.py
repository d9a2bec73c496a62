"""PETSc interop (petsc4py, imported lazily: importing this package does not import PETSc); the only part of
deepkrylov that touches PETSc.

* :mod:`.layout`: DMDAs with a ProcessGrid's layout (:func:`create_dmda`, :func:`grid_from_dmda`), PETSc's ordering
  against the natural one (:func:`natural_to_petsc`), the grid a plugin works on (:func:`plugin_grid`).
* :mod:`.vec`: :func:`to_petsc_vec` / :func:`from_petsc_vec` between a GridTensor and a DMDA global ``Vec``
  without copying where the layouts allow.
* :mod:`.mat`: :func:`assemble_aij` (a SciPy CSR in natural ordering, each rank its rows), :func:`as_petsc_mat` (any
  operator as a ``MATPYTHON`` shell), :class:`PetscMatOperator` (a ``Mat`` as a deepkrylov operator), null spaces.
* :mod:`.ksp`: :func:`petsc_solve`, the KSP baseline (CG with Jacobi, ICC, GAMG, hypre, ...) returning a
  :class:`~deepkrylov.solvers.SolveResult`, and :class:`PetscPC`, any PETSc PC for deepkrylov's own iterations,
  e.g. ``cg(A, b, M=PetscPC(A, "hypre"))``.
* :mod:`.readback`: :func:`diffusion_operator_from_mat`, a PETSc matrix on a DMDA read back as a DiffusionOperator.
* :mod:`.plugins`: deepkrylov inside PETSc programs, through the options database only:
  ``-ksp_type python -ksp_python_type deepkrylov.solvers.petsc.CG`` (or ``FCG``, ``DCDM``);
  ``-pc_type python -pc_python_type deepkrylov.solvers.petsc.PC`` (or ``Jacobi``, ``DCDMPC``, ``MG``,
  ``LearnedMG``); all built on one template, :class:`~.plugins.Plugin`. ``python -m deepkrylov.solvers.petsc``
  prints what a C program needs to run them (:func:`embedding_environment`).
"""

from ._core import import_petsc, petsc_available, petsc_comm
from .ksp import PC_TYPES, PetscPC, petsc_solve
from .layout import GRID_OPTION, create_dmda, grid_from_dmda, natural_to_petsc, plugin_grid
from .mat import (
    PetscMatOperator, ShellContext, as_petsc_mat, assemble_aij, set_constant_null_space, set_null_space,
)
from .plugins import CG, DCDM, DCDMPC, FCG, MG, PC, Jacobi, LearnedMG, embedding_environment
from .readback import FACE_KINDS, MatDiffusion, diffusion_operator_from_mat
from .vec import from_petsc_vec, to_petsc_vec

__all__ = [
    "petsc_available", "import_petsc", "petsc_comm", "create_dmda", "grid_from_dmda", "to_petsc_vec",
    "from_petsc_vec", "natural_to_petsc", "assemble_aij", "as_petsc_mat", "PetscMatOperator",
    "ShellContext", "set_constant_null_space", "set_null_space", "petsc_solve", "PC_TYPES", "PetscPC", "plugin_grid",
    "GRID_OPTION", "CG", "FCG", "PC", "Jacobi", "DCDM", "DCDMPC", "MatDiffusion", "FACE_KINDS",
    "diffusion_operator_from_mat", "MG", "LearnedMG", "embedding_environment",
]
