"""Stencil operators on structured grids: ``-div(k grad u)`` (the Laplacian when ``k = 1``), cell-centred.

Discretisation (3, 5 or 7 points): the flux through the face between cells ``i`` and ``j`` along axis ``a`` is
``t_ij (u_i - u_j)`` with ``t_ij = 2 k_i k_j / (k_i + k_j) / h_a^2`` (harmonic mean of the cell coefficients).
Boundary and mask rules, for a fluid cell ``i``:

- neighbour fluid: an unknown (off-diagonal ``-t_ij``, diagonal ``+t_ij``);
- neighbour SOLID, or a Neumann domain face: no flux, nothing added;
- neighbour EMPTY (air): zero pressure at its centre, diagonal ``+t_ij``;
- Dirichlet domain face: zero value on the face (ghost ``-u_i``), diagonal ``+2 k_i / h_a^2``;
- periodic axes wrap.

Cells that are not fluid are not unknowns: their rows are the identity, so ``apply`` returns ``x`` there and right-
hand sides should be zero there. With no Dirichlet face and no empty cell the operator is singular with the
constant (on fluid cells) as null space; :meth:`DiffusionOperator.project` removes it from a right-hand side.
With ``scaled=False`` spacings are taken as 1, which gives the integer pressure matrix of fluid simulation.

The matrix-free :meth:`~DiffusionOperator.apply` (GridTensor, with one halo exchange; a tensor is applied as its
view on the one-rank grid, :func:`~deepkrylov.distributed.as_grid_tensor`, so both take one code path) and
:meth:`~DiffusionOperator.to_scipy` (CSR in C order, x fastest: PETSc DMDA's natural ordering) use the same
coefficient arrays, so they give the same numbers.

Local construction: with ``partition=`` (a :class:`~deepkrylov.distributed.ProcessGrid` over the grid), every
array the operator keeps (mask, coefficient, cell codes or coefficient arrays) is this rank's block; the face
weights at the block's edges come from one halo exchange of the neighbours' cell kinds and coefficients, so the
numbers are those of the whole-grid operator, bit for bit. Without it the block is the whole grid (one process;
such an operator still applies to GridTensors on several ranks by slicing its whole arrays, which every rank then
holds).

On CPU the compiled pass takes one of three forms (:attr:`DiffusionOperator.form`):

- ``"uniform"``: constant ``k``, every cell fluid, every axis periodic or none: scalar weights, nothing per cell;
- ``"compact"``: constant ``k``, any mask and any mix of faces: one 2-byte code per cell (which of the six
  neighbours are unknowns, and the diagonal in units of the axis weights ``t_a``), so the pass moves 18 bytes per
  cell (float64) instead of the general form's 72. The diagonal is ``(m0 t0 + m1 t1) + m2 t2`` with ``m_a`` the
  number of fluid or empty neighbours along axis ``a`` plus 2 per Dirichlet face, so ``diagonal()``, ``to_scipy``
  and the general form give the same bits;
- ``"general"``: variable ``k``: the diagonal and six face-weight arrays, read per cell.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional, Union

import numpy as np
import scipy.sparse as sp
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid, as_grid_tensor, halo, serial_grid

from . import _kernels
from .boundary import BoundaryConditions
from .fields import _block_shape, _block_slices, _check_partition, _local_field, _same_blocks
from .grid import StructuredGrid
from .masks import EMPTY, FLUID
from .operator import LinearOperator

__all__ = ["DiffusionOperator", "laplacian"]

Field = Union[torch.Tensor, GridTensor]


class DiffusionOperator(LinearOperator):
    """``-div(k grad u)`` on ``grid`` with boundary conditions, an optional cell mask and cell coefficients ``k``.

    Args:
        grid: the structured grid.
        bc: boundary conditions (default: Dirichlet on every face).
        coefficient: positive cell values ``k``: a number (default 1), a whole tensor of the grid's shape, a
            GridTensor block on ``partition``, or a function of the block's cell-centre coordinates (``ndim``
            tensors, ``indexing='ij'``) returning the block's values.
        mask: cell kinds (FLUID/SOLID/EMPTY), in the same forms as ``coefficient`` except a number; default all
            fluid.
        scaled: divide by the squared spacing (True) or take spacings as 1 (False).
        dtype, device: of the coefficients and of ``apply``'s arithmetic.
        partition: build only this rank's block of the process grid (module docstring). A whole tensor given
            with it is sliced at once, but it was whole on this rank: pass a GridTensor, a function or
            :func:`~deepkrylov.mesh.read_field` to never hold the whole grid. Construction is collective.

    Attributes:
        form: the compiled pass's form, ``"uniform"``, ``"compact"`` (constant ``k``: a 2-byte code per cell) or
            ``"general"`` (variable ``k``: seven coefficient arrays); see the module's docstring.
        partition, block_shape, block_slices: the process grid (or None) and this rank's block of the grid.
        mask, fluid: the block's cell kinds and its fluid cells; ``coefficient``: the block's ``k`` (for a
            constant, a broadcast view); ``constant_coefficient``: that constant, or None.
    """

    takes_grid_tensors = True

    is_symmetric = True

    def __init__(
        self, grid: StructuredGrid, bc: Optional[BoundaryConditions] = None, coefficient: Any = None,
        mask: Any = None, *, scaled: bool = True, dtype: torch.dtype = torch.float64,
        device: Union[str, torch.device, None] = None, partition: Optional[ProcessGrid] = None,
    ) -> None:
        if not isinstance(grid, StructuredGrid):
            raise TypeError(f"grid must be a StructuredGrid, but got {type(grid).__name__}")
        bc = bc if bc is not None else BoundaryConditions.uniform(grid.ndim, "dirichlet")
        if bc.ndim != grid.ndim:
            raise ValueError(f"boundary conditions are for {bc.ndim} axes but the grid has {grid.ndim}")
        _check_partition(grid, partition)
        self.grid, self.bc, self.scaled = grid, bc, scaled
        self.dtype, self.device = dtype, torch.device(device) if device is not None else torch.device("cpu")
        self.partition = partition
        self.block_shape = _block_shape(grid, partition)
        self.block_slices = _block_slices(grid, partition)
        n = grid.size
        self.shape = (n, n)
        self._local: dict = {}  # per (process grid, dtype, device) of the fields applied to: a _Site
        block = self.block_shape

        # this rank's coefficient and mask; the checks reduced over ranks, so every rank raises the same error
        k0: Optional[float] = None
        k: Optional[torch.Tensor] = None
        if coefficient is None or isinstance(coefficient, numbers.Real) or (
                isinstance(coefficient, torch.Tensor) and coefficient.dim() == 0):
            k0 = float(1.0 if coefficient is None else coefficient)
            stats = [float(not (np.isfinite(k0) and k0 > 0)), k0, k0]
        else:
            k = _local_field(coefficient, grid, partition, "coefficient").to(torch.float64)
            bad = not bool(torch.isfinite(k).all()) or bool((k <= 0).any())
            stats = [float(bad), float(k.min()) if not bad else 0.0, float(k.max()) if not bad else 0.0]
        if mask is None:
            mask = torch.full(block, FLUID, dtype=torch.uint8)
        else:
            mask = _local_field(mask, grid, partition, "mask")
            if mask.dtype != torch.uint8:
                mask = mask.to(torch.uint8)
        fluid = mask == FLUID
        nfluid = int(fluid.sum())
        stats += [float(nfluid), float(nfluid == fluid.numel())]
        bad, kmin, kmax, nfluid, all_fluid = self._reduce(stats, ("max", "min", "max", "sum", "min"))
        if bad:
            raise ValueError("coefficient must be finite and positive everywhere")
        if nfluid == 0:
            raise ValueError("the mask leaves no unknowns: no cell is FLUID")
        if k is not None and kmin == kmax:  # a constant given as an array: the compact form, nothing per cell
            k0, k = kmax, None
        self.mask, self.fluid = mask, fluid
        self._k, self.constant_coefficient = k, k0
        self._code: Optional[torch.Tensor] = None
        self._diag64: Optional[torch.Tensor] = None
        self._weights64: Optional[list] = None
        self._diag: Optional[torch.Tensor] = None

        h2 = [grid.spacing[a] ** 2 if scaled else 1.0 for a in range(grid.ndim)]
        kinds = [kind for pair in bc.faces for kind in pair]
        one_mode = bc.any_periodic == all(kind == "periodic" for kind in kinds)  # padding wraps every axis or none
        self._uniform = None
        if k0 is not None:
            self._t = [2 * k0 * k0 / (k0 + k0) / h2[a] for a in range(grid.ndim)]
        if k0 is not None and one_mode and bool(all_fluid):
            # Uniform case (constant k, every cell fluid): scalar face weights, and diagonal corrections only on the
            # boundary layers, so apply() touches the field, its halo and its result and nothing else.
            t = [k0 / h2[a] for a in range(grid.ndim)]
            corr = []  # (axis, side, value): Dirichlet face +t (2t instead of t), Neumann -t, periodic none
            for a in range(grid.ndim):
                for side in (0, 1):
                    kind = bc.faces[a][side]
                    if kind != "periodic":
                        corr.append((a, side, t[a] if kind == "dirichlet" else -t[a]))
            self._uniform = (t, 2.0 * sum(t), corr)
            self.form = "uniform"
            touches = bc.any_dirichlet
        else:
            touches = self._assemble(self._halo(mask), None if k is None else self._halo(k))
            self.form = "compact" if k0 is not None else "general"
        # no fluid cell next to an EMPTY cell or a Dirichlet face: the constant (on fluid cells) is in the null space
        self.singular = not bool(self._reduce([float(touches)], ("max",))[0])
        self.is_positive_definite = None if self.singular else True

    # ---- construction on the block --------------------------------------------------------------------------
    def _reduce(self, values: list, ops: tuple) -> list:
        """``values`` reduced over the partition's ranks (``ops``: "sum", "min" or "max" per entry)."""
        if self.partition is None or self.partition.size == 1:
            return values
        every = self.partition.comm.allgather_object(values)
        red = {"sum": sum, "min": min, "max": max}
        return [red[op](v[i] for v in every) for i, op in enumerate(ops)]

    def _halo(self, field: torch.Tensor) -> torch.Tensor:
        """A block field padded by one cell of the neighbours' values, wrapped when any axis is periodic (the
        non-periodic domain faces are masked out by the caller)."""
        return halo(field[None, None], self._home(), 1, self._mode())[0, 0]

    def _home(self) -> ProcessGrid:
        """The process grid of the operator's own fields: the partition, or the one-rank grid without one."""
        return self.partition if self.partition is not None else serial_grid(self.grid.shape)

    def _edges(self, a: int) -> tuple[bool, bool]:
        """Whether this block's first / last plane along axis ``a`` lies on a non-periodic domain face."""
        if self.bc.periodic(a):
            return False, False
        if self.partition is None:
            return True, True
        c, d = self.partition.coords[a], self.partition.dims[a]
        return c == 0, c == d - 1

    def _assemble(self, kinds: torch.Tensor, k: Optional[torch.Tensor]) -> bool:
        """Build the block's compact codes (constant ``k``) or float64 diagonal and face weights (variable ``k``)
        from the padded cell kinds (and the padded coefficients ``k``); returns whether a fluid cell touches an
        EMPTY cell or a Dirichlet face. Slabs of about 2^18 cells along the first axis bound the temporaries. The
        arithmetic is the whole-grid operator's, cell by cell, so the numbers are the same bits."""
        block, nd = self.block_shape, self.grid.ndim
        if k is not None:
            self._diag64 = torch.empty(block, dtype=torch.float64)
            self._weights64 = [(torch.empty(block, dtype=torch.float64), torch.empty(block, dtype=torch.float64))
                               for _ in range(nd)]
        else:
            self._code = torch.empty(block, dtype=torch.int16)
        per_plane = 1
        for n in block[1:]:
            per_plane *= n
        step = max(1, (1 << 18) // per_plane)
        touches = False
        for lo in range(0, block[0], step):
            touches = self._assemble_slab(kinds, k, lo, min(block[0], lo + step)) or touches
        return touches

    def _assemble_slab(self, kinds: torch.Tensor, k: Optional[torch.Tensor], lo: int, hi: int) -> bool:
        """Planes ``lo:hi`` (first axis) of :meth:`_assemble`."""
        grid, bc, nd = self.grid, self.bc, self.grid.ndim
        block = (hi - lo,) + tuple(self.block_shape[1:])
        fluid = self.fluid[lo:hi]
        kinds = kinds[lo:hi + 2]
        general = k is not None
        if general:
            k = k[lo:hi + 2]
            kc = k[(slice(1, -1),) + (slice(1, -1),) * (nd - 1)]
            diag = torch.zeros(block, dtype=torch.float64)
        else:
            code = torch.zeros(block, dtype=torch.int32)
        inner = [slice(1, n + 1) for n in block]
        off = 3 - nd
        touches = False
        for a in range(nd):
            h2 = grid.spacing[a] ** 2 if self.scaled else 1.0
            edges = self._edges(a)
            if a == 0:  # this slab holds the block's first / last plane along the first axis only at its ends
                edges = (edges[0] and lo == 0, edges[1] and hi == self.block_shape[0])
            m = torch.zeros(block, dtype=torch.int32) if not general else None
            for side, start in ((0, 0), (1, 2)):  # the lower neighbour, then the upper
                idx = list(inner)
                idx[a] = slice(start, start + block[a])
                idx = tuple(idx)
                nb = kinds[idx]
                nb_fluid, nb_empty = nb == FLUID, nb == EMPTY
                plane = 0 if side == 0 else block[a] - 1
                if edges[side]:  # the domain face: no neighbour
                    nb_fluid.narrow(a, plane, 1).zero_()
                    nb_empty.narrow(a, plane, 1).zero_()
                link = fluid & nb_fluid
                near_empty = fluid & nb_empty
                touches = touches or bool(near_empty.any())
                dirichlet = edges[side] and bc.faces[a][side] == "dirichlet"
                if dirichlet:
                    touches = touches or bool(fluid.narrow(a, plane, 1).any())
                if general:
                    k_nb = k[idx]
                    t = 2 * kc * k_nb / (kc + k_nb) / h2
                    w = torch.where(link, t, torch.zeros_like(t))
                    diag += w
                    diag += torch.where(near_empty, t, torch.zeros_like(t))
                    if dirichlet:
                        d = diag.narrow(a, plane, 1)
                        kp = kc.narrow(a, plane, 1)
                        d += torch.where(fluid.narrow(a, plane, 1), 2 * kp / h2, torch.zeros_like(kp))
                    self._weights64[a][side][lo:hi] = w
                else:
                    m += link | near_empty
                    if dirichlet:
                        m.narrow(a, plane, 1).add_(2 * fluid.narrow(a, plane, 1).to(torch.int32))
                    code += link.to(torch.int32) << (2 * (a + off) + side)
            if not general:
                code += m << (6 + 3 * (a + off))
        if general:
            self._diag64[lo:hi] = torch.where(fluid, diag, torch.ones_like(diag))
        else:
            code -= (~fluid).to(torch.int32) << 15  # bit 15 of the uint16, stored as int16
            self._code[lo:hi] = code
        return touches

    def _compact_code(self) -> torch.Tensor:
        """The compact form's cell codes (int16, read as uint16 by ``_stencil7.c``): bit 2b + side: the neighbour on
        that side of kernel axis b is an unknown; bits 6 + 3b: the multiplicity m_b (0..4) of t_b in the diagonal
        (fluid or empty neighbours, plus 2 per Dirichlet face); bit 15: not fluid (identity row). Axes are numbered
        as the kernel sees them: a 1D/2D grid is embedded in 3D with leading axes of size 1. The uniform form builds
        them here when asked (every cell fluid: no exchange needed)."""
        if self._code is not None:
            return self._code
        if self._uniform is None:
            raise RuntimeError("cell codes exist for constant coefficients only")
        kinds = torch.full(tuple(n + 2 for n in self.block_shape), FLUID, dtype=torch.uint8)  # every cell fluid
        self._assemble(kinds, None)
        code, self._code = self._code, None  # not kept: the uniform pass needs no codes
        return code

    def _stencil64(self) -> tuple[torch.Tensor, list]:
        """The block's float64 diagonal and per-axis (lower, upper) face weights, derived from the codes for a
        constant ``k``: weights ``t_a`` on links (see :meth:`_diagonal64` for the diagonal)."""
        if self._weights64 is not None:
            return self._diag64, self._weights64
        code = self._compact_code().to(torch.int32)
        nd, off = self.grid.ndim, 3 - self.grid.ndim
        weights = []
        for a in range(nd):
            b = a + off
            weights.append(tuple(torch.where(((code >> (2 * b + side)) & 1).bool(),
                                             torch.tensor(self._t[a], dtype=torch.float64),
                                             torch.tensor(0.0, dtype=torch.float64)) for side in (0, 1)))
        return self._diagonal64(), weights

    def _diagonal64(self) -> torch.Tensor:
        """The block's float64 diagonal; for a constant ``k`` from the codes alone, ``(m0 t0 + m1 t1) + m2 t2`` in
        the kernel's order, without building the face weights (a few bytes a cell of temporaries)."""
        if self._diag64 is not None:
            return self._diag64
        code = self._compact_code()
        nd, off = self.grid.ndim, 3 - self.grid.ndim
        diag = torch.zeros(self.block_shape, dtype=torch.float64)
        for a in range(nd):
            m = (code.to(torch.int32) >> (6 + 3 * (a + off))) & 7
            diag.add_(m.to(torch.float64).mul_(self._t[a]))  # the product rounded, then the sum: as the kernel does
        return diag.masked_fill_(~self.fluid, 1.0)

    def local_stencil(self, grid: Optional[ProcessGrid] = None) -> tuple[torch.Tensor, list]:
        """This rank's rows as float64 arrays of the block's shape: ``(diag, [(lower, upper) per axis])`` in tensor
        axis order (z, y, x), so that row ``i`` of ``A`` is ``diag[i] u_i - lower_a[i] u_{i - e_a} - upper_a[i]
        u_{i + e_a}`` (neighbours wrap on periodic axes; weights are zero where the neighbour is not an unknown,
        and non-fluid rows are the identity). Local and without communication.

        ``grid``: for an operator built whole (no partition), the process grid whose block to return (sliced from
        the whole arrays); with a partition it must be None or give the same blocks."""
        diag, weights = self._stencil64()
        sl = self._foreign_block(grid)
        if sl is None:
            return diag, [(lo, hi) for lo, hi in weights]
        return diag[sl].contiguous(), [(lo[sl].contiguous(), hi[sl].contiguous()) for lo, hi in weights]

    def _foreign_block(self, grid: Optional[ProcessGrid]) -> Optional[tuple]:
        """None when ``grid``'s block is this operator's own arrays; else the slices of the whole arrays to take."""
        if grid is None:
            return None
        if grid.global_shape != self.grid.shape:
            raise ValueError(f"the process grid is over a grid of shape {grid.global_shape}, but the operator's "
                             f"grid has shape {self.grid.shape}")
        if self.partition is not None:
            if not _same_blocks(grid, self.partition):
                raise ValueError(f"this operator was built on the blocks of {self.partition!r}; it cannot serve the "
                                 f"blocks of {grid!r}")
            return None
        return None if grid.size == 1 else grid.local_slices

    @property
    def coefficient(self) -> torch.Tensor:
        """The block's cell coefficients (float64); a broadcast view for a constant."""
        if self._k is not None:
            return self._k
        return torch.tensor(self.constant_coefficient, dtype=torch.float64).expand(self.block_shape)

    # ---- matrix-free application ----------------------------------------------------------------------------
    # Public entries take a tensor or a GridTensor and lift a tensor once (as_grid_tensor: its view on the one-rank
    # grid); everything below works on GridTensors, whatever the rank count.
    def _mode(self) -> str:
        return "circular" if self.bc.any_periodic else "zeros"

    def _check_grid(self, grid: ProcessGrid) -> None:
        """Raise unless fields on ``grid`` can be served: the operator's grid, on its partition's blocks if it has
        one (an operator built whole serves any partition of its grid by slicing its arrays)."""
        if grid.global_shape != self.grid.shape:
            raise ValueError(f"the field lives on a grid of shape {grid.global_shape}, but the operator on "
                             f"{self.grid.shape}")
        if self.partition is not None and not _same_blocks(grid, self.partition):
            if grid.size == 1:  # a plain (whole) tensor lifted to the one-rank grid
                raise ValueError(f"this operator holds one block of {self.partition.size} ranks; apply it to a "
                                 "GridTensor on its partition, not to a whole tensor")
            raise ValueError(f"the field's blocks ({grid!r}) are not the operator's partition ({self.partition!r})")

    def _site(self, x: GridTensor) -> "_Site":
        """The checked, cached set-up for fields on ``x``'s grid in ``x``'s dtype and device."""
        local = x.local
        key = (x.grid, local.dtype, local.device)
        site = self._local.get(key)
        if site is None:
            site = self._local[key] = _Site(self, *key)
        return site

    def _coefficients(self, site: "_Site") -> tuple[torch.Tensor, list]:
        """Diagonal and face weights of ``site``'s block in its dtype and device (rounded through the operator's
        dtype first, as the coefficients are held in it); made once."""
        if site.coefficients is None:
            diag, weights = self._stencil64()
            sl = site.slices

            def cast(t: torch.Tensor) -> torch.Tensor:
                t = t if sl is None else t[sl]
                return t.to(self.dtype).to(device=site.device, dtype=site.dtype).contiguous()

            site.coefficients = (cast(diag), [(cast(lo), cast(hi)) for lo, hi in weights])
        return site.coefficients

    def apply(self, x: Field) -> Field:
        """``A x`` matrix-free, for a tensor ``(*grid.shape)``, ``(B, *grid.shape)`` or ``(B, C, *grid.shape)`` or
        a GridTensor (the result is of ``x``'s kind and shape). On CPU without autograd: one face exchange and one
        compiled pass that reads ``x`` once and writes the result once; otherwise one halo exchange and shifted
        slices (differentiable, any device)."""
        g, restore = as_grid_tensor(x, self.grid.shape)
        return restore(self._apply(g))

    def _apply(self, x: GridTensor) -> GridTensor:
        site = self._site(x)
        local = x.local
        if self._compiled_ok(local):
            return x.with_local(self._apply_compiled(site, local, None))
        nd = self.grid.ndim
        p = x.halo(1, self._mode())

        def shifted(a: int, start: int) -> torch.Tensor:
            idx = [slice(None), slice(None)] + [slice(1, -1)] * nd
            idx[2 + a] = slice(start, start + local.shape[2 + a])
            return p[tuple(idx)]

        if self._uniform is not None:
            t, c, _ = self._uniform
            y = torch.mul(local, c)
            for a in range(nd):
                y.sub_(shifted(a, 0), alpha=t[a]).sub_(shifted(a, 2), alpha=t[a])
            self._boundary_correction(site, y, local)
        else:
            diag, weights = self._coefficients(site)  # the compact form too: its arrays hold the same numbers
            y = diag * local
            for a, (lo, hi) in enumerate(weights):
                y.addcmul_(lo, shifted(a, 0), value=-1).addcmul_(hi, shifted(a, 2), value=-1)
        return x.with_local(y)

    def apply_into(self, x: Field, out: Field) -> Field:
        """``out = A x`` without allocating (like PETSc's ``MatMult(A, x, y)``); ``out`` (of ``x``'s shape, a tensor
        or a GridTensor) must not alias ``x``. Krylov loops use it to reuse one buffer: a fresh result costs page
        faults comparable to the apply."""
        g, _ = as_grid_tensor(x, self.grid.shape)
        dest = as_grid_tensor(out, self.grid.shape)[0].local  # a view: the shapes differ by unit axes only
        site = self._site(g)
        local = g.local
        if (self._compiled_ok(local) and dest.shape == local.shape and dest.dtype == local.dtype
                and dest.device == local.device and dest.is_contiguous() and dest.data_ptr() != local.data_ptr()):
            self._apply_compiled(site, local, dest)
        else:
            dest.copy_(self._apply(g).local)
        return out

    @staticmethod
    def _compiled_ok(local: torch.Tensor) -> bool:
        return (local.device.type == "cpu" and local.dtype in (torch.float32, torch.float64)
                and not (torch.is_grad_enabled() and local.requires_grad) and _kernels.stencil_library() is not None)

    def _kernel_args(self, site: "_Site") -> tuple:
        """The compiled pass's arguments for ``site``'s block: the kernel's 3D block shape, the face exchange plan
        (None: no face to receive), the kernel axes that wrap in place (bits), the zero row and the form's weights
        (uniform: the scalars; compact: the weights and the block's codes; general: the seven arrays); made once
        per form."""
        args = site.kernel.get(self.form)
        if args is None:
            nd = self.grid.ndim
            shape3 = (1,) * (3 - nd) + site.grid.local_shape
            grid = site.grid
            # a periodic axis the block holds whole wraps inside the kernel (its own planes, read in place); the
            # others get their faces from the neighbours (none at a domain face: zero)
            whole = [self.bc.periodic(a) and grid.dims[a] == 1 for a in range(nd)]
            wrap = sum(1 << (a + 3 - nd) for a in range(nd) if whole[a])
            received = [self.bc.periodic(a) and not whole[a] for a in range(nd)]
            plan = grid.exchange_plan(1, tuple("circular" if r else "zeros" for r in received), site.dtype,
                                      site.device)
            if all(grid.neighbour(a, step, received[a]) is None for a in range(nd) for step in (-1, 1)):
                plan = None  # no neighbouring block: nothing to exchange
            zero = torch.zeros(shape3[2], dtype=site.dtype)
            if self._uniform is not None:
                t, c, _ = self._uniform
                form: Any = (c, *([0.0] * (3 - nd)), *t)
            elif self.form == "compact":
                code = self._code if site.slices is None else self._code[site.slices]
                form = (tuple([0.0] * (3 - nd) + list(self._t)), code.reshape(shape3).contiguous())  # a view if it can
            else:
                diag, weights = self._coefficients(site)
                zeros = torch.zeros(shape3, dtype=site.dtype)
                form = [diag.reshape(shape3), *([zeros] * (2 * (3 - nd))),
                        *(w.reshape(shape3) for pair in weights for w in pair)]
            args = site.kernel[self.form] = (shape3, plan, wrap, zero, form)
        return args

    def _apply_compiled(self, site: "_Site", local: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        """``A x`` of the (B, C, *block) field ``local`` by the compiled pass, into ``y`` (or a new tensor)."""
        shape3, plan, wrap, zero, form = self._kernel_args(site)
        local = local.contiguous()
        if y is None:
            y = torch.empty_like(local)
        dims = (local.shape[0] * local.shape[1],) + shape3  # the kernel's (B, n0, n1, n2) view of both, unmade
        faces: list = [None] * (2 * (3 - self.grid.ndim))
        if plan is None:
            faces += [None] * (2 * self.grid.ndim)
        else:
            for below, above in plan.faces(local):  # contiguous slabs: the memory of the kernel's planes
                faces += [below, above]
        if self._uniform is not None:
            _kernels.stencil7(local, y, faces, form, None, zero, dims, wrap)
            self._boundary_correction(site, y, local)
        elif self.form == "compact":
            _kernels.stencil7_compact(local, y, faces, form[0], form[1], zero, dims, wrap)
        else:
            _kernels.stencil7(local, y, faces, None, form, zero, dims, wrap)
        return y

    def _boundary_correction(self, site: "_Site", y: torch.Tensor, local: torch.Tensor) -> None:
        """Add the uniform form's diagonal corrections on the block's planes that lie on a domain face."""
        for index, value in site.corrections:
            y[index].add_(local[index], alpha=value)

    def diagonal(self) -> Field:
        """The diagonal in the operator's dtype: a tensor of the grid's shape, or with a partition a GridTensor
        ``(1, 1, *block)`` on it."""
        if self._diag is None:
            self._diag = self._diagonal64().to(dtype=self.dtype, device=self.device)
        return self._public(self._block_field(self._diag))

    def _block_field(self, block: torch.Tensor) -> GridTensor:
        """A field of the block's shape as a GridTensor ``(1, 1, *block)`` on the partition (the one-rank grid
        without one)."""
        return GridTensor(block.reshape((1, 1) + self.block_shape), self._home())

    def _public(self, g: GridTensor) -> Field:
        """What the operator's own fields are to callers: GridTensors with a partition, else tensors of the grid's
        shape."""
        return g if self.partition is not None else g.local.reshape(self.grid.shape)

    # ---- assembled forms ------------------------------------------------------------------------------------
    def _global_index(self, axis: int = 0, step: int = 0) -> np.ndarray:
        """Natural (C order, x fastest) indices of the block's cells, or of their neighbours ``step`` cells along
        ``axis`` (wrapped; only read where the face weight is nonzero)."""
        idx = np.zeros(self.block_shape, dtype=np.int64)
        stride = 1
        for a in reversed(range(self.grid.ndim)):
            n, sl = self.grid.shape[a], self.block_slices[a]
            c = np.arange(sl.start, sl.stop, dtype=np.int64)
            if a == axis:
                c = (c + step) % n
            idx += (c * stride).reshape([-1 if b == a else 1 for b in range(self.grid.ndim)])
            stride *= n
        return idx

    def to_scipy_local(self) -> sp.csr_matrix:
        """This rank's rows of ``A`` (the block's cells in C order) as CSR with natural global column indices,
        shape ``(block cells, grid cells)``; local, the same numbers as :meth:`local_stencil`."""
        diag, weights = self._stencil64()
        rows = np.arange(diag.numel(), dtype=np.int64).reshape(self.block_shape)
        r, c, v = [rows.ravel()], [self._global_index().ravel()], [diag.numpy().ravel()]
        for a, (lo, hi) in enumerate(weights):
            for w, step in ((lo, -1), (hi, 1)):
                w = w.numpy()
                nz = w != 0
                r.append(rows[nz])
                c.append(self._global_index(a, step)[nz])
                v.append(-w[nz])
        return sp.csr_matrix((np.concatenate(v), (np.concatenate(r), np.concatenate(c))),
                             shape=(diag.numel(), self.grid.size))

    def to_scipy(self) -> sp.csr_matrix:
        """The whole matrix as CSR in C order (x fastest), with exactly the numbers :meth:`apply` uses. It holds
        the whole grid's rows (about 60 bytes a cell in 3D); with a partition on several ranks it is collective and
        gathers every rank's rows to every rank: use :meth:`to_scipy_local` or :meth:`local_stencil` at scale."""
        local = self.to_scipy_local().tocoo()
        rows = self._global_index().ravel()[local.row]
        parts = [(rows, local.col, local.data)]
        if self.partition is not None and self.partition.size > 1:
            parts = self.partition.comm.allgather_object(parts[0])
        r, c, v = (np.concatenate([p[i] for p in parts]) for i in range(3))
        n = self.grid.size
        return sp.csr_matrix((v, (r, c)), shape=(n, n))

    # ---- null space ------------------------------------------------------------------------------------------
    def null_space(self) -> Optional[Field]:
        """The normalised constant on fluid cells when the operator is singular (pure Neumann/periodic), else None
        (with a partition: a GridTensor on it)."""
        if not self.singular:
            return None
        v = self._block_field(self.fluid.to(self.dtype))
        return self._public(v / v.norm())

    def project(self, b: Field) -> Field:
        """Remove the null-space component from ``b`` (per sample, the mean over fluid cells); unchanged if
        nonsingular."""
        if not self.singular:
            return b
        g, restore = as_grid_tensor(b, self.grid.shape)
        sl = self._site(g).slices
        fluid = self.fluid if sl is None else self.fluid[sl]
        f = g.with_local(fluid.to(device=g.device, dtype=g.dtype).expand_as(g.local))
        mean = (g * f).sum(keep_batch=True) / f.sum(keep_batch=True)
        return restore(g - f * mean.view((-1,) + (1,) * (g.local.dim() - 1)))


class _Site:
    """What a :class:`DiffusionOperator` needs to apply itself to fields on one process grid, in one dtype and on
    one device: checked and set up once, cached by the operator (``_local``); the kernel's arrays are made on the
    first compiled pass, the eager pass's on its first call."""

    __slots__ = ("grid", "dtype", "device", "slices", "corrections", "coefficients", "kernel")

    def __init__(self, op: DiffusionOperator, grid: ProcessGrid, dtype: torch.dtype, device: torch.device) -> None:
        op._check_grid(grid)
        self.grid, self.dtype, self.device = grid, dtype, device
        self.slices = op._foreign_block(grid)  # None: the operator's own arrays are this block's
        # the uniform form's diagonal corrections on the planes of this block that lie on a domain face, as
        # (index of the (B, C, *block) field, value) in the operator's order; the two faces of an axis with one value
        # in one strided index (disjoint planes: every cell gets the same additions in the same order, in half the
        # calls)
        planes: list = []
        for a, side, value in (op._uniform[2] if op._uniform is not None else ()):
            c, d, n = grid.coords[a], grid.dims[a], grid.local_shape[a]
            if (side == 0 and c == 0) or (side == 1 and c == d - 1):
                planes.append((a, 0 if side == 0 else n - 1, value))
        self.corrections: list = []
        while planes:
            a, plane, value = planes.pop(0)
            n = grid.local_shape[a]
            step = n - 1 if planes and planes[0][0] == a and planes[0][2] == value and n > 1 else None
            if step is not None:
                planes.pop(0)
            index = (slice(None),) * (2 + a) + (slice(plane, plane + 1) if step is None else slice(0, n, step),)
            self.corrections.append((index, value))
        self.coefficients: Optional[tuple] = None
        self.kernel: dict = {}  # by form


def laplacian(
    grid: StructuredGrid, bc: Optional[BoundaryConditions] = None, mask: Any = None, **kwargs: Any,
) -> DiffusionOperator:
    """The negative Laplacian ``-div grad`` (5/7-point), i.e. :class:`DiffusionOperator` with ``k = 1`` (keywords,
    ``partition`` among them, as there)."""
    return DiffusionOperator(grid, bc, None, mask, **kwargs)
