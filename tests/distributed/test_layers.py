"""HaloConv layers on a GridTensor equal the torch.nn layer on the whole tensor, forward and backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers import assert_matches_serial

from deepkrylov.distributed import (
    GridTensor, HaloConv1d, HaloConv2d, HaloConv3d, HaloConvTranspose1d, HaloConvTranspose2d,
    HaloConvTranspose3d, ProcessGrid,
)

CONV = {1: HaloConv1d, 2: HaloConv2d, 3: HaloConv3d}
CONV_T = {1: HaloConvTranspose1d, 2: HaloConvTranspose2d, 3: HaloConvTranspose3d}
SHAPES = {1: (40,), 2: (24, 18), 3: (12, 10, 8)}


def _data(shape, channels, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((2, channels) + shape, generator=g, dtype=torch.float64)


def _check_layer(ctx, layer, x_full, grid, **fwd):
    """Forward equal to serial; input and (all-reduced) parameter gradients equal to serial."""
    return assert_matches_serial(ctx, layer, x_full, grid, atol=1e-12, param_rtol=1e-11, **fwd)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect", "replicate"])
def test_conv_stride1_equals_torch(ctx, nd, kernel, mode):
    if nd == 3 and kernel == 7 and mode in ("reflect", "circular"):
        kernel = 5  # (12, 10, 8) on 4 ranks has blocks of 4: too thin for a 3-cell reflected halo
    torch.manual_seed(kernel)
    layer = CONV[nd](4, 6, kernel, padding=kernel // 2, padding_mode=mode, groups=2, bias=True).double()
    grid = ProcessGrid(ctx, SHAPES[nd])
    _check_layer(ctx, layer, _data(SHAPES[nd], 4, nd), grid)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kernel,padding", [(3, 1), (2, 0), (4, 1), (5, 2)])
def test_conv_stride2_restriction(ctx, nd, kernel, padding):
    torch.manual_seed(1)
    layer = CONV[nd](3, 2, kernel, stride=2, padding=padding, bias=True).double()
    shape = tuple(s + 1 for s in SHAPES[nd]) if kernel == 5 else SHAPES[nd]  # odd sizes too
    grid = ProcessGrid(ctx, shape)
    _check_layer(ctx, layer, _data(shape, 3, 2), grid)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_restrict_then_prolong_roundtrip_grid(ctx, nd):
    """Stride-2 conv then the stride-2 transposed conv (MgNO's R and RT) land back on the original blocks."""
    torch.manual_seed(2)
    grid = ProcessGrid(ctx, SHAPES[nd])
    down = CONV[nd](3, 5, 3, stride=2, padding=1).double()
    up = CONV_T[nd](5, 3, 4, stride=2, padding=1).double()
    x_full = _data(SHAPES[nd], 3, 3)
    coarse = down(GridTensor.from_global(x_full, grid))
    fine = up(coarse, output_grid=grid)
    assert fine.grid == grid
    torch.testing.assert_close(fine.gather(), up(down(x_full)), rtol=0, atol=1e-12)
    _check_layer(ctx, up, down(x_full).detach(), coarse.grid, output_grid=grid)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kernel,stride,padding", [(4, 2, 1), (2, 2, 0), (3, 1, 1), (3, 2, 1)])
def test_conv_transpose_equals_torch(ctx, nd, kernel, stride, padding):
    torch.manual_seed(3)
    shape = tuple(s // 2 for s in SHAPES[nd])
    layer = CONV_T[nd](3, 2, kernel, stride=stride, padding=padding, bias=True).double()
    _check_layer(ctx, layer, _data(shape, 3, 4), ProcessGrid(ctx, shape))


def test_plain_tensor_is_plain_torch_layer():
    layer = HaloConv2d(2, 3, 3, padding=1, padding_mode="circular")
    ref = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(1, 2, 8, 8)
    torch.testing.assert_close(layer(x), ref(x), rtol=0, atol=0)


def test_conv_bad_input(ctx):
    grid = ProcessGrid(ctx, (8, 8))
    x = GridTensor.from_global(torch.zeros(1, 2, 8, 8), grid)
    with pytest.raises(ValueError, match="needs a 2D convolution weight, but got 3D"):
        HaloConv3d(2, 2, 3, padding=1)(x)
    with pytest.raises(RuntimeError):
        HaloConv2d(3, 2, 3, padding=1)(x)  # channel mismatch: torch's own message
