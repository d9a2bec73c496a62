"""Halo exchange, reductions and gather equal the serial computation on the whole tensor (float64, 1e-12).

Runs serially and on several ranks (see test_launch.py); every rank builds the same global data from a seed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deepkrylov.distributed import HALO_MODES, GridTensor, ProcessGrid, fill_halo_
from deepkrylov.distributed.halo import padded_shape

SHAPES = [(37,), (37, 29), (11, 9, 7)]
WIDTHS = [1, 2, "asym"]


def _global(shape, batch=2, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, channels) + tuple(shape), generator=g, dtype=torch.float64)


def _widths(w, nd):
    return tuple((1, 3) if a % 2 == 0 else (2, 0) for a in range(nd)) if w == "asym" else ((w, w),) * nd


def _pad(x, widths, mode):
    flat = [v for lohi in reversed(widths) for v in lohi]
    return F.pad(x, flat, mode="constant" if mode == "zeros" else mode)


def _crop(full_padded, grid, rank, widths):
    sl = grid.local_slices_of(rank)
    idx = (slice(None), slice(None)) + tuple(slice(s.start, s.stop + lo + hi) for s, (lo, hi) in zip(sl, widths))
    return full_padded[idx]


@pytest.mark.parametrize("mode", HALO_MODES)
@pytest.mark.parametrize("width", WIDTHS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_halo_forward_backward_equals_serial_pad(ctx, shape, width, mode):
    grid = ProcessGrid(ctx, shape)
    widths = _widths(width, len(shape))
    x_full = _global(shape)
    x = GridTensor.from_global(x_full, grid).local.clone().requires_grad_(True)

    try:
        y = GridTensor(x, grid).halo(widths, mode)
    except ValueError as err:  # too wide for this decomposition: the same clear error on every rank
        assert "needs" in str(err) and "which has only" in str(err)
        pytest.skip(f"decomposition {grid.splits} too fine for widths {widths} in mode {mode}")
    ref_full = _pad(x_full, widths, mode)
    torch.testing.assert_close(y, _crop(ref_full, grid, ctx.rank, widths), rtol=0, atol=1e-12)

    # Adjoint: total loss sum_r <halo_r(x), W_r>; serial reference differentiates the same sum on one process.
    w_full = _global(ref_full.shape[2:], seed=1)
    (y * _crop(w_full, grid, ctx.rank, widths)).sum().backward()
    xs = x_full.clone().requires_grad_(True)
    padded = _pad(xs, widths, mode)
    total = sum((_crop(padded, grid, r, widths) * _crop(w_full, grid, r, widths)).sum() for r in range(grid.size))
    total.backward()
    torch.testing.assert_close(x.grad, xs.grad[(slice(None), slice(None)) + grid.local_slices], rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("bc", [(2, 3), (1, 1)], ids=["strided", "contiguous"])
def test_fill_halo_on_a_reused_buffer(ctx, shape, mode, bc):
    """A buffer updated again and again, as a solver loop does, gets persistent MPI requests: its ghosts stay
    right as the interior changes, and a rank that swaps in fresh buffers still pairs with one that reuses its own.
    One batch and channel make the first axis's faces contiguous (sent as plain runs), more make them strided."""
    grid = ProcessGrid(ctx, shape)
    widths = ((1, 1),) * len(shape)
    buf = torch.zeros(bc + padded_shape(grid.local_shape, widths), dtype=torch.float64)
    inner = (slice(None), slice(None)) + tuple(slice(1, 1 + n) for n in grid.local_shape)
    for step in range(5):
        x_full = _global(shape, *bc, seed=10 + step)
        target = buf if (ctx.rank % 2 == 0 or step % 2 == 0) else torch.zeros_like(buf)
        target[inner] = GridTensor.from_global(x_full, grid).local
        fill_halo_(target, grid, widths, mode)
        torch.testing.assert_close(target, _crop(_pad(x_full, widths, mode), grid, ctx.rank, widths), rtol=0, atol=0)


@pytest.mark.parametrize("mode", HALO_MODES)
def test_halo_adjoint_dot_product(ctx, mode):
    """<H x, y> = <x, H* y>, each side summed over ranks."""
    grid = ProcessGrid(ctx, (13, 10))
    x = GridTensor.from_global(_global((13, 10), seed=2), grid).local.clone().requires_grad_(True)
    hx = GridTensor(x, grid).halo(2, mode)
    yv = torch.randn(hx.shape, generator=torch.Generator().manual_seed(3 + ctx.rank), dtype=torch.float64)
    (hty,) = torch.autograd.grad(hx, x, yv)
    lhs = ctx.comm.allreduce_((hx.detach() * yv).sum().reshape(1))
    rhs = ctx.comm.allreduce_((x.detach() * hty).sum().reshape(1))
    torch.testing.assert_close(lhs, rhs, rtol=1e-13, atol=0)


def test_halo_gradcheck_serial(ctx):
    if ctx.size > 1:
        pytest.skip("gradcheck perturbs one rank's input at a time; the adjoint tests cover several ranks")
    grid = ProcessGrid(ctx, (4, 5))
    for mode in HALO_MODES:
        x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: GridTensor(t, grid).halo((1, 2), mode), (x,))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_reductions_and_gather(ctx, shape):
    grid = ProcessGrid(ctx, shape)
    a_full, b_full = _global(shape, seed=4), _global(shape, seed=5)
    a_loc = GridTensor.from_global(a_full, grid).local.clone().requires_grad_(True)
    a, b = GridTensor(a_loc, grid), GridTensor.from_global(b_full, grid)
    torch.testing.assert_close(a.dot(b), (a_full * b_full).sum(), rtol=1e-12, atol=0)
    torch.testing.assert_close(a.sum(), a_full.sum(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.norm(), a_full.norm(), rtol=1e-12, atol=0)
    torch.testing.assert_close(a.dot(b, keep_batch=True), (a_full * b_full).flatten(1).sum(1), rtol=1e-12, atol=0)
    torch.testing.assert_close(a.max_abs(), a_full.abs().max(), rtol=0, atol=0)
    torch.testing.assert_close(a.gather(), a_full, rtol=0, atol=0)
    g0 = a.gather(root=0)
    assert (g0 is not None) == (ctx.rank == 0)
    if g0 is not None:
        torch.testing.assert_close(g0, a_full, rtol=0, atol=0)
    scattered = GridTensor.scatter(a_full if ctx.rank == 0 else None, grid, root=0)
    torch.testing.assert_close(scattered.local, a.local.detach(), rtol=0, atol=0)

    # gradients of reductions and of gather equal the serial ones
    loss = a.norm() * a.dot(b) + (a.gather() ** 3).sum()
    loss.backward()
    af = a_full.clone().requires_grad_(True)
    (af.norm() * (af * b_full).sum() + (af**3).sum()).backward()
    torch.testing.assert_close(a_loc.grad, af.grad[(slice(None), slice(None)) + grid.local_slices], rtol=1e-12, atol=1e-12)


def test_pointwise_arithmetic_is_local(ctx):
    grid = ProcessGrid(ctx, (9, 8))
    x_full, y_full = _global((9, 8), seed=6), _global((9, 8), seed=7)
    x, y = GridTensor.from_global(x_full, grid), GridTensor.from_global(y_full, grid)
    z = (2.0 * x - y / 3.0) * x + 1.5 - (-y)
    torch.testing.assert_close(z.gather(), (2.0 * x_full - y_full / 3.0) * x_full + 1.5 + y_full)
    w = x.clone().add_(y, alpha=-0.5).mul_(2.0)
    torch.testing.assert_close(w.gather(), (x_full - 0.5 * y_full) * 2.0)
    assert z.shape == x_full.shape and z.grid == grid


def test_process_grid_blocks_cover_the_grid(ctx):
    grid = ProcessGrid(ctx, (37, 29))
    sizes = ctx.comm.allgather_object(grid.local_shape)
    assert sum(s[0] * s[1] for s in sizes) == 37 * 29
    for axis, n in enumerate((37, 29)):
        split = grid.splits[axis]
        assert split == tuple(n // len(split) + (r < n % len(split)) for r in range(len(split)))


# ---- bad input -------------------------------------------------------------------------------------------
def test_bad_input_errors(ctx):
    grid = ProcessGrid(ctx, (8, 6))
    with pytest.raises(ValueError, match=r"shape \(batch, channels, \*\(8, 6\)\)"):
        GridTensor.from_global(torch.zeros(1, 1, 8, 7), grid)
    x = GridTensor.from_global(torch.zeros(1, 1, 8, 6), grid)
    with pytest.raises(ValueError, match="halo mode must be one of .* but got 'mirror'"):
        x.halo(1, "mirror")
    with pytest.raises(ValueError, match="non-negative"):
        x.halo(-1)
    other = ProcessGrid(ctx, (8, 7))
    y = GridTensor.from_global(torch.zeros(1, 1, 8, 7), other)
    with pytest.raises(ValueError, match="mismatched grids"):
        _ = x + y
    with pytest.raises(ValueError, match="mismatched grids"):
        x.dot(y)
    with pytest.raises(ValueError, match="needs .* cells from the block"):
        x.halo(9, "circular")
    with pytest.raises(ValueError, match="1, 2 or 3 spatial axes"):
        ProcessGrid(ctx, (2, 2, 2, 2))
    with pytest.raises(ValueError, match="multiply to the number of ranks"):
        ProcessGrid(ctx, (8, 6), dims=(ctx.size + 1, 1))


def test_more_ranks_than_cells(ctx):
    if ctx.size == 1:
        pytest.skip("needs several ranks")
    with pytest.raises(ValueError, match=f"more ranks than cells along axis 0: {ctx.size} ranks for 1 cells"):
        ProcessGrid(ctx, (1,))


# ---- the grid's exchange plans ----------------------------------------------------------------------------
PLAN_MODES = [*HALO_MODES, ("circular", "zeros", "reflect"), ("replicate", "circular", "zeros")]


@pytest.mark.parametrize("mode", PLAN_MODES, ids=str)
def test_exchange_plan_run_and_adjoint_run(ctx, mode):
    """run == F.pad of the whole tensor (per-axis modes too); <run x, y> = <x, adjoint_run y> over the whole padded
    space (random ghosts in x and y), summed over ranks; one plan per grid and arguments."""
    shape, widths = (11, 9, 7), ((1, 2), (2, 1), (1, 1))
    grid = ProcessGrid(ctx, shape)
    plan = grid.exchange_plan(widths, mode, torch.float64, "cpu")
    assert grid.exchange_plan(widths, mode, torch.float64, "cpu") is plan
    assert ProcessGrid(ctx, shape).exchange_plan(list(widths), mode, torch.float64, torch.device("cpu")) is plan
    modes = (mode,) * 3 if isinstance(mode, str) else mode
    x_full = _global(shape, seed=20)
    ref = x_full
    for a in range(3):
        pad = [0] * 6
        pad[2 * (2 - a): 2 * (2 - a) + 2] = widths[a]
        ref = F.pad(ref, pad, mode="constant" if modes[a] == "zeros" else modes[a])
    buf = torch.randn((2, 3) + padded_shape(grid.local_shape, widths), dtype=torch.float64)
    buf[(slice(None), slice(None)) + tuple(slice(lo, lo + n) for (lo, _), n in zip(widths, grid.local_shape))] = (
        GridTensor.from_global(x_full, grid).local)
    torch.testing.assert_close(plan.run(buf), _crop(ref, grid, ctx.rank, widths), rtol=0, atol=0)

    g = torch.Generator().manual_seed(30 + ctx.rank)
    x = torch.randn(buf.shape, generator=g, dtype=torch.float64)
    y = torch.randn(buf.shape, generator=g, dtype=torch.float64)
    lhs = ctx.comm.allreduce_((plan.run(x.clone()) * y).sum().reshape(1))
    rhs = ctx.comm.allreduce_((x * plan.adjoint_run(y.clone())).sum().reshape(1))
    torch.testing.assert_close(lhs, rhs, rtol=1e-13, atol=0)


@pytest.mark.parametrize("mode", ["zeros", "circular", ("circular", "zeros")], ids=str)
def test_exchange_plan_faces_equal_the_halo(ctx, mode):
    """faces(block): the slabs next to the block along each axis, as the padded halo holds them (no buffer)."""
    shape, widths = (13, 10), ((1, 2), (2, 1))
    grid = ProcessGrid(ctx, shape)
    plan = grid.exchange_plan(widths, mode, torch.float64, "cpu")
    block = GridTensor.from_global(_global(shape, seed=40), grid).local
    padded = GridTensor(block, grid).halo(widths, mode)
    modes = (mode,) * 2 if isinstance(mode, str) else mode
    for a, (below, above) in enumerate(plan.faces(block)):
        (lo, hi), n = widths[a], grid.local_shape[a]
        inner = [slice(None), slice(None)] + [slice(w, w + m) for (w, _), m in zip(widths, grid.local_shape)]
        for face, sl, nbr in ((below, slice(0, lo), grid.neighbour(a, -1, modes[a] == "circular")),
                              (above, slice(lo + n, lo + n + hi), grid.neighbour(a, +1, modes[a] == "circular"))):
            assert (face is None) == (nbr is None)
            if face is not None:
                idx = list(inner)
                idx[2 + a] = sl
                assert face.is_contiguous()
                torch.testing.assert_close(face, padded[tuple(idx)], rtol=0, atol=0)
    with pytest.raises(ValueError, match="faces\\(\\) needs 'zeros' or 'circular' modes"):
        grid.exchange_plan(widths, "reflect").faces(block)
    with pytest.raises(ValueError, match="this exchange plan takes torch.float64 tensors of shape"):
        plan.run(block)
