"""Gaussian random fields on structured grids, and thresholded Darcy coefficients.

Fields are sampled spectrally: white noise in Fourier space times the square root of the covariance's spectral
density, on a periodic grid (``periodic=True``) or on a grid twice as large that is then cropped (a circulant
embedding, so the non-periodic field has no wrap-around correlation). Every field is drawn whole from its seed,
so a rank that takes its block of it gets the same numbers whatever the number of ranks.

Covariances (``length`` the correlation length, in the grid's physical units):

- ``rbf``: ``sigma^2 exp(-|x - y|^2 / (2 length^2))``;
- ``matern``: the Matérn family with smoothness ``nu``; its spectral density is
  ``(2 nu / length^2 + 4 pi^2 |k|^2)^-(nu + d/2)``. FNO's Darcy recipe, covariance ``(-Laplacian + tau^2)^-alpha``,
  is ``nu = alpha - d/2`` and ``length = sqrt(2 nu) / tau`` on a unit box.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .grid import StructuredGrid

__all__ = ["gaussian_random_field", "darcy_coefficient"]

_KERNELS = ("rbf", "matern")


def _spectral_density(kind: str, k2: torch.Tensor, length: float, nu: float, dim: int) -> torch.Tensor:
    if kind == "rbf":
        return torch.exp(-2.0 * math.pi**2 * length**2 * k2)
    return (2.0 * nu / length**2 + 4.0 * math.pi**2 * k2) ** (-(nu + dim / 2.0))


def gaussian_random_field(
    grid: StructuredGrid, *, kernel: str = "matern", length: float = 0.1, nu: float = 1.5, sigma: float = 1.0,
    batch: int = 1, seed: int = 0, periodic: bool = False, dtype: torch.dtype = torch.float64,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """``batch`` zero-mean fields of shape ``(batch, *grid.shape)`` with point variance ``sigma^2``."""
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, but got {kernel!r}")
    if length <= 0 or sigma < 0 or nu <= 0 or batch < 1:
        raise ValueError(f"need length > 0, nu > 0, sigma >= 0, batch >= 1; got {length}, {nu}, {sigma}, {batch}")
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    shape = grid.shape if periodic else tuple(2 * s for s in grid.shape)
    extent = [n * h for n, h in zip(shape, grid.spacing)]
    freqs = torch.meshgrid(*[torch.fft.fftfreq(n, d=L / n, dtype=torch.float64) for n, L in zip(shape, extent)], indexing="ij")
    k2 = sum(f**2 for f in freqs)
    density = _spectral_density(kernel, k2, length, nu, grid.ndim)
    amplitude = torch.sqrt(density)
    noise = torch.randn((batch,) + shape, generator=g, dtype=torch.float64) + 1j * torch.randn(
        (batch,) + shape, generator=g, dtype=torch.float64)
    field = torch.fft.ifftn(noise * amplitude, dim=tuple(range(1, grid.ndim + 1))).real
    # normalise to point variance sigma^2 (the variance of this construction is the same at every point)
    var = density.sum() / math.prod(shape) ** 2  # the real part of complex noise carries half its power
    field = field * (sigma / math.sqrt(float(var)))
    if not periodic:
        field = field[(slice(None),) + tuple(slice(0, n) for n in grid.shape)]
    return field.to(dtype).contiguous()


def darcy_coefficient(field: torch.Tensor, high: float = 12.0, low: float = 3.0, threshold: float = 0.0) -> torch.Tensor:
    """Piecewise-constant coefficient: ``high`` where ``field >= threshold``, ``low`` elsewhere (FNO's Darcy)."""
    if high <= 0 or low <= 0:
        raise ValueError(f"Darcy coefficients must be positive, but got high={high}, low={low}")
    return torch.where(field >= threshold, torch.full_like(field, high), torch.full_like(field, low))
