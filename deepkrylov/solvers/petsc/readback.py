"""A PETSc AIJ matrix on a DMDA read back as a deepkrylov :class:`~deepkrylov.mesh.DiffusionOperator`
(:func:`diffusion_operator_from_mat`): what the multigrid PC plugins run on.

Every rank reads only its own rows (its DMDA block) and keeps only its block of what it finds; the few global
facts (link weights, face kinds, whether unknowns couple to boundary rows, the first error) are agreed on with small
allgathers of per-rank summaries, so that every rank takes the same decision and raises the same error. The operator
is built on the blocks of the padded grid (the DMDA's blocks, the first and last along an axis grown by the
padding)."""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import numpy as np
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid, as_grid_tensor, halo

from ._core import _sizes
from .layout import _petsc_index

FACE_KINDS = ("dirichlet", "vertex", "neumann")
"""How a face of the DMDA closes the rows next to it (:class:`MatDiffusion`): ``dirichlet`` adds ``2 t`` to the
diagonal (cell-centred, zero on the face), ``vertex`` adds ``t`` (the boundary lies one cell outside the grid: a
vertex-centred Dirichlet boundary eliminated from the matrix), ``neumann`` adds nothing."""
_FACE_ADDS = {2: "dirichlet", 1: "vertex", 0: "neumann"}
_GAMG_HINT = "deepkrylov's multigrid needs such an operator; for other matrices use -pc_type gamg (or hypre)"
_CHUNK = 1 << 16  # rows read at a time


class MatDiffusion:
    """A PETSc matrix on a DMDA read back as a deepkrylov :class:`~deepkrylov.mesh.DiffusionOperator`
    (:func:`diffusion_operator_from_mat`).

    Attributes:
        operator: the DiffusionOperator on the matrix's unknowns (its fluid block). Its grid holds the DMDA's
            cells at ``offset`` and may be larger: one EMPTY layer outside a ``vertex`` face, and EMPTY cells
            appended at the high end of an axis (``multiple``); EMPTY cells are identity rows that no unknown
            couples to, so they change nothing for the unknowns. On several ranks it is built on blocks
            (``operator.partition``): the DMDA's blocks, the first and last along an axis grown by the padding.
        grid: the DMDA's process grid; ``boundary`` and ``diagonal`` are this rank's block of it.
        offset: index (tensor order ``z, y, x``) of the DMDA's first cell in ``operator``'s grid.
        boundary: bool tensor of this rank's DMDA block (``grid.local_shape``; the whole DMDA on one rank): the
            diagonal-only rows (EMPTY cells).
        diagonal: the matrix's diagonal on this rank's block, float64.
        boundary_rows: the number of boundary rows on all ranks.
        coupled: whether some unknown's row couples to a boundary column (as in PETSc's ex45): then the matrix is
            block lower-triangular and a preconditioner solves the boundary block first.
        weights: the link weight ``t_a`` per axis (tensor order).
        faces: per axis ``(low, high)``, one of :data:`FACE_KINDS`, or None where no unknown touches the face.
    """

    def __init__(self, operator: Any, grid: ProcessGrid, offset: tuple, boundary: torch.Tensor,
                 diagonal: torch.Tensor, boundary_rows: int, coupled: bool, weights: tuple, faces: tuple) -> None:
        self.operator, self.grid, self.offset, self.boundary, self.diagonal = operator, grid, offset, boundary, diagonal
        self.boundary_rows, self.coupled, self.weights, self.faces = boundary_rows, coupled, weights, faces

    @property
    def region(self) -> tuple[slice, ...]:
        """The DMDA's cells inside ``operator``'s grid (tensor order)."""
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.grid.global_shape))

    @property
    def local_region(self) -> tuple[slice, ...]:
        """This rank's DMDA block inside its block of ``operator``'s grid (the padded block)."""
        return _local_region(self.operator.partition, self.offset, self.grid.local_shape)

    def __repr__(self) -> str:
        return (f"MatDiffusion(dmda {tuple(reversed(self.grid.global_shape))} -> grid "
                f"{tuple(reversed(self.operator.grid.shape))} (x first), weights {self.weights}, faces {self.faces}, "
                f"{self.boundary_rows} boundary rows, coupled={self.coupled})")


def _local_region(part: Optional[ProcessGrid], offset: Any, block: tuple) -> tuple[slice, ...]:
    """Where a DMDA block of shape ``block`` sits in its padded block (``part``: the padded grid's blocks, None for
    the whole grid): after the low padding ``offset`` on the first block along an axis, at 0 on the others."""
    starts = [o if part is None or part.coords[a] == 0 else 0 for a, o in enumerate(offset)]
    return tuple(slice(s, s + n) for s, n in zip(starts, block))


def _xyz(index: Any, shape: tuple) -> str:
    """A cell's natural index as ``(x, y, z)`` (PETSc's order) for error messages."""
    coords = np.unravel_index(int(index), shape)
    return "(" + ", ".join(str(int(c)) for c in reversed(coords)) + ")"


_AXIS = ("x", "y", "z")


def _axis_name(a: int, nd: int) -> str:
    return _AXIS[nd - 1 - a]


def _block_coords(grid: ProcessGrid) -> list[np.ndarray]:
    """Global coordinates of this rank's cells, one array per axis shaped to broadcast over the block."""
    nd = grid.ndim
    return [np.arange(s.start, s.stop, dtype=np.int64).reshape([-1 if b == a else 1 for b in range(nd)])
            for a, s in enumerate(grid.local_slices)]


def _natural_of_petsc(grid: ProcessGrid, index: np.ndarray) -> np.ndarray:
    """Natural (x-fastest) indices of PETSc (DMDA) global indices: the inverse of :func:`~.layout._petsc_index`,
    by arithmetic on the grid's splits (for the few entries an error message names)."""
    dims = grid.dims
    counts = functools.reduce(np.multiply.outer, [np.asarray(s, dtype=np.int64) for s in grid.splits])
    start = np.concatenate([[0], np.cumsum(np.reshape(counts, -1))])  # each rank's first index, in rank order
    index = np.asarray(index, dtype=np.int64)
    rank = np.searchsorted(start, index, side="right") - 1
    rest = index - start[rank]
    coords = [None] * grid.ndim
    for a in reversed(range(grid.ndim)):
        owner = rank % dims[a]
        rank = rank // dims[a]
        size = np.asarray(grid.splits[a], dtype=np.int64)[owner]
        coords[a] = np.asarray(grid.offsets[a], dtype=np.int64)[owner] + rest % size
        rest = rest // size
    return np.ravel_multi_index(coords, grid.global_shape)


def _agree(grid: ProcessGrid, mine: Any) -> list:
    """Every rank's ``mine`` (a small summary), on every rank."""
    return grid.comm.allgather_object(mine) if grid.size > 1 else [mine]


def _raise_first(grid: ProcessGrid, errors: list) -> None:
    """``errors``: this rank's ``(key, message)`` candidates. Every rank raises the one with the smallest key over
    all ranks (a check order and a natural cell index), or none: the same decision everywhere, never a hang."""
    found = [e for e in _agree(grid, min(errors) if errors else None) if e is not None]
    if found:
        raise ValueError(min(found)[1])


def _first(items: list) -> Optional[tuple]:
    items = [i for i in items if i is not None]
    return min(items) if items else None


class _Stencil:
    """The facts of :func:`diffusion_operator_from_mat` before the operator is built: global (``shape``, weights
    ``t``, ``faces``, ``coupled``, ``boundary_rows``) and this rank's block (``boundary``, ``diag``)."""

    def __init__(self, grid: ProcessGrid, boundary: np.ndarray, diag: np.ndarray, boundary_rows: int, coupled: bool,
                 t: list, faces: list) -> None:
        self.grid, self.shape = grid, tuple(grid.global_shape)
        self.boundary, self.diag, self.boundary_rows = boundary, diag, boundary_rows
        self.coupled, self.t, self.faces = coupled, t, faces


def _local_rows(mat: Any, grid: ProcessGrid) -> tuple[np.ndarray, list, list]:
    """This rank's rows of ``mat`` as a stencil on its block: the diagonal, per axis the ``(lower, upper)`` entries
    (the matrix's values, zero where there is none), and the errors for entries that link to no neighbour."""
    mtype = mat.getType()
    if "aij" not in mtype or "baij" in mtype:
        raise ValueError(f"the PC's matrix has type {mtype!r}, but reading it as a stencil needs an assembled AIJ "
                         f"matrix (seqaij, mpiaij); {_GAMG_HINT}")
    nloc, n = _sizes(grid)
    bad = tuple(mat.getSize()) != (n, n) or mat.getLocalSize()[0] != nloc
    if mat.getComm().tompi4py().allreduce(int(bad)):  # the same decision on every rank
        raise ValueError(f"the PC's matrix has size {tuple(mat.getSize())} ({mat.getLocalSize()[0]} rows on this "
                         f"rank), but its grid {','.join(map(str, reversed(grid.global_shape)))} (x first) has {n} "
                         f"cells ({nloc} on this rank)")
    shape, block, nd = tuple(grid.global_shape), tuple(grid.local_shape), grid.ndim
    ai, aj, av = mat.getValuesCSR()
    rstart = mat.getOwnershipRange()[0]
    claimed = av == 0  # entries read so far; zero entries are no links

    def take(col: np.ndarray) -> np.ndarray:
        """Per row, the value at PETSc column ``col[row]`` (zero where there is none), rows in chunks so that the
        temporaries stay small next to the CSR."""
        w = np.zeros(nloc)
        for lo in range(0, nloc, _CHUNK):
            hi = min(lo + _CHUNK, nloc)
            e = slice(int(ai[lo]), int(ai[hi]))
            rows = np.repeat(np.arange(lo, hi, dtype=aj.dtype), np.diff(ai[lo:hi + 1]))
            hit = (aj[e] == col[rows]) & ~claimed[e]
            claimed[e] |= hit
            w[rows[hit]] = av[e][hit]  # an assembled AIJ row has each column once
        return w

    diag = take(np.arange(rstart, rstart + nloc, dtype=aj.dtype))  # this rank's cells, in the block's order
    coords = _block_coords(grid)
    links = []
    for a in range(nd):
        pair = []
        for step in (-1, 1):
            shifted = list(coords)
            shifted[a] = coords[a] + step
            inside = np.broadcast_to((shifted[a] >= 0) & (shifted[a] < shape[a]), block).reshape(-1)
            nb = np.where(inside, np.broadcast_to(_petsc_index(grid, shifted), block).reshape(-1), -1).astype(aj.dtype)
            pair.append(take(nb))
        links.append(pair)
    errors = []
    stray = np.flatnonzero(~claimed)
    if stray.size:
        nat = np.ravel_multi_index([np.broadcast_to(c, block).reshape(-1) for c in coords], shape)
        r, c = nat[np.searchsorted(ai, stray, side="right") - 1], _natural_of_petsc(grid, aj[stray])
        k = np.lexsort((c, r))[0]
        what = f"the PC's matrix on the grid {'x'.join(map(str, reversed(shape)))} (x first)"
        errors.append(((0, int(r[k]), int(c[k])),
                       f"{what} is not a {2 * nd + 1}-point stencil: row {_xyz(r[k], shape)} couples to "
                       f"{_xyz(c[k], shape)}, which is not one of its {2 * nd} neighbours (a periodic DMDA or another "
                       f"discretisation); {_GAMG_HINT}"))
    return diag, links, errors


def _read_stencil(mat: Any, grid: ProcessGrid, rtol: float) -> _Stencil:
    """Check that ``mat`` is a constant-coefficient 2d+1-point operator on ``grid`` (with diagonal-only boundary
    rows) and return its weights, boundary rows and face kinds; a clear error, the same on every rank, otherwise.
    Each rank reads its own rows; the global facts come from a few allgathers of per-rank summaries."""
    shape, block, nd = tuple(grid.global_shape), tuple(grid.local_shape), grid.ndim
    what = f"the PC's matrix on the grid {'x'.join(map(str, reversed(shape)))} (x first)"
    diag, links, errors = _local_rows(mat, grid)
    coords = _block_coords(grid)
    nat = np.ravel_multi_index([np.broadcast_to(c, block).reshape(-1) for c in coords], shape)  # ascending
    has_off = np.zeros(diag.shape, dtype=bool)
    for pair in links:
        for w in pair:
            has_off |= w != 0
    boundary = ~has_off

    # 1. every row: a stencil, a boundary row that is not empty, a positive diagonal on the unknowns
    bad = np.flatnonzero(boundary & (diag == 0))
    if bad.size:
        errors.append(((2, int(nat[bad[0]])), f"{what} has an empty row at {_xyz(nat[bad[0]], shape)}: the matrix is "
                                              "singular"))
    bad = np.flatnonzero(has_off & ~(diag > 0))
    if bad.size:
        k = bad[0]
        errors.append(((3, int(nat[k])), f"{what} has the diagonal {diag[k]:.6g} at {_xyz(nat[k], shape)}, but a "
                                         f"diffusion operator has a positive one; {_GAMG_HINT}"))
    counts = _agree(grid, (int(has_off.sum()), min(errors) if errors else None))
    unknowns = sum(c[0] for c in counts)
    errors = [c[1] for c in counts if c[1]]
    if unknowns == 0:
        errors.append(((1,), f"{what} is diagonal (no unknown couples to another): nothing for a multigrid to do; "
                             "use -pc_type jacobi"))
    if errors:
        raise ValueError(min(errors)[1])

    # 2. one link weight per axis: summaries of the links to unknowns (and to boundary rows) on this rank
    padded = halo(torch.from_numpy(has_off.reshape(block).astype(np.uint8))[None, None], grid, 1, "zeros")[0, 0]
    padded = padded.numpy().astype(bool)
    stride = [int(np.prod(shape[a + 1:])) for a in range(nd)]
    summary, coupled = [], False
    for a in range(nd):
        to_fluid = []
        for side, step in enumerate((-1, 1)):
            sl = tuple(slice(1 + step * (b == a), 1 + step * (b == a) + block[b]) for b in range(nd))
            to_fluid.append(padded[sl].reshape(-1))
        sets = []
        for fluid_set in (True, False):
            first = lo = hi = None
            count = 0
            for side in (0, 1):
                w = links[a][side]
                sel = np.flatnonzero((w != 0) & (to_fluid[side] == fluid_set))
                count += sel.size
                if not sel.size:
                    continue
                coupled |= not fluid_set
                v = w[sel]
                j, i = int(v.argmin()), int(v.argmax())
                first = _first([first, (int(nat[sel[0]]), side, float(v[0]))])
                lo = _first([lo, (float(v[j]), int(nat[sel[j]]), side)])
                hi = _first([hi, (-float(v[i]), int(nat[sel[i]]), side)])
            sets.append((count, first, lo, hi))
        pairs = sum(int((has_off & to_fluid[side]).sum()) for side in (0, 1))  # 2 per pair of adjacent unknowns
        summary.append((sets, pairs))
    every = _agree(grid, (summary, coupled))
    coupled = any(e[1] for e in every)
    t = []
    for a in range(nd):
        name = _axis_name(a, nd)
        per_set = []
        for s in range(2):
            parts = [e[0][a][0][s] for e in every]
            per_set.append((sum(p[0] for p in parts), _first([p[1] for p in parts]), _first([p[2] for p in parts]),
                            _first([p[3] for p in parts])))
        fluid_links = per_set[0][0]
        count, first, lo, hi = per_set[0] if fluid_links else per_set[1]  # e.g. one layer of unknowns: boundary links
        if count == 0:
            raise ValueError(f"{what} has no link along {name}: the weight t_{name} cannot be read; {_GAMG_HINT}")
        ta = -first[2]
        # the largest deviation from t_a is at the smallest or the largest value (ties: the first cell)
        cands = [(-abs(lo[0] + ta), lo[1], lo[2], lo[0]), (-abs(-hi[0] + ta), hi[1], hi[2], -hi[0])]
        dev, r, side, v = min(cands)
        if not ta > 0 or -dev > rtol * abs(ta):
            c = r + (-1 if side == 0 else 1) * stride[a]
            raise ValueError(
                f"{what} does not have one negative link weight along {name}: found {-ta:.17g} and "
                f"{v:.17g} (row {_xyz(r, shape)}, column {_xyz(c, shape)}); variable coefficients are not "
                f"read back; {_GAMG_HINT}")
        pairs = sum(e[0][a][1] for e in every)
        if fluid_links != pairs:
            raise ValueError(f"{what}: {pairs} links between adjacent unknowns along {name} expected, "
                             f"{fluid_links} found (a missing coupling is a zero coefficient); {_GAMG_HINT}")
        t.append(ta)

    # 3. the diagonal: t_a per neighbour inside the grid (unknown or boundary row), plus what each face adds
    base = np.zeros(block)
    touches = []  # per face (a, side): this rank's cells in that layer
    for a in range(nd):
        lo_, hi_ = coords[a] == 0, coords[a] == shape[a] - 1
        base = base + t[a] * (2 - lo_.astype(int) - hi_.astype(int))
        touches += [np.broadcast_to(lo_, block).reshape(-1), np.broadcast_to(hi_, block).reshape(-1)]
    deficit = diag - base.reshape(-1)
    nfaces = np.sum(touches, axis=0)
    summary = []
    for f, layer in enumerate(touches):
        fl = np.flatnonzero(layer & has_off)
        first_cell = (int(nat[fl[0]]), float(deficit[fl[0]]), float(diag[fl[0]])) if fl.size else None
        sel = np.flatnonzero(layer & has_off & (nfaces == 1))
        single = None
        if sel.size:
            v = deficit[sel] / t[f // 2]
            j, i = int(v.argmin()), int(v.argmax())
            single = ((int(nat[sel[0]]), float(v[0]), float(diag[sel[0]])),
                      (float(v[j]), int(nat[sel[j]]), float(diag[sel[j]])),
                      (-float(v[i]), int(nat[sel[i]]), float(diag[sel[i]])))
        summary.append((first_cell, single))
    every = _agree(grid, summary)
    faces: list = [[None, None] for _ in range(nd)]
    adds: dict = {}  # face -> 0, 1 or 2 (units of t)
    for sweep in range(2):  # faces with single-face unknowns first, then those with only edge/corner unknowns
        for f in range(2 * nd):
            a, side = divmod(f, 2)
            first_cell = _first([e[f][0] for e in every])
            if f in adds or first_cell is None:
                continue
            singles = [e[f][1] for e in every if e[f][1] is not None]
            if singles:
                first = min(s[0] for s in singles)
                lo = min(s[1] for s in singles)
                hi = min(s[2] for s in singles)
                m = int(round(first[1]))
                cells = [(first[1], first[0], first[2]), (lo[0], lo[1], lo[2]), (-hi[0], hi[1], hi[2])]
            elif sweep == 1:
                k, dk, diag_k = first_cell
                kc = np.unravel_index(k, shape)
                others = [g for g in range(2 * nd) if g != f and kc[g // 2] == (0 if g % 2 == 0 else shape[g // 2] - 1)]
                if any(g not in adds for g in others):
                    continue  # undetermined: the row-by-row check of the operator decides
                v = (dk - sum(adds[g] * t[g // 2] for g in others)) / t[a]
                m = int(round(v))
                cells = [(v, k, diag_k)]
            else:
                continue
            dev, k, v, dk = min((-abs(c[0] - m), c[1], c[0], c[2]) for c in cells)
            if m not in _FACE_ADDS or -dev > 1e-8:
                name = _axis_name(a, nd)
                raise ValueError(
                    f"{what}: the diagonal {dk:.17g} at {_xyz(k, shape)} (on the {('low', 'high')[side]} {name} "
                    f"face) is {v:.6g} t_{name} above the sum of its links, but a diffusion operator "
                    f"adds 0 (Neumann face), 1 (boundary one cell outside) or 2 (cell-centred Dirichlet face) "
                    f"t_{name} there, the same on the whole face; {_GAMG_HINT}")
            adds[f] = m
            faces[a][side] = _FACE_ADDS[m]
    boundary_rows = sum(_agree(grid, int(boundary.sum())))
    return _Stencil(grid, boundary.reshape(block), diag.reshape(block), boundary_rows, coupled, t, faces)


def _padded_grid(st: _Stencil, lo: list, size: list) -> Optional[ProcessGrid]:
    """The blocks of the padded grid on several ranks: the DMDA's, the first along an axis grown by the low layer,
    the last by the rest (None on one rank: the operator is the whole grid)."""
    grid = st.grid
    if grid.size == 1:
        return None
    splits = []
    for a, s in enumerate(grid.splits):
        s = list(s)
        s[0] += lo[a]
        s[-1] += size[a] - grid.global_shape[a] - lo[a]
        splits.append(s)
    return ProcessGrid(grid.comm, size, dims=grid.dims, splits=splits)


def _embed(st: _Stencil, multiple: int, rtol: float) -> MatDiffusion:
    """Build the DiffusionOperator of :func:`diffusion_operator_from_mat` from the facts read, on this rank's block
    of the padded grid, and check its diagonal row by row against the matrix's."""
    from deepkrylov.mesh import EMPTY, FLUID, BoundaryConditions, DiffusionOperator, StructuredGrid

    shape, nd, grid = st.shape, len(st.shape), st.grid
    lo = [1 if st.faces[a][0] == "vertex" else 0 for a in range(nd)]
    hi = [1 if st.faces[a][1] == "vertex" else 0 for a in range(nd)]
    size = [lo[a] + shape[a] + hi[a] for a in range(nd)]
    for a in range(nd):  # pad with EMPTY cells where no unknown touches the high face
        free = hi[a] == 1 or st.faces[a][1] is None
        if free and multiple > 1:
            size[a] = -(-size[a] // multiple) * multiple
    bc = BoundaryConditions([tuple("neumann" if st.faces[a][s] == "neumann" else "dirichlet" for s in (0, 1))
                             for a in range(nd)])
    part = _padded_grid(st, lo, size)
    eblock = part.local_shape if part is not None else tuple(size)
    region = _local_region(part, lo, st.boundary.shape)
    mask = torch.full(eblock, EMPTY, dtype=torch.uint8)
    mask[region] = FLUID
    mask[region].masked_fill_(torch.from_numpy(st.boundary), EMPTY)
    if part is not None:
        mask = GridTensor(mask[None, None], part)
    t = st.t
    if max(t) - min(t) <= 1e-14 * max(t):
        op = DiffusionOperator(StructuredGrid(size), bc, t[0], mask, scaled=False, partition=part)
    else:  # k = 1 and spacings h_a = 1 / sqrt(t_a): k / h_a^2 = t_a
        extent = [size[a] / math.sqrt(t[a]) for a in range(nd)]
        op = DiffusionOperator(StructuredGrid(size, extent), bc, 1.0, mask, scaled=True, partition=part)
    ours = as_grid_tensor(op.diagonal(), eblock)[0].local.to(torch.float64).reshape(eblock)[region].numpy()
    err = np.flatnonzero(((np.abs(ours - st.diag) > rtol * np.abs(st.diag)) & ~st.boundary).reshape(-1))
    errors = []
    if err.size:
        k = int(err[0])  # the block's order is the natural order's
        nat = np.ravel_multi_index([s.start + int(v) for s, v in zip(grid.local_slices,
                                                                     np.unravel_index(k, st.diag.shape))], shape)
        errors.append(((int(nat),),
                       f"the PC's matrix has the diagonal {st.diag.reshape(-1)[k]:.17g} at {_xyz(nat, shape)}, but the "
                       f"diffusion operator with its weights, boundary rows and faces {tuple(map(tuple, st.faces))} "
                       f"(z, y, x) gives {ours.reshape(-1)[k]:.17g}; {_GAMG_HINT}"))
    _raise_first(grid, errors)
    return MatDiffusion(op, grid, tuple(lo), torch.from_numpy(st.boundary), torch.from_numpy(st.diag),
                        st.boundary_rows, st.coupled, tuple(t), tuple(tuple(f) for f in st.faces))


def diffusion_operator_from_mat(mat: Any, grid: ProcessGrid, *, multiple: int = 1, rtol: float = 1e-10,
                                ) -> MatDiffusion:
    """Read a PETSc AIJ matrix on a DMDA back as a deepkrylov :class:`~deepkrylov.mesh.DiffusionOperator`.

    Every rank reads only its own rows (its DMDA block) and the operator is built on blocks: on several ranks
    ``operator`` is this rank's block of the padded grid (``operator.partition``, see :class:`MatDiffusion`), and
    ``boundary``/``diagonal`` are this rank's DMDA block; the global facts (weights, faces, coupling) are agreed on
    by small reductions, so no rank holds more than its own rows. Collective; an error is raised on every rank.

    Rows with only a diagonal are boundary rows (EMPTY cells); the others must form a 7-point (5, 3 in 2D, 1D)
    stencil with one link weight per axis ``t_a`` (checked to ``rtol``) whose diagonals are what a diffusion operator
    gives: ``t_a`` per neighbour, boundary rows included, plus 0, 1 or 2 ``t_a`` at a Neumann, vertex-centred
    (boundary eliminated) or cell-centred Dirichlet face (:data:`FACE_KINDS`), checked row by row. Equal weights give
    ``scaled=False`` with coefficient ``t``; unequal ones ``scaled=True`` with spacings ``h_a = 1 / sqrt(t_a)``. Links
    from unknowns to boundary rows (PETSc's ex45) are allowed: :attr:`MatDiffusion.coupled`.

    Args:
        mat: the matrix (``seqaij``/``mpiaij``), rows in PETSc's DMDA ordering.
        grid: its DMDA's grid (:func:`plugin_grid`, :func:`grid_from_dmda`).
        multiple: append EMPTY cells at the high end of every axis whose high face no unknown touches, up to a
            multiple of this (so that a multigrid can halve the axis; e.g. 33 -> 36 for ``multiple=4``).
        rtol: relative tolerance of the checks.

    Raises ValueError naming what was found (type, non-neighbour coupling, varying weights, a diagonal that does
    not fit) and suggesting ``-pc_type gamg``.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be a positive integer, but got {multiple}")
    return _embed(_read_stencil(mat, grid, rtol), multiple, rtol)


def _multiple_for(st: _Stencil, levels: Optional[int], coarsest: int, max_coarse: int = 4096) -> int:
    """How far :func:`_embed` pads: to ``2^(levels-1)``, or by default the fewest halvings that leave a coarsest
    grid of at most ``max_coarse`` cells (a sparse LU there is cheap)."""
    if levels is not None:
        return 2 ** (levels - 1)
    nd = len(st.shape)
    base = [st.shape[a] + (st.faces[a][0] == "vertex") + (st.faces[a][1] == "vertex") for a in range(nd)]
    free = [st.faces[a][1] in ("vertex", None) for a in range(nd)]
    m = 1
    while True:
        size = [-(-n // m) * m if f else n for n, f in zip(base, free)]
        if any(n % m for n in size):
            return max(m // 2, 1)
        if int(np.prod([n // m for n in size])) <= max_coarse:
            return m
        if any(n // (2 * m) < max(coarsest, 2) for n in size):
            return m
        m *= 2
