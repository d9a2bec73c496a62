"""PETSc-compatible stopping test (``KSPConvergedDefault``).

With ``r_k`` the residual norm the solver monitors (its norm type) and ``r_ref`` the reference norm:

* converged (``CONVERGED_ATOL``) if ``r_k < atol``;
* converged (``CONVERGED_RTOL``) if ``r_k <= max(rtol * r_ref, atol)``;
* diverged (``DIVERGED_DTOL``) if ``r_k >= dtol * r_ref``;
* diverged (``DIVERGED_NANORINF``) if ``r_k`` is NaN or Inf;
* diverged (``DIVERGED_ITS``) when ``k`` reaches ``max_it`` without any of the above.

``r_ref`` is, like PETSc: the initial residual norm ``r_0`` when the initial guess is zero or ``reference="initial"``
(PETSc's ``KSPConvergedDefaultSetUIRNorm``), ``min(r_0, ||b||)`` for ``reference="min"`` (``...SetUMIRNorm``), and
otherwise (``reference="rhs"``, nonzero guess) the norm of the right-hand side in the same norm type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .result import ConvergedReason

__all__ = ["StoppingCriterion", "NORM_TYPES", "REFERENCES"]

NORM_TYPES = ("unpreconditioned", "preconditioned", "natural")
REFERENCES = ("rhs", "initial", "min")


@dataclass
class StoppingCriterion:
    """Tolerances and the test; validated on construction so a bad value fails before any work."""

    rtol: float = 1e-5
    atol: float = 1e-50
    dtol: float = 1e5
    max_it: int = 10000
    reference: str = "rhs"

    def __post_init__(self) -> None:
        for name in ("rtol", "atol", "dtol"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
                raise ValueError(f"{name} must be a non-negative number, but got {v!r}")
        if self.rtol >= 1.0:
            raise ValueError(f"rtol must be below 1, but got {self.rtol}")
        if not isinstance(self.max_it, int) or self.max_it < 0:
            raise ValueError(f"max_it must be a non-negative int, but got {self.max_it!r}")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, but got {self.reference!r}")
        self.ref_norm: float = float("nan")
        self.ttol: float = float("nan")

    def start(self, r0: float, b_norm: Optional[float], guess_zero: bool) -> None:
        """Fix the reference from the initial residual norm ``r0`` (and ``||b||`` in the same norm type)."""
        if self.reference == "initial" or guess_zero or b_norm is None:
            ref = r0
        elif self.reference == "min":
            ref = min(r0, b_norm)
        else:
            ref = b_norm
        self.ref_norm = ref
        self.ttol = max(self.rtol * ref, self.atol)

    def check(self, it: int, rnorm: float) -> Optional[ConvergedReason]:
        """The reason to stop after ``it`` iterations with residual norm ``rnorm``, or None to go on."""
        if not math.isfinite(rnorm):
            return ConvergedReason.DIVERGED_NANORINF
        if rnorm <= self.ttol:
            return ConvergedReason.CONVERGED_ATOL if rnorm < self.atol else ConvergedReason.CONVERGED_RTOL
        if rnorm >= self.dtol * self.ref_norm:
            return ConvergedReason.DIVERGED_DTOL
        if it >= self.max_it:
            return ConvergedReason.DIVERGED_ITS
        return None
