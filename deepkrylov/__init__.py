"""deepkrylov: domain-decomposed tensors, Krylov and deep conjugate-direction solvers, and neural operators.

Subpackages, lowest layer first:

- :mod:`deepkrylov.distributed` -- process grids, :class:`GridTensor`, halo exchange, reductions, communicators.
- :mod:`deepkrylov.mesh` -- structured grids, boundary conditions, obstacle masks, stencils, random fields.
- :mod:`deepkrylov.solvers` -- linear operators, Krylov methods, DCDM, the PETSc bridge.
- :mod:`deepkrylov.operators` -- neural operators, PDE data generators, the trainer.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
