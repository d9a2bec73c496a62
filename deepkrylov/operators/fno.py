"""Fourier neural operator (Li et al., ICLR 2021), 1D/2D/3D.

``FNO``: a pointwise lifting (optionally with the grid coordinates as extra input channels), ``num_layers``
Fourier layers ``v <- act(K v + W v)`` (``K`` a spectral convolution that keeps the lowest ``modes`` Fourier
modes per axis, ``W`` a 1x1 convolution; no activation after the last layer) and a two-layer pointwise
projection. ``modes`` counts the *kept non-negative frequencies* per axis (Li et al.'s convention; the
``neuraloperator`` library's ``n_modes`` is twice that on the full axes). For non-periodic problems
``padding`` extends the domain by at least that fraction with zeros at the end of every axis before the Fourier
layers (up to the next length whose only prime factors are 2, 3 and 5, so the FFTs stay fast: 64 -> 72, not
the prime 71) and crops afterwards. All weights are independent of the grid size: any resolution with at least
``2 * modes`` points per axis runs with the same weights.

Domain-parallel: ``FNO`` and ``SpectralConv`` also take a :class:`~deepkrylov.distributed.GridTensor` split over
ranks and return one on the same grid, equal to the serial result (and so are the gradients). The spectral
convolution is a distributed ``rfftn`` (all-to-all repartitions, :mod:`deepkrylov.distributed.fft`), a multiply of
the kept modes that lie in this rank's box of wave numbers, and ``irfftn``; the lifting, 1x1 convolutions and
projection act on the local blocks; the domain padding is a repartition onto the larger grid and back. No rank holds
the whole grid.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

from scipy.fft import next_fast_len
import torch
import torch.nn.functional as F
from torch import nn

from deepkrylov.distributed import GridTensor, ProcessGrid, irfftn, redistribute, rfftn

__all__ = ["FNO", "SpectralConv"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh, "silu": F.silu}
Field = Union[torch.Tensor, GridTensor]


def _tuple(v: Union[int, Sequence[int]], n: int, name: str) -> tuple[int, ...]:
    t = tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),) * n
    if len(t) != n or any(a < 1 for a in t):
        raise ValueError(f"{name} must be a positive int or {n} positive ints, but got {v!r}")
    return t


def _fft_length(n: int) -> int:
    """The smallest ``m >= n`` whose only prime factors are 2, 3 and 5 (a fast length for real FFTs)."""
    return next_fast_len(n, real=True)


class SpectralConv(nn.Module):
    """``y = IFFT(R . FFT(x))`` with a complex weight ``R`` on the lowest ``modes`` frequencies of every axis.

    The weight is stored as a real tensor (last axis = real/imaginary) so that ``.double()`` and ``.to()`` act on
    it like on any other parameter; on the full axes both the positive and negative frequencies are kept.
    """

    def __init__(self, in_channels: int, out_channels: int, modes: Union[int, Sequence[int]], dim: int = 2) -> None:
        super().__init__()
        if dim not in (1, 2, 3):
            raise ValueError(f"dim must be 1, 2 or 3, but got {dim}")
        self.dim, self.in_channels, self.out_channels = dim, in_channels, out_channels
        self.modes = _tuple(modes, dim, "modes")
        # full axes keep frequencies 0..m-1 and -m..-1 (stored in that order), the rfft axis 0..m-1
        scale = 1.0 / (in_channels * out_channels)
        shape = tuple(2 * m for m in self.modes[:-1]) + (self.modes[-1],)
        self.weight = nn.Parameter(scale * torch.rand(in_channels, out_channels, *shape, 2))

    def _check_sizes(self, sizes: Sequence[int]) -> None:
        for a in range(self.dim - 1):
            if sizes[a] < 2 * self.modes[a]:
                raise ValueError(
                    f"spectral convolution with modes {self.modes} needs at least {2 * self.modes[a]} points along "
                    f"axis {a}, but got grid {tuple(sizes)}"
                )
        if sizes[-1] // 2 + 1 < self.modes[-1]:
            raise ValueError(
                f"spectral convolution with modes {self.modes} needs at least {2 * (self.modes[-1] - 1)} points "
                f"along the last axis, but got grid {tuple(sizes)}"
            )

    def _complex_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.view_as_complex(self.weight.to(torch.promote_types(dtype, torch.float32)).contiguous())

    def forward(self, x: Field) -> Field:
        if isinstance(x, GridTensor):
            return self._forward_grid(x)
        d = self.dim
        sizes = x.shape[-d:]
        self._check_sizes(sizes)
        axes = tuple(range(-d, 0))
        xf = torch.fft.rfftn(x, dim=axes, norm="ortho")
        for a in range(d - 1):  # gather the kept frequencies into one contiguous block
            m, ax = self.modes[a], 2 + a
            xf = torch.cat([xf.narrow(ax, 0, m), xf.narrow(ax, sizes[a] - m, m)], dim=ax)
        xf = xf.narrow(-1, 0, self.modes[-1]).contiguous()
        w = self._complex_weight(x.dtype)
        letters = "xyz"[:d]
        out = torch.einsum(f"bi{letters},io{letters}->bo{letters}", xf, w)
        out = F.pad(out, (0, sizes[-1] // 2 + 1 - self.modes[-1]))
        for a in range(d - 1):  # scatter back, zeros in between
            m, ax = self.modes[a], 2 + a
            gap = list(out.shape)
            gap[ax] = sizes[a] - 2 * m
            out = torch.cat([out.narrow(ax, 0, m), out.new_zeros(gap), out.narrow(ax, m, m)], dim=ax)
        return torch.fft.irfftn(out, s=tuple(sizes), dim=axes, norm="ortho")

    def _forward_grid(self, x: GridTensor) -> GridTensor:
        """The same map on a GridTensor: distributed rfftn, this rank's kept modes times their weights, irfftn."""
        if x.grid.ndim != self.dim:
            raise ValueError(f"this SpectralConv is {self.dim}D, but got a GridTensor on a {x.grid.ndim}D grid")
        sizes = x.grid.global_shape
        self._check_sizes(sizes)
        xf = rfftn(x, norm="ortho")
        # per axis: the kept wave numbers in this rank's box (local positions) and their rows of the weight
        local, rows = [], []
        for a, sl in enumerate(xf.grid.local_slices):
            k = torch.arange(sl.start, sl.stop)
            m = self.modes[a]
            if a < self.dim - 1:
                keep = (k < m) | (k >= sizes[a] - m)
                row = torch.where(k < m, k, k - sizes[a] + 2 * m)
            else:
                keep, row = k < m, k
            local.append(torch.nonzero(keep).flatten().to(x.device))
            rows.append(row[keep].to(x.device))
        # (also on a rank without kept modes: its output must depend on its spectrum, or its backward would skip
        # the all-to-alls of rfftn that the other ranks wait in)
        out = xf.local.new_zeros((xf.local.shape[0], self.out_channels) + tuple(xf.local.shape[2:]))
        w = self._complex_weight(x.dtype)
        xs = xf.local
        for a in range(self.dim):
            xs = xs.index_select(2 + a, local[a])
            w = w.index_select(2 + a, rows[a])
        letters = "xyz"[:self.dim]
        kept = torch.einsum(f"bi{letters},io{letters}->bo{letters}", xs, w)
        index = tuple(i.view((-1,) + (1,) * (self.dim - 1 - a)) for a, i in enumerate(local))
        out[(slice(None), slice(None)) + index] = kept
        return irfftn(GridTensor(out, xf.grid), norm="ortho")


class FNO(nn.Module):
    """Fourier neural operator ``(batch, in_channels, *grid) -> (batch, out_channels, *grid)``.

    Args:
        in_channels, out_channels: input/output function channels.
        modes: kept non-negative Fourier modes per axis (int or one per axis).
        width: channels of the Fourier layers.
        num_layers: number of Fourier layers.
        dim: spatial dimensions (1, 2, 3).
        padding: domain padding fraction (e.g. 0.1 for non-periodic problems; 0 for periodic ones).
        positional: append the grid coordinates in [0, 1] as input channels.
        projection_channels: hidden width of the pointwise projection.
        activation: gelu, relu, tanh or silu.
    """

    def __init__(
        self, in_channels: int = 1, out_channels: int = 1, modes: Union[int, Sequence[int]] = 12, width: int = 32,
        num_layers: int = 4, dim: int = 2, padding: float = 0.0, positional: bool = True,
        projection_channels: int = 128, activation: str = "gelu",
    ) -> None:
        super().__init__()
        if dim not in _CONV:
            raise ValueError(f"dim must be 1, 2 or 3, but got {dim}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, but got {activation!r}")
        if not 0.0 <= padding < 1.0:
            raise ValueError(f"padding must be a fraction in [0, 1), but got {padding}")
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("width", width),
                        ("num_layers", num_layers), ("projection_channels", projection_channels)):
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, but got {v}")
        self.dim, self.in_channels, self.out_channels = dim, in_channels, out_channels
        self.modes, self.width, self.num_layers = _tuple(modes, dim, "modes"), width, num_layers
        self.padding, self.positional, self.projection_channels = float(padding), positional, projection_channels
        self.activation = activation
        self._act = _ACTIVATIONS[activation]
        Conv = _CONV[dim]
        self.lift = Conv(in_channels + (dim if positional else 0), width, 1)
        self.spectral = nn.ModuleList(SpectralConv(width, width, self.modes, dim) for _ in range(num_layers))
        self.pointwise = nn.ModuleList(Conv(width, width, 1) for _ in range(num_layers))
        self.proj1 = Conv(width, projection_channels, 1)
        self.proj2 = Conv(projection_channels, out_channels, 1)

    def config(self) -> dict:
        """Constructor arguments (for checkpoints and the CLI)."""
        return {
            "in_channels": self.in_channels, "out_channels": self.out_channels, "modes": list(self.modes),
            "width": self.width, "num_layers": self.num_layers, "dim": self.dim, "padding": self.padding,
            "positional": self.positional, "projection_channels": self.projection_channels,
            "activation": self.activation,
        }

    @staticmethod
    def _coords(x: torch.Tensor, shape: Sequence[int], block: Sequence[slice]) -> torch.Tensor:
        """The grid coordinates in [0, 1] of a whole grid of ``shape``, at ``block`` (this rank's cells), per sample
        of ``x``."""
        axes = [torch.linspace(0, 1, n, dtype=x.dtype, device=x.device)[sl] for n, sl in zip(shape, block)]
        mesh = torch.meshgrid(*axes, indexing="ij")
        return torch.stack(mesh).unsqueeze(0).expand(x.shape[0], -1, *x.shape[2:])

    def _pads(self, sizes: Sequence[int]) -> list[int]:
        return [_fft_length(n + int(math.ceil(self.padding * n))) - n if self.padding else 0 for n in sizes]

    def forward(self, x: Field) -> Field:
        """``(batch, in_channels, *grid)`` tensor -> ``(batch, out_channels, *grid)``; a GridTensor gives a GridTensor
        on the same grid (domain-parallel)."""
        if isinstance(x, GridTensor):
            return self._forward_grid(x)
        if not isinstance(x, torch.Tensor) or x.dim() != self.dim + 2:
            raise ValueError(
                f"this FNO is {self.dim}D and takes a (batch, channels, *{self.dim} sizes) tensor, but got "
                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"this FNO takes {self.in_channels} input channels, but got {x.shape[1]}")
        sizes = x.shape[2:]
        if self.positional:
            x = torch.cat([x, self._coords(x, sizes, [slice(None)] * len(sizes))], dim=1)
        v = self.lift(x)
        pads = self._pads(sizes)
        if any(pads):
            v = F.pad(v, [p for n in reversed(pads) for p in (0, n)])
        for i, (k, w) in enumerate(zip(self.spectral, self.pointwise)):
            v = k(v) + w(v)
            if i < self.num_layers - 1:
                v = self._act(v)
        if any(pads):
            v = v[(slice(None), slice(None)) + tuple(slice(0, n) for n in sizes)]
        return self.proj2(self._act(self.proj1(v)))

    def _forward_grid(self, x: GridTensor) -> GridTensor:
        grid = x.grid
        if grid.ndim != self.dim or x.local.dim() != self.dim + 2:
            raise ValueError(f"this FNO is {self.dim}D, but got a GridTensor on a {grid.ndim}D grid")
        if x.local.shape[1] != self.in_channels:
            raise ValueError(f"this FNO takes {self.in_channels} input channels, but got {x.local.shape[1]}")
        h = x.local
        if self.positional:  # this block's slice of the whole grid's coordinates
            h = torch.cat([h, self._coords(h, grid.global_shape, grid.local_slices)], dim=1)
        v = GridTensor(self.lift(h), grid)
        pads = self._pads(grid.global_shape)
        if any(pads):  # zeros at the end of every axis: a repartition onto the larger grid
            padded = ProcessGrid(grid.comm, [n + p for n, p in zip(grid.global_shape, pads)], dims=grid.dims)
            v = redistribute(v, padded)
        for i, (k, w) in enumerate(zip(self.spectral, self.pointwise)):
            v = GridTensor(k(v).local + w(v.local), v.grid)
            if i < self.num_layers - 1:
                v = v.map(self._act)
        if any(pads):
            v = redistribute(v, grid)
        return v.map(lambda t: self.proj2(self._act(self.proj1(t))))
