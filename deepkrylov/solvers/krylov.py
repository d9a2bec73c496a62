"""Krylov solvers: :func:`cg` (with an optional SPD preconditioner, i.e. PCG), :func:`fcg` (flexible CG) and
:func:`gmres` (restarted, right-preconditioned).

One signature for all::

    solver(A, b, x0=None, *, M=None, rtol=1e-5, atol=1e-50, max_it=10000, dtol=1e5, ...) -> SolveResult

``A`` is an operator (``apply``, ``shape``; see :class:`~deepkrylov.solvers.LinearOperator`), ``b`` a tensor
``(batch, channels, *spatial)`` or ``(n,)``, or a :class:`~deepkrylov.distributed.GridTensor` (every reduction is
then global over the ranks). The stopping test is PETSc's (:mod:`deepkrylov.solvers.stopping`), and the
iteration count is the number of solution updates, as in PETSc, so counts compare one to one with ``KSPCG``.
A batch (``batch > 1``) is solved as one block-diagonal system: the reductions run over the whole batch.

Work per CG iteration: one operator and one preconditioner application, two reductions (one all-reduce each on
several ranks; ``fused=`` merges the update's reductions into one), and in-place vector updates; no host
round trips besides the scalars the stopping test needs, so CUDA tensors stay on the device.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid, as_grid_tensor

from . import _vec as V
from ._lift import System, lift_system, spatial_of
from .preconditioners import Preconditioner, as_preconditioner
from .result import ConvergedReason, SolveResult
from .stopping import NORM_TYPES, StoppingCriterion

__all__ = ["cg", "pcg", "fcg", "gmres", "check_system", "KrylovSolver"]

Callback = Callable[[int, float], None]


def _is_raw_matrix(A: Any) -> bool:
    return isinstance(A, (torch.Tensor, np.ndarray)) or type(A).__module__.startswith("scipy.sparse")


def check_system(A: Any, b: Any, x0: Any = None) -> None:
    """Validate an operator / right-hand side / initial guess triple; raise TypeError/ValueError naming the fix."""
    if _is_raw_matrix(A):
        raise TypeError(
            f"A must be a linear operator, but got a raw {type(A).__name__}; wrap it with "
            "deepkrylov.solvers.MatrixOperator(A) (dense torch/numpy or scipy.sparse)"
        )
    if not (hasattr(A, "apply") and callable(A.apply)):
        raise TypeError(
            f"A must be a linear operator with apply(x) and shape, but got {type(A).__name__}; wrap a function "
            "with deepkrylov.solvers.FunctionOperator(fn, shape)"
        )
    if not isinstance(b, (torch.Tensor, GridTensor)):
        raise TypeError(f"b must be a torch.Tensor or GridTensor, but got {type(b).__name__}")
    if x0 is not None and type(x0) is not type(b):
        raise TypeError(f"x0 must be the same kind as b ({type(b).__name__}), but got {type(x0).__name__}")
    spatial = spatial_of(A, b)
    bg = as_grid_tensor(b, spatial)[0]
    shape = getattr(A, "shape", None)
    if shape is not None:
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"A must be square, but has shape {tuple(shape)}")
        n = math.prod(bg.shape[1:])
        if n != shape[0]:
            raise ValueError(f"A has shape {tuple(shape)} but b ({V.describe(b)}) has {n} unknowns per sample")
    a_grid = getattr(A, "grid", None)
    if isinstance(a_grid, ProcessGrid):
        if bg is b and b.grid != a_grid:
            raise ValueError(f"b lives on {b.grid!r} but the operator on {a_grid!r}; create b on the operator's grid")
    elif a_grid is not None and hasattr(a_grid, "shape") and hasattr(a_grid, "ndim"):  # a mesh StructuredGrid
        got = bg.grid.global_shape if bg is b or spatial is not None else tuple(b.shape[-a_grid.ndim:])
        if tuple(got) != tuple(a_grid.shape):
            raise ValueError(
                f"b lives on a grid of shape {tuple(got)} but the operator on {a_grid!r}; create b on the operator's grid"
            )
    if x0 is not None and (tuple(x0.shape) != tuple(b.shape) or as_grid_tensor(x0, spatial)[0].grid != bg.grid):
        raise ValueError(f"x0 ({V.describe(x0)}) must match b ({V.describe(b)})")


def _start(A: Any, b: Any, x0: Any) -> tuple[Any, Any, bool]:
    """Initial x and r = b - A x (no operator application for a zero guess)."""
    if x0 is None:
        return V.zeros_like(b), V.clone(b), True
    x = V.clone(x0)
    return x, b - A.apply(x), False


def _setup_pc(M: Any, A: Any) -> Preconditioner:
    pc = as_preconditioner(M)
    if not pc.is_setup:
        pc.setup(A)
    return pc


def _nonfinite_message(b: Any) -> str:
    if V.has_nonfinite(b):
        return "the right-hand side b contains NaN or Inf"
    return "the initial residual contains NaN or Inf (check x0 and the operator)"


def _restored(s: System, res: SolveResult) -> SolveResult:
    """The result with its solution in the caller's layout (a plain tensor for a plain ``b``)."""
    res.x = s.restore(res.x)
    return res


def _result(x: Any, it: int, hist: list, reason: ConvergedReason, t0: float, msg: str = "", **info: Any) -> SolveResult:
    return SolveResult(x=x, iterations=it, residual_norms=hist, reason=reason, wall_time=time.perf_counter() - t0,
                       message=msg, info=info)


def cg(
    A: Any, b: Any, x0: Any = None, *, M: Any = None, rtol: float = 1e-5, atol: float = 1e-50,
    max_it: int = 10000, dtol: float = 1e5, norm_type: str = "unpreconditioned", reference: str = "rhs",
    callback: Optional[Callback] = None, fused: Union[bool, str] = False,
) -> SolveResult:
    """(Preconditioned) conjugate gradients for a symmetric positive definite ``A`` (and SPD ``M``).

    The loop is PETSc's ``KSPCG``: ``z = M r``, ``p = z + beta p``, ``alpha = (r,z)/(p,Ap)``. The monitored norm is
    ``||r||`` (``unpreconditioned``, default), ``||M r||`` (``preconditioned``) or ``sqrt(r.Mr)`` (``natural``).
    An operator known to be non-symmetric or not positive definite is refused before any work; ``p.Ap <= 0``
    during the iteration ends it with ``DIVERGED_INDEFINITE_MAT`` and ``r.Mr < 0`` with ``DIVERGED_INDEFINITE_PC``.

    Args:
        A: SPD linear operator. b: right-hand side. x0: initial guess (default zero).
        M: preconditioner (a Preconditioner, operator or callable; None = identity).
        rtol, atol, max_it, dtol: stopping test (see :mod:`deepkrylov.solvers.stopping`).
        norm_type: one of ``unpreconditioned | preconditioned | natural``.
        reference: ``rhs`` (PETSc default), ``initial`` (``-ksp_converged_use_initial_residual_norm``) or ``min``.
        callback: called as ``callback(it, rnorm)`` after every iteration (and at 0).
        fused: with ``M`` None or :class:`Jacobi`, do ``x += a p; r -= a Ap; z = D^-1 r`` and the three
            reductions ``(r,z), (r,r), (z,z)`` in one pass and one all-reduce: ``"eager"`` (plain torch ops, one
            all-reduce), ``True``/``"compile"`` (one ``torch.compile``-generated loop; compiles once per shape and
            dtype, seconds). Same iterates up to rounding.
    """
    stop = StoppingCriterion(rtol=rtol, atol=atol, dtol=dtol, max_it=max_it, reference=reference)
    if fused not in (False, True, "eager", "compile"):
        raise ValueError(f"fused must be False, True, 'eager' or 'compile', but got {fused!r}")
    if norm_type not in NORM_TYPES:
        raise ValueError(f"norm_type must be one of {NORM_TYPES}, but got {norm_type!r}")
    check_system(A, b, x0)
    if getattr(A, "is_symmetric", None) is False:
        raise ValueError(f"cg needs a symmetric operator, but {type(A).__name__} reports is_symmetric=False; use gmres")
    if getattr(A, "is_positive_definite", None) is False:
        raise ValueError(
            f"cg needs a positive definite operator, but {type(A).__name__} reports is_positive_definite=False; use gmres"
        )
    pc = _setup_pc(M, A)
    if pc.is_symmetric is False:
        raise ValueError("cg needs a symmetric preconditioner, but M reports is_symmetric=False; use fcg or gmres")
    s = lift_system(A, b, x0, pc)
    return _restored(s, _cg(s.A, s.b, s.x0, s.M, M is None, stop, norm_type, callback, fused))


def _cg(A: Any, b: GridTensor, x0: Optional[GridTensor], pc: Preconditioner, plain: bool, stop: StoppingCriterion,
        norm_type: str, callback: Optional[Callback], fused: Union[bool, str]) -> SolveResult:
    t0 = time.perf_counter()
    with torch.no_grad():
        x, r, guess_zero = _start(A, b, x0)
        z = r if plain else pc.apply_into(r, V.zeros_like(r))
        rz = V.dot(r, z)
        rz_f = float(rz)

        def measure(r_: Any, z_: Any, rz_f_: float) -> float:
            if norm_type == "unpreconditioned":
                return math.sqrt(rz_f_) if plain and rz_f_ >= 0 else float(V.norm(r_))
            if norm_type == "preconditioned":
                return math.sqrt(rz_f_) if plain and rz_f_ >= 0 else float(V.norm(z_))
            return math.sqrt(rz_f_) if rz_f_ >= 0 else float("nan")

        rnorm = measure(r, z, rz_f)
        b_norm = None
        if not guess_zero and stop.reference != "initial":
            b_norm = float(V.norm(b)) if norm_type == "unpreconditioned" or plain else (
                float(V.norm(pc.apply(b))) if norm_type == "preconditioned" else math.sqrt(max(float(V.dot(b, pc.apply(b))), 0.0))
            )
        stop.start(rnorm, b_norm, guess_zero)
        hist = [rnorm]
        if callback is not None:
            callback(0, rnorm)
        if rz_f < 0 and not plain:
            return _result(x, 0, hist, ConvergedReason.DIVERGED_INDEFINITE_PC, t0,
                           f"r.Mr = {rz_f:.3e} < 0: the preconditioner is not positive definite; use fcg or gmres")
        reason = stop.check(0, rnorm)
        if reason == ConvergedReason.DIVERGED_NANORINF:
            return _result(x, 0, hist, reason, t0, _nonfinite_message(b))
        p = V.clone(z)
        it = 0
        step = _fused_step(pc, plain, x, r, z, fused) if fused else None
        Ap = None
        while reason is None:
            Ap = V.apply_into(A, p, Ap)
            pAp = float(V.dot(p, Ap))
            if not math.isfinite(pAp):
                return _result(x, it, hist, ConvergedReason.DIVERGED_NANORINF, t0,
                               f"p.Ap is {pAp} at iteration {it + 1}: the operator produced NaN or Inf")
            if pAp <= 0:
                return _result(x, it, hist, ConvergedReason.DIVERGED_INDEFINITE_MAT, t0,
                               f"p.Ap = {pAp:.3e} <= 0 at iteration {it + 1}: the operator is not positive definite; "
                               "use gmres (or fix the sign or boundary conditions)")
            alpha = rz_f / pAp
            if step is not None:
                rz_new, rr, zz = step(p, Ap, alpha)
                rnorm = math.sqrt(rr) if norm_type == "unpreconditioned" else (
                    math.sqrt(zz) if norm_type == "preconditioned" else (math.sqrt(rz_new) if rz_new >= 0 else float("nan")))
                it += 1
            else:
                V.axpy_(x, alpha, p)
                V.axpy_(r, -alpha, Ap)
                z = r if plain else pc.apply_into(r, z)
                rz_new = float(V.dot(r, z))
                it += 1
                rnorm = measure(r, z, rz_new)
            hist.append(rnorm)
            if callback is not None:
                callback(it, rnorm)
            reason = stop.check(it, rnorm)
            if reason is not None:
                break
            if rz_new < 0:
                return _result(x, it, hist, ConvergedReason.DIVERGED_INDEFINITE_PC, t0,
                               f"r.Mr = {rz_new:.3e} < 0 at iteration {it}: the preconditioner is not positive "
                               "definite; use fcg or gmres")
            beta = rz_new / rz_f
            rz_f = rz_new
            V.xpay_(p, beta, z)
    msg = "the operator or preconditioner produced NaN or Inf" if reason == ConvergedReason.DIVERGED_NANORINF else ""
    return _result(x, it, hist, reason, t0, msg, norm_type=norm_type, reference_norm=stop.ref_norm)


def _update_eager(x, r, p, Ap, dinv, z, alpha: float) -> torch.Tensor:  # type: ignore[no-untyped-def]
    x.add_(p, alpha=alpha)
    r.sub_(Ap, alpha=alpha)
    if dinv is None:
        rr = torch.vdot(r.reshape(-1), r.reshape(-1))
        return torch.stack([rr, rr, rr])
    torch.mul(r, dinv, out=z)
    fr, fz = r.reshape(-1), z.reshape(-1)
    return torch.stack([torch.vdot(fr, fz), torch.vdot(fr, fr), torch.vdot(fz, fz)])


def _update_expr(x, r, p, Ap, dinv, z, alpha: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    # alpha is a 0-dim tensor so that a new value does not trigger a recompilation
    x.add_(p * alpha)
    r.sub_(Ap * alpha)
    if dinv is None:
        rr = (r * r).sum()
        return torch.stack([rr, rr, rr])
    torch.mul(r, dinv, out=z)
    return torch.stack([(r * z).sum(), (r * r).sum(), (z * z).sum()])


_COMPILED: dict = {}


def _compiled_update() -> Callable:
    if "update" not in _COMPILED:
        _COMPILED["update"] = torch.compile(_update_expr, dynamic=False)
    return _COMPILED["update"]


def _fused_step(pc: Preconditioner, plain: bool, x: Any, r: Any, z: Any, mode: Union[bool, str]) -> Callable:
    """The fused CG update for M = None or Jacobi: returns ``step(p, Ap, alpha) -> (r.z, r.r, z.z)``."""
    from .preconditioners import Jacobi

    if not plain and not isinstance(pc, Jacobi):
        raise ValueError(f"fused CG supports M=None or Jacobi, but got {type(pc).__name__}; use fused=False")
    grid = x.grid
    dinv = None if plain else pc._inv_for(r).to(dtype=r.local.dtype).expand_as(r.local).contiguous()
    kernel = _update_eager if mode == "eager" else _compiled_update()
    xl, rl, zl = x.local, r.local, z.local

    compiled = mode != "eager"

    def step(p: Any, Ap: Any, alpha: float) -> tuple[float, float, float]:
        a_ = torch.tensor(alpha, dtype=xl.dtype, device=xl.device) if compiled else alpha
        parts = kernel(xl, rl, p.local, Ap.local, dinv, zl, a_)
        if grid.size > 1:
            parts = parts.reshape(3).clone()
            grid.comm.allreduce_(parts)
        a, b_, c = parts.tolist()
        return a, b_, c

    return step


def pcg(A: Any, b: Any, x0: Any = None, *, M: Any = None, **kwargs: Any) -> SolveResult:
    """Preconditioned CG: :func:`cg` with ``M`` (Jacobi on ``A`` when ``M`` is None)."""
    if M is None:
        from .preconditioners import Jacobi

        M = Jacobi(A)
    return cg(A, b, x0, M=M, **kwargs)


def fcg(
    A: Any, b: Any, x0: Any = None, *, M: Any = None, rtol: float = 1e-5, atol: float = 1e-50,
    max_it: int = 10000, dtol: float = 1e5, mmax: int = 30, truncation: str = "notay",
    reference: str = "rhs", callback: Optional[Callback] = None,
) -> SolveResult:
    """Flexible CG (Notay 2000; PETSc ``KSPFCG``) for SPD ``A`` and a preconditioner that may change every step.

    Each new direction ``p = M r`` is A-orthogonalised against stored previous directions: the last ``mmax``
    (``truncation="standard"``) or, like PETSc's default ``notay``, the last ``max(1, i mod (mmax+1))``.
    The monitored norm is ``||r||``.
    """
    stop = StoppingCriterion(rtol=rtol, atol=atol, dtol=dtol, max_it=max_it, reference=reference)
    if truncation not in ("standard", "notay"):
        raise ValueError(f"truncation must be 'standard' or 'notay', but got {truncation!r}")
    if not isinstance(mmax, int) or mmax < 1:
        raise ValueError(f"mmax must be a positive int, but got {mmax!r}")
    check_system(A, b, x0)
    if getattr(A, "is_symmetric", None) is False:
        raise ValueError(f"fcg needs a symmetric operator, but {type(A).__name__} reports is_symmetric=False; use gmres")
    pc = _setup_pc(M, A)
    s = lift_system(A, b, x0, pc)
    return _restored(s, _fcg(s.A, s.b, s.x0, s.M, stop, mmax, truncation, callback))


def _fcg(A: Any, b: GridTensor, x0: Optional[GridTensor], pc: Preconditioner, stop: StoppingCriterion, mmax: int,
         truncation: str, callback: Optional[Callback]) -> SolveResult:
    t0 = time.perf_counter()
    with torch.no_grad():
        x, r, guess_zero = _start(A, b, x0)
        rnorm = float(V.norm(r))
        stop.start(rnorm, None if guess_zero else float(V.norm(b)), guess_zero)
        hist = [rnorm]
        if callback is not None:
            callback(0, rnorm)
        reason = stop.check(0, rnorm)
        if reason == ConvergedReason.DIVERGED_NANORINF:
            return _result(x, 0, hist, reason, t0, _nonfinite_message(b))
        store: deque = deque(maxlen=mmax)
        it = 0
        while reason is None:
            p = V.clone(pc.apply(r))
            keep = len(store) if truncation == "standard" else max(1, it % (mmax + 1))
            for pj, Apj, pApj in list(store)[-keep:] if keep else []:
                V.axpy_(p, -float(V.dot(p, Apj)) / pApj, pj)
            Ap = A.apply(p)
            pAp = float(V.dot(p, Ap))
            if not math.isfinite(pAp):
                return _result(x, it, hist, ConvergedReason.DIVERGED_NANORINF, t0,
                               f"p.Ap is {pAp} at iteration {it + 1}: NaN or Inf from the operator or preconditioner")
            if pAp <= 0:
                return _result(x, it, hist, ConvergedReason.DIVERGED_INDEFINITE_MAT, t0,
                               f"p.Ap = {pAp:.3e} <= 0 at iteration {it + 1}: the operator is not positive definite "
                               "(or the preconditioner returned zero); use gmres")
            alpha = float(V.dot(p, r)) / pAp
            V.axpy_(x, alpha, p)
            V.axpy_(r, -alpha, Ap)
            store.append((p, Ap, pAp))
            it += 1
            rnorm = float(V.norm(r))
            hist.append(rnorm)
            if callback is not None:
                callback(it, rnorm)
            reason = stop.check(it, rnorm)
    return _result(x, it, hist, reason, t0, norm_type="unpreconditioned", reference_norm=stop.ref_norm)


def gmres(
    A: Any, b: Any, x0: Any = None, *, M: Any = None, rtol: float = 1e-5, atol: float = 1e-50,
    max_it: int = 10000, dtol: float = 1e5, restart: int = 30, reference: str = "rhs",
    callback: Optional[Callback] = None,
) -> SolveResult:
    """Restarted GMRES(m) with right preconditioning (``A M y = r``), modified Gram-Schmidt and Givens rotations.

    Right preconditioning keeps the monitored norm the true ``||b - A x||`` (PETSc: ``-ksp_pc_side right``), and
    ``M`` may even change between steps. Works for non-symmetric and indefinite operators.
    """
    stop = StoppingCriterion(rtol=rtol, atol=atol, dtol=dtol, max_it=max_it, reference=reference)
    if not isinstance(restart, int) or restart < 1:
        raise ValueError(f"restart must be a positive int, but got {restart!r}")
    check_system(A, b, x0)
    pc = _setup_pc(M, A)
    s = lift_system(A, b, x0, pc)
    return _restored(s, _gmres(s.A, s.b, s.x0, s.M, M is None, stop, restart, callback))


def _gmres(A: Any, b: GridTensor, x0: Optional[GridTensor], pc: Preconditioner, plain: bool,
           stop: StoppingCriterion, restart: int, callback: Optional[Callback]) -> SolveResult:
    t0 = time.perf_counter()
    with torch.no_grad():
        x, r, guess_zero = _start(A, b, x0)
        beta = float(V.norm(r))
        stop.start(beta, None if guess_zero else float(V.norm(b)), guess_zero)
        hist = [beta]
        if callback is not None:
            callback(0, beta)
        reason = stop.check(0, beta)
        if reason == ConvergedReason.DIVERGED_NANORINF:
            return _result(x, 0, hist, reason, t0, _nonfinite_message(b))
        it = 0
        msg = ""
        while reason is None:
            m = restart
            H = np.zeros((m + 1, m))
            cs, sn = np.zeros(m), np.zeros(m)
            g = np.zeros(m + 1)
            g[0] = beta
            Q = [r * (1.0 / beta)]
            Z: list = []
            k = 0
            while k < m:
                zk = Q[k] if plain else pc.apply(Q[k])
                if not plain:
                    Z.append(zk)
                w = A.apply(zk)
                for j in range(k + 1):
                    H[j, k] = float(V.dot(w, Q[j]))
                    V.axpy_(w, -H[j, k], Q[j])
                hnext = float(V.norm(w))
                H[k + 1, k] = hnext
                for j in range(k):
                    t = cs[j] * H[j, k] + sn[j] * H[j + 1, k]
                    H[j + 1, k] = -sn[j] * H[j, k] + cs[j] * H[j + 1, k]
                    H[j, k] = t
                den = math.hypot(H[k, k], H[k + 1, k])
                if not math.isfinite(den):
                    reason, msg = ConvergedReason.DIVERGED_NANORINF, "the operator or preconditioner produced NaN or Inf"
                    break
                if den == 0.0:
                    reason, msg = ConvergedReason.DIVERGED_BREAKDOWN, f"GMRES breakdown at iteration {it + 1}"
                    break
                cs[k], sn[k] = H[k, k] / den, H[k + 1, k] / den
                H[k, k], H[k + 1, k] = den, 0.0
                g[k + 1] = -sn[k] * g[k]
                g[k] = cs[k] * g[k]
                k += 1
                it += 1
                rnorm = abs(g[k])
                hist.append(rnorm)
                if callback is not None:
                    callback(it, rnorm)
                reason = stop.check(it, rnorm)
                if reason is not None or hnext <= 1e-14 * beta:  # converged, or happy breakdown (exact solution)
                    break
                Q.append(w.mul_(1.0 / hnext))
            # solve the triangular system and update x
            if k > 0:
                y = np.linalg.solve(np.triu(H[:k, :k]), g[:k])
                basis = Q if plain else Z
                for j in range(k):
                    V.axpy_(x, float(y[j]), basis[j])
            if reason is None:  # restart from the true residual
                r = b - A.apply(x)
                beta = float(V.norm(r))
                hist[-1] = beta
                reason = stop.check(it, beta)
    return _result(x, it, hist, reason, t0, msg, norm_type="unpreconditioned", reference_norm=stop.ref_norm)


_METHODS = {"cg": cg, "pcg": pcg, "fcg": fcg, "gmres": gmres}


class KrylovSolver:
    """Set up once, solve many times (lineax/PETSc style).

    Tolerances and options are validated when the solver is constructed; :meth:`setup` checks the operator (and
    CG's structural requirements) and prepares the preconditioner once; :meth:`solve` runs on a right-hand side.

    Example::

        solver = KrylovSolver("cg", M=Jacobi(), rtol=1e-8).setup(A)
        for b in rhs_list:
            res = solver.solve(b)
    """

    def __init__(self, method: str = "cg", *, M: Any = None, rtol: float = 1e-5, atol: float = 1e-50,
                 max_it: int = 10000, dtol: float = 1e5, **options: Any) -> None:
        if method not in _METHODS:
            raise ValueError(f"method must be one of {tuple(_METHODS)}, but got {method!r}")
        StoppingCriterion(rtol=rtol, atol=atol, dtol=dtol, max_it=max_it, reference=options.get("reference", "rhs"))
        if "norm_type" in options and options["norm_type"] not in NORM_TYPES:
            raise ValueError(f"norm_type must be one of {NORM_TYPES}, but got {options['norm_type']!r}")
        self.method = method
        self.tolerances = dict(rtol=rtol, atol=atol, max_it=max_it, dtol=dtol)
        self.options = options
        self._M = M
        self._pc: Optional[Preconditioner] = None
        self.A: Any = None

    def setup(self, A: Any) -> "KrylovSolver":
        """Validate ``A`` and set the preconditioner up for it. Returns self."""
        if _is_raw_matrix(A) or not (hasattr(A, "apply") and callable(A.apply)):
            check_system(A, torch.zeros(1))  # raises the informative TypeError
        if self.method in ("cg", "pcg", "fcg") and getattr(A, "is_symmetric", None) is False:
            raise ValueError(f"{self.method} needs a symmetric operator, but {type(A).__name__} reports "
                             "is_symmetric=False; use gmres")
        self.A = A
        M = self._M
        if M is None and self.method == "pcg":
            from .preconditioners import Jacobi

            M = Jacobi()
        self._pc = None if M is None else _setup_pc(M, A)
        return self

    def solve(self, b: Any, x0: Any = None, *, raise_on_failure: bool = False) -> SolveResult:
        """Solve ``A x = b``; with ``raise_on_failure`` a diverged result raises :class:`SolverError`."""
        if self.A is None:
            raise RuntimeError("KrylovSolver.solve before setup(A)")
        fn = cg if self.method == "pcg" else _METHODS[self.method]
        res = fn(self.A, b, x0, M=self._pc, **self.tolerances, **self.options)
        return res.raise_if_failed() if raise_on_failure else res

    def __repr__(self) -> str:
        return f"KrylovSolver({self.method!r}, M={self._pc!r}, {self.tolerances})"
