"""Per-sample relative losses for operator learning (the LpLoss/H1Loss convention of neuraloperator).

Both compare ``pred`` and ``target`` of shape (batch, *rest); the norm of each sample's difference is divided by
the norm of its target, then averaged (or summed) over the batch, so the value does not depend on the scale of
the data or on the resolution.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["LpLoss", "H1Loss"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, but got {reduction!r}")
    return reduction


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    return x.mean() if reduction == "mean" else x.sum() if reduction == "sum" else x


class LpLoss(torch.nn.Module):
    """Relative Lp error ``||pred - target||_p / ||target||_p`` per sample (``eps`` guards a zero target)."""

    def __init__(self, p: float = 2.0, reduction: str = "mean", eps: float = 1e-12) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"p must be > 0, but got {p}")
        self.p, self.reduction, self.eps = float(p), _check_reduction(reduction), float(eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred and target must have the same shape, but got {tuple(pred.shape)} and "
                             f"{tuple(target.shape)}")
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

    def _sq_norm(self, u: torch.Tensor) -> torch.Tensor:
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

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred and target must have the same shape, but got {tuple(pred.shape)} and "
                             f"{tuple(target.shape)}")
        if pred.ndim < self.d + 1:
            raise ValueError(f"H1Loss(d={self.d}) needs tensors with >= {self.d + 1} dims, got {pred.ndim}")
        ratio = torch.sqrt(self._sq_norm(pred - target)) / (torch.sqrt(self._sq_norm(target)) + self.eps)
        return _reduce(ratio, self.reduction)
