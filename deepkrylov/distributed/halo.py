"""Halo exchange: pad a rank's block with its neighbours' cells so that local stencils equal global ones.

Axes are filled one after another; the slab sent along axis ``a`` spans the already padded extent of the earlier
axes, so corner and edge ghosts arrive without diagonal messages, and the result equals ``torch.nn.functional.pad``
of the whole tensor. It spans the padded extent of the later axes too: the stale ghosts it carries there are
overwritten when those axes are filled, and the slab of the first split axis is then one contiguous run of
memory (for one batch and channel), sent with no packing. The backward pass is the adjoint, axis by axis in
reverse: every ghost's gradient goes back to the rank that owns the cell and is added there (DistDL's rule).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .grid import ProcessGrid

__all__ = ["HALO_MODES", "HaloExchange", "fill_halo_", "halo", "normalize_modes", "normalize_widths", "padded_shape"]

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

    __slots__ = ("messages", "fills")

    def __init__(self) -> None:
        self.messages: list = []  # (send_index, dest, recv_index, source)
        self.fills: list = []  # (ghost_index, kind, source_index, dim)


def _axis_plans(grid: ProcessGrid, widths: Widths, modes: tuple[str, ...]) -> list[_AxisPlan]:
    local = grid.local_shape
    plans = []
    for a, ((lo, hi), mode) in enumerate(zip(widths, modes)):
        plan = _AxisPlan()
        plans.append(plan)
        if lo == 0 and hi == 0:
            continue
        n, d = local[a], 2 + a
        wrap = mode == "circular"
        lo_nbr, hi_nbr = grid.neighbour(a, -1, wrap), grid.neighbour(a, +1, wrap)

        def m(start: int, stop: int) -> tuple:
            return _slab(widths, local, a, slice(start, stop), True)

        def v(start: int, stop: int) -> tuple:
            return _slab(widths, local, a, slice(start, stop), False)

        if lo:  # my last `lo` cells -> upper neighbour's lower ghosts; mine come from below
            plan.messages.append((m(n, n + lo), hi_nbr, m(0, lo), lo_nbr))
        if hi:  # my first `hi` cells -> lower neighbour's upper ghosts; mine come from above
            plan.messages.append((m(lo, lo + hi), lo_nbr, m(lo + n, lo + n + hi), hi_nbr))
        if not wrap:
            if lo and lo_nbr is None:
                src = {"zeros": None, "replicate": v(lo, lo + 1), "reflect": v(lo + 1, lo + 1 + lo)}[mode]
                plan.fills.append((v(0, lo), mode, src, d))
            if hi and hi_nbr is None:
                src = {"zeros": None, "replicate": v(lo + n - 1, lo + n), "reflect": v(lo + n - 1 - hi, lo + n - 1)}[mode]
                plan.fills.append((v(lo + n, lo + n + hi), mode, src, d))
    return plans


def normalize_modes(mode: Union[str, Sequence[str]], ndim: int) -> tuple[str, ...]:
    """One boundary mode for every axis, or one per axis, checked against :data:`HALO_MODES`."""
    modes = (mode,) * ndim if isinstance(mode, str) else tuple(mode)
    if len(modes) != ndim or any(m not in HALO_MODES for m in modes):
        raise ValueError(f"halo mode must be one of {HALO_MODES} (or one per axis, {ndim} axes), but got {mode!r}")
    return modes


class HaloExchange:
    """The halo exchange of one grid for given widths and boundary modes, set up once and run many times (like
    PETSc's ``VecScatter`` behind ``DMGlobalToLocal``). Get it from :meth:`ProcessGrid.exchange_plan`, which caches it.

    ``run(buf)`` fills the ghost cells of a padded buffer ``(batch, channels, *padded)`` in place from its interior;
    ``adjoint_run(buf)`` is its adjoint, in place: every ghost's value is added into the cell it was copied from
    (on its owner; DistDL's rule), and the ghosts are zeroed. ``faces(block)`` gives the neighbours' slabs
    of an unpadded block without a padded copy (what a one-pass stencil kernel reads). The messages of each axis go
    through the engine's executor (:meth:`Comm.exchange`; MPI: datatypes and persistent requests).
    """

    def __init__(self, grid: ProcessGrid, widths: Widths, modes: tuple[str, ...], dtype: torch.dtype,
                 device: torch.device) -> None:
        for mode in set(modes):
            _check(grid, tuple(w if m == mode else (0, 0) for w, m in zip(widths, modes)), mode)
        self.grid, self.widths, self.modes, self.dtype, self.device = grid, widths, modes, dtype, device
        self.padded = padded_shape(grid.local_shape, widths)
        self._axes = _axis_plans(grid, widths, modes)
        self._executors = [grid.comm.exchange(p.messages) if p.messages else None for p in self._axes]

    def _check_buf(self, buf: torch.Tensor, padded: bool = True) -> None:
        want = self.padded if padded else self.grid.local_shape
        if tuple(buf.shape[2:]) != want or buf.dim() != 2 + len(want) or buf.dtype != self.dtype:
            raise ValueError(f"this exchange plan takes {self.dtype} tensors of shape (batch, channels, *{want}), "
                             f"but got {buf.dtype} {tuple(buf.shape)}")

    def _messages(self, buf: torch.Tensor, axis: int) -> None:
        ex = self._executors[axis]
        if ex is not None:
            ex.run(buf)

    def run(self, buf: torch.Tensor) -> torch.Tensor:
        """Fill the ghosts of ``buf`` in place (its interior must hold the local block); returns ``buf``."""
        self._check_buf(buf)
        host = _numpy_view(buf)  # numpy slicing costs a fraction of torch's per-call dispatch on small faces
        arr, flip = (host, np.flip) if host is not None else (buf, torch.Tensor.flip)
        for a, plan in enumerate(self._axes):
            self._messages(buf, a)
            for ghost, kind, src, d in plan.fills:
                arr[ghost] = 0 if kind == "zeros" else (arr[src] if kind == "replicate" else flip(arr[src], d))
        return buf

    def adjoint_run(self, buf: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`run`, in place: add every ghost into the cell it was copied from, then zero the ghosts;
        returns ``buf``."""
        self._check_buf(buf)
        for plan, ex in zip(reversed(self._axes), reversed(self._executors)):
            for ghost, kind, src, d in plan.fills:
                if kind == "replicate":
                    buf[src].add_(buf[ghost].sum(d, keepdim=True))
                elif kind == "reflect":
                    buf[src].add_(buf[ghost].flip(d))
            if ex is not None:
                ex.adjoint_run(buf)
        for a, (lo, hi) in enumerate(self.widths):  # the ghosts' values now live in their sources
            n = self.grid.local_shape[a]
            buf.narrow(2 + a, 0, lo).zero_()
            buf.narrow(2 + a, lo + n, hi).zero_()
        return buf

    def faces(self, block: torch.Tensor) -> list[tuple[Optional[torch.Tensor], Optional[torch.Tensor]]]:
        """Per axis, the slabs ``(below, above)`` adjacent to the unpadded ``block`` ``(batch, channels, *local)``:
        the lower neighbour's last ``lo`` cells and the upper neighbour's first ``hi`` cells along that axis (the
        interior extent of the other axes; no edges or corners), contiguous; ``None`` where the widths are zero or a
        ``zeros`` boundary leaves no neighbour. Only ``zeros`` and ``circular`` modes have faces."""
        if any(m not in ("zeros", "circular") for m in self.modes):
            raise ValueError(f"faces() needs 'zeros' or 'circular' modes, but the plan has {self.modes}")
        self._check_buf(block, padded=False)
        comm = self.grid.comm
        out: list = []
        for d, lo, hi, lo_nbr, hi_nbr, own in self._face_axes():
            n = block.shape[d]
            last = block.narrow(d, n - lo, lo).contiguous() if lo and hi_nbr is not None else None
            first = block.narrow(d, 0, hi).contiguous() if hi and lo_nbr is not None else None
            if own or (lo_nbr is None and hi_nbr is None):  # its own faces on a periodic axis, or none at all
                out.append((last, first))
                continue
            below = block.new_empty(block.shape[:d] + (lo,) + block.shape[d + 1:]) if lo and lo_nbr is not None else None
            above = block.new_empty(block.shape[:d] + (hi,) + block.shape[d + 1:]) if hi and hi_nbr is not None else None
            if lo:  # my last cells go up while the lower neighbour's come in; then the other way
                comm.sendrecv(last, hi_nbr, below, lo_nbr)
            if hi:
                comm.sendrecv(first, lo_nbr, above, hi_nbr)
            out.append((below, above))
        return out

    def _face_axes(self) -> list[tuple]:
        """Per axis: tensor dim, widths, neighbours below and above, and whether both are this rank (cached)."""
        axes = self.__dict__.get("_faces_cache")
        if axes is None:
            grid, axes = self.grid, []
            for a, ((lo, hi), mode) in enumerate(zip(self.widths, self.modes)):
                wrap = mode == "circular"
                lo_nbr, hi_nbr = grid.neighbour(a, -1, wrap), grid.neighbour(a, +1, wrap)
                axes.append((2 + a, lo, hi, lo_nbr, hi_nbr, lo_nbr == grid.rank and hi_nbr == grid.rank))
            self.__dict__["_faces_cache"] = axes
        return axes


def fill_halo_(buf: torch.Tensor, grid: ProcessGrid, widths: Union[int, Sequence], mode: Union[str, Sequence[str]] = "zeros") -> torch.Tensor:
    """Fill the ghost cells of a padded buffer in place; its interior must already hold the local block.

    This is the in-place update (like PETSc's ``DMGlobalToLocal`` ghost update) that :func:`halo` uses; call it
    directly to reuse one buffer across iterations. Shorthand for ``grid.exchange_plan(...).run(buf)``.
    """
    return grid.exchange_plan(widths, mode, buf.dtype, buf.device).run(buf)


_NUMPY_DTYPES = (torch.float64, torch.float32, torch.float16, torch.complex128, torch.complex64)


def _numpy_view(buf: torch.Tensor) -> Optional[np.ndarray]:
    """A numpy array sharing ``buf``'s memory, or None where numpy cannot address it (device, bfloat16)."""
    if buf.device.type != "cpu" or buf.dtype not in _NUMPY_DTYPES or buf.is_conj() or buf.is_neg():
        return None
    return buf.detach().numpy()


def _interior(widths: Widths, local: Sequence[int]) -> tuple:
    return (slice(None), slice(None)) + tuple(slice(lo, lo + n) for (lo, _), n in zip(widths, local))


def _padded(x: torch.Tensor, plan: HaloExchange) -> torch.Tensor:
    buf = x.new_empty(tuple(x.shape[:2]) + plan.padded)
    buf[_interior(plan.widths, plan.grid.local_shape)] = x
    return plan.run(buf)


class _Halo(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, plan: HaloExchange) -> torch.Tensor:  # type: ignore[override]
        ctx.plan = plan
        return _padded(x, plan)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        plan = ctx.plan
        grad = plan.adjoint_run(g.clone(memory_format=torch.contiguous_format))
        return grad[_interior(plan.widths, plan.grid.local_shape)], None


def halo(x: torch.Tensor, grid: ProcessGrid, width: Union[int, Sequence] = 1, mode: Union[str, Sequence[str]] = "zeros") -> torch.Tensor:
    """The local block ``x`` (batch, channels, *local) padded by ``width`` cells of neighbour data.

    At the global boundary the padding follows ``mode`` (``zeros``, ``circular``, ``reflect``, ``replicate``, as
    in ``torch.nn.functional.pad``; or one per axis). Differentiable; the backward is the adjoint exchange.
    """
    if tuple(x.shape[2:]) != grid.local_shape:
        raise ValueError(f"local block has spatial shape {tuple(x.shape[2:])}, but the grid expects {grid.local_shape}")
    plan = grid.exchange_plan(width, mode, x.dtype, x.device)  # validates, the same on every rank, before any message
    if grid.size == 1 and len(set(plan.modes)) == 1:  # no neighbours: torch's own padding is the same, and faster
        pads = [p for lo_hi in reversed(plan.widths) for p in lo_hi]
        return F.pad(x, pads, mode=_TORCH_PAD[plan.modes[0]])
    if torch.is_grad_enabled() and x.requires_grad:
        return _Halo.apply(x, plan)
    return _padded(x, plan)  # no graph to record: skip the autograd.Function's overhead


_TORCH_PAD = {"zeros": "constant", "circular": "circular", "reflect": "reflect", "replicate": "replicate"}
