"""Distributed FFTs and the all-to-all repartition equal torch.fft on the gathered field (run on 1, 2 and 4 ranks).

Every case is checked in float64 to 1e-12: forward, inverse and backward against ``torch.fft`` on the whole tensor,
on slab and pencil decompositions with uneven blocks, and the adjoint (dot-product) test <F x, y> = <x, F* y>.
"""

from __future__ import annotations

import pytest
import torch

from deepkrylov.distributed import (
    GridTensor, ProcessGrid, SpectralGrid, default_split, fftn, ifftn, irfftn, redistribute, rfftn,
)

ATOL = 1e-12


def _uneven(n: int, p: int) -> tuple[int, ...]:
    """Blocks as uneven as DMDA allows to ask for: one cell moved from the last block to the first."""
    s = list(default_split(n, p))
    if p > 1 and s[-1] > 1:
        s[0], s[-1] = s[0] + 1, s[-1] - 1
    return tuple(s)


def _grid(ctx, shape: tuple, layout: str) -> ProcessGrid:
    p, nd = ctx.comm.size, len(shape)
    if layout == "default":
        return ProcessGrid(ctx, shape)
    if layout == "slab":  # the first axis split
        dims = (p,) + (1,) * (nd - 1)
    elif layout == "last":  # the last (rfft) axis split: a repartition comes first
        dims = (1,) * (nd - 1) + (p,)
    elif layout == "pencil":  # the first two axes split (2x2 on 4 ranks)
        a = 2 if p % 2 == 0 and p > 2 else 1
        dims = (a, p // a) + (1,) * (nd - 2)
    elif layout == "cube":  # every axis split where the ranks allow it (2x1x2 on 4)
        a = 2 if p % 2 == 0 and p > 2 else 1
        dims = (a,) + (1,) * (nd - 2) + (p // a,)
    else:
        raise AssertionError(layout)
    return ProcessGrid(ctx, shape, splits=[_uneven(n, d) for n, d in zip(shape, dims)])


CASES = [
    ((8, 6, 10), "default"),
    ((8, 6, 10), "slab"),
    ((8, 6, 10), "pencil"),
    ((8, 6, 10), "cube"),
    ((7, 6, 9), "last"),
    ((9, 10), "slab"),
    ((9, 10), "last"),
    ((20,), "slab"),  # 1D: the four-step algorithm (4 x 5)
    ((11,), "slab"),  # 1D, a prime length: gathered
]
IDS = [f"{'x'.join(map(str, s))}-{lay}" for s, lay in CASES]


def _field(shape: tuple, seed: int, complex_: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, 3) + shape, generator=g, dtype=torch.float64)
    if complex_:
        x = torch.complex(x, torch.randn((2, 3) + shape, generator=g, dtype=torch.float64))
    return x


def _dims(shape: tuple) -> tuple:
    return tuple(range(2, 2 + len(shape)))


@pytest.mark.parametrize("shape,layout", CASES, ids=IDS)
def test_rfftn_irfftn_and_backward_equal_torch(ctx, shape, layout):
    norm = (None, "ortho", "forward")[CASES.index((shape, layout)) % 3]
    grid = _grid(ctx, shape, layout)
    x = _field(shape, 1)
    xl = GridTensor.from_global(x, grid).local.clone().requires_grad_(True)
    X = rfftn(GridTensor(xl, grid), norm=norm)
    assert isinstance(X.grid, SpectralGrid) and X.grid.real and X.grid.physical == grid
    xs = x.clone().requires_grad_(True)
    ref = torch.fft.rfftn(xs, dim=_dims(shape), norm=norm)
    assert X.shape == tuple(ref.shape)
    torch.testing.assert_close(X.gather(), ref, rtol=0, atol=ATOL)
    # backward of a real loss on the spectrum: this rank's block of the serial gradient
    w = _field(tuple(ref.shape[2:]), 2, complex_=True)
    (X.local * w[(slice(None), slice(None)) + X.grid.local_slices]).real.sum().backward()
    (ref * w).real.sum().backward()
    torch.testing.assert_close(xl.grad, xs.grad[(slice(None), slice(None)) + grid.local_slices], rtol=0, atol=ATOL)
    # inverse: back on the physical grid, equal to x and to torch's irfftn of the spectrum
    back = irfftn(X, norm=norm)
    assert back.grid == grid
    torch.testing.assert_close(back.gather(), x, rtol=0, atol=ATOL)
    Y = GridTensor.from_global(w, X.grid)
    torch.testing.assert_close(irfftn(Y, norm=norm).gather(), torch.fft.irfftn(w, s=shape, dim=_dims(shape), norm=norm),
                               rtol=0, atol=ATOL)


@pytest.mark.parametrize("shape,layout", CASES, ids=IDS)
def test_complex_fftn_ifftn_equal_torch(ctx, shape, layout):
    grid = _grid(ctx, shape, layout)
    x = _field(shape, 3, complex_=True)
    xg = GridTensor.from_global(x, grid)
    X = fftn(xg, norm="ortho")
    torch.testing.assert_close(X.gather(), torch.fft.fftn(x, dim=_dims(shape), norm="ortho"), rtol=0, atol=ATOL)
    torch.testing.assert_close(ifftn(X, norm="ortho").gather(), x, rtol=0, atol=ATOL)
    # the other direction: ifftn of a field on a physical grid, and fftn back from its spectral layout
    Z = ifftn(xg)
    torch.testing.assert_close(Z.gather(), torch.fft.ifftn(x, dim=_dims(shape)), rtol=0, atol=ATOL)
    torch.testing.assert_close(fftn(Z).gather(), x, rtol=0, atol=ATOL)
    # a real field on a physical grid goes through fftn as complex
    torch.testing.assert_close(fftn(GridTensor.from_global(x.real, grid)).gather(),
                               torch.fft.fftn(x.real, dim=_dims(shape)), rtol=0, atol=ATOL)


def _cdot(a: GridTensor, b: GridTensor) -> torch.Tensor:
    """Re <a, b> summed over ranks (complex or real blocks)."""
    part = (a.local.conj() * b.local).real.sum() if a.dtype.is_complex else (a.local * b.local).sum()
    return a.grid.comm.allreduce_(part.detach().clone())


@pytest.mark.parametrize("shape,layout", CASES, ids=IDS)
def test_adjoint_dot_products(ctx, shape, layout):
    grid = _grid(ctx, shape, layout)
    # repartition onto another decomposition, cropping and zero-padding (offset), and its reverse
    other_shape = tuple(n + 3 for n in shape)
    other = ProcessGrid(ctx, other_shape, dims=tuple(reversed(grid.dims)) if len(shape) > 1 else None)
    off = tuple(-1 if a % 2 else 2 for a in range(len(shape)))
    x, y = GridTensor.from_global(_field(shape, 4), grid), GridTensor.from_global(_field(other_shape, 5), other)
    Rx = redistribute(x, other, off)
    Rty = redistribute(y, grid, tuple(-o for o in off))
    lhs, rhs = _cdot(Rx, y), _cdot(x, Rty)
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    # and its autograd backward is that reverse move
    xl = x.local.clone().requires_grad_(True)
    (redistribute(GridTensor(xl, grid), other, off).local * y.local).sum().backward()
    torch.testing.assert_close(xl.grad, Rty.local, rtol=0, atol=0)
    # complex fftn: F* = N ifftn (unnormalised), i.e. ifftn with norm="forward"
    xc = GridTensor.from_global(_field(shape, 6, complex_=True), grid)
    Fx = fftn(xc)
    yc = GridTensor.from_global(_field(shape, 7, complex_=True), Fx.grid)
    lhs, rhs = _cdot(Fx, yc), _cdot(xc, ifftn(yc, norm="forward"))
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    # rfftn: its backward (the reverse stages) is the adjoint of the real-to-half-spectrum map
    xl = x.local.clone().requires_grad_(True)
    X = rfftn(GridTensor(xl, grid))
    yh = GridTensor.from_global(_field(X.shape[2:], 8, complex_=True), X.grid)
    (X.local.conj() * yh.local).real.sum().backward()
    lhs, rhs = _cdot(X.detach(), yh), _cdot(x, GridTensor(xl.grad, grid))
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    # irfftn's backward likewise
    yl = yh.local.clone().requires_grad_(True)
    back = irfftn(GridTensor(yl, X.grid))
    (back.local * x.local).sum().backward()
    lhs, rhs = _cdot(back.detach(), x), _cdot(yh, GridTensor(yl.grad, X.grid))
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


def test_errors(ctx):
    grid = ProcessGrid(ctx, (8, 6))
    x = GridTensor.from_global(_field((8, 6), 9), grid)
    with pytest.raises(ValueError, match="not on the SpectralGrid"):
        irfftn(x)
    with pytest.raises(ValueError, match="is not the spectral layout"):
        irfftn(GridTensor.from_global(_field((8, 6), 9, True), ProcessGrid(ctx, (8, 6))), grid=ProcessGrid(ctx, (8, 7)))
    with pytest.raises(TypeError, match="needs a real GridTensor"):
        rfftn(GridTensor.from_global(_field((8, 6), 9, True), grid))
    with pytest.raises(ValueError, match="norm must be one of"):
        rfftn(x, norm="unitary")
    with pytest.raises(TypeError, match="needs a GridTensor"):
        rfftn(torch.zeros(1, 1, 8, 6))
