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


def test_darcy_coefficient_thresholds():
    f = torch.tensor([-1.0, 0.0, 2.0])
    assert darcy_coefficient(f).tolist() == [3.0, 12.0, 12.0]
    assert darcy_coefficient(f, high=12, low=4).tolist() == [4.0, 12.0, 12.0]
    with pytest.raises(ValueError, match="positive"):
        darcy_coefficient(f, low=0)
    with pytest.raises(ValueError, match="kernel must be one of"):
        gaussian_random_field(StructuredGrid((4,)), kernel="exp")
