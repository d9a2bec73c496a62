"""Solve outcomes: :class:`ConvergedReason` (named and numbered like PETSc's ``KSPConvergedReason``) and
:class:`SolveResult`.

A failed solve is a value, not an exception: the reason says what happened and ``message`` what to try.
``SolveResult.raise_if_failed()`` turns a diverged result into an error when the caller wants one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["ConvergedReason", "SolveResult", "SolverError"]


class ConvergedReason(enum.IntEnum):
    """Why an iteration stopped. Values equal PETSc's ``KSPConvergedReason`` so the two convert by ``int``."""

    CONVERGED_RTOL_NORMAL = 1
    CONVERGED_ATOL_NORMAL = 9
    CONVERGED_RTOL = 2
    CONVERGED_ATOL = 3
    CONVERGED_ITS = 4
    CONVERGED_CG_NEG_CURVE = 5
    CONVERGED_CG_CONSTRAINED = 6
    CONVERGED_STEP_LENGTH = 7
    CONVERGED_HAPPY_BREAKDOWN = 8
    DIVERGED_NULL = -2
    DIVERGED_ITS = -3
    DIVERGED_DTOL = -4
    DIVERGED_BREAKDOWN = -5
    DIVERGED_BREAKDOWN_BICG = -6
    DIVERGED_NONSYMMETRIC = -7
    DIVERGED_INDEFINITE_PC = -8
    DIVERGED_NANORINF = -9
    DIVERGED_INDEFINITE_MAT = -10
    DIVERGED_PC_FAILED = -11
    CONVERGED_ITERATING = 0

    @property
    def converged(self) -> bool:
        return self.value > 0

    @property
    def diverged(self) -> bool:
        return self.value < 0


_ADVICE = {
    ConvergedReason.DIVERGED_ITS: "raise max_it, loosen rtol/atol, or use a stronger preconditioner",
    ConvergedReason.DIVERGED_DTOL: "the residual grew past dtol times its reference; check the operator and preconditioner",
    ConvergedReason.DIVERGED_BREAKDOWN: "the Krylov space broke down; try another method or a different initial guess",
    ConvergedReason.DIVERGED_NONSYMMETRIC: "CG needs a symmetric operator; use gmres",
    ConvergedReason.DIVERGED_INDEFINITE_PC: "CG needs a symmetric positive definite preconditioner; use fcg or gmres",
    ConvergedReason.DIVERGED_NANORINF: "NaN or Inf appeared; check the right-hand side, operator and preconditioner",
    ConvergedReason.DIVERGED_INDEFINITE_MAT: "CG needs a positive definite operator; use gmres (or fix the sign/boundary conditions)",
    ConvergedReason.DIVERGED_PC_FAILED: "the preconditioner failed",
}


class SolverError(RuntimeError):
    """Raised by :meth:`SolveResult.raise_if_failed` for a diverged solve."""


@dataclass
class SolveResult:
    """What a solve returns.

    Attributes:
        x: the solution (same kind as the right-hand side: tensor or GridTensor).
        iterations: number of iterations (solution updates) done.
        residual_norms: the norm used by the stopping test at iterations 0..iterations.
        reason: why it stopped.
        wall_time: seconds spent in the solve.
        message: human-readable detail for a diverged solve (empty when converged).
        info: extra solver-specific data (e.g. the norm type, the reference norm).
    """

    x: Any
    iterations: int
    residual_norms: list[float]
    reason: ConvergedReason
    wall_time: float
    message: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reason = ConvergedReason(int(self.reason))
        if self.reason.diverged and not self.message:
            self.message = _ADVICE.get(self.reason, "")

    @property
    def converged(self) -> bool:
        return self.reason.converged

    @property
    def residual_norm(self) -> Optional[float]:
        """The last residual norm recorded (None if none)."""
        return self.residual_norms[-1] if self.residual_norms else None

    def raise_if_failed(self) -> "SolveResult":
        """Return self if converged, else raise :class:`SolverError` with the reason and message."""
        if not self.converged:
            raise SolverError(f"{self.reason.name} after {self.iterations} iterations: {self.message}")
        return self

    def __repr__(self) -> str:
        last = f"{self.residual_norm:.3e}" if self.residual_norm is not None else "n/a"
        return (
            f"SolveResult(reason={self.reason.name}, iterations={self.iterations}, residual={last}, "
            f"wall_time={self.wall_time:.3g}s{', message=' + repr(self.message) if self.message else ''})"
        )
