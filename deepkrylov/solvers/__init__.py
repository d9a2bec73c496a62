"""deepkrylov.solvers: Krylov solvers on tensors and GridTensors, preconditioners, PETSc interop.

This module is the whole public solvers API::

    from deepkrylov.solvers import cg, pcg, fcg, gmres, Jacobi, MatrixOperator, SolveResult, ConvergedReason

    res = cg(A, b, M=Jacobi(A), rtol=1e-8)     # A: a LinearOperator; b: tensor or GridTensor
    res.x, res.iterations, res.reason, res.residual_norms, res.wall_time

    solver = KrylovSolver("cg", M=Jacobi(), rtol=1e-8).setup(A)   # set up once, solve many
    res = solver.solve(b, raise_on_failure=True)

PETSc interop (petsc4py, imported lazily: ``import deepkrylov.solvers`` does not import it) lives in
:mod:`deepkrylov.solvers.petsc`, among it ``PetscPC``, any PETSc preconditioner for these solvers::

    from deepkrylov.solvers.petsc import PetscPC
    res = cg(A, b, M=PetscPC(A, "hypre"))       # also "gamg", "icc", "jacobi", ... (A: an operator with to_scipy())

Multigrid preconditioners for deepkrylov's diffusion operators (symmetric V-cycles, valid in plain CG)::

    res = cg(A, b, M=Multigrid(A), rtol=1e-6)              # geometric multigrid (set-up once, ~10 its to 1e-6)
    res = cg(A, b, M=LearnedMultigrid(A), rtol=1e-6)       # smoothers predicted from the geometry (shipped weights)

DCDM (:mod:`deepkrylov.solvers.dcdm`): ``dcdm(A, b, M)`` with ``M`` the shipped network (``load_model()``) or
any preconditioner above.
"""

from .krylov import KrylovSolver, cg, check_system, fcg, gmres, pcg
from .learned_multigrid import LearnedMultigrid, StencilNet
from .matrix import FunctionOperator, LinearOperator, MatrixOperator, aslinearoperator
from .multigrid import Multigrid
from .preconditioners import CallablePreconditioner, Identity, Jacobi, Preconditioner, as_preconditioner
from .result import ConvergedReason, SolveResult, SolverError
from .stopping import NORM_TYPES, StoppingCriterion

SOLVERS = {"cg": cg, "pcg": pcg, "fcg": fcg, "gmres": gmres}

__all__ = [
    "cg", "pcg", "fcg", "gmres", "check_system", "SOLVERS", "KrylovSolver",
    "LinearOperator", "MatrixOperator", "FunctionOperator", "aslinearoperator",
    "Preconditioner", "Identity", "Jacobi", "CallablePreconditioner", "as_preconditioner",
    "Multigrid", "LearnedMultigrid", "StencilNet",
    "ConvergedReason", "SolveResult", "SolverError",
    "StoppingCriterion", "NORM_TYPES",
]
