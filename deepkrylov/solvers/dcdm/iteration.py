"""The DCDM iteration: conjugate directions predicted by a preconditioner (the paper's network, or any other).

Each step: ``q = M r`` (for a network, ``q = ||r|| f(r / ||r||)``, see :class:`NetworkPreconditioner`);
A-orthogonalise ``q`` against the last ``memory`` directions (2 in the paper); exact line search
``x += q (q.r)/(q.Aq)``; recompute the true residual ``r = b - A x``. One preconditioner call and two operator
applications per iteration. In PETSc terms this is flexible CG (``KSPFCG``, ``-ksp_fcg_mmax 2``) with ``M`` as a
(possibly nonlinear) preconditioner; ``M`` may be Jacobi, a multigrid cycle or a network alike.

Stopping is PETSc's default test (:class:`~deepkrylov.solvers.StoppingCriterion`) on the true residual norm:
converged when ``||r|| <= max(rtol * r_ref, atol)``, ``r_ref`` the initial residual norm (zero guess or
``reference="initial"``) or ``||b||``; diverged past ``dtol * r_ref``, on NaN/Inf, or when ``q.Aq <= 0`` (the
operator is not positive definite along ``q``).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Optional, Union

import torch

from deepkrylov.distributed import GridTensor

from .. import _vec as V
from .._lift import lift_system
from ..krylov import check_system
from ..preconditioners import Preconditioner, as_preconditioner
from ..result import ConvergedReason, SolveResult
from ..stopping import StoppingCriterion
from .preconditioner import NetworkPreconditioner

__all__ = ["dcdm", "as_dcdm_preconditioner"]

Field = Union[torch.Tensor, GridTensor]

DEFAULT_MAX_IT = 1000
"""``dcdm``'s default iteration limit: the shipped network needs about 80 iterations on the 16^3 smoke scene
and 260 on the 32^3 one to reach 1e-6, so 1000 leaves room for larger scenes without running forever."""


def as_dcdm_preconditioner(M: Any, model_dtype: Optional[torch.dtype] = None) -> Preconditioner:
    """The preconditioner :func:`dcdm` uses for ``M``: an ``nn.Module`` becomes a :class:`NetworkPreconditioner`
    (normalised input, run in ``model_dtype`` or its parameters' dtype); a Preconditioner stays as is; an operator
    or another callable is applied as is (no normalisation: wrap a nonlinear one in NetworkPreconditioner)."""
    if M is None:
        raise TypeError(
            "dcdm needs a preconditioner M: a network (nn.Module), a Preconditioner (e.g. Jacobi(A)) or a callable, "
            "but got None"
        )
    if isinstance(M, torch.nn.Module):
        return NetworkPreconditioner(M, dtype=model_dtype)
    if model_dtype is not None:
        raise ValueError(f"model_dtype applies to a network (nn.Module), but M is a {type(M).__name__}")
    return as_preconditioner(M)


def dcdm(
    A: Any, b: Field, M: Any = None, x0: Optional[Field] = None, *, rtol: float = 1e-6, atol: float = 1e-50,
    max_it: int = DEFAULT_MAX_IT, dtol: float = 1e5, memory: int = 2, reference: str = "rhs",
    model_dtype: Optional[torch.dtype] = None, callback: Optional[Callable[[int, float], None]] = None,
    model: Any = None,
) -> SolveResult:
    """Solve ``A x = b`` (A symmetric positive definite) with the Deep Conjugate Direction Method.

    Args:
        A: a linear operator (``apply(x)``) or a callable on fields like ``b``.
        b: right-hand side, a tensor ``(1, 1, *spatial)`` or a GridTensor.
        M: what predicts the direction ``q = M r``: a network (``nn.Module``, wrapped in
            :class:`NetworkPreconditioner`), any :class:`~deepkrylov.solvers.Preconditioner` (Jacobi, multigrid,
            ...; set up on ``A`` if it is not yet) or a callable with the layout of ``b`` (an exact inverse gives
            convergence in one step, the identity gives CG, or steepest descent with ``memory=0``).
        x0: initial guess (default zero).
        max_it: iteration limit (default 1000, see :data:`DEFAULT_MAX_IT`).
        memory: how many previous directions ``q`` is A-orthogonalised against.
        model_dtype: dtype a network ``M`` runs in (default: its parameters' dtype); the solver keeps ``b``'s.
        callback: called as ``callback(it, rnorm)`` at iteration 0 and after every iteration.
        model: the former name of ``M`` (kept for old calls ``dcdm(A, b, model=net)``); give one of the two.

    Returns:
        A :class:`~deepkrylov.solvers.SolveResult` whose ``residual_norms`` are true residual norms.
    """
    if model is not None:
        if M is not None:
            raise TypeError("dcdm got both M and model (its former name); give one")
        M = model
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
    pc = as_dcdm_preconditioner(M, model_dtype)
    if not pc.is_setup:
        pc.setup(A)
    t0 = time.perf_counter()
    # one field type below here: a plain b (and x0) becomes a GridTensor on a one-rank grid; an operator or
    # preconditioner on plain tensors only still sees them
    s = lift_system(A, b, x0, pc)
    bg, x0g, Mg = s.b, s.x0, s.M
    if s.A is not A:
        apply = s.A.apply
    res = _dcdm(apply, bg, x0g, Mg, stopping, memory, callback)
    res.x = s.restore(res.x)
    res.wall_time = time.perf_counter() - t0
    res.info = {"method": "dcdm", "memory": memory, "reference_norm": stopping.ref_norm, "preconditioner": repr(pc)}
    return res


def _dcdm(apply: Callable[[GridTensor], GridTensor], b: GridTensor, x0: Optional[GridTensor], pc: Any,
          stopping: StoppingCriterion, memory: int, callback: Optional[Callable[[int, float], None]]) -> SolveResult:
    """The iteration on GridTensors (see :func:`dcdm`)."""
    if V.has_nonfinite(b):
        raise ValueError("the right-hand side contains NaN or Inf")
    x = b.zeros_like() if x0 is None else x0.clone()
    r = b.clone() if x0 is None else b - apply(x)
    rnorm = float(r.norm())
    stopping.start(rnorm, float(b.norm()), guess_zero=x0 is None)
    history = [rnorm]
    directions: deque = deque(maxlen=max(memory, 1))
    message, it = "", 0
    if callback is not None:
        callback(0, rnorm)
    reason = stopping.check(0, rnorm)
    with torch.no_grad():
        while reason is None:
            q = pc.apply(r)
            if memory:
                for p, Ap, pAp in directions:
                    q = q - p * (q.dot(Ap) / pAp)
            Aq = apply(q)
            qAq = q.dot(Aq)
            if not bool(torch.isfinite(qAq)):
                reason, message = ConvergedReason.DIVERGED_NANORINF, "the preconditioner or operator produced NaN/Inf"
                break
            if qAq <= 0:
                reason = ConvergedReason.DIVERGED_INDEFINITE_MAT
                message = f"q.Aq = {float(qAq):.3e} <= 0 at iteration {it + 1}: the operator is not positive definite"
                break
            x = x + q * (q.dot(r) / qAq)
            r = b - apply(x)
            it += 1
            rnorm = float(r.norm())
            history.append(rnorm)
            if callback is not None:
                callback(it, rnorm)
            if memory:
                directions.append((q, Aq, qAq))
            reason = stopping.check(it, rnorm)
    return SolveResult(x=x, iterations=it, residual_norms=history, reason=reason, wall_time=0.0, message=message)
