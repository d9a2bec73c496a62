"""deepkrylov.solvers: Krylov solvers on tensors and GridTensors, preconditioners, PETSc interop.

This module is the whole public solvers API::

    from deepkrylov.solvers import cg, pcg, fcg, gmres, Jacobi, MatrixOperator, SolveResult, ConvergedReason

    res = cg(A, b, M=Jacobi(A), rtol=1e-8)     # A: a LinearOperator; b: tensor or GridTensor
    res.x, res.iterations, res.reason, res.residual_norms, res.wall_time

PETSc interop (petsc4py, imported lazily) lives in :mod:`deepkrylov.solvers.petsc`.
"""

from .krylov import cg, check_system, fcg, gmres, pcg
from .matrix import FunctionOperator, LinearOperator, MatrixOperator, aslinearoperator
from .preconditioners import CallablePreconditioner, Identity, Jacobi, Preconditioner, as_preconditioner
from .result import ConvergedReason, SolveResult, SolverError
from .stopping import NORM_TYPES, StoppingCriterion

SOLVERS = {"cg": cg, "pcg": pcg, "fcg": fcg, "gmres": gmres}

__all__ = [
    "cg", "pcg", "fcg", "gmres", "check_system", "SOLVERS",
    "LinearOperator", "MatrixOperator", "FunctionOperator", "aslinearoperator",
    "Preconditioner", "Identity", "Jacobi", "CallablePreconditioner", "as_preconditioner",
    "ConvergedReason", "SolveResult", "SolverError",
    "StoppingCriterion", "NORM_TYPES",
]
