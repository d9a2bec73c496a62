"""A learned multigrid preconditioner: the V-cycle of :class:`~deepkrylov.solvers.multigrid.Multigrid` with
smoothing stencils and coarse-correction weights predicted from the geometry (Lan et al., ICML 2024, in spirit).

At every level a small network (:class:`StencilNet`, one 3x3(x3) convolution, no activation: affine in the
geometry) reads the cell kinds of that level (one-hot FLUID/SOLID/EMPTY) and the fine-grid occupancy fractions
(average-pooled), and gives every cell

- ``steps`` seven-point (five in 2D) smoothing stencils ``S_k``, applied as ``u <- u + D^-1 S_k (f - A u)``, and
- a weight ``c`` on the coarse correction, ``u <- u + c P e_c`` (and ``P^T c`` for the restriction).

The post-smoother applies the transposed stencils in reverse order, so the cycle is a symmetric operator (a valid
PCG preconditioner) and linear in the residual. The same network serves every level and every resolution. The
stencils depend on the geometry only: they are computed once in :meth:`LearnedMultigrid.setup`, after which one
application costs about one V-cycle. With the network's initial weights every stencil is a Jacobi step whose two
damping factors reproduce the classical cycle's Chebyshev smoother exactly, so training starts from the classical
multigrid and can only be measured against it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from deepkrylov.distributed import GridTensor, ProcessGrid
from deepkrylov.mesh import EMPTY, FLUID, SOLID, DiffusionOperator
from deepkrylov.mesh import _kernels

from .multigrid import Multigrid, _Level

__all__ = ["StencilNet", "LearnedMultigrid", "SHIPPED_LEARNED_MODEL", "load_stencil_net", "save_stencil_net"]

SHIPPED_LEARNED_MODEL = Path(__file__).resolve().parent / "models" / "learned_mg3d.pt"
FEATURES = 6  # one-hot kinds of the level (3) + fine-grid fractions of fluid, solid, empty (3)


def chebyshev_dampings(lo: float, hi: float, steps: int) -> list[float]:
    """Jacobi damping factors whose product of steps is the Chebyshev smoother of degree ``steps`` on [lo, hi]."""
    theta, delta = (hi + lo) / 2, (hi - lo) / 2
    roots = [theta - delta * math.cos(math.pi * (2 * k + 1) / (2 * steps)) for k in range(steps)]
    return [1.0 / r for r in roots]


class StencilNet(torch.nn.Module):
    """Geometry features ``(1, 6, *shape)`` -> per-cell stencils ``(1, steps * (2 dim + 1) + 1, *shape)``: one
    ``dim``-D convolution (kernel 3), affine in the features. Channel order per step: centre, then the low and
    high neighbour of each axis; the last channel is the coarse-correction weight."""

    def __init__(self, dim: int = 3, steps: int = 2, lo: float = 0.15, hi: float = 2.0,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, but got {dim}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, but got {steps}")
        self.dim, self.steps, self.lo, self.hi = dim, steps, lo, hi
        self.points = 2 * dim + 1
        conv = torch.nn.Conv3d if dim == 3 else torch.nn.Conv2d
        self.conv = conv(FEATURES, steps * self.points + 1, 3, padding=1, dtype=dtype)  # float64: set-up only
        with torch.no_grad():
            self.conv.weight.zero_()
            bias = torch.zeros(steps * self.points + 1, dtype=torch.float64)
            for k, w in enumerate(chebyshev_dampings(lo, hi, steps)):
                bias[k * self.points] = w
            bias[-1] = 1.0
            self.conv.bias.copy_(bias)

    def config(self) -> dict:
        return {"dim": self.dim, "steps": self.steps, "lo": self.lo, "hi": self.hi}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(features)


def save_stencil_net(net: StencilNet, path: Union[str, Path], **extra: Any) -> None:
    torch.save({"kind": "learned_multigrid", "config": net.config(), "state_dict": net.state_dict(), **extra}, path)


def load_stencil_net(path: Optional[Union[str, Path]] = None) -> StencilNet:
    """Load stencil-network weights (default: the shipped ones), with a clear error for a missing, corrupt or
    foreign file."""
    path = Path(path) if path is not None else SHIPPED_LEARNED_MODEL
    if not path.exists():
        raise FileNotFoundError(f"learned multigrid weights not found: {path}"
                                + (" (train them with `deepkrylov train learned-mg`)" if path == SHIPPED_LEARNED_MODEL
                                   else ""))
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling/zip failure means a corrupt file
        raise ValueError(f"cannot read learned multigrid weights {path}: corrupt or not a torch file ({err})") from err
    if not isinstance(blob, dict) or blob.get("kind") != "learned_multigrid" or "state_dict" not in blob:
        raise ValueError(f"{path} is not a learned multigrid weights file (expected kind 'learned_multigrid')")
    try:
        net = StencilNet(**blob["config"])
        net.load_state_dict(blob["state_dict"])
    except (TypeError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path} does not fit a StencilNet with config {blob['config']}: {err}") from err
    return net.double().eval()


# ---- geometry features and stencil fields ------------------------------------------------------------------------
def level_features(masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per level ``(1, 6, *shape)``: the level's one-hot cell kinds and the finest grid's kind fractions."""
    out = []
    frac = None
    for i, m in enumerate(masks):
        onehot = torch.stack([(m == k) for k in (FLUID, SOLID, EMPTY)]).to(torch.float64)[None]
        if i == 0:
            frac = onehot
        else:
            pool = F.avg_pool3d if m.dim() == 3 else F.avg_pool2d
            frac = pool(frac, 2)
        out.append(torch.cat((onehot, frac), dim=1))
    return out


def _shift(w: torch.Tensor, axis: int, step: int, periodic: bool) -> torch.Tensor:
    """``out[j] = w[j - step e_axis]`` on the last ``dim`` axes, zero past a non-periodic face."""
    if periodic:
        return torch.roll(w, step, dims=axis)
    n = w.shape[axis]
    out = torch.zeros_like(w)
    if step > 0:
        out.narrow(axis, step, n - step).copy_(w.narrow(axis, 0, n - step))
    else:
        out.narrow(axis, 0, n + step).copy_(w.narrow(axis, -step, n + step))
    return out


def stencil_fields(net: StencilNet, A: DiffusionOperator, features: torch.Tensor) -> dict:
    """The level's smoothing stencils (already times ``D^-1``), their transposes, and the correction weight, as
    whole-grid tensors ``(points, *shape)``; differentiable in the network's weights."""
    nd = A.grid.ndim
    raw = net(features.to(next(net.parameters()).dtype))[0].to(torch.float64)
    fluid = A.fluid.to(torch.float64)
    dinv = fluid / A.diagonal().to(torch.float64)
    # a link carries weight only between fluid cells inside the domain (periodic axes wrap)
    links = []
    for a in range(nd):
        p = A.bc.periodic(a)
        links += [fluid * _shift(fluid, a, 1, p), fluid * _shift(fluid, a, -1, p)]
    steps, transposes = [], []
    P = net.points
    for k in range(net.steps):
        w = raw[k * P:(k + 1) * P]
        centre = w[0] * dinv
        nbrs = [w[1 + j] * dinv * links[j] for j in range(2 * nd)]
        steps.append(torch.stack([centre] + nbrs))
        tr = [centre]
        for a in range(nd):  # S^T: the low neighbour's weight is the high weight of the cell below, and so on
            p = A.bc.periodic(a)
            tr += [_shift(nbrs[2 * a + 1], a, 1, p), _shift(nbrs[2 * a], a, -1, p)]
        transposes.append(torch.stack(tr))
    return {"steps": steps, "transposes": transposes, "weight": raw[-1] * fluid}


class LearnedMultigrid(Multigrid):
    """The learned V-cycle (module docstring) as a preconditioner ``z = M r``.

    Args:
        A: the operator now (optional; the solver calls :meth:`setup` otherwise).
        net: a :class:`StencilNet`, or a weights file; default: the shipped weights.
        levels, coarsest, null_space, dtype: as for :class:`~deepkrylov.solvers.multigrid.Multigrid`.

    The network's dimension must match the operator's. ``setup_time`` includes the stencil prediction.
    """

    def __init__(self, A: Optional[DiffusionOperator] = None, net: Optional[Union[StencilNet, str, Path]] = None, *,
                 levels: Optional[int] = None, coarsest: int = 4, null_space: bool = False,
                 dtype: Optional[torch.dtype] = None) -> None:
        self.net = net if isinstance(net, StencilNet) else load_stencil_net(net)
        super().__init__(None, levels=levels, smoother="chebyshev", degree=self.net.steps, coarsest=coarsest,
                         null_space=null_space, dtype=dtype)
        if A is not None:
            self.setup(A)

    def setup(self, A: Any, grid: Optional[ProcessGrid] = None) -> "LearnedMultigrid":
        if isinstance(A, DiffusionOperator) and A.grid.ndim != self.net.dim:
            raise ValueError(f"the learned multigrid weights are for {self.net.dim}D grids, but the operator is "
                             f"{A.grid.ndim}D ({A.grid.shape})")
        t0 = time.perf_counter()
        self.__dict__.pop("_fields", None)
        super().setup(A, grid)
        with torch.no_grad():
            feats = level_features([op.mask for op in self._ops])
            self._fields = [stencil_fields(self.net, op, f) for op, f in zip(self._ops, feats)]
        self._slice_fields()
        self.setup_time = time.perf_counter() - t0
        return self

    is_positive_definite = None  # symmetric by construction; positive for trained weights (tested), not proven

    def _build(self, grid: Optional[ProcessGrid]) -> None:
        super()._build(grid)
        if hasattr(self, "_fields"):
            self._slice_fields()

    def refresh(self) -> None:
        """Recompute the stencils from the network with autograd on (training: one call per step)."""
        feats = self.__dict__.setdefault("_features", level_features([op.mask for op in self._ops]))
        self._fields = [stencil_fields(self.net, op, f) for op, f in zip(self._ops, feats)]
        self._slice_fields()

    def _coarse_solve_whole(self, f: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and f.requires_grad:
            return _CoarseSolve.apply(f, super()._coarse_solve_whole)
        return super()._coarse_solve_whole(f)

    def _slice_fields(self) -> None:
        for lev, fields in zip(self._levels, self._fields):
            sl = (slice(None),) + lev.sl
            lev.stencils = [w[sl].contiguous() for w in fields["steps"]]
            lev.transposes = [w[sl].contiguous() for w in fields["transposes"]]
            lev.weight = fields["weight"][lev.sl].contiguous()
            lev._cache = {k: v for k, v in lev._cache.items() if k[0] != "weight"}
            lev.stencil_pad = _StencilPad(lev)

    # the learned pieces in place of the classical smoother, and the correction weight
    def _functional(self, f: torch.Tensor) -> bool:
        return self.net.training and torch.is_grad_enabled() and any(p.requires_grad for p in self.net.parameters())

    def _correction_weight(self, lev: _Level, f: torch.Tensor) -> Optional[torch.Tensor]:
        return lev.typed("weight", f)

    def _pre_smooth(self, lev: _Level, f: torch.Tensor, u: Optional[torch.Tensor], r: Optional[torch.Tensor],
                    d: Optional[torch.Tensor]) -> torch.Tensor:
        for k, w in enumerate(lev.stencils):
            if k == 0:
                u = lev.stencil_pad.apply(w, f, u)
            else:
                r = lev.residual(f, u, r)
                d = lev.stencil_pad.apply(w, r, d)
                u = u + d if d.requires_grad else u.add_(d)
        return u

    def _post_smooth(self, lev: _Level, f: torch.Tensor, u: torch.Tensor, r: Optional[torch.Tensor],
                     d: Optional[torch.Tensor]) -> torch.Tensor:
        functional = r is None or r.requires_grad
        for w in reversed(lev.transposes):
            r = lev.residual(f, u, None if functional else r)
            d = lev.stencil_pad.apply(w, r, None if functional else d)
            u = u + d if functional else u.add_(d)
        return u

    def __repr__(self) -> str:
        shapes = " -> ".join("x".join(map(str, s)) for s in getattr(self, "shapes", []))
        return f"LearnedMultigrid({shapes or 'not set up'}, {self.net.steps} learned stencils per side)"


class _CoarseSolve(torch.autograd.Function):
    """The coarsest solve in a differentiable cycle: the solve is symmetric, so its backward is the same solve."""

    @staticmethod
    def forward(ctx, f: torch.Tensor, solve: Any) -> torch.Tensor:  # type: ignore[override]
        ctx.solve = solve
        return solve(f.detach())

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return ctx.solve(g), None


class _StencilPad:
    """Apply a per-cell stencil ``(points, *block)`` to a field: ``y = w_0 x + sum_j w_j x[neighbour j]``."""

    def __init__(self, lev: _Level) -> None:
        self.lev = lev
        self.nd = lev.nd
        # the compiled seven-point pass (y = d x - sum w x_nb) serves whole 3D blocks without periodic axes
        self.compiled = lev.nd == 3 and lev.grid is None and not any(lev.periodic) and \
            _kernels.stencil_library() is not None
        self._coefs: dict = {}

    def _compiled(self, w: torch.Tensor, x: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
        key = (id(w), x.dtype)
        hit = self._coefs.get(key)
        if hit is None or hit[0] is not w:
            coefs = [w[0].to(x.dtype).contiguous()] + [(-w[j]).to(x.dtype).contiguous() for j in range(1, 7)]
            hit = self._coefs[key] = (w, coefs, torch.zeros(x.shape[-1], dtype=x.dtype))
        out = torch.empty_like(x) if out is None else out
        x4 = x.reshape((-1,) + tuple(x.shape[-3:]))
        _kernels.stencil7(x4, out.view(x4.shape), [None] * 6, None, hit[1], hit[2])
        return out

    def apply(self, w: torch.Tensor, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``w`` applied to ``x``, into ``out`` (None: a new, differentiable tensor)."""
        nd = self.nd
        if self.compiled and not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)) \
                and x.dtype in (torch.float32, torch.float64) and x.is_contiguous():
            return self._compiled(w, x, out)
        lev = self.lev
        if lev.grid is not None:
            p = GridTensor(x, lev.grid).halo(1, "circular" if any(lev.periodic) else "zeros")
        else:
            p = F.pad(x, (1, 1) * nd, mode="circular" if any(lev.periodic) else "constant")
        w = w.to(dtype=x.dtype)
        lead = p.dim() - nd
        inner = [slice(1, -1)] * nd
        y = torch.mul(x, w[0], out=out)
        for a in range(nd):
            for j, start in enumerate((0, 2)):
                idx = list(inner)
                idx[a] = slice(start, start + x.shape[lead + a])
                y = y.addcmul_(w[1 + 2 * a + j], p[(Ellipsis,) + tuple(idx)]) if out is not None else \
                    y + w[1 + 2 * a + j] * p[(Ellipsis,) + tuple(idx)]
        return y
