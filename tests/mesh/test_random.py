"""Random fields: covariance against the kernel, variance, seeds, rank-count independence, Darcy thresholds."""

from __future__ import annotations

import math

import pytest
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid
from deepkrylov.mesh import StructuredGrid, darcy_coefficient, gaussian_random_field


@pytest.mark.parametrize("periodic", [True, False])
def test_rbf_covariance_matches_kernel(periodic):
    grid = StructuredGrid((64, 64))
    f = gaussian_random_field(grid, kernel="rbf", length=0.1, sigma=2.0, batch=300, seed=1, periodic=periodic)
    a = f[:, 16:48, 8:40]
    assert abs(a.var().item() - 4.0) < 0.25
    for lag in (2, 5, 9):
        emp = (f[:, 16:48, 8:40] * f[:, 16:48, 8 + lag:40 + lag]).mean().item() / 4.0
        assert abs(emp - math.exp(-((lag / 64) ** 2) / (2 * 0.01))) < 0.06, lag


def test_matern_variance_and_smoothness_order():
    grid = StructuredGrid((128,))
    rough = gaussian_random_field(grid, kernel="matern", length=0.1, nu=0.5, batch=400, seed=2)
    smooth = gaussian_random_field(grid, kernel="matern", length=0.1, nu=2.5, batch=400, seed=2)
    for f in (rough, smooth):
        assert abs(f.var().item() - 1.0) < 0.1
    # rougher fields have larger increments between neighbouring cells
    assert (rough.diff(dim=1) ** 2).mean() > 3 * (smooth.diff(dim=1) ** 2).mean()


def test_seeded_and_identical_on_any_rank_count(ctx):
    grid = StructuredGrid((20, 18))
    f1 = gaussian_random_field(grid, seed=5)
    assert torch.equal(f1, gaussian_random_field(grid, seed=5))
    assert not torch.equal(f1, gaussian_random_field(grid, seed=6))
    pg = ProcessGrid(ctx, grid.shape)
    block = GridTensor.from_global(gaussian_random_field(grid, seed=5)[:, None], pg)
    torch.testing.assert_close(block.gather()[:, 0], f1, rtol=0, atol=0)


@pytest.mark.parametrize("shape,periodic,uneven", [((20, 18), False, True), ((9, 8, 10), True, False),
                                                   ((9, 8, 10), False, True), ((30,), False, False)])
def test_distributed_field_equals_serial_without_a_whole_grid(ctx, shape, periodic, uneven):
    """``partition=``: noise drawn per block and filtered by the distributed FFT give the serial field's blocks."""
    grid = StructuredGrid(shape, extent=[0.5 * (a + 1) for a in range(len(shape))])
    serial = gaussian_random_field(grid, kernel="matern", length=0.2, batch=2, seed=11, periodic=periodic)
    pg = ProcessGrid(ctx, shape)
    if uneven and ctx.comm.size > 1:  # the first split axis as uneven as it gets: one cell on the first rank
        ax = next(a for a, d in enumerate(pg.dims) if d > 1)
        splits = list(pg.splits)
        splits[ax] = (1,) + tuple(pg.splits[ax][1:-1]) + (pg.splits[ax][-1] + pg.splits[ax][0] - 1,)
        pg = ProcessGrid(ctx, shape, splits=splits)
    f = gaussian_random_field(grid, kernel="matern", length=0.2, batch=2, seed=11, periodic=periodic, partition=pg)
    assert isinstance(f, GridTensor) and f.grid == pg and f.shape == (2, 1) + shape
    torch.testing.assert_close(f.local[:, 0], serial[(slice(None),) + pg.local_slices], rtol=0, atol=1e-12)
    a = darcy_coefficient(f)
    assert isinstance(a, GridTensor) and torch.equal(a.local[:, 0], darcy_coefficient(f.local[:, 0]))
    with pytest.raises(ValueError, match="partition is over a grid of shape"):
        gaussian_random_field(StructuredGrid(shape[:-1] + (shape[-1] + 1,)), partition=pg)


def test_generator_draws_the_seed():
    grid = StructuredGrid((12, 10))
    a = gaussian_random_field(grid, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, gaussian_random_field(grid, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(a, gaussian_random_field(grid, generator=torch.Generator().manual_seed(4)))


def test_darcy_coefficient_thresholds():
    f = torch.tensor([-1.0, 0.0, 2.0])
    assert darcy_coefficient(f).tolist() == [3.0, 12.0, 12.0]
    assert darcy_coefficient(f, high=12, low=4).tolist() == [4.0, 12.0, 12.0]
    with pytest.raises(ValueError, match="positive"):
        darcy_coefficient(f, low=0)
    with pytest.raises(ValueError, match="kernel must be one of"):
        gaussian_random_field(StructuredGrid((4,)), kernel="exp")
