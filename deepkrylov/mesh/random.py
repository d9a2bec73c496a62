"""Gaussian random fields on structured grids, and thresholded Darcy coefficients.

A field is white noise filtered in Fourier space: ``irfftn(sqrt(S) * rfftn(xi))`` with ``xi`` i.i.d. standard
normal on the grid and ``S`` the covariance's spectral density. That is a circular convolution, so the field is
stationary with the covariance whose spectrum is ``S``; on a periodic grid (``periodic=True``) as it is, otherwise on
a grid twice as large that is then cropped (a circulant embedding, so the non-periodic field has no wrap-around
correlation).

The noise is counter-based: the value at global index ``i`` of sample ``b`` comes from the Philox counter
``b * size + i`` under the key ``seed`` (Box-Muller on two 53-bit uniforms), so each rank draws exactly its own
block and the field does not depend on how the grid is split. With ``partition`` the filtering runs through the
distributed FFT (:func:`deepkrylov.distributed.rfftn`): no rank ever holds the whole grid, and the blocks equal the
serial field's to rounding (1e-12).

Covariances (``length`` the correlation length, in the grid's physical units):

- ``rbf``: ``sigma^2 exp(-|x - y|^2 / (2 length^2))``;
- ``matern``: the Matérn family with smoothness ``nu``; its spectral density is
  ``(2 nu / length^2 + 4 pi^2 |k|^2)^-(nu + d/2)``. FNO's Darcy recipe, covariance ``(-Laplacian + tau^2)^-alpha``,
  is ``nu = alpha - d/2`` and ``length = sqrt(2 nu) / tau`` on a unit box.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import torch

from .grid import StructuredGrid

if TYPE_CHECKING:
    from deepkrylov.distributed import GridTensor, ProcessGrid

__all__ = ["gaussian_random_field", "darcy_coefficient"]

_KERNELS = ("rbf", "matern")


def _white_noise(seed: int, batch: int, shape: tuple, starts: tuple, sizes: tuple) -> torch.Tensor:
    """Standard normal noise on the block ``starts + [0, sizes)`` of a ``(batch, *shape)`` array, the same numbers
    whatever the block: entry ``L`` (row-major over the whole array) uses Philox outputs ``2L`` and ``2L + 1``."""
    out = np.empty((batch,) + tuple(sizes), dtype=np.float64)
    nd, total = len(shape), math.prod(shape)
    strides = [math.prod(shape[a + 1:]) for a in range(nd)]
    lead = nd - 1  # one run of counters per index of axes [0, lead): the axes after `lead` are whole in the block
    while lead > 0 and sizes[lead] == shape[lead]:
        lead -= 1
    run = sizes[lead] * strides[lead]
    view = out.reshape((batch,) + tuple(sizes[:lead]) + (run,))
    key = int(seed) % 2**64
    chunk = 1 << 18  # entries per draw: the temporaries stay a few MB whatever the block
    for idx in np.ndindex(*view.shape[:-1]):
        start = idx[0] * total + starts[lead] * strides[lead]
        start += sum((starts[a] + idx[1 + a]) * strides[a] for a in range(lead))
        for lo in range(0, run, chunk):
            first, m = start + lo, min(chunk, run - lo)
            skip = (2 * first) % 4
            raw = np.random.Philox(key=key, counter=(2 * first) // 4).random_raw(skip + 2 * m)[skip:]
            u = (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53
            view[idx][lo:lo + m] = np.sqrt(-2.0 * np.log1p(-u[0::2])) * np.cos(2.0 * math.pi * u[1::2])
    return torch.from_numpy(out)


def gaussian_random_field(
    grid: StructuredGrid, *, kernel: str = "matern", length: float = 0.1, nu: float = 1.5, sigma: float = 1.0,
    batch: int = 1, seed: int = 0, periodic: bool = False, dtype: torch.dtype = torch.float64,
    generator: Optional[torch.Generator] = None, partition: Optional["ProcessGrid"] = None,
) -> Union[torch.Tensor, "GridTensor"]:
    """``batch`` zero-mean fields with point variance ``sigma^2``: a tensor ``(batch, *grid.shape)``, or with
    ``partition`` (a ProcessGrid over ``grid.shape``) a GridTensor ``(batch, 1, *grid.shape)`` whose blocks equal
    the tensor's for the same seed on any number of ranks. ``generator``, if given, draws the seed."""
    from deepkrylov.distributed import GridTensor, ProcessGrid, SelfComm, irfftn, redistribute, rfftn

    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, but got {kernel!r}")
    if length <= 0 or sigma < 0 or nu <= 0 or batch < 1:
        raise ValueError(f"need length > 0, nu > 0, sigma >= 0, batch >= 1; got {length}, {nu}, {sigma}, {batch}")
    if partition is not None and tuple(partition.global_shape) != tuple(grid.shape):
        raise ValueError(f"partition is over a grid of shape {partition.global_shape}, but the field's grid has "
                         f"shape {grid.shape}")
    if generator is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    target = partition if partition is not None else ProcessGrid(SelfComm(), grid.shape)
    shape = grid.shape if periodic else tuple(2 * s for s in grid.shape)
    work = target if periodic else ProcessGrid(target.comm, shape, dims=target.dims)
    spec = rfftn(GridTensor(_white_noise(seed, batch, shape, work.starts, work.local_shape).unsqueeze(1), work))
    # the spectral density on this rank's wave numbers, built in place: |k|^2 summed by broadcasting, then S(|k|^2)
    extent = [n * h for n, h in zip(shape, grid.spacing)]
    freq = [torch.fft.fftfreq(n, d=L / n, dtype=torch.float64) for n, L in zip(shape, extent)]
    freq[-1] = torch.fft.rfftfreq(shape[-1], d=extent[-1] / shape[-1], dtype=torch.float64)
    nd = len(shape)
    local = [(f[s] ** 2).reshape([-1 if b == a else 1 for b in range(nd)])
             for a, (f, s) in enumerate(zip(freq, spec.grid.local_slices))]
    density = torch.zeros(spec.grid.local_shape, dtype=torch.float64)
    for f2 in local:
        density.add_(f2)
    if kernel == "rbf":
        density.mul_(-2.0 * math.pi**2 * length**2).exp_()
    else:
        density.mul_(4.0 * math.pi**2).add_(2.0 * nu / length**2).pow_(-(nu + grid.ndim / 2.0))
    # point variance sum(S) / n of the filtered noise: S summed over the whole spectrum (the half spectrum's inner
    # columns stand for two wave numbers each)
    n_last = shape[-1]
    j = torch.arange(n_last // 2 + 1)[spec.grid.local_slices[-1]]
    twice = torch.where((j == 0) | ((n_last % 2 == 0) & (j == n_last // 2)), 1.0, 2.0).to(torch.float64)
    var = target.comm.allreduce_((density * twice).sum().reshape(1))[0] / math.prod(shape)
    spec.local.mul_(density.sqrt_())
    del density
    field = irfftn(spec)
    del spec
    field.local.mul_(sigma / math.sqrt(float(var)))
    if not periodic:
        field = redistribute(field, target)
    out = field.local.to(dtype).contiguous()
    return GridTensor(out, target) if partition is not None else out[:, 0]


def darcy_coefficient(field: Union[torch.Tensor, "GridTensor"], high: float = 12.0, low: float = 3.0,
                      threshold: float = 0.0) -> Union[torch.Tensor, "GridTensor"]:
    """Piecewise-constant coefficient: ``high`` where ``field >= threshold``, ``low`` elsewhere (FNO's Darcy); a
    GridTensor gives a GridTensor on its grid."""
    if high <= 0 or low <= 0:
        raise ValueError(f"Darcy coefficients must be positive, but got high={high}, low={low}")
    if not isinstance(field, torch.Tensor) and hasattr(field, "map"):
        return field.map(lambda t: darcy_coefficient(t, high, low, threshold))
    return torch.where(field >= threshold, torch.full_like(field, high), torch.full_like(field, low))
