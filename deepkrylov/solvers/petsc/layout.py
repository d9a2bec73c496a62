"""Layouts: DMDAs with a :class:`~deepkrylov.distributed.ProcessGrid`'s sizes, process layout and ownership ranges,
the grid back from a DMDA (also one made in C), PETSc's DMDA ordering against the natural (x-fastest) one, and
:func:`plugin_grid`, how every python plugin finds its grid."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from deepkrylov.distributed import GridTensor, ProcessGrid, as_grid_tensor

from .._lift import layout_of
from ._core import _libpetsc_path, _sizes, import_petsc, petsc_comm


def create_dmda(grid: ProcessGrid, dof: int = 1, stencil_width: int = 1, stencil: str = "star") -> Any:
    """A DMDA with the same sizes, process layout and ownership ranges as ``grid`` (axes reversed: PETSc is x first)."""
    PETSc = import_petsc()
    if stencil not in ("star", "box"):
        raise ValueError(f"stencil must be 'star' or 'box', but got {stencil!r}")
    bt = tuple(PETSc.DM.BoundaryType.PERIODIC if p else PETSc.DM.BoundaryType.NONE for p in reversed(grid.periodic))
    da = PETSc.DMDA().create(
        dim=grid.ndim, dof=dof, sizes=tuple(reversed(grid.global_shape)), proc_sizes=tuple(reversed(grid.dims)),
        boundary_type=bt, stencil_type=PETSc.DMDA.StencilType.STAR if stencil == "star" else PETSc.DMDA.StencilType.BOX,
        stencil_width=stencil_width, ownership_ranges=tuple(tuple(s) for s in reversed(grid.splits)),
        comm=petsc_comm(grid),
    )
    return da


def grid_from_dmda(da: Any) -> ProcessGrid:
    """The ProcessGrid with ``da``'s layout (tensor order z, y, x)."""
    comm = da.getComm().tompi4py()
    return ProcessGrid(
        comm, tuple(reversed(da.getSizes())), dims=tuple(reversed(da.getProcSizes())),
        splits=tuple(tuple(int(v) for v in s) for s in reversed(da.getOwnershipRanges())),
    )


def _dmda_layout(dm: Any) -> Optional[tuple]:
    """(sizes, proc_sizes, ownership ranges), x first, of a DM of type ``da`` that petsc4py hands out as a plain
    ``DM`` (e.g. from ``Vec.getDM()`` on a vector made in C): read through the C API with ctypes."""
    import ctypes

    PETSc = import_petsc()
    try:
        lib = ctypes.CDLL(_libpetsc_path(), mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return None
    Int = ctypes.c_int64 if np.dtype(PETSc.IntType).itemsize == 8 else ctypes.c_int32
    vals = [Int(0) for _ in range(9)]  # dim, M, N, P, m, n, p, dof, stencil width
    h = ctypes.c_void_p(dm.handle)
    err = lib.DMDAGetInfo(h, *[ctypes.byref(v) for v in vals], None, None, None, None)
    if err:
        return None
    dim, M, N, Pz, m, n, p, dof, _ = (int(v.value) for v in vals)
    if dof != 1:
        return None
    ptrs = [ctypes.POINTER(Int)() for _ in range(3)]
    if lib.DMDAGetOwnershipRanges(h, *[ctypes.byref(q) for q in ptrs]):
        return None
    sizes, procs = (M, N, Pz)[:dim], (m, n, p)[:dim]
    ranges = tuple(tuple(int(ptrs[a][i]) for i in range(procs[a])) for a in range(dim))
    return sizes, procs, ranges


def _grid_from_dm(dm: Any) -> Optional[ProcessGrid]:
    """The grid of a DMDA with one degree of freedom per cell (None for no DM, another DM type, or dof > 1); also
    for a DMDA made in C that petsc4py hands out as a plain ``DM``."""
    if not dm or dm.getType() != "da":
        return None
    if hasattr(dm, "getOwnershipRanges"):
        return grid_from_dmda(dm) if dm.getDof() == 1 else None
    layout = _dmda_layout(dm)
    if layout is None:
        return None
    sizes, procs, ranges = layout
    return ProcessGrid(dm.getComm().tompi4py(), tuple(reversed(sizes)), dims=tuple(reversed(procs)),
                       splits=tuple(reversed(ranges)))


def _layout_grid(vec: Any) -> ProcessGrid:
    """The 1D grid of a vector's ownership ranges."""
    ranges = vec.getOwnershipRanges()
    return ProcessGrid(vec.getComm().tompi4py(), (int(vec.getSize()),),
                       splits=(tuple(int(b - a) for a, b in zip(ranges[:-1], ranges[1:])),))


def _grid_for_vec(vec: Any) -> ProcessGrid:
    """A grid for a PETSc vector: its DMDA's when it has one, else 1D with the vector's ownership ranges."""
    grid = _grid_from_dm(vec.getDM())
    return grid if grid is not None else _layout_grid(vec)


def _same_cells(a: ProcessGrid, b: ProcessGrid) -> bool:
    """Both grids one-rank with the same number of cells: a block on one is the block on the other, flattened (so
    a one-rank field, e.g. a plain tensor lifted by a solver, fits a PETSc object on any one-rank layout)."""
    return a.size == b.size == 1 and _sizes(a) == _sizes(b)


def _check_grid(x: GridTensor, grid: ProcessGrid, name: str, owner: str) -> None:
    """Raise unless ``x`` lives on ``grid`` (or on a one-rank grid with its cells, :func:`_same_cells`); the
    message reads ``<name> lives on the grid ... but <owner> the grid ...``."""
    if x.grid != grid and not _same_cells(x.grid, grid):
        raise ValueError(f"{name} lives on the grid {x.grid!r} but {owner} the grid {grid!r}"
                         + ("" if x.grid.size > 1 or grid.size == 1 else
                            "; on several ranks give a GridTensor on that grid, not a tensor"))


def _lift(x: Any, grid: ProcessGrid) -> tuple[GridTensor, Any]:
    """:func:`~deepkrylov.distributed.as_grid_tensor` for PETSc's objects: a plain tensor laid out on ``grid``'s
    shape (``(batch, channels, *shape)``) keeps its samples and channels, any other is flattened per sample."""
    return as_grid_tensor(x, layout_of(x, grid.global_shape))


GRID_OPTION = "deepkrylov_grid"
"""The option (under the KSP's or PC's options prefix) that gives a python plugin its grid when the KSP has no
DMDA: ``-deepkrylov_grid 64,64,64`` (``-<prefix>deepkrylov_grid``), cells per axis **x first**, like DMDA sizes
and ``-da_grid_x/y/z``."""


def _option_grid_shape(obj: Any) -> Optional[tuple[int, ...]]:
    """The ``-<prefix>deepkrylov_grid`` option of a KSP or PC in tensor order (z, y, x), or None when not given."""
    PETSc = import_petsc()
    prefix = obj.getOptionsPrefix() or ""
    opts = PETSc.Options(prefix)
    if not opts.hasName(GRID_OPTION):
        return None
    text = (opts.getString(GRID_OPTION, "") or "").strip()
    try:
        sizes = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        sizes = ()
    if not 1 <= len(sizes) <= 3 or any(v < 1 for v in sizes):
        raise ValueError(f"-{prefix}{GRID_OPTION} must be 1 to 3 positive cell counts separated by commas, x first "
                         f"(e.g. 64,64,64), but got {text!r}")
    return tuple(reversed(sizes))


def plugin_grid(obj: Any, vec: Any, *, ndim: Optional[int] = None, what: str = "this plugin") -> ProcessGrid:
    """The grid a python KSP/PC plugin works on, for every plugin (CG, FCG, PC, Jacobi, DCDM, DCDMPC).

    In this order: the DMDA of ``obj`` (a KSP's DM, or a PC's, which ``KSPSetDM`` sets too), the DMDA of ``vec``,
    the option ``-<prefix>deepkrylov_grid nx,ny,nz`` (:data:`GRID_OPTION`, under ``obj``'s options prefix; when
    a DMDA is present too, they must agree), else the 1D layout of ``vec``. ``ndim`` is the number of axes the
    plugin needs (e.g. 3 for a 3D network); when no source gives that many, the error names the option to give.
    Every rank takes the same decision, so a failure is the same error on every rank, not a hang.
    """
    prefix = obj.getOptionsPrefix() or ""
    option = f"-{prefix}{GRID_OPTION}"
    shape = _option_grid_shape(obj)
    grid, source = _grid_from_dm(obj.getDM()), f"the {type(obj).__name__}'s DMDA"  # a KSP without one: a DMShell
    if grid is None:
        grid, source = _grid_from_dm(vec.getDM()), "the vector's DMDA"
    if grid is not None and shape is not None and tuple(grid.global_shape) != shape:
        raise ValueError(f"{option} {','.join(map(str, reversed(shape)))} disagrees with {source} of "
                         f"{','.join(map(str, reversed(grid.global_shape)))} cells (x first)")
    if grid is None and shape is not None:
        comm = vec.getComm().tompi4py()
        grid, source = ProcessGrid(comm, shape), option
        nloc, n = _sizes(grid)
        if comm.allreduce(int(n != vec.getSize() or nloc != vec.getLocalSize())):  # the same decision on every rank
            raise ValueError(
                f"{option} {','.join(map(str, reversed(shape)))} gives {n} cells, {nloc} on this rank (DMDA's default "
                f"split), but the vector has {vec.getSize()}, {vec.getLocalSize()} on this rank; give the grid the "
                "matrix was built on, or set the DMDA on the KSP (KSPSetDM, KSPSetDMActive(ksp, PETSC_FALSE))"
            )
    if grid is None:
        grid, source = _layout_grid(vec), "the vector's 1D layout (no DMDA, no option)"
    if ndim is not None and grid.ndim != ndim:
        example = ",".join(["64"] * ndim)
        raise ValueError(
            f"{what} needs a {ndim}D grid, but found a {grid.ndim}D grid of "
            f"{','.join(map(str, reversed(grid.global_shape)))} cells from {source}; give the grid with "
            f"{option} {example} (cells per axis, x first) or set a DMDA on the KSP (KSPSetDM with "
            "KSPSetDMActive(ksp, PETSC_FALSE))"
        )
    if _sizes(grid)[1] != vec.getSize():
        raise ValueError(f"the grid from {source} has {_sizes(grid)[1]} cells but the vector {vec.getSize()} entries")
    return grid


def natural_to_petsc(grid: ProcessGrid) -> np.ndarray:
    """Map natural (global x-fastest) indices to PETSc's DMDA global indices (each rank's block contiguous)."""
    n = int(np.prod(grid.global_shape))
    nat = np.arange(n, dtype=np.int64).reshape(grid.global_shape)
    out = np.empty(n, dtype=np.int64)
    start = 0
    for r in range(grid.size):
        idx = nat[grid.local_slices_of(r)].reshape(-1)
        out[idx] = np.arange(start, start + idx.size, dtype=np.int64)
        start += idx.size
    return out


def _local_natural_rows(grid: ProcessGrid) -> np.ndarray:
    """Natural (x-fastest) indices of this rank's cells, in the block's order."""
    axes = [np.arange(s.start, s.stop, dtype=np.int64) for s in grid.local_slices]
    return np.ravel_multi_index(np.meshgrid(*axes, indexing="ij"), grid.global_shape).reshape(-1)


def _petsc_index(grid: ProcessGrid, coords: list) -> np.ndarray:
    """PETSc (DMDA) global indices of the cells at ``coords`` (one integer array per axis, tensor order, that
    broadcast together; wrapped modulo the grid's sizes), by arithmetic on the grid's splits: memory of the result
    only, where :func:`natural_to_petsc` builds the whole map. PETSc numbers the ranks' blocks in rank order (the
    process grid's last axis fastest, like the DMDA's x-fastest process order) and each block x-fastest."""
    dims = grid.dims
    counts = np.ones(dims, dtype=np.int64)
    for a in range(grid.ndim):
        counts = counts * np.asarray(grid.splits[a], dtype=np.int64).reshape([-1 if b == a else 1 for b in range(grid.ndim)])
    start = np.concatenate([[0], np.cumsum(counts.reshape(-1))[:-1]])
    rank, offset = None, None
    for a, c in enumerate(coords):
        n = grid.global_shape[a]
        c = np.mod(np.asarray(c, dtype=np.int64), n)
        bounds = np.asarray(grid.offsets[a], dtype=np.int64)
        owner = np.searchsorted(bounds, c, side="right") - 1
        local = c - bounds[owner]
        size = np.asarray(grid.splits[a], dtype=np.int64)[owner]
        rank = owner if rank is None else rank * dims[a] + owner
        offset = local if offset is None else offset * size + local
    return start[rank] + offset
