"""Scalar input/output normalisation around an operator model.

A model trained on raw fields (Darcy: coefficients ~10, solutions ~1e-2) starts orders of magnitude off; scaling
inputs and outputs to zero mean and unit variance fixes that. The statistics are scalars, not per grid point
(neuraloperator's ``UnitGaussianNormalizer`` default), so the wrapped model still runs at every resolution.

Centring is not always right: for a Dirichlet problem such as Darcy (``u = 0`` on the boundary, constant source)
solved by a zero-padded convolutional model (MgNO), subtracting the mean turns the boundary value into
``-mean/std`` and removes the constant forcing from the input; the model's natural output -- zero at the wall --
is then off by the mean everywhere, an offset the relative H1 loss hardly sees (it weighs ``|e|^2`` ~20x less than
``|grad e|^2`` on Darcy). :meth:`Normalized.uncentered` keeps zero at zero (zero means, root-mean-square scales).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["Normalized"]


class Normalized(nn.Module):
    """``model((x - in_mean) / in_std) * out_std + out_mean``; the four statistics are buffers (saved with the
    model's state dict)."""

    def __init__(self, model: nn.Module, in_mean: float = 0.0, in_std: float = 1.0, out_mean: float = 0.0,
                 out_std: float = 1.0) -> None:
        super().__init__()
        if not (in_std > 0 and out_std > 0):
            raise ValueError(f"standard deviations must be positive, but got in_std={in_std}, out_std={out_std}")
        self.model = model
        for name, v in (("xm", in_mean), ("xs", in_std), ("ym", out_mean), ("ys", out_std)):
            self.register_buffer(name, torch.tensor([float(v)]))

    @staticmethod
    def statistics(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float, float]:
        """``(in_mean, in_std, out_mean, out_std)`` of training inputs ``x`` and targets ``y``."""
        xs, ys = float(x.std()), float(y.std())
        if not (xs > 0 and ys > 0):
            raise ValueError("training inputs and targets must not be constant (zero standard deviation)")
        return float(x.mean()), xs, float(y.mean()), ys

    @staticmethod
    def dataset_statistics(ds: "torch.utils.data.Dataset", comm: Any = None, chunk: int = 64
                           ) -> tuple[float, float, float, float]:
        """:meth:`statistics` of a dataset of ``(input, target)`` samples read in chunks; with ``comm`` (a
        :class:`~deepkrylov.distributed.Comm`) the samples are this rank's blocks of the fields (e.g.
        ``data.HDF5Fields`` on a ProcessGrid) and the float64 sums run over the ranks, so no rank holds a whole
        field. Two passes: the means, then the unbiased variances."""
        n = len(ds)

        def batches():  # type: ignore[no-untyped-def]
            for i in range(0, n, chunk):
                idx = list(range(i, min(i + chunk, n)))
                items = ds.__getitems__(idx) if hasattr(ds, "__getitems__") else [ds[j] for j in idx]
                x, y = torch.utils.data.default_collate(items)[:2]
                yield x.double(), y.double()

        def reduce(t: torch.Tensor) -> torch.Tensor:
            return comm.allreduce_(t) if comm is not None else t

        sums = torch.zeros(3, dtype=torch.float64)
        for x, y in batches():
            sums += torch.stack([x.sum(), y.sum(), torch.tensor(float(x.numel()), dtype=torch.float64)])
        reduce(sums)
        mx, my, count = float(sums[0] / sums[2]), float(sums[1] / sums[2]), float(sums[2])
        sq = torch.zeros(2, dtype=torch.float64)
        for x, y in batches():
            sq += torch.stack([(x - mx).pow(2).sum(), (y - my).pow(2).sum()])
        reduce(sq)
        sx, sy = float(sq[0] / (count - 1)) ** 0.5, float(sq[1] / (count - 1)) ** 0.5
        if not (sx > 0 and sy > 0):
            raise ValueError("training inputs and targets must not be constant (zero standard deviation)")
        return mx, sx, my, sy

    @staticmethod
    def uncentered(in_mean: float, in_std: float, out_mean: float, out_std: float) -> tuple[float, float, float, float]:
        """Statistics that only scale: zero means and the root-mean-square ``sqrt(std^2 + mean^2)`` of inputs and
        targets, from their (centred) :meth:`statistics`."""
        return 0.0, math.hypot(in_std, in_mean), 0.0, math.hypot(out_std, out_mean)

    @classmethod
    def fit(cls, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> "Normalized":
        """Wrap ``model`` with the mean and standard deviation of the training inputs ``x`` and targets ``y``."""
        return cls(model, *cls.statistics(x, y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.xm) / self.xs) * self.ys + self.ym
