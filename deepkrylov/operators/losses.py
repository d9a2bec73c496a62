"""Per-sample relative losses for operator learning (the LpLoss/H1Loss convention of neuraloperator).

Both compare ``pred`` and ``target`` of shape (batch, *rest); the norm of each sample's difference is divided by
the norm of its target, then averaged (or summed) over the batch, so the value does not depend on the scale of
the data or on the resolution.

Every loss also takes two :class:`~deepkrylov.distributed.GridTensor` blocks of one grid (domain-parallel training):
the sums over each sample run on the local blocks and are then summed over the ranks (``GridTensor.sum/norm``,
which autograd differentiates), H1's finite differences read their neighbour across a block edge from a one-cell
halo, so every rank gets the serial value and its block of the serial gradient without gathering a field.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from deepkrylov.distributed import GridTensor

__all__ = ["LpLoss", "H1Loss", "MSELoss"]

Field = Union[torch.Tensor, GridTensor]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, but got {reduction!r}")
    return reduction


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    return x.mean() if reduction == "mean" else x.sum() if reduction == "sum" else x


def _check_pair(pred: Field, target: Field) -> bool:
    """Same shapes, and both plain tensors or both GridTensors of one grid; True for GridTensors."""
    blocks = isinstance(pred, GridTensor)
    if blocks != isinstance(target, GridTensor):
        raise TypeError(f"pred and target must both be tensors or both GridTensors, but got "
                        f"{type(pred).__name__} and {type(target).__name__}")
    if blocks and pred.grid != target.grid:
        raise ValueError(f"pred and target are on different grids: {pred.grid!r} and {target.grid!r}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, but got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    return blocks


def _block_pnorm(u: GridTensor, p: float) -> torch.Tensor:
    """Per-sample global p-norm of a GridTensor (a reduction over the ranks)."""
    if p == 2:
        return u.norm(keep_batch=True)
    if p == float("inf"):
        raise ValueError("LpLoss(p=inf) on GridTensors is not supported (the global maximum is not differentiable)")
    return u.map(lambda t: t.abs().pow(p)).sum(keep_batch=True).pow(1.0 / p)


class LpLoss(torch.nn.Module):
    """Relative Lp error ``||pred - target||_p / ||target||_p`` per sample (``eps`` guards a zero target)."""

    def __init__(self, p: float = 2.0, reduction: str = "mean", eps: float = 1e-12) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"p must be > 0, but got {p}")
        self.p, self.reduction, self.eps = float(p), _check_reduction(reduction), float(eps)

    def forward(self, pred: Field, target: Field) -> torch.Tensor:
        if _check_pair(pred, target):
            ratio = _block_pnorm(pred - target, self.p) / (_block_pnorm(target, self.p) + self.eps)
            return _reduce(ratio, self.reduction)
        b = pred.shape[0]
        diff = torch.linalg.vector_norm((pred - target).reshape(b, -1), ord=self.p, dim=1)
        ref = torch.linalg.vector_norm(target.reshape(b, -1), ord=self.p, dim=1)
        return _reduce(diff / (ref + self.eps), self.reduction)


class H1Loss(torch.nn.Module):
    """Relative H1 error per sample: ``sqrt(|e|^2 + |grad e|^2) / sqrt(|t|^2 + |grad t|^2)`` with the gradient
    by central differences (periodic) or one-sided/central (non-periodic, ``torch.gradient``) on a uniform grid
    of ``d`` trailing dimensions with spacing ``1/n`` per axis (domain length ``lengths``)."""

    def __init__(self, d: int = 1, lengths: Sequence[float] | float = 1.0, periodic: bool = False,
                 reduction: str = "mean", eps: float = 1e-12) -> None:
        super().__init__()
        if d < 1:
            raise ValueError(f"d must be >= 1, but got {d}")
        self.d, self.periodic = int(d), bool(periodic)
        self.lengths = [float(lengths)] * self.d if isinstance(lengths, (int, float)) else [float(v) for v in lengths]
        if len(self.lengths) != self.d:
            raise ValueError(f"lengths must have d={self.d} entries, but got {len(self.lengths)}")
        self.reduction, self.eps = _check_reduction(reduction), float(eps)

    def _sq_norm(self, u: Field) -> torch.Tensor:
        if isinstance(u, GridTensor):
            return self._block_sq_norm(u)
        spatial = u.shape[-self.d:]
        b = u.shape[0]
        total = u.reshape(b, -1).pow(2).sum(1)
        for i, n in enumerate(spatial):
            axis = u.ndim - self.d + i
            h = self.lengths[i] / n
            if self.periodic:
                g = (torch.roll(u, -1, axis) - torch.roll(u, 1, axis)) / (2 * h)
            else:
                g = torch.gradient(u, spacing=h, dim=axis)[0]
            total = total + g.reshape(b, -1).pow(2).sum(1)
        return total

    def _block_sq_norm(self, u: GridTensor) -> torch.Tensor:
        """``_sq_norm`` of a GridTensor: one-cell halos along each axis give the central differences at block
        edges (``circular`` halos when periodic); a block at a non-periodic global boundary takes the one-sided
        difference there, as ``torch.gradient`` does."""
        grid, loc = u.grid, u.local
        if self.d != grid.ndim:
            raise ValueError(f"H1Loss(d={self.d}) on a GridTensor needs a {self.d}D grid, but the grid is "
                             f"{grid.ndim}D {grid.global_shape}")
        total = loc * loc
        for i, n in enumerate(grid.global_shape):
            axis, h = 2 + i, self.lengths[i] / n
            widths = [(0, 0)] * grid.ndim
            widths[i] = (1, 1)
            pad = u.halo(widths, "circular" if self.periodic else "zeros")
            m = pad.shape[axis]
            g = (pad.narrow(axis, 2, m - 2) - pad.narrow(axis, 0, m - 2)) / (2 * h)
            if not self.periodic:
                parts = [g]
                if grid.coords[i] == 0:  # first cell of the domain: forward difference
                    first = (pad.narrow(axis, 2, 1) - pad.narrow(axis, 1, 1)) / h
                    parts = [first, g.narrow(axis, 1, g.shape[axis] - 1)]
                if grid.coords[i] == grid.dims[i] - 1:  # last cell: backward difference
                    last = (pad.narrow(axis, m - 2, 1) - pad.narrow(axis, m - 3, 1)) / h
                    rest = parts[-1]
                    parts[-1] = rest.narrow(axis, 0, rest.shape[axis] - 1)
                    parts.append(last)
                g = torch.cat(parts, axis)
            total = total + g * g
        return u.with_local(total).sum(keep_batch=True)

    def forward(self, pred: Field, target: Field) -> torch.Tensor:
        _check_pair(pred, target)
        if len(pred.shape) < self.d + 1:
            raise ValueError(f"H1Loss(d={self.d}) needs tensors with >= {self.d + 1} dims, got {len(pred.shape)}")
        ratio = torch.sqrt(self._sq_norm(pred - target)) / (torch.sqrt(self._sq_norm(target)) + self.eps)
        return _reduce(ratio, self.reduction)


class MSELoss(torch.nn.Module):
    """Mean squared error. ``mean`` is ``torch.nn.MSELoss``'s (over every entry); ``sum``/``none`` reduce each
    sample's mean over its entries, as the relative losses reduce their per-sample ratios."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)

    def forward(self, pred: Field, target: Field) -> torch.Tensor:
        if _check_pair(pred, target):
            d = pred - target
            per_entry = d.numel() // d.shape[0]
            if self.reduction == "mean":
                return d.dot(d) / d.numel()
            return _reduce(d.dot(d, keep_batch=True) / per_entry, self.reduction)
        if self.reduction == "mean":
            return torch.nn.functional.mse_loss(pred, target)
        b = pred.shape[0]
        return _reduce((pred - target).reshape(b, -1).pow(2).mean(1), self.reduction)
