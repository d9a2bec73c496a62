"""Domain-parallel FNO: forward, backward and training on GridTensor blocks equal the serial model (1, 2, 4 ranks)."""

from __future__ import annotations

import pytest
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid
from deepkrylov.operators.fno import FNO, SpectralConv
from tests.helpers import assert_matches_serial, assert_trainer_matches_serial

CASES = [
    # dim, shape, modes, padding (0.2: the Fourier layers run on a larger grid, cropped back)
    (2, (12, 10), (3, 4), 0.0),
    (2, (11, 9), (3, 3), 0.2),   # odd sizes, uneven blocks, padded 11x9 -> 15x12
    (3, (8, 6, 10), (2, 3, 3), 0.0),
    (1, (20,), (5,), 0.1),
]


@pytest.mark.parametrize("dim,shape,modes,padding", CASES)
def test_distributed_fno_equals_serial(ctx, dim, shape, modes, padding):
    torch.manual_seed(0)
    model = FNO(in_channels=2, out_channels=1, modes=modes, width=4, num_layers=2, dim=dim, padding=padding,
                projection_channels=6).double()
    x_full = torch.randn((2, 2) + shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert_matches_serial(ctx, model, x_full, ProcessGrid(ctx, shape), atol=1e-12)


def test_spectral_conv_on_a_pencil_grid_equals_serial(ctx):
    """Every axis may be split: the kept modes of each rank's wave-number box (2x1x2 ranks on 4)."""
    shape = (9, 8, 10)
    p = ctx.comm.size
    dims = (2, 1, p // 2) if p % 2 == 0 else (1, 1, p)
    torch.manual_seed(2)
    layer = SpectralConv(3, 2, (2, 3, 4), dim=3).double()
    x_full = torch.randn((2, 3) + shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert_matches_serial(ctx, layer, x_full, ProcessGrid(ctx, shape, dims=dims), atol=1e-12)


def test_domain_parallel_trainer_step_equals_serial(ctx):
    """``Trainer(grid=...)``: one epoch of two batches of FNO on GridTensor blocks == the serial Trainer."""
    assert_trainer_matches_serial(
        ctx, lambda x, y: FNO(1, 1, modes=3, width=4, num_layers=2, projection_channels=6), (12, 10), samples=4,
        n_test=2, epochs=1, batch_size=2)


def test_gridtensor_of_the_wrong_dimension_is_refused(ctx):
    model = FNO(1, 1, modes=2, width=4, num_layers=1, dim=2).double()
    x = GridTensor.from_global(torch.zeros(1, 1, 8, 8, 8, dtype=torch.float64), ProcessGrid(ctx, (8, 8, 8)))
    with pytest.raises(ValueError, match="this FNO is 2D"):
        model(x)
