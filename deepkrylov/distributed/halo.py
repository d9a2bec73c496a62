"""Halo exchange: pad a rank's block with its neighbours' cells so that local stencils equal global ones.

Axes are filled one after another; the slab sent along axis ``a`` spans the already padded extent of the earlier
axes, so corner and edge ghosts arrive without diagonal messages, and the result equals ``torch.nn.functional.pad``
of the whole tensor. It spans the padded extent of the later axes too: the stale ghosts it carries there are
overwritten when those axes are filled, and the slab of the first split axis is then one contiguous run of
memory (for one batch and channel), sent with no packing. The backward pass is the adjoint, axis by axis in
reverse: every ghost's gradient goes back to the rank that owns the cell and is added there (DistDL's rule).
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .grid import ProcessGrid

__all__ = ["HALO_MODES", "fill_halo_", "halo", "normalize_widths", "padded_shape"]

HALO_MODES = ("zeros", "circular", "reflect", "replicate")
Widths = tuple[tuple[int, int], ...]


def normalize_widths(width: Union[int, Sequence], ndim: int) -> Widths:
    """``w`` -> ``((w, w),) * ndim``; per-axis ints or ``(lo, hi)`` pairs are accepted too."""
    if isinstance(width, int):
        items: list = [width] * ndim
    else:
        items = list(width)
        if len(items) != ndim:
            raise ValueError(f"halo width needs one entry per spatial axis ({ndim}), but got {width!r}")
    out = []
    for w in items:
        lo, hi = (w, w) if isinstance(w, int) else tuple(w)
        if not (isinstance(lo, int) and isinstance(hi, int)) or lo < 0 or hi < 0:
            raise ValueError(f"halo widths must be non-negative integers, but got {width!r}")
        out.append((int(lo), int(hi)))
    return tuple(out)


def padded_shape(local: Sequence[int], widths: Widths) -> tuple[int, ...]:
    return tuple(n + lo + hi for n, (lo, hi) in zip(local, widths))


def _check(grid: ProcessGrid, widths: Widths, mode: str) -> None:
    """Raise the same clear error on every rank before any message is sent."""
    if mode not in HALO_MODES:
        raise ValueError(f"halo mode must be one of {HALO_MODES}, but got {mode!r}")
    for a, (lo, hi) in enumerate(widths):
        sizes = grid.splits[a]
        d = len(sizes)
        for c, n in enumerate(sizes):
            # cells this block must supply to its neighbours, or to itself at a boundary
            need_by_hi = lo if (c + 1 < d or mode == "circular") else 0
            need_by_lo = hi if (c > 0 or mode == "circular") else 0
            need = max(need_by_hi, need_by_lo)
            if mode == "reflect":
                if c == 0:
                    need = max(need, lo + 1)
                if c == d - 1:
                    need = max(need, hi + 1)
            if n < need:
                raise ValueError(
                    f"halo width ({lo}, {hi}) along axis {a} with mode {mode!r} needs {need} cells from the block "
                    f"at process coordinate {c}, which has only {n} (blocks along this axis: {sizes}); use a "
                    f"smaller width, fewer ranks along axis {a}, or a larger grid"
                )


def _slab(widths: Widths, local: Sequence[int], axis: int, along: slice, later_padded: bool) -> tuple:
    """Index of a slab for axis ``axis``: ``along`` on it, the padded extent of the earlier axes, and of the later
    ones the padded extent (messages: longer contiguous runs) or the interior (boundary fills: least work)."""
    later = [slice(None) if later_padded else slice(lo, lo + n)
             for (lo, _), n in zip(widths[axis + 1:], local[axis + 1:])]
    return (slice(None),) * (2 + axis) + (along,) + tuple(later)


class _AxisPlan:
    """What filling the ghosts along one axis takes: the messages, and the boundary fills."""

    __slots__ = ("messages", "fills", "cache")

    def __init__(self) -> None:
        self.messages: list = []  # (send_index, dest, recv_index, source) for fill; swapped roles for fold
        self.fills: list = []  # (ghost_index, kind, source_index, dim)
        self.cache: dict = {}  # engine-prepared state for these messages (e.g. MPI datatypes)


@functools.lru_cache(maxsize=512)
def _plan(grid: ProcessGrid, widths: Widths, mode: str) -> tuple[_AxisPlan, ...]:
    _check(grid, widths, mode)
    local = grid.local_shape
    wrap = mode == "circular"
    plans = []
    for a, (lo, hi) in enumerate(widths):
        plan = _AxisPlan()
        plans.append(plan)
        if lo == 0 and hi == 0:
            continue
        n, d = local[a], 2 + a
        lo_nbr, hi_nbr = grid.neighbour(a, -1, wrap), grid.neighbour(a, +1, wrap)

        def m(start: int, stop: int) -> tuple:
            return _slab(widths, local, a, slice(start, stop), True)

        def v(start: int, stop: int) -> tuple:
            return _slab(widths, local, a, slice(start, stop), False)

        if lo:  # my last `lo` cells -> upper neighbour's lower ghosts; mine come from below
            plan.messages.append((m(n, n + lo), hi_nbr, m(0, lo), lo_nbr))
        if hi:  # my first `hi` cells -> lower neighbour's upper ghosts; mine come from above
            plan.messages.append((m(lo, lo + hi), lo_nbr, m(lo + n, lo + n + hi), hi_nbr))
        if mode != "circular":
            if lo and lo_nbr is None:
                src = {"zeros": None, "replicate": v(lo, lo + 1), "reflect": v(lo + 1, lo + 1 + lo)}[mode]
                plan.fills.append((v(0, lo), mode, src, d))
            if hi and hi_nbr is None:
                src = {"zeros": None, "replicate": v(lo + n - 1, lo + n), "reflect": v(lo + n - 1 - hi, lo + n - 1)}[mode]
                plan.fills.append((v(lo + n, lo + n + hi), mode, src, d))
    return tuple(plans)


def fill_halo_(buf: torch.Tensor, grid: ProcessGrid, widths: Widths, mode: str = "zeros") -> torch.Tensor:
    """Fill the ghost cells of a padded buffer in place; its interior must already hold the local block.

    This is the in-place update (like PETSc's ``DMGlobalToLocal`` ghost update) that :func:`halo` uses; call it
    directly to reuse one buffer across iterations.
    """
    comm = grid.comm
    host = _numpy_view(buf)  # numpy slicing costs a fraction of torch's per-call dispatch on small faces
    arr, flip = (host, np.flip) if host is not None else (buf, torch.Tensor.flip)
    for plan in _plan(grid, widths, mode):
        if plan.messages:
            comm.exchange_regions(buf, plan.messages, cache=plan.cache)
        for ghost, kind, src, d in plan.fills:
            arr[ghost] = 0 if kind == "zeros" else (arr[src] if kind == "replicate" else flip(arr[src], d))
    return buf


_NUMPY_DTYPES = (torch.float64, torch.float32, torch.float16, torch.complex128, torch.complex64)


def _numpy_view(buf: torch.Tensor) -> Optional[np.ndarray]:
    """A numpy array sharing ``buf``'s memory, or None where numpy cannot address it (device, bfloat16)."""
    if buf.device.type != "cpu" or buf.dtype not in _NUMPY_DTYPES or buf.is_conj() or buf.is_neg():
        return None
    return buf.detach().numpy()


def _fold_halo_(grad: torch.Tensor, grid: ProcessGrid, widths: Widths, mode: str) -> torch.Tensor:
    """Adjoint of :func:`fill_halo_`: add every ghost's gradient into the cell it was copied from."""
    comm = grid.comm
    for plan in reversed(_plan(grid, widths, mode)):
        for ghost, kind, src, d in plan.fills:
            if kind == "replicate":
                grad[src].add_(grad[ghost].sum(d, keepdim=True))
            elif kind == "reflect":
                grad[src].add_(grad[ghost].flip(d))
        if plan.messages:
            # forward: buf[recv] <- source's buf[send]; adjoint: grad[recv] goes back to source, added to its send
            comm.exchange_regions(grad, [(r, src, s, dst) for s, dst, r, src in reversed(plan.messages)], add=True)
    return grad


def _interior(widths: Widths, local: Sequence[int]) -> tuple:
    return (slice(None), slice(None)) + tuple(slice(lo, lo + n) for (lo, _), n in zip(widths, local))


class _Halo(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, grid: ProcessGrid, widths: Widths, mode: str) -> torch.Tensor:  # type: ignore[override]
        buf = x.new_empty(tuple(x.shape[:2]) + padded_shape(grid.local_shape, widths))
        buf[_interior(widths, grid.local_shape)] = x
        fill_halo_(buf, grid, widths, mode)
        ctx.grid, ctx.widths, ctx.mode = grid, widths, mode
        return buf

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        grad = _fold_halo_(g.clone(), ctx.grid, ctx.widths, ctx.mode)
        return grad[_interior(ctx.widths, ctx.grid.local_shape)], None, None, None


def halo(x: torch.Tensor, grid: ProcessGrid, width: Union[int, Sequence] = 1, mode: str = "zeros") -> torch.Tensor:
    """The local block ``x`` (batch, channels, *local) padded by ``width`` cells of neighbour data.

    At the global boundary the padding follows ``mode`` (``zeros``, ``circular``, ``reflect``, ``replicate``, as
    in ``torch.nn.functional.pad``). Differentiable; the backward is the adjoint exchange.
    """
    if mode not in HALO_MODES:
        raise ValueError(f"halo mode must be one of {HALO_MODES}, but got {mode!r}")
    widths = normalize_widths(width, grid.ndim)
    if tuple(x.shape[2:]) != grid.local_shape:
        raise ValueError(f"local block has spatial shape {tuple(x.shape[2:])}, but the grid expects {grid.local_shape}")
    _plan(grid, widths, mode)  # validates, the same on every rank, before any message
    return _Halo.apply(x, grid, widths, mode)
