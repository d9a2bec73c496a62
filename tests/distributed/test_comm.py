"""The variable-size collectives of every engine (alltoall, gatherv, scatterv, allgatherv) against the elements
each rank must end up with, and their adjoints (DistDL-style dot-product tests, summed over ranks).

Runs serially and on several ranks with both engines (see test_launch.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

DTYPES = [torch.float64, torch.complex128, torch.int64, torch.float16, torch.bool]


def _count(src: int, dst: int) -> int:
    """Uneven per-peer sizes, zero for some pairs: 0..3 elements."""
    return (2 * src + dst) % 4


def _values(src: int, dst: int, dtype: torch.dtype) -> torch.Tensor:
    """The elements ``src`` sends to ``dst``: distinct per pair, so any misrouting shows."""
    v = torch.arange(_count(src, dst), dtype=torch.float64) + 100 * src + 10 * dst
    if dtype == torch.bool:
        return (v.to(torch.int64) % 3) == 1
    if dtype.is_complex:
        return torch.complex(v, -v).to(dtype)
    return v.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_alltoall_uneven_counts(ctx, dtype):
    comm, me = ctx.comm, ctx.rank
    send = torch.cat([_values(me, p, dtype) for p in range(comm.size)])
    send_counts = [_count(me, p) for p in range(comm.size)]
    recv_counts = [_count(p, me) for p in range(comm.size)]
    got = comm.alltoall(send, send_counts, recv_counts)
    expected = torch.cat([_values(p, me, dtype) for p in range(comm.size)])
    assert got.dtype == dtype and got.shape == expected.shape
    assert torch.equal(got, expected)
    # into a caller's buffer, from a non-contiguous send
    out = torch.empty(sum(recv_counts), dtype=dtype)
    strided = torch.stack([send, send], 1)[:, 0]
    assert comm.alltoall(strided, send_counts, recv_counts, out=out) is out
    assert torch.equal(out, expected)


def test_alltoall_adjoint(ctx):
    """<A x, y> = <x, A* y> with A* = the alltoall with the count lists swapped."""
    comm, me = ctx.comm, ctx.rank
    g = torch.Generator().manual_seed(me)
    sc = [(me + 3 * p) % 5 + 1 for p in range(comm.size)]
    rc = [(p + 3 * me) % 5 + 1 for p in range(comm.size)]
    x = torch.randn(sum(sc), generator=g, dtype=torch.float64)
    y = torch.randn(sum(rc), generator=g, dtype=torch.float64)
    ax, aty = comm.alltoall(x, sc, rc), comm.alltoall(y, rc, sc)
    lhs = comm.allreduce_((ax * y).sum().reshape(1))
    rhs = comm.allreduce_((x * aty).sum().reshape(1))
    torch.testing.assert_close(lhs, rhs, rtol=1e-13, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("root", ["first", "last"])
def test_gatherv_scatterv_allgatherv(ctx, dtype, root):
    comm, me = ctx.comm, ctx.rank
    root = 0 if root == "first" else comm.size - 1
    counts = [_block(p, dtype).numel() for p in range(comm.size)]
    whole = torch.cat([_block(p, dtype) for p in range(comm.size)])
    mine = _block(me, dtype)
    assert mine.numel() == counts[me]

    got = comm.gatherv(mine, counts, root=root)
    assert (got is None) == (me != root)
    if got is not None:
        assert torch.equal(got, whole)
    part = comm.scatterv(whole if me == root else None, counts, root=root, dtype=dtype)
    assert part.dtype == dtype and torch.equal(part, mine)
    out = torch.empty(counts[me], dtype=dtype)
    assert comm.scatterv(whole if me == root else None, counts, root=root, out=out) is out and torch.equal(out, mine)
    assert torch.equal(comm.allgatherv(mine, counts), whole)


def _block(rank: int, dtype: torch.dtype) -> torch.Tensor:
    n = _count(rank, rank + 1) + 1
    v = torch.arange(n, dtype=torch.float64) * 2 + 1000 * rank
    if dtype == torch.bool:
        return (v.to(torch.int64) % 4) == 0
    return torch.complex(v, v + 1).to(dtype) if dtype.is_complex else v.to(dtype)


def test_gatherv_scatterv_adjoint(ctx):
    """<G x, y>_root = <x, S y>: the scatter from the root is the adjoint of the gather to it."""
    comm, me = ctx.comm, ctx.rank
    counts = [3 + (p % 3) for p in range(comm.size)]
    x = torch.randn(counts[me], generator=torch.Generator().manual_seed(7 + me), dtype=torch.float64)
    y = torch.randn(sum(counts), generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    gx = comm.gatherv(x, counts, root=0)
    sy = comm.scatterv(y if me == 0 else None, counts, root=0, dtype=torch.float64)
    lhs = comm.allreduce_(((gx * y).sum() if me == 0 else torch.zeros((), dtype=torch.float64)).reshape(1))
    rhs = comm.allreduce_((x * sy).sum().reshape(1))
    torch.testing.assert_close(lhs, rhs, rtol=1e-13, atol=0)


def test_bad_counts_and_root(ctx):
    comm = ctx.comm
    x = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"send_counts must be {comm.size} non-negative element counts"):
        comm.alltoall(x, [4] * (comm.size + 1), [4] * comm.size)
    with pytest.raises(ValueError, match=r"root must be a rank in \[0, "):
        comm.gatherv(x, [4] * comm.size, root=comm.size)
    with pytest.raises(ValueError, match="send has 4 elements, but the counts add up to 5"):
        comm.allgatherv(x, [5] * comm.size)


# ---- GridTensor.scatter / gather(root): blocks only ---------------------------------------------------------------
def _uneven_grid(ctx, shape):
    """Blocks of different sizes along every split axis (the last block takes the remainder)."""
    from deepkrylov.distributed import ProcessGrid, default_dims

    dims = default_dims(ctx.size, shape)
    splits = [tuple([1 + i for i in range(d - 1)] + [n - sum(1 + i for i in range(d - 1))]) for n, d in zip(shape, dims)]
    return ProcessGrid(ctx, shape, dims=dims, splits=splits)


@pytest.mark.parametrize("shape", [(23,), (13, 10), (9, 8, 7)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
def test_scatter_gather_round_trip_uneven_blocks(ctx, shape, dtype):
    from deepkrylov.distributed import GridTensor

    grid = _uneven_grid(ctx, shape)
    full = torch.randn((2, 3) + shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    for root in {0, ctx.size - 1}:
        x = GridTensor.scatter(full if ctx.rank == root else None, grid, root=root)
        assert torch.equal(x.local, full[(slice(None), slice(None)) + grid.local_slices])
        back = x.gather(root=root)
        assert (back is None) == (ctx.rank != root)
        if back is not None:
            assert torch.equal(back, full)
    assert torch.equal(GridTensor.from_global(full, grid).gather(), full)


def test_scatter_gather_adjoint_and_gather_gradient(ctx):
    """<gather_root(x), y> = <x, scatter(y)>; the all-gather's gradient is the slice of the serial one."""
    from deepkrylov.distributed import GridTensor

    grid = _uneven_grid(ctx, (13, 10))
    x_full = torch.randn(1, 2, 13, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y_full = torch.randn(1, 2, 13, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = GridTensor.from_global(x_full, grid)
    gx = x.gather(root=0)
    sy = GridTensor.scatter(y_full if ctx.rank == 0 else None, grid, root=0)
    lhs = ctx.comm.allreduce_(((gx * y_full).sum() if ctx.rank == 0 else torch.zeros((), dtype=torch.float64)).reshape(1))
    rhs = ctx.comm.allreduce_((x.local * sy.local).sum().reshape(1))
    torch.testing.assert_close(lhs, rhs, rtol=1e-13, atol=0)

    leaf = x.local.clone().requires_grad_(True)
    (GridTensor(leaf, grid).gather() * y_full).sum().backward()
    assert torch.equal(leaf.grad, y_full[(slice(None), slice(None)) + grid.local_slices])


def test_scatter_and_gather_to_root_allocate_blocks_only_elsewhere(ctx):
    """Off the root no tensor larger than the block is ever allocated (the whole field exists on the root only)."""
    from torch.profiler import ProfilerActivity, profile

    from deepkrylov.distributed import GridTensor

    grid = _uneven_grid(ctx, (40, 30))
    full = torch.randn(1, 2, 40, 30, dtype=torch.float64)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        x = GridTensor.scatter(full if ctx.rank == 0 else None, grid, root=0)
        x.gather(root=0)
    largest = max((e.cpu_memory_usage for e in prof.events()), default=0)
    block_bytes = x.local.numel() * x.local.element_size()
    if ctx.size == 1:  # one rank: the block is the whole field, and nothing bigger than it is allocated
        assert largest <= block_bytes == full.numel() * full.element_size()
    elif ctx.rank == 0:
        assert largest >= full.numel() * full.element_size()  # the probe sees the root's whole tensor
    else:
        assert 0 < largest <= block_bytes < full.numel() * full.element_size()



def test_as_grid_tensor_views_a_plain_tensor_on_one_rank():
    """The entry-point conversion: a plain tensor is a view on the cached one-rank grid in every accepted layout,
    ``restore`` gives back the caller's shape, a GridTensor passes through, and a bad layout names the shape."""
    from deepkrylov.distributed import as_grid_tensor, serial_grid

    sp = (4, 5)
    for shape, lead in (((4, 5), (1, 1)), ((3, 4, 5), (3, 1)), ((3, 2, 4, 5), (3, 2))):
        x = torch.arange(float(math.prod(shape))).reshape(shape)
        g, restore = as_grid_tensor(x, sp)
        assert g.grid is serial_grid(sp) and tuple(g.local.shape) == lead + sp
        assert g.local.data_ptr() == x.data_ptr() and torch.equal(restore(g * 2), 2 * x)
        assert float(g.norm()) == float(x.norm())
    for shape, local in (((7,), (1, 1, 7)), ((3, 7), (3, 1, 7)), ((3, 2, 4, 5), (3, 1, 40))):
        g, restore = as_grid_tensor(torch.ones(shape))
        assert tuple(g.local.shape) == local and restore(g).shape == shape
    g = as_grid_tensor(torch.ones(2, 4, 5), sp)[0]
    assert as_grid_tensor(g)[0] is g and as_grid_tensor(g)[1](g) is g
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        as_grid_tensor(torch.ones(4, 6), sp)
    with pytest.raises(ValueError, match="batch, channels"):
        as_grid_tensor(torch.ones(2, 2, 2, 4, 5), sp)
    with pytest.raises(TypeError, match="ndarray"):
        as_grid_tensor(np.ones((4, 5)), sp)
