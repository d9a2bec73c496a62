"""The domain-decomposed tensor layer: process grids, GridTensor, halo exchange, reductions, communicators.

This package knows ranks, blocks and halos, not PDEs; it imports nothing else from deepkrylov.

Example (run with ``mpiexec -n 2 python example.py``)::

    import torch
    from deepkrylov.distributed import init, ProcessGrid, GridTensor, HaloConv3d

    ctx = init()
    grid = ProcessGrid(ctx, (32, 32, 32))
    x = GridTensor.from_global(torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0)), grid)
    y = HaloConv3d(1, 4, 3, padding=1)(x)     # equals nn.Conv3d on the whole tensor
    print(ctx.rank, y.local.shape, y.norm())
"""

from .comm import Comm, MPIComm, SelfComm, TorchComm
from .context import Context, init, launch_environment
from .grid import ProcessGrid, default_dims, default_split
from .halo import HALO_MODES, HaloExchange, fill_halo_, halo
from .layers import (
    HaloConv1d,
    HaloConv2d,
    HaloConv3d,
    HaloConvTranspose1d,
    HaloConvTranspose2d,
    HaloConvTranspose3d,
    conv,
    conv_transpose,
)
from .tensor import GridTensor, as_grid_tensor, serial_grid
from .fft import SpectralGrid, fftn, ifftn, irfftn, redistribute, rfftn

__all__ = [
    "Comm", "MPIComm", "SelfComm", "TorchComm",
    "Context", "init", "launch_environment",
    "ProcessGrid", "default_dims", "default_split",
    "HALO_MODES", "HaloExchange", "fill_halo_", "halo",
    "GridTensor", "as_grid_tensor", "serial_grid",
    "HaloConv1d", "HaloConv2d", "HaloConv3d",
    "HaloConvTranspose1d", "HaloConvTranspose2d", "HaloConvTranspose3d",
    "conv", "conv_transpose",
    "SpectralGrid", "fftn", "ifftn", "rfftn", "irfftn", "redistribute",
]
