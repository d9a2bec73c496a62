"""Distributed FFTs of a :class:`GridTensor` over its spatial axes: ``fftn``, ``ifftn``, ``rfftn``, ``irfftn``.

The transform is separable: each stage transforms, with ``torch.fft``, the axes that are whole on every rank, and a
*repartition* (an all-to-all) between stages moves the ranks of the next axis onto an axis already transformed.
A process grid that splits one axis is a slab decomposition (one all-to-all); one that splits two or three axes is a
pencil decomposition (one all-to-all per split axis). Uneven blocks are allowed everywhere.

The spectral result is a GridTensor on a :class:`SpectralGrid`: a ProcessGrid over the spectral shape (the last axis
``n // 2 + 1`` long after ``rfftn``) in the layout the last stage left, which usually differs from the input's
("transposed output", as in FFTW-MPI). Each rank owns a box of wave numbers, ``grid.local_slices`` of the global
spectrum, so spectral layers multiply their modes locally; ``ifftn``/``irfftn`` run the stages backwards and return
to the physical grid. No rank ever holds the whole grid (except for a 1D grid split over ranks, see below).

Every step is differentiable: the local FFTs through ``torch.fft`` and each repartition through an autograd
function whose backward is the reverse repartition (its adjoint), so gradients equal the serial ones. As with any
collective, every rank must take part in the backward: a rank's loss must depend on its own spectral block (if only
through a zero-size slice), or its backward would skip the all-to-alls the other ranks wait in.

Memory per rank: a repartition holds its input block, one packed send buffer and one receive buffer (each the
size of a block) and its output block: four blocks of the largest intermediate layout at its peak. After the first
stage of ``rfftn`` a block is a complex half spectrum, about the input block's bytes (``b*c*n^d/P`` float64 in,
``b*c*n^(d-1)*(n/2+1)/P`` complex128 out), so the peak is about four times the input's bytes. Autograd saves
nothing for the FFTs and repartitions (they are linear).

A 1D grid of ``n = n1 * n2`` points split over ``P`` ranks (``n1, n2 >= P``) runs the four-step algorithm on the
``n1 x n2`` view: FFTs of length ``n1``, twiddle factors, FFTs of length ``n2``, three all-to-alls; its spectrum is in
natural order, in blocks of multiples of ``n1`` (the half spectrum of ``rfftn`` in default blocks). A 1D length with
no such factors (a prime) is gathered on every rank instead (memory ``n`` per rank).

Example (``mpiexec -n 4 python example.py``)::

    from deepkrylov.distributed import init, ProcessGrid, GridTensor, rfftn, irfftn
    ctx = init()
    grid = ProcessGrid(ctx, (64, 64, 64))
    u = GridTensor.from_global(torch.randn(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(0)), grid)
    uh = rfftn(u)                      # GridTensor on a SpectralGrid of shape (64, 64, 33)
    wave_numbers = uh.grid.local_slices
    v = irfftn(uh)                     # back on `grid`, equal to u
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch

from .grid import ProcessGrid, default_split
from .tensor import GridTensor

__all__ = ["SpectralGrid", "fftn", "ifftn", "rfftn", "irfftn", "redistribute"]

Norm = Optional[Literal["backward", "ortho", "forward"]]
_NORMS = (None, "backward", "ortho", "forward")
_BC = (slice(None), slice(None))


class SpectralGrid(ProcessGrid):
    """The ProcessGrid of a spectrum: the layout a distributed ``fftn``/``rfftn`` of a field on ``physical`` leaves.

    ``real`` says whether it is the half spectrum of ``rfftn`` (last axis ``physical.global_shape[-1] // 2 + 1``).
    ``local_slices`` are this rank's wave-number indices (in ``torch.fft.fftfreq``/``rfftfreq`` order).
    """

    def __init__(self, physical: ProcessGrid, real: bool, global_shape: Sequence[int], dims: Sequence[int],
                 splits: Sequence[Sequence[int]]) -> None:
        super().__init__(physical.comm, global_shape, dims, physical.periodic, splits)
        self.physical = physical
        self.real = bool(real)

    def __repr__(self) -> str:
        return f"Spectral{super().__repr__()[:-1]}, real={self.real}, physical={self.physical.global_shape})"


# ---- repartition (all-to-all) ---------------------------------------------------------------------------------------
def _box(grid: ProcessGrid, rank: int) -> list[tuple[int, int]]:
    return [(s.start, s.stop) for s in grid.local_slices_of(rank)]


def _messages(src: ProcessGrid, dst: ProcessGrid, offset: Sequence[int]) -> tuple[list, list]:
    """Per peer: the slices of this rank's ``src`` block it sends, and of its ``dst`` block it receives (``None`` when
    empty). Global index ``i`` of ``dst`` is index ``i + offset`` of ``src``."""
    me = src.rank
    mine_src, mine_dst = _box(src, me), _box(dst, me)
    sends, recvs = [], []
    for q in range(src.size):
        peer_dst, peer_src = _box(dst, q), _box(src, q)
        send, recv = [], []
        for (a0, a1), (b0, b1), (c0, c1), (d0, d1), o in zip(mine_src, peer_dst, mine_dst, peer_src, offset):
            lo, hi = max(a0, b0 + o), min(a1, b1 + o)  # my src block meets q's dst block, in src coordinates
            send.append(slice(lo - a0, hi - a0) if hi > lo else None)
            lo, hi = max(c0 + o, d0), min(c1 + o, d1)  # my dst block meets q's src block, in src coordinates
            recv.append(slice(lo - o - c0, hi - o - c0) if hi > lo else None)
        sends.append(_BC + tuple(send) if all(s is not None for s in send) else None)
        recvs.append(_BC + tuple(recv) if all(s is not None for s in recv) else None)
    return sends, recvs


_MESSAGES: dict = {}


def _cached_messages(src: ProcessGrid, dst: ProcessGrid, offset: tuple) -> tuple[list, list]:
    key = (src, dst, offset)
    m = _MESSAGES.get(key)
    if m is None:
        if len(_MESSAGES) > 256:
            _MESSAGES.clear()
        m = _MESSAGES[key] = _messages(src, dst, offset)
    return m


def _repartition(x: torch.Tensor, src: ProcessGrid, dst: ProcessGrid, offset: tuple) -> torch.Tensor:
    """The all-to-all: every part of this rank's block goes, packed into one buffer in rank order, to the rank whose
    ``dst`` block holds it (``Comm.alltoall``, i.e. ``MPI_Alltoallv`` or ``all_to_all_single``); what arrives is
    unpacked into the ``dst`` block (zeros where nothing arrives). This rank's own part is copied directly."""
    send_idx, recv_idx = _cached_messages(src, dst, offset)
    lead = tuple(x.shape[:2])
    covered = src.global_shape == dst.global_shape and not any(offset)  # every cell of the dst block arrives
    out = (x.new_empty if covered else x.new_zeros)(lead + dst.local_shape)
    me = src.rank
    if send_idx[me] is not None:  # this rank's own part: copied, not sent
        out[recv_idx[me]] = x[send_idx[me]]
    send_shapes = [None if i is None or q == me else lead + tuple(s.stop - s.start for s in i[2:])
                   for q, i in enumerate(send_idx)]
    recv_shapes = [None if i is None or q == me else lead + tuple(s.stop - s.start for s in i[2:])
                   for q, i in enumerate(recv_idx)]
    sc = [0 if sh is None else math.prod(sh) for sh in send_shapes]
    rc = [0 if sh is None else math.prod(sh) for sh in recv_shapes]
    if src.size == 1:
        return out
    sbuf = x.new_empty(sum(sc))
    pos = 0
    for i, sh, n in zip(send_idx, send_shapes, sc):
        if n:
            sbuf[pos:pos + n].view(sh).copy_(x[i])
        pos += n
    rbuf = src.comm.alltoall(sbuf, sc, rc)
    pos = 0
    for i, sh, n in zip(recv_idx, recv_shapes, rc):
        if n:
            out[i] = rbuf[pos:pos + n].view(sh)
        pos += n
    return out


class _Repartition(torch.autograd.Function):
    """Blocks of ``src`` -> blocks of ``dst`` (cells outside ``src`` become zeros); backward: the reverse move."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, src: ProcessGrid, dst: ProcessGrid,  # type: ignore[override]
                offset: tuple) -> torch.Tensor:
        ctx.grids = (src, dst, offset)
        return _repartition(x, src, dst, offset)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        src, dst, offset = ctx.grids
        return _repartition(g.contiguous(), dst, src, tuple(-o for o in offset)), None, None, None


def redistribute(x: GridTensor, grid: ProcessGrid, offset: Optional[Sequence[int]] = None) -> GridTensor:
    """``x`` on another decomposition ``grid`` of the same ranks (an all-to-all; differentiable, adjoint backward).

    The grids may differ in shape: index ``i`` of ``grid`` takes index ``i + offset`` of ``x`` (default 0), zeros
    where that lies outside ``x``, so this also crops and zero-pads without any rank holding the whole field.
    """
    if not isinstance(x, GridTensor):
        raise TypeError(f"redistribute needs a GridTensor, but got {type(x).__name__}")
    if grid.comm.identity() != x.grid.comm.identity() or grid.ndim != x.grid.ndim:
        raise ValueError(f"redistribute needs a grid with {x.grid.ndim} axes on the same communicator, got {grid!r}")
    off = (0,) * grid.ndim if offset is None else tuple(int(o) for o in offset)
    if len(off) != grid.ndim:
        raise ValueError(f"offset needs one entry per axis ({grid.ndim}), but got {offset}")
    return GridTensor(_Repartition.apply(x.local, x.grid, grid, off), grid)


class _GatherSum(torch.autograd.Function):
    """The whole field on every rank, each rank going on with its own part: backward sums over ranks, then slices."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:  # type: ignore[override]
        full = x.new_zeros(tuple(x.shape[:2]) + grid.global_shape)
        full[_BC + grid.local_slices] = x
        ctx.grid = grid
        return grid.comm.allreduce_(full)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        g = ctx.grid.comm.allreduce_(g.contiguous().clone())
        return g[_BC + ctx.grid.local_slices], None


# ---- plans ----------------------------------------------------------------------------------------------------------
class _Plan:
    """Stages from the physical layout to the spectral one: ("fft", axes, real, sizes) or ("move", src, dst); a 1D
    grid over several ranks has one ("fourstep", _FourStep) or, for a length without factors, one
    ("gather", axes, real, sizes, src, dst)."""

    def __init__(self, grid: ProcessGrid, real: bool) -> None:
        self.physical, self.real = grid, real
        nd, n = grid.ndim, grid.global_shape
        shape = list(n)
        spec_shape = list(n)
        if real:
            spec_shape[-1] = n[-1] // 2 + 1
        stages: list = []
        if nd == 1 and grid.size > 1:
            if grid.size > spec_shape[0]:
                raise ValueError(f"a distributed {'r' if real else ''}fft of {n[0]} points on {grid.size} ranks leaves "
                                 f"{spec_shape[0]} wave numbers, fewer than the ranks; use fewer ranks")
            four = _FourStep.make(grid, real)
            if four is not None:
                self.stages, self.spectral = [("fourstep", four)], four.spectral
                return
            dst = SpectralGrid(grid, real, spec_shape, grid.dims, [default_split(spec_shape[0], grid.size)])
            self.stages, self.spectral = [("gather", (0,), real, tuple(n), grid, dst)], dst
            return
        dims, splits = list(grid.dims), [tuple(s) for s in grid.splits]
        cur: ProcessGrid = grid
        remaining = list(range(nd))
        first = True
        while remaining:
            local = [a for a in remaining if dims[a] == 1]
            if (real and first and dims[-1] != 1) or not local:
                a = nd - 1 if (real and first) else max(a for a in remaining if dims[a] > 1)
                b = self._target(a, dims, splits, shape, remaining)
                f, g = dims[a], dims[b]
                nested = b < a and all(dims[i] == 1 for i in range(b + 1, a)) and all(s >= f for s in splits[b])
                dims[b], dims[a] = g * f, 1
                splits[b] = (tuple(q for s in splits[b] for q in default_split(s, f)) if nested
                             else default_split(shape[b], dims[b]))
                splits[a] = (shape[a],)
                dst = ProcessGrid(grid.comm, shape, dims, grid.periodic, splits)
                stages.append(("move", cur, dst))
                cur = dst
                continue
            stages.append(("fft", tuple(local), real and first, tuple(n[a] for a in local)))
            if real and first:
                shape[-1] = spec_shape[-1]
                splits[-1] = (shape[-1],)
                cur = ProcessGrid(grid.comm, shape, dims, grid.periodic, splits)
            remaining = [a for a in remaining if a not in local]
            first = False
        self.stages = stages
        self.spectral = SpectralGrid(grid, real, shape, dims, splits)

    @staticmethod
    def _target(a: int, dims: list, splits: list, shape: list, remaining: list) -> int:
        """The axis that takes axis ``a``'s ranks: a transformed one if any fits, the longest first."""
        f = dims[a]
        fits = [b for b in range(len(dims)) if b != a and shape[b] >= dims[b] * f]
        if not fits:
            raise ValueError(
                f"a distributed FFT cannot make axis {a} whole: moving its {f} ranks onto another axis needs "
                f"that axis to have at least (its ranks x {f}) points, but the shape is {tuple(shape)} on process "
                f"dims {tuple(dims)}; use fewer ranks or other dims"
            )
        done = [b for b in fits if b not in remaining]
        pool = done or fits
        return max(pool, key=lambda b: (shape[b] // (dims[b] * f), -b))


class _FourStep:
    """A 1D transform of length ``n = n1 * n2`` on ``P`` ranks as a 2D one: index ``N2 * a + b`` of the line is
    entry ``(a, b)`` of an ``n1 x n2`` array, wave number ``k1 + n1 * k2`` comes from entry ``(k1, k2)``, and
    ``X[k1 + n1 k2] = sum_b w^(b k1) e^(-2 pi i b k2 / n2) sum_a x[n2 a + b] e^(-2 pi i a k1 / n1)``, ``w`` the
    ``n``-th root of unity."""

    def __init__(self, grid: ProcessGrid, real: bool, n1: int, n2: int) -> None:
        p, n, comm = grid.size, n1 * n2, grid.comm
        self.real, self.n, self.n1, self.n2, self.grid = real, n, n1, n2, grid
        rows, cols = default_split(n1, p), default_split(n2, p)
        self.line_rows = ProcessGrid(comm, (n,), (p,), splits=[tuple(r * n2 for r in rows)])  # whole rows of x
        self.by_rows = ProcessGrid(comm, (n1, n2), (p, 1), splits=[rows, (n2,)])
        self.by_cols = ProcessGrid(comm, (n1, n2), (1, p), splits=[(n1,), cols])
        spec = [tuple(c * n1 for c in cols)]
        if real:  # the half spectrum in default blocks, cropped from the full one
            self.full = ProcessGrid(comm, (n,), (p,), splits=spec)
            self.spectral = SpectralGrid(grid, True, (n // 2 + 1,), (p,), [default_split(n // 2 + 1, p)])
        else:
            self.full = self.spectral = SpectralGrid(grid, False, (n,), (p,), spec)

    @staticmethod
    def make(grid: ProcessGrid, real: bool) -> Optional["_FourStep"]:
        n, p = grid.global_shape[0], grid.size
        pairs = [(d, n // d) for d in range(p, n // p + 1) if n % d == 0]
        if not pairs:
            return None
        n1, n2 = min(pairs, key=lambda f: abs(f[0] - f[1]))
        return _FourStep(grid, real, n1, n2)

    def _twiddle(self, y: torch.Tensor, sign: float) -> torch.Tensor:
        """``y (b, c, n1, cols)`` on ``by_cols`` times ``w^(sign * k1 * b)`` for this rank's columns ``b``."""
        cols = self.by_cols.local_slices[1]
        k1 = torch.arange(self.n1, dtype=torch.float64, device=y.device)[:, None]
        b = torch.arange(cols.start, cols.stop, dtype=torch.float64, device=y.device)[None, :]
        phase = (k1 * b) % self.n * (sign * 2.0 * math.pi / self.n)
        return y * torch.polar(torch.ones_like(phase), phase).to(y.dtype)

    def run(self, x: torch.Tensor, to_spectrum: bool, inverse: bool, norm: Norm) -> torch.Tensor:
        zero1, zero2 = (0,), (0, 0)
        lead = tuple(x.shape[:2])
        fft = torch.fft.ifft if inverse else torch.fft.fft
        sign = 1.0 if inverse else -1.0
        if to_spectrum:
            if not x.is_complex():
                x = x.to(torch.promote_types(x.dtype, torch.complex64))
            y = _Repartition.apply(x.contiguous(), self.grid, self.line_rows, zero1)
            y = y.reshape(lead + self.by_rows.local_shape)
            y = _Repartition.apply(y, self.by_rows, self.by_cols, zero2)
            y = self._twiddle(fft(y, dim=2, norm=norm), sign)
            y = _Repartition.apply(y.contiguous(), self.by_cols, self.by_rows, zero2)
            y = fft(y, dim=3, norm=norm)
            y = _Repartition.apply(y.contiguous(), self.by_rows, self.by_cols, zero2)
            y = y.transpose(2, 3).reshape(lead + self.full.local_shape)
            if self.real:
                y = _Repartition.apply(y, self.full, self.spectral, zero1)
            return y
        if self.real:  # Re(ifft) of the half spectrum with the weights of the wave numbers it stands for
            k = torch.arange(self.n // 2 + 1, device=x.device)[self.spectral.local_slices[0]]
            twice = (k > 0) & (2 * k != self.n)
            x = _Repartition.apply((x * torch.where(twice, 2.0, 1.0).to(x.real.dtype)).contiguous(), self.spectral,
                                   self.full, zero1)
        elif not x.is_complex():
            x = x.to(torch.promote_types(x.dtype, torch.complex64))
        y = x.reshape(lead + (self.by_cols.local_shape[1], self.n1)).transpose(2, 3).contiguous()
        y = _Repartition.apply(y, self.by_cols, self.by_rows, zero2)
        y = fft(y, dim=3, norm=norm)
        y = _Repartition.apply(y.contiguous(), self.by_rows, self.by_cols, zero2)
        y = fft(self._twiddle(y, sign), dim=2, norm=norm)
        y = _Repartition.apply(y.contiguous(), self.by_cols, self.by_rows, zero2)
        y = _Repartition.apply(y.reshape(lead + self.line_rows.local_shape), self.line_rows, self.grid, zero1)
        return y.real if self.real else y


_PLANS: dict = {}


def _plan(grid: ProcessGrid, real: bool) -> _Plan:
    key = (grid, real)
    p = _PLANS.get(key)
    if p is None:
        if len(_PLANS) > 64:
            _PLANS.clear()
        p = _PLANS[key] = _Plan(grid, real)
    return p


def _check(x: object, what: str) -> GridTensor:
    if not isinstance(x, GridTensor):
        raise TypeError(f"{what} needs a GridTensor, but got {type(x).__name__}")
    return x


def _check_norm(norm: Norm) -> None:
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, but got {norm!r}")


def _fft(x: torch.Tensor, axes: tuple, real: bool, sizes: tuple, to_spectrum: bool, inverse: bool,
         norm: Norm) -> torch.Tensor:
    dim = tuple(a + 2 for a in axes)
    if real:
        if to_spectrum:
            return torch.fft.rfftn(x, dim=dim, norm=norm)
        return torch.fft.irfftn(x, s=sizes, dim=dim, norm=norm)
    return (torch.fft.ifftn if inverse else torch.fft.fftn)(x, dim=dim, norm=norm)


def _run(x: torch.Tensor, plan: _Plan, to_spectrum: bool, inverse: bool, norm: Norm) -> torch.Tensor:
    zero = (0,) * plan.physical.ndim
    for st in (plan.stages if to_spectrum else reversed(plan.stages)):
        if st[0] == "move":
            src, dst = (st[1], st[2]) if to_spectrum else (st[2], st[1])
            x = _Repartition.apply(x.contiguous(), src, dst, zero)
        elif st[0] == "fft":
            x = _fft(x, st[1], st[2], st[3], to_spectrum, inverse, norm)
        elif st[0] == "fourstep":
            x = st[1].run(x, to_spectrum, inverse, norm)
        else:  # gather (1D on several ranks)
            _, axes, real, sizes, src, dst = st
            src, dst = (src, dst) if to_spectrum else (dst, src)
            full = _GatherSum.apply(x.contiguous(), src)
            x = _fft(full, axes, real, sizes, to_spectrum, inverse, norm)[_BC + dst.local_slices]
    return x


def _spectral_input(x: GridTensor, grid: Optional[ProcessGrid], real: bool, what: str) -> _Plan:
    target = grid
    if target is None:
        if not isinstance(x.grid, SpectralGrid) or x.grid.real != real:
            raise ValueError(
                f"{what} got a GridTensor that is not on the SpectralGrid of a distributed "
                f"{'rfftn' if real else 'fftn'}; pass grid= (the physical ProcessGrid to return to)"
            )
        target = x.grid.physical
    plan = _plan(target, real)
    if x.grid != plan.spectral:
        raise ValueError(f"{what}: the input's layout {x.grid!r} is not the spectral layout {plan.spectral!r} of "
                         f"grid {target!r}")
    return plan


def rfftn(x: GridTensor, norm: Norm = None) -> GridTensor:
    """``torch.fft.rfftn`` of a real GridTensor over all its spatial axes; the half spectrum on a SpectralGrid."""
    x = _check(x, "rfftn")
    _check_norm(norm)
    if x.dtype.is_complex:
        raise TypeError(f"rfftn needs a real GridTensor, but got {x.dtype}; use fftn")
    plan = _plan(x.grid, True)
    return GridTensor(_run(x.local, plan, True, False, norm), plan.spectral)


def irfftn(x: GridTensor, grid: Optional[ProcessGrid] = None, norm: Norm = None) -> GridTensor:
    """Inverse of :func:`rfftn`: the real field on ``grid`` (default: the physical grid of ``x``'s SpectralGrid).

    Like ``torch.fft.irfftn`` with ``s`` the physical shape: the imaginary parts of the self-conjugate wave numbers
    are ignored."""
    x = _check(x, "irfftn")
    _check_norm(norm)
    plan = _spectral_input(x, grid, True, "irfftn")
    return GridTensor(_run(x.local, plan, False, True, norm), plan.physical)


def _complex(x: GridTensor) -> torch.Tensor:
    return x.local if x.dtype.is_complex else x.local.to(torch.promote_types(x.dtype, torch.complex64))


def fftn(x: GridTensor, norm: Norm = None) -> GridTensor:
    """``torch.fft.fftn`` over the spatial axes. A field on a physical grid goes to its SpectralGrid; a field on a
    SpectralGrid (as :func:`ifftn` of a field on a physical grid leaves it) comes back to its physical grid."""
    x = _check(x, "fftn")
    _check_norm(norm)
    return _complex_transform(x, False, norm)


def ifftn(x: GridTensor, grid: Optional[ProcessGrid] = None, norm: Norm = None) -> GridTensor:
    """``torch.fft.ifftn`` over the spatial axes: a spectrum on a SpectralGrid returns to its physical grid (or to
    ``grid``, whose spectral layout ``x`` must be on); a field on a plain grid goes to that grid's SpectralGrid."""
    x = _check(x, "ifftn")
    _check_norm(norm)
    if grid is not None:
        plan = _spectral_input(x, grid, False, "ifftn")
        return GridTensor(_run(_complex(x), plan, False, True, norm), plan.physical)
    return _complex_transform(x, True, norm)


def _complex_transform(x: GridTensor, inverse: bool, norm: Norm) -> GridTensor:
    if isinstance(x.grid, SpectralGrid) and not x.grid.real:
        plan = _plan(x.grid.physical, False)
        return GridTensor(_run(_complex(x), plan, False, inverse, norm), plan.physical)
    plan = _plan(x.grid, False)
    return GridTensor(_run(_complex(x), plan, True, inverse, norm), plan.spectral)
