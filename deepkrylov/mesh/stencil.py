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

The matrix-free :meth:`~DiffusionOperator.apply` (tensor or GridTensor, with one halo exchange) and
:meth:`~DiffusionOperator.to_scipy` (CSR in C order, x fastest: PETSc DMDA's natural ordering) use the same
coefficient arrays, so they give the same numbers.

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

from typing import Any, Optional, Union

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from deepkrylov.distributed import GridTensor

from . import _kernels
from .boundary import BoundaryConditions
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
        coefficient: positive cell values ``k`` (a number or a tensor of the grid's shape); default 1.
        mask: cell kinds (FLUID/SOLID/EMPTY), a tensor of the grid's shape; default all fluid.
        scaled: divide by the squared spacing (True) or take spacings as 1 (False).
        dtype, device: of the coefficients and of ``apply``'s arithmetic.

    Attributes:
        form: the compiled pass's form, ``"uniform"``, ``"compact"`` (constant ``k``: a 2-byte code per cell) or
            ``"general"`` (variable ``k``: seven coefficient arrays); see the module's docstring.
    """

    is_symmetric = True

    def __init__(
        self, grid: StructuredGrid, bc: Optional[BoundaryConditions] = None, coefficient: Any = None,
        mask: Optional[torch.Tensor] = None, *, scaled: bool = True, dtype: torch.dtype = torch.float64,
        device: Union[str, torch.device, None] = None,
    ) -> None:
        if not isinstance(grid, StructuredGrid):
            raise TypeError(f"grid must be a StructuredGrid, but got {type(grid).__name__}")
        bc = bc if bc is not None else BoundaryConditions.uniform(grid.ndim, "dirichlet")
        if bc.ndim != grid.ndim:
            raise ValueError(f"boundary conditions are for {bc.ndim} axes but the grid has {grid.ndim}")
        self.grid, self.bc, self.scaled = grid, bc, scaled
        self.dtype, self.device = dtype, torch.device(device) if device is not None else torch.device("cpu")
        n = grid.size
        self.shape = (n, n)
        k = torch.as_tensor(1.0 if coefficient is None else coefficient, dtype=torch.float64)
        k = k.expand(grid.shape).clone() if k.dim() == 0 else k.to(torch.float64)
        if tuple(k.shape) != grid.shape:
            raise ValueError(f"coefficient must be a number or have the grid's shape {grid.shape}, got {tuple(k.shape)}")
        if not bool(torch.isfinite(k).all()) or bool((k <= 0).any()):
            raise ValueError("coefficient must be finite and positive everywhere")
        if mask is None:
            mask = torch.full(grid.shape, FLUID, dtype=torch.uint8)
        mask = torch.as_tensor(mask)
        if tuple(mask.shape) != grid.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, but the grid has shape {grid.shape}")
        fluid = mask == FLUID
        if not bool(fluid.any()):
            raise ValueError("the mask leaves no unknowns: no cell is FLUID")
        self.mask, self.fluid = mask, fluid
        self.coefficient = k
        diag, weights, links, mult = self._assemble(k, fluid, mask == EMPTY)
        constant = bool((k == k.flatten()[0]).all())
        self.form = "general"
        self._code: Optional[torch.Tensor] = None
        if constant:  # compact form: the row of every cell from a 16-bit code and the scalar weights t_a
            k0 = float(k.flatten()[0])
            t = [2 * k0 * k0 / (k0 + k0) / (grid.spacing[a] ** 2 if scaled else 1.0) for a in range(grid.ndim)]
            if all(bool((w[link] == t[a]).all()) for a in range(grid.ndim) for w, link in zip(weights[a], links[a])):
                diag, self._code = self._compact(t, fluid, links, mult)
                self._t = t
                self.form = "compact"
        self._diag = diag.to(dtype=dtype, device=self.device)
        self._weights = [(lo.to(dtype=dtype, device=self.device), hi.to(dtype=dtype, device=self.device)) for lo, hi in weights]
        rowsum = (diag - sum(lo + hi for lo, hi in weights))[fluid]
        self.singular = bool(rowsum.abs().max() <= 1e-12 * diag[fluid].abs().max())
        self.is_positive_definite = None if self.singular else True
        self._local: dict = {}
        # Uniform case (constant k, every cell fluid): scalar face weights, and diagonal corrections only on the
        # boundary layers, so apply() touches the field, its halo and its result and nothing else.
        self._uniform = None
        kinds = [kind for pair in bc.faces for kind in pair]
        one_mode = bc.any_periodic == all(kind == "periodic" for kind in kinds)  # padding wraps every axis or none
        if one_mode and bool(fluid.all()) and bool((k == k.flatten()[0]).all()):
            k0 = float(k.flatten()[0])
            t = [k0 / (grid.spacing[a] ** 2 if scaled else 1.0) for a in range(grid.ndim)]
            corr = []  # (axis, side, value): Dirichlet face +t (2t instead of t), Neumann -t, periodic none
            for a in range(grid.ndim):
                for side in (0, 1):
                    kind = bc.faces[a][side]
                    if kind != "periodic" and grid.shape[a] > 0:
                        corr.append((a, side, t[a] if kind == "dirichlet" else -t[a]))
            self._uniform = (t, 2.0 * sum(t), corr)
            self.form, self._code = "uniform", None

    # ---- assembly of the coefficient arrays (global, float64) -----------------------------------------------
    def _assemble(self, k: torch.Tensor, fluid: torch.Tensor, empty: torch.Tensor):  # type: ignore[no-untyped-def]
        grid, bc = self.grid, self.bc
        diag = torch.zeros(grid.shape, dtype=torch.float64)
        weights, links, mult = [], [], []  # links: the neighbour is an unknown; mult: the diagonal in units of t
        for a in range(grid.ndim):
            h2 = grid.spacing[a] ** 2 if self.scaled else 1.0
            n = grid.shape[a]
            idx = torch.arange(n).view([-1 if b == a else 1 for b in range(grid.ndim)]).expand(grid.shape)
            pair, link, m = [], [], torch.zeros(grid.shape, dtype=torch.int32)
            for side, step in (("lo", 1), ("hi", -1)):  # roll by +1: the lower neighbour; by -1: the upper
                k_nb = torch.roll(k, step, a)
                t = 2 * k * k_nb / (k + k_nb) / h2
                at_edge = idx == (0 if side == "lo" else n - 1)
                kind = bc.faces[a][0 if side == "lo" else 1]
                if kind == "periodic":
                    at_edge = torch.zeros_like(at_edge)
                nb_fluid = torch.roll(fluid, step, a) & ~at_edge
                nb_empty = torch.roll(empty, step, a) & ~at_edge
                w = torch.where(fluid & nb_fluid, t, torch.zeros_like(t))
                diag += w
                diag += torch.where(fluid & nb_empty, t, torch.zeros_like(t))
                m += (fluid & (nb_fluid | nb_empty)).to(torch.int32)
                if kind == "dirichlet":
                    diag += torch.where(fluid & at_edge, 2 * k / h2, torch.zeros_like(t))
                    m += 2 * (fluid & at_edge).to(torch.int32)
                pair.append(w)
                link.append(fluid & nb_fluid)
            weights.append((pair[0], pair[1]))
            links.append((link[0], link[1]))
            mult.append(m)
        diag = torch.where(fluid, diag, torch.ones_like(diag))
        return diag, weights, links, mult

    def _compact(self, t: list, fluid: torch.Tensor, links: list, mult: list) -> tuple[torch.Tensor, torch.Tensor]:
        """The compact form's diagonal (float64, the kernel's arithmetic) and cell codes (int16, read as uint16 by
        ``_stencil7.c``): bit 2b + side: the neighbour on that side of kernel axis b is an unknown; bits 6 + 3b: the
        multiplicity m_b (0..4) of t_b in the diagonal; bit 15: not fluid (identity row). Axes are numbered as the
        kernel sees them: a 1D/2D grid is embedded in 3D with leading axes of size 1, weight 0, multiplicity 0."""
        nd, off = self.grid.ndim, 3 - self.grid.ndim
        code = torch.zeros(self.grid.shape, dtype=torch.int32)
        ts, ms = [0.0] * off + list(t), [None] * off + list(mult)
        diag = torch.zeros(self.grid.shape, dtype=torch.float64)
        for b in range(3):
            if ms[b] is not None:  # m * t in float64, summed in the kernel's order: (m0 t0 + m1 t1) + m2 t2
                diag = diag + ms[b].to(torch.float64) * ts[b]
        for a in range(nd):
            b = a + off
            code += links[a][0].to(torch.int32) << (2 * b)
            code += links[a][1].to(torch.int32) << (2 * b + 1)
            code += mult[a] << (6 + 3 * b)
        code -= (~fluid).to(torch.int32) << 15  # bit 15 of the uint16, stored as int16
        diag = torch.where(fluid, diag, torch.ones_like(diag))
        return diag, code.to(torch.int16)

    # ---- matrix-free application ----------------------------------------------------------------------------
    def _mode(self) -> str:
        return "circular" if self.bc.any_periodic else "zeros"

    def _check(self, x: Field) -> None:
        if isinstance(x, GridTensor):
            if x.grid.global_shape != self.grid.shape:
                raise ValueError(
                    f"the field lives on a grid of shape {x.grid.global_shape}, but the operator on {self.grid.shape}"
                )
        elif tuple(x.shape[-self.grid.ndim:]) != self.grid.shape or x.dim() < self.grid.ndim:
            raise ValueError(f"field of shape {tuple(x.shape)} does not end with the grid's shape {self.grid.shape}")

    def _coefficients_for(self, x: Field) -> tuple[torch.Tensor, list]:
        self._check(x)
        if isinstance(x, GridTensor):
            key = (x.grid, x.dtype, x.device)
            if key not in self._local:
                sl = x.grid.local_slices
                self._local[key] = (
                    self._diag[sl].to(device=x.device, dtype=x.dtype).contiguous(),
                    [(lo[sl].to(device=x.device, dtype=x.dtype).contiguous(), hi[sl].to(device=x.device, dtype=x.dtype).contiguous())
                     for lo, hi in self._weights],
                )
            return self._local[key]
        key = ("whole", x.dtype, x.device)
        if key not in self._local:
            self._local[key] = (
                self._diag.to(device=x.device, dtype=x.dtype), [(lo.to(device=x.device, dtype=x.dtype), hi.to(device=x.device, dtype=x.dtype))
                                                          for lo, hi in self._weights],
            )
        return self._local[key]

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        nd = self.grid.ndim
        lead = x.shape[:-nd]
        y = x.reshape((-1, 1) + self.grid.shape)
        mode = "circular" if self.bc.any_periodic else "constant"
        return F.pad(y, (1, 1) * nd, mode=mode).reshape(lead + tuple(s + 2 for s in self.grid.shape))

    def apply(self, x: Field) -> Field:
        """``A x`` matrix-free. On CPU without autograd: one face exchange (GridTensor) and one compiled pass
        that reads ``x`` once and writes the result once; otherwise one halo exchange (or padding) and shifted
        slices (differentiable, any device)."""
        self._check(x)
        local = x.local if isinstance(x, GridTensor) else x
        if self._compiled_ok(local):
            return self._apply_compiled(x, local, None)
        diag, weights = self._coefficients_for(x)  # the compact form too: its arrays hold the same numbers
        nd = self.grid.ndim
        if isinstance(x, GridTensor):
            p, local = x.halo(1, self._mode()), x.local
        else:
            p, local = self._pad(x), x
        lead = p.dim() - nd

        def shifted(a: int, start: int) -> torch.Tensor:
            idx = [slice(None)] * lead + [slice(1, -1)] * nd
            idx[lead + a] = slice(start, start + local.shape[local.dim() - nd + a])
            return p[tuple(idx)]

        if self._uniform is not None:
            t, c, corr = self._uniform
            y = torch.mul(local, c)
            for a in range(nd):
                y.sub_(shifted(a, 0), alpha=t[a]).sub_(shifted(a, 2), alpha=t[a])
            self._boundary_correction(x, y, local, corr)
        else:
            y = diag * local
            for a, (lo, hi) in enumerate(weights):
                y.addcmul_(lo, shifted(a, 0), value=-1).addcmul_(hi, shifted(a, 2), value=-1)
        return x.with_local(y) if isinstance(x, GridTensor) else y

    def _faces(self, x: Field, x4: torch.Tensor) -> list:
        """The six neighbour planes of the (B, n0, n1, n2) block ``x4``: received from neighbouring ranks, the
        opposite face on a periodic axis held by this rank alone, or None (zero)."""
        nd, off = self.grid.ndim, 3 - self.grid.ndim
        faces: list = [None] * (2 * off)
        for a in range(nd):
            k = a + off
            first = x4.select(k + 1, 0)
            last = x4.select(k + 1, x4.shape[k + 1] - 1)
            periodic = self.bc.faces[a][0] == "periodic"
            if not isinstance(x, GridTensor):
                faces += [last.contiguous(), first.contiguous()] if periodic else [None, None]
                continue
            g = x.grid
            lo, hi = g.neighbour(a, -1, periodic), g.neighbour(a, +1, periodic)
            flo = first.new_empty(first.shape) if lo is not None else None
            fhi = first.new_empty(first.shape) if hi is not None else None
            send_last = last.contiguous() if hi is not None else None
            send_first = first.contiguous() if lo is not None else None
            if lo == g.rank and hi == g.rank:
                flo, fhi = send_last, send_first
            else:  # my last plane goes up while the lower neighbour's comes in; then the other way
                g.comm.sendrecv(send_last, hi, flo, lo)
                g.comm.sendrecv(send_first, lo, fhi, hi)
            faces += [flo, fhi]
        return faces

    def apply_into(self, x: Field, out: Field) -> Field:
        """``out = A x`` without allocating (like PETSc's ``MatMult(A, x, y)``); ``out`` must not alias ``x``.
        Krylov loops use it to reuse one buffer: a fresh result costs page faults comparable to the apply."""
        self._check(x)
        local = x.local if isinstance(x, GridTensor) else x
        dest = out.local if isinstance(out, GridTensor) else out
        if (self._compiled_ok(local) and dest.shape == local.shape and dest.dtype == local.dtype
                and dest.device == local.device and dest.is_contiguous() and dest.data_ptr() != local.data_ptr()):
            self._apply_compiled(x, local, dest)
            return out
        dest.copy_(self.apply(x).local if isinstance(x, GridTensor) else self.apply(x))
        return out

    @staticmethod
    def _compiled_ok(local: torch.Tensor) -> bool:
        return (local.device.type == "cpu" and local.dtype in (torch.float32, torch.float64)
                and not (torch.is_grad_enabled() and local.requires_grad) and _kernels.stencil_library() is not None)

    def _apply_compiled(self, x: Field, local: torch.Tensor, y: Optional[torch.Tensor]) -> Field:
        nd = self.grid.ndim
        spatial = tuple(local.shape[local.dim() - nd:])
        k3 = (1,) * (3 - nd) + spatial
        x4 = local.contiguous().reshape((-1,) + k3)
        if y is None:
            y = torch.empty_like(local, memory_format=torch.contiguous_format)
        zkey = ("zero", local.dtype, k3[2])
        if zkey not in self._local:
            self._local[zkey] = torch.zeros(k3[2], dtype=local.dtype)
        faces = self._faces(x, x4)
        if self._uniform is not None:
            t, c, corr = self._uniform
            ts = [0.0] * (3 - nd) + list(t)
            _kernels.stencil7(x4, y.view(x4.shape), faces, (c, *ts), None, self._local[zkey])
            self._boundary_correction(x, y, local, corr)
        elif self.form == "compact":
            ckey = ("code", x.grid if isinstance(x, GridTensor) else "whole")
            if ckey not in self._local:
                code = self._code[x.grid.local_slices] if isinstance(x, GridTensor) else self._code
                self._local[ckey] = code.reshape(k3).contiguous()
            ts = [0.0] * (3 - nd) + list(self._t)
            _kernels.stencil7_compact(x4, y.view(x4.shape), faces, ts, self._local[ckey], self._local[zkey])
        else:
            diag, weights = self._coefficients_for(x)
            ckey = ("kernel", id(diag))
            if ckey not in self._local:
                coefs = [diag.reshape(k3).contiguous()]
                zeros = torch.zeros(k3, dtype=local.dtype)
                coefs += [zeros, zeros] * (3 - nd)
                for lo, hi in weights:
                    coefs += [lo.reshape(k3).contiguous(), hi.reshape(k3).contiguous()]
                self._local[ckey] = (diag, coefs)  # diag kept alive so that its id stays unique
            _kernels.stencil7(x4, y.view(x4.shape), faces, None, self._local[ckey][1], self._local[zkey])
        return x.with_local(y) if isinstance(x, GridTensor) else y

    def _boundary_correction(self, x: Field, y: torch.Tensor, local: torch.Tensor, corr: list) -> None:
        """Add the boundary layers' diagonal corrections (only on blocks that touch the domain boundary)."""
        nd = self.grid.ndim
        lead = local.dim() - nd
        for a, side, value in corr:
            if isinstance(x, GridTensor):
                c, dims = x.grid.coords[a], x.grid.dims[a]
                if (side == 0 and c != 0) or (side == 1 and c != dims - 1):
                    continue
            idx = [slice(None)] * local.dim()
            n = local.shape[lead + a]
            idx[lead + a] = slice(0, 1) if side == 0 else slice(n - 1, n)
            idx = tuple(idx)
            y[idx].add_(local[idx], alpha=value)

    def diagonal(self) -> torch.Tensor:
        return self._diag

    # ---- assembled forms ------------------------------------------------------------------------------------
    def to_scipy(self) -> sp.csr_matrix:
        """CSR matrix in C order (x fastest), with exactly the numbers :meth:`apply` uses."""
        shape = self.grid.shape
        n = self.grid.size
        index = np.arange(n).reshape(shape)
        rows, cols, vals = [index.ravel()], [index.ravel()], [self._diag.double().cpu().numpy().ravel()]
        for a, (lo, hi) in enumerate(self._weights):
            for w, step in ((lo, 1), (hi, -1)):
                w = w.double().cpu().numpy()
                nz = w != 0
                nb = np.roll(index, step, axis=a)
                rows.append(index[nz])
                cols.append(nb[nz])
                vals.append(-w[nz])
        return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))

    # ---- null space ------------------------------------------------------------------------------------------
    def null_space(self) -> Optional[torch.Tensor]:
        """The normalised constant on fluid cells when the operator is singular (pure Neumann/periodic), else None."""
        if not self.singular:
            return None
        v = self.fluid.to(self.dtype)
        return v / v.norm()

    def project(self, b: Field) -> Field:
        """Remove the null-space component from ``b`` (the mean over fluid cells); unchanged if nonsingular."""
        if not self.singular:
            return b
        fluid = self.fluid
        if isinstance(b, GridTensor):
            f = b.with_local(fluid[b.grid.local_slices].to(b.dtype).expand_as(b.local))
            mean = (b * f).sum(keep_batch=True) / f.sum(keep_batch=True)
            return b - f * mean.view((-1,) + (1,) * (b.local.dim() - 1))
        f = fluid.to(b.dtype).to(b.device)
        nd = self.grid.ndim
        flat = b.reshape((-1,) + self.grid.shape)
        mean = (flat * f).flatten(1).sum(1) / f.sum()
        return (flat - f * mean.view((-1,) + (1,) * nd)).reshape(b.shape)


def laplacian(
    grid: StructuredGrid, bc: Optional[BoundaryConditions] = None, mask: Optional[torch.Tensor] = None, **kwargs: Any,
) -> DiffusionOperator:
    """The negative Laplacian ``-div grad`` (5/7-point), i.e. :class:`DiffusionOperator` with ``k = 1``."""
    return DiffusionOperator(grid, bc, None, mask, **kwargs)
