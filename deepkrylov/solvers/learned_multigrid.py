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

For an operator built on a partition the geometry features, the network's convolution (after a halo exchange of
the features) and the stencils are computed on each rank's block of the distributed levels; only the levels that
run whole are gathered.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from deepkrylov.distributed import GridTensor, ProcessGrid, as_grid_tensor
from deepkrylov.mesh import EMPTY, FLUID, SOLID, DiffusionOperator
from deepkrylov.mesh import _kernels

from .multigrid import Multigrid, _Level, _own_grid, _pad_block

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

    def forward(self, features: torch.Tensor, dtype: Optional[torch.dtype] = None, padded: bool = False,
                ) -> torch.Tensor:
        """The stencil channels, in ``dtype`` (default: the network's). ``padded``: the features already carry one
        ghost cell per side (a block's halo; zeros outside the domain), so the convolution adds no padding."""
        dtype = dtype or self.conv.weight.dtype
        conv = F.conv3d if self.dim == 3 else F.conv2d
        pad = 0 if padded else 1
        if self.training or features.device.type != "cpu":
            w = self.conv.weight
            return conv(features.to(w.dtype), w, self.conv.bias, padding=pad).to(dtype)
        # inference (set-up) on CPU: torch's float64 conv takes a slow path (7 s at 128^3 here, 0.24 s in float32);
        # the weights' part in float32, the bias (the classical smoother's dampings) added in float64 so that the
        # initial weights still reproduce the classical cycle to rounding
        out = conv(features.float(), self.conv.weight.float(), None, padding=pad).to(dtype)
        return out.add_(self.conv.bias.to(dtype).view((1, -1) + (1,) * self.dim))


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
        onehot = _onehot(m)
        frac = onehot if i == 0 else _pool(frac)
        out.append(torch.cat((onehot, frac), dim=1))
    return out


def _onehot(m: torch.Tensor) -> torch.Tensor:
    return torch.stack([(m == k) for k in (FLUID, SOLID, EMPTY)]).to(torch.float32)[None]  # exact


def _pool(frac: torch.Tensor) -> torch.Tensor:
    return (F.avg_pool3d if frac.dim() == 5 else F.avg_pool2d)(frac, 2)


def _features(ops: list[DiffusionOperator]) -> list[torch.Tensor]:
    """:func:`level_features` of the hierarchy's operators, each on its own block: fractions pooled locally while
    the levels are distributed (the blocks halve evenly), gathered where the hierarchy turns whole."""
    out = []
    frac = None
    for i, op in enumerate(ops):
        onehot = _onehot(op.mask)
        if i == 0:
            frac = onehot
        else:
            prev = _own_grid(ops[i - 1])
            if prev.size > _own_grid(op).size:
                frac = GridTensor(frac, prev).gather()
            frac = _pool(frac)
        out.append(torch.cat((onehot, frac), dim=1))
    return out


def _shifted(p: torch.Tensor, a: int, step: int, shape: tuple) -> torch.Tensor:
    """``out[j] = w[j - step e_a]`` read from ``w`` padded by one cell on its last ``len(shape)`` axes."""
    idx = [slice(1, n + 1) for n in shape]
    idx[a] = slice(1 - step, 1 - step + shape[a])
    return p[(Ellipsis,) + tuple(idx)]


def stencil_fields(net: StencilNet, A: DiffusionOperator, features: torch.Tensor,
                   dtype: torch.dtype = torch.float64) -> dict:
    """The level's smoothing stencils (already times ``D^-1``) and their transposes in the compiled pass's form
    ``[d, w0l, w0h, w1l, w1h, w2l, w2h]`` with ``S x = d x - sum_j w_j x[neighbour j]`` (five entries in 2D), and the
    correction weight; tensors of ``A``'s block (the whole grid without a partition) in ``dtype``, differentiable
    in the network's weights. The features' and the stencils' neighbours come by halo exchange on the operator's
    partition (the one-rank grid of a whole operator)."""
    nd = A.grid.ndim
    grid = _own_grid(A)
    shape = A.block_shape
    raw = net(GridTensor(features, grid).halo(1, "zeros"), dtype, padded=True)[0]
    fluid = A.fluid
    diag = as_grid_tensor(A.diagonal(), shape)[0].local[0, 0]
    dinv = (fluid / diag).to(dtype)
    # a link carries weight only between fluid cells inside the domain (periodic axes wrap)
    fp = _pad_block(fluid.to(torch.float32)[None, None], A.bc, grid, 0.0)[0, 0] > 0
    links = []
    for a in range(nd):
        links += [fluid & _shifted(fp, a, 1, shape), fluid & _shifted(fp, a, -1, shape)]
    steps, transposes = [], []
    P = net.points
    for k in range(net.steps):
        centre = raw[k * P] * dinv
        nbrs = [(raw[k * P + 1 + j] * dinv).masked_fill_(~links[j], 0.0).neg_() if not raw.requires_grad
                else -(raw[k * P + 1 + j] * dinv * links[j]) for j in range(2 * nd)]
        steps.append([centre] + nbrs)
        # S^T: the low neighbour's weight is the high weight of the cell below, and so on (zero past a face)
        padded = _pad_block(torch.stack(nbrs)[None], A.bc, grid, 0.0)[0]
        tr = [centre]
        for a in range(nd):
            tr += [_shifted(padded[2 * a + 1], a, 1, shape), _shifted(padded[2 * a], a, -1, shape)]
        transposes.append(tr)
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
            feats = _features(self._ops)
            dtype = self.dtype or torch.float64
            self._fields = [stencil_fields(self.net, op, f, dtype) for op, f in zip(self._ops, feats)]
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
        feats = self.__dict__.setdefault("_features", _features(self._ops))
        self._fields = [stencil_fields(self.net, op, f) for op, f in zip(self._ops, feats)]
        self._slice_fields()

    def _coarse_solve_whole(self, f: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and f.requires_grad:
            return _CoarseSolve.apply(f, super()._coarse_solve_whole)
        return super()._coarse_solve_whole(f)

    def _slice_fields(self) -> None:
        for lev, fields in zip(self._levels, self._fields):
            lev.stencils = [[w[lev.sl].contiguous() for w in ws] for ws in fields["steps"]]
            lev.transposes = [[w[lev.sl].contiguous() for w in ws] for ws in fields["transposes"]]
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
    """Apply a per-cell stencil ``[d, w0l, w0h, ...]`` to a field: ``y = d x - sum_j w_j x[neighbour j]``."""

    def __init__(self, lev: _Level) -> None:
        self.lev = lev
        self.nd = lev.nd
        # the compiled seven-point pass serves 3D blocks; their neighbour planes come from the grid's exchange plan
        self.compiled = lev.nd == 3 and _kernels.stencil_library() is not None
        self.modes = tuple("circular" if p else "zeros" for p in lev.periodic)
        self._typed: dict = {}
        self._zero: dict = {}

    def _as(self, w: list, like: torch.Tensor) -> list:
        """``w`` in ``like``'s dtype (cached: the stencils are fixed between set-ups)."""
        if all(t.dtype == like.dtype for t in w):
            return w
        key = (id(w), like.dtype)
        hit = self._typed.get(key)
        if hit is None or hit[0] is not w:
            hit = self._typed[key] = (w, [t.to(like.dtype) for t in w])
        return hit[1]

    def apply(self, w: list, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The stencil ``w`` applied to ``x``, into ``out`` (None: a new, differentiable tensor)."""
        nd = self.nd
        w = self._as(w, x)
        if self.compiled and not (torch.is_grad_enabled() and (w[1].requires_grad or x.requires_grad)) \
                and x.dtype in (torch.float32, torch.float64) and x.is_contiguous():
            out = torch.empty_like(x) if out is None else out
            x4 = x.reshape((-1,) + tuple(x.shape[-3:]))
            zero = self._zero.setdefault((x.dtype, x4.shape[-1]), torch.zeros(x4.shape[-1], dtype=x.dtype))
            faces = [f for pair in self.lev.grid.exchange_plan(1, self.modes, x.dtype, x.device).faces(x) for f in pair]
            _kernels.stencil7(x4, out.view(x4.shape), faces, None, w, zero)
            return out
        lev = self.lev
        p = GridTensor(x, lev.grid).halo(1, "circular" if any(lev.periodic) else "zeros")
        lead = p.dim() - nd
        inner = [slice(1, -1)] * nd
        y = torch.mul(x, w[0], out=out)
        for a in range(nd):
            for j, start in enumerate((0, 2)):
                idx = list(inner)
                idx[a] = slice(start, start + x.shape[lead + a])
                nb = p[(Ellipsis,) + tuple(idx)]
                y = y.addcmul_(w[1 + 2 * a + j], nb, value=-1) if out is not None else y - w[1 + 2 * a + j] * nb
        return y
