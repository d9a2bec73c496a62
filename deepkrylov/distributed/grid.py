"""``ProcessGrid``: a Cartesian grid of ranks and the index block each rank owns.

Spatial axes are in tensor order, ``(z, y, x)`` with x fastest, which is PETSc DMDA's memory order. Ranks are
numbered like DMDA's (x fastest), the default process dims follow DMDA's choice, and the default split of ``M``
cells over ``m`` ranks gives rank ``r`` ``M // m + (r < M % m)`` cells, exactly as DMDA does, so a GridTensor's
local block and the local part of a DMDA global vector hold the same numbers in the same order.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional, Sequence, Union

import torch

from .comm import Comm, MPIComm, SelfComm
from .halo import HaloExchange, normalize_modes, normalize_widths

__all__ = ["ProcessGrid", "default_dims", "default_split"]


def default_split(n: int, parts: int) -> tuple[int, ...]:
    """DMDA's default ownership: the first ``n % parts`` blocks get one extra cell."""
    return tuple(n // parts + (r < n % parts) for r in range(parts))


def _dims_2d(size: int, ny: int, nx: int) -> tuple[int, int]:
    # PETSc DMSetUp_DA_2D, "squarish distribution" (M = nx, N = ny).
    m = int(0.5 + math.sqrt(nx * size / ny)) or 1
    while m > 0:
        n = size // m
        if m * n == size:
            break
        m -= 1
    if nx > ny and m < n:
        m, n = n, m
    return n, m


def _dims_3d(size: int, nz: int, ny: int, nx: int) -> tuple[int, int, int]:
    # PETSc DMSetUp_DA_3D, "squarish distribution" (M = nx, N = ny, P = nz): y first, then x, then z.
    M, N, P = nx, ny, nz
    n = int(0.5 + ((N * N) * size / (P * M)) ** (1.0 / 3.0)) or 1
    while n > 0 and size % n:
        n -= 1
    n = n or 1
    m = int(0.5 + math.sqrt(M * size / (P * n))) or 1
    p = 1
    while m > 0:
        p = size // (m * n)
        if m * n * p == size:
            break
        m -= 1
    if M > P and m < p:
        m, p = p, m
    return p, n, m


def default_dims(size: int, global_shape: Sequence[int]) -> tuple[int, ...]:
    """The process dims PETSc's DMDA picks for ``size`` ranks on ``global_shape`` (tensor order)."""
    shape = tuple(int(s) for s in global_shape)
    if len(shape) == 1:
        return (size,)
    if len(shape) == 2:
        return _dims_2d(size, *shape)
    if len(shape) == 3:
        return _dims_3d(size, *shape)
    raise ValueError(f"global_shape must have 1, 2 or 3 spatial axes, but got {len(shape)}: {shape}")


def _as_comm(comm: Any) -> Comm:
    if isinstance(comm, Comm):
        return comm
    if hasattr(comm, "comm") and isinstance(comm.comm, Comm):  # a Context
        return comm.comm
    if comm is None:
        return SelfComm()
    if hasattr(comm, "Get_rank") and hasattr(comm, "Sendrecv"):  # an mpi4py communicator
        return MPIComm(comm)
    raise TypeError(f"comm must be a deepkrylov Comm, a Context or an mpi4py communicator, but got {type(comm)}")


class ProcessGrid:
    """A Cartesian grid of ranks over a structured grid of ``global_shape`` cells.

    Args:
        comm: the communicator (a :class:`Comm`, the :class:`Context` from ``init()``, or an mpi4py comm).
        global_shape: cells per spatial axis, tensor order ``(z, y, x)``; 1 to 3 axes.
        dims: ranks per axis (tensor order); ``None`` chooses like PETSc DMDA. Their product must be the size.
        periodic: whether each axis wraps (one bool for all axes, or one per axis); used for neighbours.
        splits: optional explicit block sizes per axis (like DMDA's ``lx, ly, lz``), tensor order.
    """

    def __init__(
        self,
        comm: Any,
        global_shape: Sequence[int],
        dims: Optional[Sequence[int]] = None,
        periodic: Union[bool, Sequence[bool]] = False,
        splits: Optional[Sequence[Sequence[int]]] = None,
    ) -> None:
        self.comm = _as_comm(comm)
        shape = tuple(int(s) for s in global_shape)
        if not 1 <= len(shape) <= 3:
            raise ValueError(f"global_shape must have 1, 2 or 3 spatial axes, but got {len(shape)}: {shape}")
        if any(s < 1 for s in shape):
            raise ValueError(f"global_shape must be positive along every axis, but got {shape}")
        self.global_shape = shape
        self.ndim = len(shape)
        size = self.comm.size
        if splits is not None:
            splits = tuple(tuple(int(b) for b in s) for s in splits)
            if len(splits) != self.ndim:
                raise ValueError(f"splits needs one entry per axis ({self.ndim}), but got {len(splits)}")
            if dims is None:
                dims = tuple(len(s) for s in splits)
        if dims is None:
            dims = default_dims(size, shape)
        dims = tuple(int(d) for d in dims)
        if len(dims) != self.ndim:
            raise ValueError(f"dims needs one entry per axis ({self.ndim}), but got {dims}")
        if math.prod(dims) != size or any(d < 1 for d in dims):
            raise ValueError(f"dims {dims} must be positive and multiply to the number of ranks {size}")
        for ax, (n, d) in enumerate(zip(shape, dims)):
            if d > n:
                raise ValueError(
                    f"more ranks than cells along axis {ax}: {d} ranks for {n} cells (global_shape {shape}, "
                    f"dims {dims}); use fewer ranks or a larger grid"
                )
        self.dims = dims
        if isinstance(periodic, bool):
            periodic = (periodic,) * self.ndim
        self.periodic = tuple(bool(p) for p in periodic)
        if len(self.periodic) != self.ndim:
            raise ValueError(f"periodic needs one entry per axis ({self.ndim}), but got {periodic}")
        if splits is None:
            splits = tuple(default_split(n, d) for n, d in zip(shape, dims))
        for ax, (s, n, d) in enumerate(zip(splits, shape, dims)):
            if len(s) != d or sum(s) != n or any(b < 1 for b in s):
                raise ValueError(
                    f"splits along axis {ax} must be {d} positive block sizes summing to {n}, but got {s}"
                )
        self.splits = splits
        self.offsets = tuple(tuple(sum(s[:i]) for i in range(len(s) + 1)) for s in splits)
        self.coords = self.coords_of(self.comm.rank)

    # ---- geometry -------------------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def size(self) -> int:
        return self.comm.size

    def coords_of(self, rank: int) -> tuple[int, ...]:
        """Coordinates of ``rank`` in the process grid (tensor order; the last axis varies fastest)."""
        coords = []
        for d in reversed(self.dims):
            coords.append(rank % d)
            rank //= d
        return tuple(reversed(coords))

    def rank_of(self, coords: Sequence[int]) -> int:
        rank = 0
        for c, d in zip(coords, self.dims):
            rank = rank * d + c
        return rank

    def block_start(self, axis: int, coord: int) -> int:
        return self.offsets[axis][coord]

    def block_size(self, axis: int, coord: int) -> int:
        return self.splits[axis][coord]

    @functools.cached_property
    def starts(self) -> tuple[int, ...]:
        return tuple(self.offsets[a][c] for a, c in enumerate(self.coords))

    @functools.cached_property
    def local_shape(self) -> tuple[int, ...]:
        return tuple(self.splits[a][c] for a, c in enumerate(self.coords))

    @functools.cached_property
    def local_slices(self) -> tuple[slice, ...]:
        return tuple(slice(s, s + n) for s, n in zip(self.starts, self.local_shape))

    def local_slices_of(self, rank: int) -> tuple[slice, ...]:
        c = self.coords_of(rank)
        return tuple(slice(self.offsets[a][c[a]], self.offsets[a][c[a] + 1]) for a in range(self.ndim))

    def neighbour(self, axis: int, step: int, wrap: Optional[bool] = None) -> Optional[int]:
        """Rank ``step`` blocks away along ``axis`` (``None`` past a non-wrapping boundary)."""
        wrap = self.periodic[axis] if wrap is None else wrap
        coords = list(self.coords)
        c = coords[axis] + step
        if not 0 <= c < self.dims[axis]:
            if not wrap:
                return None
            c %= self.dims[axis]
        coords[axis] = c
        return self.rank_of(coords)

    def derived(self, global_shape: Sequence[int], splits: Sequence[Sequence[int]]) -> "ProcessGrid":
        """A grid on the same ranks and dims with another shape and ownership (e.g. after a strided conv)."""
        return ProcessGrid(self.comm, global_shape, self.dims, self.periodic, splits)

    # ---- communication plans --------------------------------------------------------------------------------
    def exchange_plan(
        self, width: Union[int, Sequence] = 1, mode: Union[str, Sequence[str]] = "zeros",
        dtype: torch.dtype = torch.float64, device: Union[str, torch.device] = "cpu",
    ) -> HaloExchange:
        """The halo exchange of this grid for ``width`` (int, per axis, or ``(lo, hi)`` pairs) and boundary
        ``mode`` (one of ``HALO_MODES``, or one per axis), on ``dtype`` tensors on ``device``: built once (bad
        widths raise the same error on every rank, before any message) and cached, shared by equal grids.
        ``run``/``adjoint_run`` fill/fold a padded buffer, ``faces`` serves one-pass stencils."""
        try:
            return _cached_plan(self, width, mode, dtype, device)
        except TypeError:  # unhashable width or mode (a list): normalise first
            return _plan(self, normalize_widths(width, self.ndim), normalize_modes(mode, self.ndim), dtype,
                         torch.device(device))

    # ---- identity -------------------------------------------------------------------------------------------
    def _key(self) -> tuple:
        key = self.__dict__.get("_identity")
        if key is None:  # a grid never changes after construction; plans are cached by this key on every call
            key = self.__dict__["_identity"] = (self.comm.identity(), self.global_shape, self.dims, self.splits,
                                                self.periodic)
        return key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProcessGrid) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"ProcessGrid(global_shape={self.global_shape}, dims={self.dims}, rank={self.rank}, "
            f"coords={self.coords}, local_shape={self.local_shape})"
        )


@functools.lru_cache(maxsize=512)
def _cached_plan(grid: ProcessGrid, width: Any, mode: Any, dtype: torch.dtype, device: Any) -> HaloExchange:
    """Plans by the arguments as given (the per-call fast path); equal normalised arguments share one plan."""
    return _plan(grid, normalize_widths(width, grid.ndim), normalize_modes(mode, grid.ndim), dtype, torch.device(device))


@functools.lru_cache(maxsize=512)
def _plan(grid: ProcessGrid, widths: tuple, modes: tuple, dtype: torch.dtype, device: torch.device) -> HaloExchange:
    return HaloExchange(grid, widths, modes, dtype, device)
