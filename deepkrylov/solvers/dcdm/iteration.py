"""The DCDM iteration: conjugate directions predicted by a network.

Each step: ``q = f(r / ||r||)``; A-orthogonalise ``q`` against the last ``memory`` directions (2 in the paper);
exact line search ``x += q (q.r)/(q.Aq)``; recompute the true residual ``r = b - A x``. One network call and two
operator applications per iteration. In PETSc terms this is flexible CG (``KSPFCG``, ``-ksp_fcg_mmax 2``) with
the network as a nonlinear preconditioner.

Stopping is PETSc's default test (:class:`~deepkrylov.solvers.StoppingCriterion`) on the true residual norm:
converged when ``||r|| <= max(rtol * r_ref, atol)``, ``r_ref`` the initial residual norm (zero guess or
``reference="initial"``) or ``||b||``; diverged past ``dtol * r_ref``, on NaN/Inf, or when ``q.Aq <= 0`` (the
operator is not positive definite along ``q``).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Optional, Union

import torch

from deepkrylov.distributed import GridTensor

from .. import _vec as V
from ..krylov import check_system
from ..result import ConvergedReason, SolveResult
from ..stopping import StoppingCriterion

__all__ = ["dcdm"]

Field = Union[torch.Tensor, GridTensor]


def dcdm(
    A, b: Field, model: Callable[[Field], Field], x0: Optional[Field] = None, *, rtol: float = 1e-6,  # type: ignore[no-untyped-def]
    atol: float = 1e-50, max_it: int = 100, dtol: float = 1e5, memory: int = 2, reference: str = "rhs",
    model_dtype: Optional[torch.dtype] = None, callback: Optional[Callable[[int, float], None]] = None,
) -> SolveResult:
    """Solve ``A x = b`` (A symmetric positive definite) with the Deep Conjugate Direction Method.

    Args:
        A: a linear operator (``apply(x)``) or a callable on fields like ``b``.
        b: right-hand side, a tensor ``(1, 1, *spatial)`` or a GridTensor.
        model: the network ``q = model(r)``; any callable with the same input and output layout (an exact
            inverse gives convergence in one step, the identity gives CG, or steepest descent with ``memory=0``).
        memory: how many previous directions ``q`` is A-orthogonalised against.
        model_dtype: dtype the network runs in (default: its parameters' dtype); the solver keeps ``b``'s dtype.

    Returns:
        A :class:`~deepkrylov.solvers.SolveResult` whose ``residual_norms`` are true residual norms.
    """
    stopping = StoppingCriterion(rtol=rtol, atol=atol, dtol=dtol, max_it=max_it, reference=reference)
    if memory < 0:
        raise ValueError(f"memory must be non-negative, but got {memory}")
    if hasattr(A, "apply"):
        check_system(A, b, x0)
        apply = A.apply
    elif callable(A):
        apply = A
    else:
        raise TypeError(f"A must be a linear operator or a callable, but got {type(A).__name__}")
    if model_dtype is None and isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        model_dtype = p.dtype if p is not None else None
    t0 = time.perf_counter()
    if V.has_nonfinite(b):
        raise ValueError("the right-hand side contains NaN or Inf")
    x = V.zeros_like(b) if x0 is None else x0.clone()
    r = b.clone() if x0 is None else b - apply(x)
    rnorm = float(V.norm(r))
    stopping.start(rnorm, float(V.norm(b)), guess_zero=x0 is None)
    history = [rnorm]
    directions: deque = deque(maxlen=max(memory, 1))
    message, it = "", 0
    if callback is not None:
        callback(0, rnorm)
    reason = stopping.check(0, rnorm)
    with torch.no_grad():
        while reason is None:
            rin = r / rnorm
            if model_dtype is not None and model_dtype != b.dtype:
                q = model(rin.to(model_dtype)).to(b.dtype)
            else:
                q = model(rin)
            if memory:
                for p, Ap, pAp in directions:
                    q = q - p * (V.dot(q, Ap) / pAp)
            Aq = apply(q)
            qAq = V.dot(q, Aq)
            if not bool(torch.isfinite(qAq)):
                reason, message = ConvergedReason.DIVERGED_NANORINF, "the network or operator produced NaN/Inf"
                break
            if qAq <= 0:
                reason = ConvergedReason.DIVERGED_INDEFINITE_MAT
                message = f"q.Aq = {float(qAq):.3e} <= 0 at iteration {it + 1}: the operator is not positive definite"
                break
            x = x + q * (V.dot(q, r) / qAq)
            r = b - apply(x)
            it += 1
            rnorm = float(V.norm(r))
            history.append(rnorm)
            if callback is not None:
                callback(it, rnorm)
            if memory:
                directions.append((q, Aq, qAq))
            reason = stopping.check(it, rnorm)
    return SolveResult(
        x=x, iterations=it, residual_norms=history, reason=reason, wall_time=time.perf_counter() - t0,
        message=message, info={"method": "dcdm", "memory": memory, "reference_norm": stopping.ref_norm},
    )
