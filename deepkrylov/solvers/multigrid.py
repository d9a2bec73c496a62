"""Geometric multigrid for deepkrylov's diffusion operators: a symmetric V-cycle usable as a PCG preconditioner.

The hierarchy halves every axis per level. Coarse operators are rediscretised (:func:`coarsen_operator`): a coarse
cell is EMPTY (Dirichlet) if any child is, else FLUID if any child is, else SOLID (McAdams, Sifakis and Teran's
MGPCG rule); its coefficient is the children's mean. Transfers are mask-aware: the prolongation interpolates
trilinearly from fluid coarse cells and zero-valued Dirichlet cells (EMPTY cells, Dirichlet faces), renormalising
the weights where a SOLID cell or a Neumann face leaves a neighbour out, so constants survive next to walls, and
reflecting oddly at Dirichlet faces; the restriction is its exact transpose. The smoother is damped Jacobi or Chebyshev on ``D^-1 A`` with the same
polynomial before and after the coarse correction, so the cycle is a symmetric operator, positive definite for
an SPD ``A`` (checked in the tests to 1e-12), and valid in plain :func:`~deepkrylov.solvers.cg`. The coarsest
level is solved by a sparse LU factorisation.

On several ranks every level whose blocks halve evenly stays distributed (the same ranks, half-size blocks);
below it the coarse right-hand side is gathered and the rest of the cycle runs redundantly on every rank, so
iterations equal the serial ones. For an operator built on a partition (``DiffusionOperator(...,
partition=...)``) the distributed levels are built from the blocks alone: coarse masks and coefficients by
pooling the fine block, transfer weights from one halo exchange; only the first level that runs whole (and the
smaller ones) is gathered.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Union

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
import torch.nn.functional as F

from deepkrylov.distributed import GridTensor, ProcessGrid, as_grid_tensor, serial_grid
from deepkrylov.mesh import EMPTY, FLUID, SOLID, DiffusionOperator, StructuredGrid
from deepkrylov.mesh import _kernels
from deepkrylov.mesh.fields import _same_blocks

from .preconditioners import Preconditioner

__all__ = ["Multigrid", "coarsen_operator", "coarsen_mask"]

Field = Union[torch.Tensor, GridTensor]
SMOOTHERS = ("jacobi", "chebyshev")


def coarsen_mask(mask: torch.Tensor) -> torch.Tensor:
    """Halve every axis: EMPTY if any of the 2^d children is EMPTY, else FLUID if any is, else SOLID."""
    nd = mask.dim()
    if any(n % 2 for n in mask.shape):
        raise ValueError(f"cannot coarsen a mask of shape {tuple(mask.shape)}: every axis must be even")
    blocks = mask.reshape(sum(((n // 2, 2) for n in mask.shape), ()))
    reduce_dims = tuple(range(1, 2 * nd, 2))
    any_empty = (blocks == EMPTY).amax(dim=reduce_dims)
    any_fluid = (blocks == FLUID).amax(dim=reduce_dims)
    out = torch.full(any_empty.shape, SOLID, dtype=torch.uint8)
    out[any_fluid] = FLUID
    out[any_empty] = EMPTY
    return out


def coarsen_operator(A: DiffusionOperator) -> DiffusionOperator:
    """The rediscretised operator on the grid with every axis halved (see the module docstring).

    Scaled so that it matches ``P^T A P`` with this module's prolongation on smooth fields: ``2^d`` times the
    coarse discretisation for a scaled operator, ``2^d / 4`` times for an unscaled one (``scaled=False``). An
    operator on a partition gives one on the partition with every block halved (each block must be even), built
    from the block alone."""
    g = A.grid
    shape = tuple(n // 2 for n in g.shape)
    coarse_grid = StructuredGrid(shape, g.extent)
    P = A.partition
    cp = None
    if P is not None:
        if any(n % 2 for split in P.splits for n in split):
            raise ValueError(f"cannot coarsen an operator on blocks {P.splits}: every block must be even")
        cp = P.derived(shape, [[n // 2 for n in split] for split in P.splits])
    mask = coarsen_mask(A.mask)
    scale = 2.0**g.ndim / (1.0 if A.scaled else 4.0)
    if A.constant_coefficient is not None:
        k: Any = A.constant_coefficient
    else:
        cshape = mask.shape
        k = A.coefficient.reshape(sum(((n, 2) for n in cshape), ())).mean(dim=tuple(range(1, 2 * g.ndim, 2)))
    k = k * scale
    if cp is not None:
        mask = GridTensor(mask[None, None], cp)
        k = GridTensor(k[None, None], cp) if isinstance(k, torch.Tensor) else k
    return DiffusionOperator(coarse_grid, A.bc, k, mask, scaled=A.scaled, dtype=A.dtype, device=A.device,
                             partition=cp)


def _halves(P: ProcessGrid) -> bool:
    """Whether every block of ``P`` halves into blocks of at least 2 cells (the level below stays distributed)."""
    return all(n % 2 == 0 and n >= 4 for split in P.splits for n in split)


def _gathered(A: DiffusionOperator) -> DiffusionOperator:
    """The whole operator (no partition) of one built on a partition: its mask and coefficient gathered to every
    rank (collective; for the small levels that run whole)."""
    P = A.partition
    if P is None or P.size == 1:
        return A if P is None else DiffusionOperator(A.grid, A.bc, A.coefficient if A.constant_coefficient is None
                                                     else A.constant_coefficient, A.mask, scaled=A.scaled,
                                                     dtype=A.dtype, device=A.device)
    mask = GridTensor(A.mask.to(torch.float64)[None, None], P).gather()[0, 0].to(torch.uint8)
    k: Any = A.constant_coefficient
    if k is None:
        k = GridTensor(A.coefficient[None, None], P).gather()[0, 0]
    return DiffusionOperator(A.grid, A.bc, k, mask, scaled=A.scaled, dtype=A.dtype, device=A.device)


# ---- transfers ------------------------------------------------------------------------------------------------
def _interpolate(p: torch.Tensor, nd: int) -> torch.Tensor:
    """Cell-centred (bi/tri)linear interpolation of a block padded by one cell on each of its last ``nd`` axes:
    fine cell ``2i`` gets ``3/4 c[i] + 1/4 c[i-1]``, ``2i+1`` gets ``3/4 c[i] + 1/4 c[i+1]``, per axis (torch's
    ``interpolate`` with ``align_corners=False``, cropped to the interior)."""
    lead = p.shape[:p.dim() - nd]
    q = p.reshape((-1, 1) + tuple(p.shape[p.dim() - nd:]))
    q = F.interpolate(q, scale_factor=2, mode=("linear", "bilinear", "trilinear")[nd - 1], align_corners=False)
    q = q[(slice(None), slice(None)) + (slice(2, -2),) * nd]
    return q.reshape(lead + tuple(q.shape[2:]))


def _full_weighting(q: torch.Tensor, nd: int) -> torch.Tensor:
    """The transpose of :func:`_interpolate` onto the interior: ``c[i] = 3/4 (f[2i] + f[2i+1]) + 1/4 (f[2i-1] +
    f[2i+2])`` per axis, on a fine block padded by one cell on each of its last ``nd`` axes."""
    lead = q.dim() - nd
    for a in range(nd):
        ax = lead + a
        n = (q.shape[ax] - 2) // 2
        inner = q.narrow(ax, 1, 2 * n).unflatten(ax, (n, 2))
        pairs = inner.sum(ax + 1)
        lo = q.narrow(ax, 0, 2 * n).unflatten(ax, (n, 2)).select(ax + 1, 0)  # f[2i-1]
        hi = q.narrow(ax, 2, 2 * n).unflatten(ax, (n, 2)).select(ax + 1, 1)  # f[2i+2]
        q = pairs.mul_(0.75).add_(lo + hi, alpha=0.25)
    return q


class _Cached:
    """``typed(name, like)``: the attribute ``name`` in ``like``'s dtype and device, converted once."""

    _cache: dict

    def typed(self, name: str, like: torch.Tensor) -> torch.Tensor:
        key = (name, like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = getattr(self, name).to(dtype=like.dtype, device=like.device)
        return self._cache[key]


def _own_grid(A: DiffusionOperator) -> ProcessGrid:
    """The process grid of ``A``'s own arrays: its partition, or the one-rank grid of a whole operator."""
    return A.partition if A.partition is not None else serial_grid(A.grid.shape)


class _Level(_Cached):
    """One level of the hierarchy: the operator, its inverse diagonal and the transfer weights, on this rank's
    block of ``grid`` (one rank's grid: the level runs whole, redundantly on every rank). Fields are the
    ``(batch, channels, *block)`` local blocks of GridTensors on ``grid``. An operator built on a partition serves
    its own block; a whole operator used on a grid of several ranks is sliced."""

    def __init__(self, A: DiffusionOperator, grid: ProcessGrid) -> None:
        self.A, self.grid = A, grid
        self.nd = A.grid.ndim
        self.sl = grid.local_slices if A.partition is None else (slice(None),) * self.nd
        self.fluid = A.fluid[self.sl]
        diag = as_grid_tensor(A.diagonal(), A.block_shape)[0].local[0, 0]  # whole (a tensor) or a block
        self.inv_diag = (1.0 / diag)[self.sl]
        self.periodic = tuple(A.bc.periodic(a) for a in range(self.nd))
        self._cache: dict = {}

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.A.apply(GridTensor(x, self.grid)).local

    def residual(self, f: torch.Tensor, u: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
        """``f - A u``, into ``out`` (None: a new, differentiable tensor)."""
        if out is None:
            return f - self.apply(u)
        self.A.apply_into(GridTensor(u, self.grid), GridTensor(out, self.grid))
        return torch.sub(f, out, out=out)

    def work(self, like: torch.Tensor, count: int) -> list[torch.Tensor]:
        """``count`` scratch fields shaped like ``like``, kept between cycles (a fresh large tensor costs page
        faults comparable to an operator application)."""
        key = ("work", tuple(like.shape), like.dtype, like.device)
        bufs = self._cache.setdefault(key, [])
        while len(bufs) < count:
            bufs.append(torch.empty_like(like, memory_format=torch.contiguous_format))
        return bufs[:count]

    def pad(self, x: torch.Tensor, dirichlet: Optional[float] = None) -> torch.Tensor:
        """``x`` padded by one cell: neighbours' cells inside, and at the domain's faces the ghost the boundary
        condition implies for a cell-centred field: wrapped (periodic), ``-x`` (Dirichlet: zero on the face), zero
        (Neumann: nothing crosses). ``dirichlet``: a value for the Dirichlet ghosts instead of ``-x``."""
        return _pad_block(x, self.A.bc, self.grid, dirichlet)

    def pad_product(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``pad(x * w)``; without autograd into a buffer kept between cycles (the product written into its
        interior, the ghosts filled in place): no temporary and no fresh padded tensor."""
        if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
            return self.pad(x * w)
        shape = tuple(x.shape[:2]) + tuple(n + 2 for n in x.shape[2:])
        key = ("padded", shape, x.dtype, x.device)
        buf = self._cache.get(key)
        if buf is None:
            buf = self._cache[key] = x.new_empty(shape)
        torch.mul(x, w, out=buf[(slice(None), slice(None)) + (slice(1, -1),) * self.nd])
        self.grid.exchange_plan(1, _halo_mode(self.A.bc), x.dtype, x.device).run(buf)
        return _boundary_ghosts(buf, self.A.bc, self.grid, None)


def _halo_mode(bc: Any) -> str:
    return "circular" if bc.any_periodic else "zeros"


def _pad_block(x: torch.Tensor, bc: Any, grid: ProcessGrid, dirichlet: Optional[float] = None) -> torch.Tensor:
    """A block ``(batch, channels, *local)`` of ``grid`` padded by one cell (one halo exchange) as in
    :meth:`_Level.pad`."""
    return _boundary_ghosts(GridTensor(x, grid).halo(1, _halo_mode(bc)), bc, grid, dirichlet)


def _boundary_ghosts(p: torch.Tensor, bc: Any, grid: ProcessGrid, dirichlet: Optional[float]) -> torch.Tensor:
    """The ghosts of a padded block ``p`` on the domain's non-periodic faces, in place, as in :meth:`_Level.pad`."""
    nd = bc.ndim
    periodic = tuple(bc.periodic(a) for a in range(nd))
    coords, dims = grid.coords, grid.dims
    lead = p.dim() - nd
    for a in range(nd):
        if periodic[a]:
            continue
        ax, m = lead + a, p.shape[lead + a]
        for side, ghost, inner in ((0, 0, 1), (1, m - 1, m - 2)):
            if coords[a] != (0 if side == 0 else dims[a] - 1):
                continue
            g = p.narrow(ax, ghost, 1)
            if bc.faces[a][side] == "dirichlet":
                torch.neg(p.narrow(ax, inner, 1), out=g) if dirichlet is None else g.fill_(dirichlet)
            else:
                g.zero_()
    return p


class _Transfer(_Cached):
    """Prolongation ``P`` from ``coarse`` to ``fine`` and restriction ``P^T`` (module docstring)."""

    def __init__(self, fine: _Level, coarse: _Level) -> None:
        self.fine, self.coarse = fine, coarse
        nd = fine.nd
        cmask = coarse.A.mask
        # interpolation weights counted: fluid and EMPTY coarse cells, and Dirichlet ghosts
        weight = ((cmask == FLUID) | (cmask == EMPTY)).to(torch.float64)
        # on the operators' own arrays (a block, or whole), then this rank's block of a whole operator used on blocks
        denom = _interpolate(_pad_block(weight[None, None], coarse.A.bc, _own_grid(coarse.A), 1.0)[0, 0], nd)
        fluid = fine.A.fluid
        scale = torch.where(fluid & (denom > 0), 1.0 / denom.clamp_min(1e-300), torch.zeros_like(denom))
        self.scale = scale[fine.sl].contiguous()  # per fine cell: fluid mask / sum of the counted weights
        self.value = (cmask == FLUID).to(torch.float64)[coarse.sl].contiguous()  # coarse cells whose values count
        self._cache: dict = {}

    def prolong(self, xc: torch.Tensor) -> torch.Tensor:
        p = self.coarse.pad_product(xc, self.typed("value", xc))
        return _interpolate(p, self.fine.nd).mul_(self.typed("scale", xc))

    def prolong_add(self, xc: torch.Tensor, u: torch.Tensor, weight: Optional[torch.Tensor] = None,
                    block: Optional[tuple] = None) -> torch.Tensor:
        """``u + weight P xc`` (in place unless autograd needs a new tensor); ``block``: the slice of the whole
        fine grid that ``u`` holds."""
        if block is None and self.fine.nd == 3 and _kernels.transfer_ok(xc, u, self.typed("scale", u)):
            scale = self.typed("scale", u)
            if weight is not None:
                hit = self._cache.get("weighted")
                if hit is None or hit[0] is not weight:
                    hit = self._cache["weighted"] = (weight, (scale * weight).contiguous())
                scale = hit[1]
            p = self.coarse.pad_product(xc, self.typed("value", xc))
            _kernels.prolong_add(p.reshape((-1,) + p.shape[2:]), u.view((-1,) + u.shape[2:]), scale)
            return u
        q = self.prolong(xc)
        if block is not None:
            q = q[block]
        if weight is not None:
            q = q * weight
        return u + q if u.requires_grad or q.requires_grad else u.add_(q)

    def restrict(self, r: torch.Tensor) -> torch.Tensor:
        q = self.fine.pad_product(r, self.typed("scale", r))
        value = self.typed("value", r)
        if self.fine.nd == 3 and _kernels.transfer_ok(q, value):
            out = q.new_empty(q.shape[:2] + value.shape)
            _kernels.restrict(q.reshape((-1,) + q.shape[2:]), out.view((-1,) + value.shape), value)
            return out
        return _full_weighting(q, self.fine.nd).mul_(value)


class Multigrid(Preconditioner):
    """A geometric multigrid V-cycle ``z = M r`` for a :class:`~deepkrylov.mesh.DiffusionOperator`.

    Args:
        A: the operator now (optional; the solver calls :meth:`setup` otherwise).
        levels: number of levels including the finest; default: halve while every axis stays even and at least
            ``coarsest`` cells long.
        smoother: ``"chebyshev"`` (default) or ``"jacobi"`` (damped by ``omega``).
        degree: smoothing steps (Jacobi sweeps or Chebyshev degree) before and, the same, after the coarse
            correction.
        omega: Jacobi damping.
        coarsest: smallest coarse size per axis for the default level count.
        null_space: for a singular (pure Neumann or periodic) operator, project the constant out of every level's
            correction; without it such an operator is refused.
        dtype: the precision of the cycle (e.g. ``torch.float32`` inside a float64 Krylov solve: half the memory
            traffic, the same iterations to 1e-6 on the smoke scenes; symmetric to that precision); default: the
            field's.

    Fields: a GridTensor, or a tensor of the grid's shape, ``(batch, *shape)`` or ``(batch, channels, *shape)``,
    which runs as its one-rank GridTensor view (:func:`~deepkrylov.distributed.as_grid_tensor`) and comes back in
    its own shape.

    Attributes: ``setup_time`` (seconds), ``shapes`` (grid shape per level), ``is_symmetric``,
    ``is_positive_definite``.
    """

    is_symmetric = True
    is_positive_definite = True
    takes_grid_tensors = True

    def __init__(self, A: Optional[DiffusionOperator] = None, *, levels: Optional[int] = None,
                 smoother: str = "chebyshev", degree: int = 2, omega: float = 0.8, coarsest: int = 4,
                 null_space: bool = False, dtype: Optional[torch.dtype] = None) -> None:
        if smoother not in SMOOTHERS:
            raise ValueError(f"smoother must be one of {SMOOTHERS}, but got {smoother!r}")
        if degree < 1:
            raise ValueError(f"degree must be at least 1, but got {degree}")
        if not 0 < omega < 2:
            raise ValueError(f"omega must lie in (0, 2), but got {omega}")
        if levels is not None and levels < 1:
            raise ValueError(f"levels must be at least 1, but got {levels}")
        self.levels, self.smoother, self.degree, self.omega = levels, smoother, degree, omega
        self.coarsest, self.null_space = coarsest, null_space
        if dtype not in (None, torch.float32, torch.float64):
            raise ValueError(f"dtype must be None, torch.float32 or torch.float64, but got {dtype}")
        self.dtype = dtype
        self.is_setup = False
        self.setup_time = 0.0
        self._grid: Optional[ProcessGrid] = None  # the grid of the fields the levels serve (one rank's: whole)
        if A is not None:
            self.setup(A)

    # ---- set-up ---------------------------------------------------------------------------------------------
    def setup(self, A: Any, grid: Optional[ProcessGrid] = None) -> "Multigrid":
        """Build the hierarchy for ``A``; ``grid`` is the process grid of the fields to come (default: found at the
        first :meth:`apply`; one process: whole tensors)."""
        if not isinstance(A, DiffusionOperator):
            raise TypeError(f"Multigrid needs a deepkrylov.mesh.DiffusionOperator, but got {type(A).__name__}")
        if A.singular and not self.null_space:
            raise ValueError(
                "the operator is singular (pure Neumann or periodic: constants are in its null space); pass "
                "Multigrid(..., null_space=True) and project the right-hand side with A.project(b)"
            )
        t0 = time.perf_counter()
        self.A = A
        shape = A.grid.shape
        possible = 1
        s = list(shape)
        while all(n % 2 == 0 and n // 2 >= max(self.coarsest, 2) for n in s):
            s = [n // 2 for n in s]
            possible += 1
        if self.levels is not None and self.levels > possible:
            raise ValueError(
                f"a grid of shape {shape} allows at most {possible} multigrid levels (each level halves every "
                f"axis, which must stay even and at least {max(self.coarsest, 2)} cells), but levels={self.levels}"
            )
        nlev = self.levels if self.levels is not None else possible
        ops = [A]
        self._whole_ops: dict = {}  # level -> the whole operator of a distributed level whose coarse level is whole
        for i in range(nlev - 1):
            P = ops[-1].partition
            if P is not None and P.size > 1 and not _halves(P):
                self._whole_ops[i] = _gathered(ops[-1])
                ops.append(coarsen_operator(self._whole_ops[i]))
            else:
                ops.append(coarsen_operator(ops[-1]))
        self._ops = ops
        self.shapes = [op.grid.shape for op in ops]
        self._setup_bottom()
        self._grid = None
        if A.partition is not None:
            if grid is not None and not _same_blocks(grid, A.partition):
                raise ValueError(f"the operator was built on {A.partition!r}; setup cannot use the blocks of {grid!r}")
            grid = A.partition
        self._build(grid)
        self.setup_time = time.perf_counter() - t0
        self.is_setup = True
        return self

    def _setup_bottom(self) -> None:
        """Sparse LU of the coarsest operator (gathered whole when it is distributed: it is small)."""
        bottom = _gathered(self._ops[-1])
        mat = bottom.to_scipy().tocsc()
        if self.null_space and bottom.singular:
            if mat.shape[0] > 4096:
                raise ValueError(f"a singular coarsest operator must have at most 4096 cells, but "
                                 f"{bottom.grid.shape} has {mat.shape[0]}: use more levels")
            v = bottom.fluid.flatten().numpy().astype(np.float64)
            mat = sp.csc_matrix(mat.toarray() + np.outer(v, v) / v.sum())
        try:
            self._lu = spla.splu(mat)
        except RuntimeError as err:
            raise ValueError(f"the coarsest multigrid operator ({bottom.grid.shape}) is singular: {err}") from err
        self._bottom_fluid = bottom.fluid
        # Chebyshev on D^-1 A: eigenvalues in (0, 2] (Gershgorin, diagonally dominant rows); target the upper part
        self._cheb = (0.15, 2.0)

    def _build(self, grid: Optional[ProcessGrid]) -> None:
        """Levels on ``grid``'s ranks while every block halves into blocks of at least 2 cells, then whole
        (redundant on every rank, on one rank's grid). An operator built on a partition keeps its own levels'
        blocks."""
        g = grid if grid is not None and grid.size > 1 else serial_grid(self.shapes[0])
        self._grid = g
        levels: list[_Level] = []
        local = self.A.partition is not None
        for i, op in enumerate(self._ops):
            if local:
                g = _own_grid(op)
            elif i > 0:
                g = g.derived(op.grid.shape, [[n // 2 for n in split] for split in g.splits]) \
                    if g.size > 1 and _halves(g) else serial_grid(op.grid.shape)
            levels.append(_Level(op, g))
        self._levels = levels
        self._transfers = []
        for i, (fine, coarse) in enumerate(zip(levels[:-1], levels[1:])):
            # fine on ranks, coarse whole: transfer between the whole fine grid and the coarse one
            whole = fine
            if fine.grid.size > 1 and coarse.grid.size == 1:
                op = self._whole_ops[i] if local else fine.A
                whole = _Level(op, serial_grid(op.grid.shape))
            self._transfers.append(_Transfer(whole, coarse))

    # ---- application ----------------------------------------------------------------------------------------
    def apply(self, r: Field) -> Field:
        g, restore = self._lift(r)
        out = g.with_local(torch.empty_like(g.local, memory_format=torch.contiguous_format))
        return restore(self._apply_into(g, out))

    def apply_into(self, r: Field, out: Field) -> Field:
        """``out = M r`` (one V-cycle) into a preallocated ``out`` of ``r``'s shape."""
        g, restore = self._lift(r)
        return restore(self._apply_into(g, self._lift(out)[0]))

    def _lift(self, x: Field) -> tuple[GridTensor, Any]:
        """The entry point's conversion: ``x`` as a GridTensor on the finest grid (a plain tensor: its one-rank
        view), and the function that gives the result back in ``x``'s kind and shape."""
        if not self.is_setup:
            raise RuntimeError("Multigrid.apply before setup(A): pass the operator to Multigrid(A) or to the solver")
        nd = len(self.shapes[0])
        if tuple(x.shape[-nd:]) != self.shapes[0]:
            raise ValueError(f"field of shape {tuple(x.shape)} does not end with the grid's shape {self.shapes[0]}")
        return as_grid_tensor(x, self.shapes[0])

    def _apply_into(self, r: GridTensor, out: GridTensor) -> GridTensor:
        P = self.A.partition
        if P is not None:
            if not _same_blocks(r.grid, P):
                raise ValueError(f"the field's blocks ({r.grid!r}) are not those of the operator's partition ({P!r})"
                                 + ("; apply the multigrid to GridTensors on its partition" if P.size > 1 else ""))
        elif (r.grid.size > 1 or self._grid.size > 1) and r.grid != self._grid:  # any one-rank grid runs whole
            self._build(r.grid)
        self._top(r.local, out.local)
        return out

    def _top(self, f: torch.Tensor, out: torch.Tensor) -> None:
        if self.dtype is not None and f.dtype != self.dtype:
            out.copy_(self._cycle(0, f.to(self.dtype).contiguous()))
            return
        z = self._cycle(0, f.contiguous(), None if self._functional(f) else out)
        if z is not out:
            out.copy_(z)

    def _functional(self, f: torch.Tensor) -> bool:
        """Whether the cycle must build an autograd graph (no scratch buffers, no in-place updates)."""
        return False

    def _cycle(self, i: int, f: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        lev = self._levels[i]
        if i == len(self._levels) - 1:
            z = self._coarse_solve(lev, f)
            return z if out is None else out.copy_(z)
        functional = self._functional(f)
        if functional:
            u, r, d = None, None, None
        elif out is None:
            u, r, d = lev.work(f, 3)
        else:
            u, (r, d) = out, lev.work(f, 2)
        u = self._pre_smooth(lev, f, u, r, d)
        r = lev.residual(f, u, r)
        weight = self._correction_weight(lev, f)
        if weight is not None:
            r = r * weight if functional else r.mul_(weight)
        t = self._transfers[i]
        if t.fine is not lev:  # this level on ranks, the coarse one whole: gather this level's residual
            uc = self._cycle(i + 1, t.restrict(GridTensor(r, lev.grid).gather()))
            u = t.prolong_add(uc, u, weight, (slice(None), slice(None)) + lev.grid.local_slices)
        else:
            u = t.prolong_add(self._cycle(i + 1, t.restrict(r)), u, weight)
        return self._post_smooth(lev, f, u, r, d)

    def _correction_weight(self, lev: _Level, f: torch.Tensor) -> Optional[torch.Tensor]:
        return None

    def _chebyshev(self) -> tuple[float, float, float]:
        lo, hi = self._cheb
        theta, delta = (hi + lo) / 2, (hi - lo) / 2
        return theta, delta, theta / delta

    def _pre_smooth(self, lev: _Level, f: torch.Tensor, u: Optional[torch.Tensor], r: Optional[torch.Tensor],
                    d: Optional[torch.Tensor]) -> torch.Tensor:
        """``degree`` smoothing steps from zero, into ``u`` (scratch ``r``, ``d``; None: new tensors)."""
        dinv = lev.typed("inv_diag", f)
        if self.smoother == "jacobi":
            u = torch.mul(f, dinv, out=u).mul_(self.omega)
            return self._jacobi(lev, f, u, r, self.degree - 1)
        theta, delta, sigma = self._chebyshev()
        d = torch.mul(f, dinv, out=d).mul_(1.0 / theta)
        u = u.copy_(d) if u is not None else d.clone()
        return self._chebyshev_steps(lev, f, u, r, d, 1.0 / sigma)

    def _post_smooth(self, lev: _Level, f: torch.Tensor, u: torch.Tensor, r: torch.Tensor,
                     d: torch.Tensor) -> torch.Tensor:
        """The same smoothing steps from ``u`` (scratch ``r``, ``d``)."""
        if self.smoother == "jacobi":
            return self._jacobi(lev, f, u, r, self.degree)
        theta, delta, sigma = self._chebyshev()
        r = lev.residual(f, u, r).mul_(lev.typed("inv_diag", f))
        d = torch.mul(r, 1.0 / theta, out=d)
        u.add_(d)
        return self._chebyshev_steps(lev, f, u, r, d, 1.0 / sigma)

    def _jacobi(self, lev: _Level, f: torch.Tensor, u: torch.Tensor, r: Optional[torch.Tensor], steps: int,
                ) -> torch.Tensor:
        dinv = lev.typed("inv_diag", f)
        for _ in range(steps):
            r = lev.residual(f, u, r)
            u.addcmul_(r, dinv, value=self.omega)
        return u

    def _chebyshev_steps(self, lev: _Level, f: torch.Tensor, u: torch.Tensor, r: Optional[torch.Tensor],
                         d: torch.Tensor, rho: float) -> torch.Tensor:
        """The remaining ``degree - 1`` steps of the Chebyshev recurrence (Saad, Alg. 12.1) on ``D^-1 A``."""
        theta, delta, sigma = self._chebyshev()
        dinv = lev.typed("inv_diag", f)
        for _ in range(self.degree - 1):
            r = lev.residual(f, u, r).mul_(dinv)
            rho_new = 1.0 / (2 * sigma - rho)
            d.mul_(rho_new * rho).add_(r, alpha=2 * rho_new / delta)
            u.add_(d)
            rho = rho_new
        return u

    def _coarse_solve(self, lev: _Level, f: torch.Tensor) -> torch.Tensor:
        whole = self._coarse_solve_whole(GridTensor(f, lev.grid).gather())
        return whole[(slice(None), slice(None)) + lev.grid.local_slices].contiguous()

    def _coarse_solve_whole(self, f: torch.Tensor) -> torch.Tensor:
        shape = f.shape
        rhs = f.reshape(shape[0] * shape[1], -1).T.detach().cpu().numpy().astype(np.float64)
        fluid = self._bottom_fluid.flatten().numpy()
        rhs[~fluid] = 0.0
        if self.null_space and self._ops[-1].singular:
            rhs[fluid] -= rhs[fluid].mean(axis=0)
        x = self._lu.solve(rhs)
        if self.null_space and self._ops[-1].singular:
            x[fluid] -= x[fluid].mean(axis=0)
        return torch.from_numpy(np.ascontiguousarray(x.T)).to(dtype=f.dtype, device=f.device).reshape(shape)

    def __repr__(self) -> str:
        shapes = " -> ".join("x".join(map(str, s)) for s in getattr(self, "shapes", []))
        return f"Multigrid({shapes or 'not set up'}, {self.smoother}({self.degree}))"
