"""A PETSc AIJ matrix on a DMDA read back as a deepkrylov :class:`~deepkrylov.mesh.DiffusionOperator`
(:func:`diffusion_operator_from_mat`): what the multigrid PC plugins run on."""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

from deepkrylov.distributed import ProcessGrid

from ._core import _sizes
from .layout import natural_to_petsc

FACE_KINDS = ("dirichlet", "vertex", "neumann")
"""How a face of the DMDA closes the rows next to it (:class:`MatDiffusion`): ``dirichlet`` adds ``2 t`` to the
diagonal (cell-centred, zero on the face), ``vertex`` adds ``t`` (the boundary lies one cell outside the grid: a
vertex-centred Dirichlet boundary eliminated from the matrix), ``neumann`` adds nothing."""
_FACE_ADDS = {2: "dirichlet", 1: "vertex", 0: "neumann"}
_GAMG_HINT = "deepkrylov's multigrid needs such an operator; for other matrices use -pc_type gamg (or hypre)"


class MatDiffusion:
    """A PETSc matrix on a DMDA read back as a deepkrylov :class:`~deepkrylov.mesh.DiffusionOperator`
    (:func:`diffusion_operator_from_mat`).

    Attributes:
        operator: the DiffusionOperator on the matrix's unknowns (its fluid block). Its grid holds the DMDA's
            cells at ``offset`` and may be larger: one EMPTY layer outside a ``vertex`` face, and EMPTY cells
            appended at the high end of an axis (``multiple``); EMPTY cells are identity rows that no unknown
            couples to, so they change nothing for the unknowns.
        offset: index (tensor order ``z, y, x``) of the DMDA's first cell in ``operator``'s grid.
        boundary: bool tensor of the DMDA's shape: the diagonal-only rows (EMPTY cells).
        diagonal: the matrix's diagonal, a float64 tensor of the DMDA's shape.
        coupled: whether some unknown's row couples to a boundary column (as in PETSc's ex45): then the matrix is
            block lower-triangular and a preconditioner solves the boundary block first.
        weights: the link weight ``t_a`` per axis (tensor order).
        faces: per axis ``(low, high)``, one of :data:`FACE_KINDS`, or None where no unknown touches the face.
    """

    def __init__(self, operator: Any, offset: tuple, boundary: torch.Tensor, diagonal: torch.Tensor, coupled: bool,
                 weights: tuple, faces: tuple) -> None:
        self.operator, self.offset, self.boundary, self.diagonal = operator, offset, boundary, diagonal
        self.coupled, self.weights, self.faces = coupled, weights, faces

    @property
    def region(self) -> tuple[slice, ...]:
        """The DMDA's cells inside ``operator``'s grid (tensor order)."""
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.boundary.shape))

    def __repr__(self) -> str:
        return (f"MatDiffusion(dmda {tuple(reversed(self.boundary.shape))} -> grid "
                f"{tuple(reversed(self.operator.grid.shape))} (x first), weights {self.weights}, faces {self.faces}, "
                f"{int(self.boundary.sum())} boundary rows, coupled={self.coupled})")


def _xyz(index: Any, shape: tuple) -> str:
    """A cell's natural index as ``(x, y, z)`` (PETSc's order) for error messages."""
    coords = np.unravel_index(int(index), shape)
    return "(" + ", ".join(str(int(c)) for c in reversed(coords)) + ")"


_AXIS = ("x", "y", "z")


def _axis_name(a: int, nd: int) -> str:
    return _AXIS[nd - 1 - a]


def _gather_natural_coo(mat: Any, grid: ProcessGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole matrix's nonzero entries ``(rows, cols, values)``, on every rank, in natural (x-fastest)
    ordering of ``grid``."""
    import scipy.sparse as sp

    mtype = mat.getType()
    if "aij" not in mtype or "baij" in mtype:
        raise ValueError(f"the PC's matrix has type {mtype!r}, but reading it as a stencil needs an assembled AIJ "
                         f"matrix (seqaij, mpiaij); {_GAMG_HINT}")
    nloc, n = _sizes(grid)
    bad = tuple(mat.getSize()) != (n, n) or mat.getLocalSize()[0] != nloc
    if mat.getComm().tompi4py().allreduce(int(bad)):  # the same decision on every rank, not a hang in allgather
        raise ValueError(f"the PC's matrix has size {tuple(mat.getSize())} ({mat.getLocalSize()[0]} rows on this "
                         f"rank), but its grid {','.join(map(str, reversed(grid.global_shape)))} (x first) has {n} "
                         f"cells ({nloc} on this rank)")
    ai, aj, av = mat.getValuesCSR()
    rstart = mat.getOwnershipRange()[0]
    local = sp.csr_matrix((av, aj, ai), shape=(len(ai) - 1, n)).tocoo()
    rows, cols, vals = local.row.astype(np.int64) + rstart, local.col.astype(np.int64), local.data
    if grid.size > 1:  # PETSc's ordering (each rank's block contiguous) -> natural
        to_petsc = natural_to_petsc(grid)
        to_natural = np.empty_like(to_petsc)
        to_natural[to_petsc] = np.arange(n, dtype=np.int64)
        rows, cols = to_natural[rows], to_natural[cols]
        parts = mat.getComm().tompi4py().allgather((rows, cols, vals))
        rows, cols, vals = (np.concatenate([p[i] for p in parts]) for i in range(3))
    keep = vals != 0
    return rows[keep], cols[keep], np.asarray(vals[keep], dtype=np.float64)


class _Stencil:
    """The DMDA-shaped facts of :func:`diffusion_operator_from_mat` before the operator is built."""

    def __init__(self, shape: tuple, boundary: np.ndarray, diag: np.ndarray, coupled: bool, t: list,
                 faces: list) -> None:
        self.shape, self.boundary, self.diag, self.coupled, self.t, self.faces = shape, boundary, diag, coupled, t, faces


def _read_stencil(mat: Any, grid: ProcessGrid, rtol: float) -> _Stencil:
    """Check that ``mat`` is a constant-coefficient 2d+1-point operator on ``grid`` (with diagonal-only boundary
    rows) and return its weights, boundary rows and face kinds; a clear error otherwise."""
    r, c, v = _gather_natural_coo(mat, grid)
    shape = tuple(grid.global_shape)
    nd, n = len(shape), int(np.prod(shape))
    what = f"the PC's matrix on the grid {'x'.join(map(str, reversed(shape)))} (x first)"
    on_diag = r == c
    diag = np.bincount(r[on_diag], weights=v[on_diag], minlength=n)
    r, c, v = r[~on_diag], c[~on_diag], v[~on_diag]
    # which axis each off-diagonal entry links along (-1: not a neighbour), by index arithmetic
    axis = np.full(r.shape, -1, dtype=np.int8)
    delta = c - r
    for a in range(nd):
        stride = int(np.prod(shape[a + 1:]))
        if shape[a] == 1:
            continue
        for sign in (1, -1):
            sel = np.flatnonzero(delta == sign * stride)
            pos = (r[sel] // stride) % shape[a]
            axis[sel[pos < shape[a] - 1 if sign > 0 else pos > 0]] = a
    neighbour = axis >= 0
    if not bool(neighbour.all()):
        k = int(np.flatnonzero(~neighbour)[0])
        raise ValueError(
            f"{what} is not a {2 * nd + 1}-point stencil: row {_xyz(r[k], shape)} couples to {_xyz(c[k], shape)}, "
            f"which is not one of its {2 * nd} neighbours (a periodic DMDA or another discretisation); {_GAMG_HINT}")
    has_off = np.zeros(n, dtype=bool)
    has_off[r] = True
    boundary = ~has_off
    if not bool(has_off.any()):
        raise ValueError(f"{what} is diagonal (no unknown couples to another): nothing for a multigrid to do; "
                         "use -pc_type jacobi")
    bad = boundary & (diag == 0)
    if bool(bad.any()):
        raise ValueError(f"{what} has an empty row at {_xyz(np.flatnonzero(bad)[0], shape)}: the matrix is singular")
    bad = has_off & ~(diag > 0)
    if bool(bad.any()):
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what} has the diagonal {diag[k]:.6g} at {_xyz(k, shape)}, but a diffusion operator has a "
                         f"positive one; {_GAMG_HINT}")
    to_fluid = has_off[c]
    coupled = bool((~to_fluid).any())
    t = []
    for a in range(nd):
        name = _axis_name(a, nd)
        sel = (axis == a) & to_fluid
        vals = v[sel]
        if vals.size == 0:
            vals = v[(axis == a) & ~to_fluid]  # e.g. one layer of unknowns: the weight from its boundary links
        if vals.size == 0:
            raise ValueError(f"{what} has no link along {name}: the weight t_{name} cannot be read; {_GAMG_HINT}")
        ta = -float(vals[0])
        dev = np.abs(vals + ta)
        if not ta > 0 or float(dev.max()) > rtol * abs(ta):
            k = int(np.flatnonzero(sel)[int(dev.argmax())]) if sel.any() else 0
            raise ValueError(
                f"{what} does not have one negative link weight along {name}: found {-ta:.17g} and "
                f"{v[k]:.17g} (row {_xyz(r[k], shape)}, column {_xyz(c[k], shape)}); variable coefficients are not "
                f"read back; {_GAMG_HINT}")
        # every pair of adjacent unknowns must be linked (both ways)
        fl = has_off.reshape(shape)
        pairs = 2 * int((fl.take(range(1, shape[a]), axis=a) & fl.take(range(shape[a] - 1), axis=a)).sum())
        if int(sel.sum()) != pairs:
            raise ValueError(f"{what}: {pairs} links between adjacent unknowns along {name} expected, "
                             f"{int(sel.sum())} found (a missing coupling is a zero coefficient); {_GAMG_HINT}")
        t.append(ta)
    # the diagonal: t_a per neighbour inside the grid (unknown or boundary row), plus what each face adds
    idx = np.indices(shape).reshape(nd, -1)
    base = np.zeros(n)
    touches = []  # per face (a, side): cells in that layer
    for a in range(nd):
        lo, hi = idx[a] == 0, idx[a] == shape[a] - 1
        base += t[a] * (2 - lo.astype(int) - hi.astype(int))
        touches += [lo, hi]
    deficit = diag - base
    nfaces = np.sum(touches, axis=0)
    faces: list = [[None, None] for _ in range(nd)]
    adds: dict = {}  # face -> 0, 1 or 2 (units of t)
    for sweep in range(2):  # faces with single-face unknowns first, then those with only edge/corner unknowns
        for f, layer in enumerate(touches):
            a, side = divmod(f, 2)
            if f in adds or not (layer & has_off).any():
                continue
            sel = layer & has_off & (nfaces == 1)
            if sel.any():
                vals = deficit[sel] / t[a]
            elif sweep == 1:
                k = int(np.flatnonzero(layer & has_off)[0])
                others = [g for g in range(2 * nd) if g != f and touches[g][k]]
                if any(g not in adds for g in others):
                    continue  # undetermined: the row-by-row check of the operator decides
                sel = np.zeros(n, dtype=bool)
                sel[k] = True
                vals = np.array([(deficit[k] - sum(adds[g] * t[g // 2] for g in others)) / t[a]])
            else:
                continue
            m = int(round(float(vals[0])))
            if m not in _FACE_ADDS or float(np.abs(vals - m).max()) > 1e-8:
                j = int(np.argmax(np.abs(vals - m)))
                k = int(np.flatnonzero(sel)[j])
                name = _axis_name(a, nd)
                raise ValueError(
                    f"{what}: the diagonal {diag[k]:.17g} at {_xyz(k, shape)} (on the {('low', 'high')[side]} {name} "
                    f"face) is {float(vals[j]):.6g} t_{name} above the sum of its links, but a diffusion operator "
                    f"adds 0 (Neumann face), 1 (boundary one cell outside) or 2 (cell-centred Dirichlet face) "
                    f"t_{name} there, the same on the whole face; {_GAMG_HINT}")
            adds[f] = m
            faces[a][side] = _FACE_ADDS[m]
    return _Stencil(shape, boundary.reshape(shape), diag.reshape(shape), coupled, t, faces)


def _embed(st: _Stencil, multiple: int, rtol: float) -> MatDiffusion:
    """Build the DiffusionOperator of :func:`diffusion_operator_from_mat` from the facts read, and check its
    diagonal row by row against the matrix's."""
    from deepkrylov.mesh import EMPTY, FLUID, BoundaryConditions, DiffusionOperator, StructuredGrid

    shape, nd = st.shape, len(st.shape)
    lo = [1 if st.faces[a][0] == "vertex" else 0 for a in range(nd)]
    hi = [1 if st.faces[a][1] == "vertex" else 0 for a in range(nd)]
    size = [lo[a] + shape[a] + hi[a] for a in range(nd)]
    for a in range(nd):  # pad with EMPTY cells where no unknown touches the high face
        free = hi[a] == 1 or st.faces[a][1] is None
        if free and multiple > 1:
            size[a] = -(-size[a] // multiple) * multiple
    bc = BoundaryConditions([tuple("neumann" if st.faces[a][s] == "neumann" else "dirichlet" for s in (0, 1))
                             for a in range(nd)])
    mask = torch.full(tuple(size), EMPTY, dtype=torch.uint8)
    region = tuple(slice(lo[a], lo[a] + shape[a]) for a in range(nd))
    inner = torch.full(shape, FLUID, dtype=torch.uint8)
    inner[torch.from_numpy(st.boundary)] = EMPTY
    mask[region] = inner
    t = st.t
    if max(t) - min(t) <= 1e-14 * max(t):
        op = DiffusionOperator(StructuredGrid(size), bc, t[0], mask, scaled=False)
    else:  # k = 1 and spacings h_a = 1 / sqrt(t_a): k / h_a^2 = t_a
        extent = [size[a] / math.sqrt(t[a]) for a in range(nd)]
        op = DiffusionOperator(StructuredGrid(size, extent), bc, 1.0, mask, scaled=True)
    ours = op.diagonal().to(torch.float64)[region].numpy()
    fluid = ~st.boundary
    err = np.abs(ours - st.diag) > rtol * np.abs(st.diag)
    err &= fluid
    if bool(err.any()):
        k = int(np.flatnonzero(err.reshape(-1))[0])
        raise ValueError(
            f"the PC's matrix has the diagonal {st.diag.reshape(-1)[k]:.17g} at {_xyz(k, shape)}, but the diffusion "
            f"operator with its weights, boundary rows and faces {tuple(map(tuple, st.faces))} (z, y, x) gives {ours.reshape(-1)[k]:.17g}; "
            f"{_GAMG_HINT}")
    return MatDiffusion(op, tuple(lo), torch.from_numpy(st.boundary.copy()), torch.from_numpy(st.diag.copy()),
                        st.coupled, tuple(t), tuple(tuple(f) for f in st.faces))


def diffusion_operator_from_mat(mat: Any, grid: ProcessGrid, *, multiple: int = 1, rtol: float = 1e-10,
                                ) -> MatDiffusion:
    """Read a PETSc AIJ matrix on a DMDA back as a deepkrylov :class:`~deepkrylov.mesh.DiffusionOperator`.

    The rows are taken in DMDA natural order (the whole matrix is gathered on every rank). Rows with only a
    diagonal are boundary rows (EMPTY cells); the others must form a 7-point (5, 3 in 2D, 1D) stencil with one
    link weight per axis ``t_a`` (checked to ``rtol``) whose diagonals are what a diffusion operator gives: ``t_a``
    per neighbour, boundary rows included, plus 0, 1 or 2 ``t_a`` at a Neumann, vertex-centred (boundary eliminated)
    or cell-centred Dirichlet face (:data:`FACE_KINDS`), checked row by row. Equal weights give ``scaled=False``
    with coefficient ``t``; unequal ones ``scaled=True`` with spacings ``h_a = 1 / sqrt(t_a)``. Links from unknowns
    to boundary rows (PETSc's ex45) are allowed: :attr:`MatDiffusion.coupled`.

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

