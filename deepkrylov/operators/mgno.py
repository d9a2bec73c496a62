"""MgNO: the multigrid neural operator (He, Liu, Xu, ICLR 2024), 1D/2D/3D, on one rank or many.

Each layer is ``u <- act(MgConv(u) + Conv1x1(u))``. ``MgConv`` is one multi-channel V-cycle whose operators are
untied convolutions: on the finest level ``u = S f``, smoothing steps ``u <- u + S (f - A u)`` (3x3 ``A`` and
``S``), restriction of ``f`` and ``u`` by 3x3 stride-2 convolutions, smoothing on every level, and on the way up
the 4x4 stride-2 transposed-convolution prolongation ``u_l <- u_l + P(u_{l+1})`` (then optional post-smoothing).
The padding mode is the boundary condition: ``zeros`` (Dirichlet), ``circular`` (periodic), ``reflect``. It
applies to the smoothing and restriction convolutions; the prolongation is a zero-padded transposed convolution
in every mode, as in the authors' code.

Resolution. A 3x3 stencil has no physical size: the authors' cycle, run on a finer grid, shrinks every level's
receptive field and its coarsest grid by the same factor, so the learned operator changes with the grid (trained
on Darcy 64, relative L2 0.03 at 64 but 0.5 at 128). With ``resolution=n0`` (the training grid) the levels are
physical scales instead: the learned finest level has spacing ``1/n0`` and the coarsest ``2**(levels-1)/n0`` on
every input grid. An input at ``n0 * 2**k`` gains ``k`` levels above the learned ones that only transfer -- cell
averages down (exact on the cell-centred grids of :mod:`deepkrylov.mesh`), cell-centred bilinear interpolation up;
an input at ``n0 / 2**k`` (not coarser than the coarsest level) is interpolated up to the learned finest level
and averaged back. ``resample="model"`` (default) places these transfers around the whole network: the 1x1 skips,
activations and head belong to the learned finest level. ``resample="layer"`` places them around each V-cycle
(:class:`MgConv` does this by itself) and runs the pointwise path on the input grid; trained on Darcy 64 that
was less consistent (relative L2 0.098 at 64, 0.16 at 128 and 256, against 0.098/0.10/0.11 with "model"):
the trained network relies on grid-scale interplay of its skip path and its finest V-cycle level. Either way the
model is one discretisation of one operator and converges as the grid is refined (``test_mgno.py``); no
parameters are added. Grid sizes: ``n0 * 2**k``; with ``resolution=None`` (the authors' model) any multiple of
``2**(levels-1)``; other sizes raise an error naming the nearest valid ones.

Output level. ``head_bias=True`` (default; the authors' head has no bias) gives the output's constant level a
parameter of its own. On Darcy the relative H1 loss weighs ``|e|^2`` ~20x less than ``|grad e|^2``, so the
constant level is the one the loss hardly constrains; see also :meth:`Normalized.uncentered
<deepkrylov.operators.normalization.Normalized.uncentered>`, the normalisation that keeps Darcy's boundary value.

Initialisation. ``transfer_init="random"`` (default) is torch's initialisation, the authors'. ``"multigrid"``
starts every learned restriction and prolongation as the cell-centred multigrid transfer of each channel (2x2
average inside the 3x3 stride-2 kernel; the ``[1, 3, 3, 1] / 4`` bilinear kernel of the 4x4 transposed one) plus
the random weights, and divides the random smoothers ``S`` by the number of levels (otherwise the 4-layer
model's output grows ~100x at initialisation): with random transfers the coarse levels are damped ~3x per level
at first. On Darcy 64 (300 samples, the CLI recipe) it trained slower, though (test relative H1 0.33 against 0.25
after 7 epochs), so it is an option only.

All convolutions are :mod:`deepkrylov.distributed` Halo layers: the model accepts a plain tensor or a
:class:`~deepkrylov.distributed.GridTensor` split over ranks, with identical results (halo exchange per
convolution, strided restriction on uneven blocks, prolongation onto the finer level's grid).

The authors' Darcy "rough" model -- ``MgNO(in_channels=1, out_channels=1, channels=24, num_layers=4,
iterations=[[1, 0]] * 5 + [[2, 0]], transfer_init="random", head_bias=False)`` -- has 572,661 parameters:
3x3/4x4 V-cycle convolutions without bias, 1x1 skip convolutions with bias, a 1x1 head without bias
(``head_bias=False``; one more parameter with it). ``resolution``, ``resample`` and ``transfer_init`` do not
change the count.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from deepkrylov.distributed import (
    GridTensor,
    ProcessGrid,
    HaloConv1d,
    HaloConv2d,
    HaloConv3d,
    HaloConvTranspose1d,
    HaloConvTranspose2d,
    HaloConvTranspose3d,
)
from deepkrylov.distributed import conv as _grid_conv
from deepkrylov.distributed import conv_transpose as _grid_conv_transpose

__all__ = ["MgNO", "MgConv", "DARCY_ROUGH_ITERATIONS", "valid_sizes"]

Field = Union[torch.Tensor, GridTensor]

DARCY_ROUGH_ITERATIONS: tuple[tuple[int, int], ...] = ((1, 0),) * 5 + ((2, 0),)
_CONV = {1: HaloConv1d, 2: HaloConv2d, 3: HaloConv3d}
_CONV_T = {1: HaloConvTranspose1d, 2: HaloConvTranspose2d, 3: HaloConvTranspose3d}
_PADDING_MODES = ("zeros", "circular", "reflect", "replicate")
_F_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_F_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_F_PAD = {"circular": "circular", "reflect": "reflect", "replicate": "replicate"}
_TRANSFER_INITS = ("multigrid", "random")
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh, "silu": F.silu,
}


def _apply(fn: Callable[[torch.Tensor], torch.Tensor], x: Field) -> Field:
    return x.map(fn) if isinstance(x, GridTensor) else fn(x)


def _check_iterations(iterations: Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
    try:
        its = tuple((int(a), int(b)) for a, b in iterations)
    except (TypeError, ValueError):
        raise ValueError(
            f"iterations must be a list of [pre, post] smoothing counts per level, but got {iterations!r}"
        ) from None
    if not its:
        raise ValueError("iterations must name at least one level, but got an empty list")
    if its[0][0] < 1:
        raise ValueError(f"the finest level needs at least one pre-smoothing step (u = S f), but got {its[0]}")
    if any(a < 0 or b < 0 for a, b in its):
        raise ValueError(f"smoothing counts must be >= 0, but got {list(its)}")
    return its


def _check_resolution(resolution: Union[None, int, Sequence[int]], dim: int, levels: int) -> Optional[tuple[int, ...]]:
    if resolution is None:
        return None
    res = (int(resolution),) * dim if isinstance(resolution, int) else tuple(int(r) for r in resolution)
    m = 2 ** (levels - 1)
    if len(res) != dim or any(r < m or r % m for r in res):
        raise ValueError(
            f"resolution must be {dim} grid size(s), each a positive multiple of 2**(levels-1) = {m} (the learned "
            f"finest level of a {levels}-level V-cycle), but got {resolution!r}"
        )
    return res


def valid_sizes(size: int, levels: int, resolution: Optional[int] = None) -> tuple[int, ...]:
    """The valid grid sizes nearest to ``size`` (one or two, below and above) for an MgNO/MgConv with ``levels``
    levels and the given learned finest ``resolution`` (None: the authors' grid-tied cycle)."""
    m = 2 ** (levels - 1)
    if resolution is None:
        below, above = (size // m) * m, -(-size // m) * m
        return tuple(sorted({v for v in (below, max(above, m)) if v >= m}))
    coarsest = resolution // m
    ok = [coarsest * 2 ** k for k in range(0, max(1, size // coarsest).bit_length() + 1)]
    below = [v for v in ok if v <= size][-1:]
    above = [v for v in ok if v >= size][:1]
    return tuple(sorted(set(below + above)))


def _fixed_conv(x: Field, w: torch.Tensor, stride: int, padding: int, mode: str) -> Field:
    """Depthwise convolution with a fixed kernel ``w (channels, 1, *k)`` on a tensor or GridTensor."""
    groups = w.shape[0]
    if isinstance(x, GridTensor):
        return _grid_conv(x, w, None, stride, padding, 1, groups, mode)
    nd = w.dim() - 2
    if padding and mode != "zeros":
        x = F.pad(x, (padding,) * (2 * nd), mode=_F_PAD[mode])
        padding = 0
    return _F_CONV[nd](x, w, None, stride, padding, 1, groups)


def _average_down(x: Field, dim: int) -> Field:
    """Cell averages on the grid twice as coarse (exact for cell-centred grids)."""
    c = x.shape[1]
    w = torch.full((c, 1) + (2,) * dim, 0.5 ** dim, dtype=x.dtype, device=x.device)
    return _fixed_conv(x, w, 2, 0, "zeros")


def _interpolate_up(x: Field, dim: int, mode: str, grid: Optional[ProcessGrid] = None) -> Field:
    """Cell-centred (bi/tri)linear interpolation onto the grid twice as fine: each fine cell takes 3/4 of its
    coarse cell and 1/4 of the neighbour on its side per axis (the neighbour outside the domain by ``mode``)."""
    c = x.shape[1]
    ones = torch.ones((c, 1) + (2,) * dim, dtype=x.dtype, device=x.device)
    if isinstance(x, GridTensor):
        near: Field = _grid_conv_transpose(x, ones, None, 2, 0, 0, c, 1, output_grid=grid)
    else:
        near = _F_CONV_T[dim](x, ones, None, 2, 0, 0, c)
    k1 = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    k = k1
    for _ in range(dim - 1):
        k = torch.tensordot(k, k1, dims=0)
    return _fixed_conv(near, k.expand((c, 1) + (3,) * dim).contiguous(), 1, 1, mode)


def _to_grid(f: Field, k: int, dim: int, mode: str) -> tuple[Field, list[Optional[ProcessGrid]]]:
    """``f`` on the grid ``2**k`` times coarser (cell averages; ``k < 0``: interpolated), and the grids passed."""
    grids: list[Optional[ProcessGrid]] = []
    for _ in range(k):
        grids.append(f.grid if isinstance(f, GridTensor) else None)
        f = _average_down(f, dim)
    for _ in range(-k):
        f = _interpolate_up(f, dim, mode)
    return f, grids


def _from_grid(u: Field, k: int, dim: int, mode: str, grids: list[Optional[ProcessGrid]]) -> Field:
    """The inverse transfer of :func:`_to_grid`: interpolated back up (or averaged back down)."""
    for _ in range(-k):
        u = _average_down(u, dim)
    for g in reversed(grids):
        u = _interpolate_up(u, dim, mode, g)
    return u


def _multigrid_transfer_init(restrict: Sequence[nn.Module], prolong: Sequence[nn.Module], dim: int) -> None:
    """Add the cell-centred multigrid transfer of each channel to the (random) transfer weights."""
    r1 = torch.tensor([0.0, 0.5, 0.5])  # taps at fine 2i-1, 2i, 2i+1: the average of fine cells 2i, 2i+1
    p1 = torch.tensor([0.25, 0.75, 0.75, 0.25])  # fine 2i-1..2i+2 from coarse i: cell-centred linear
    with torch.no_grad():
        for mods, k1 in ((restrict, r1), (prolong, p1)):
            k = k1
            for _ in range(dim - 1):
                k = torch.tensordot(k, k1, dims=0)
            for m in mods:
                n = min(m.weight.shape[0], m.weight.shape[1])
                idx = torch.arange(n)
                m.weight[idx, idx] += k.to(m.weight.dtype)


class _Smooth(nn.Module):
    """One smoothing step ``u <- u + S(f - A u)``; without ``A`` the first step ``u = S f``."""

    def __init__(self, A: Optional[nn.Module], S: nn.Module) -> None:
        super().__init__()
        self.A, self.S = A, S

    def forward(self, u: Optional[Field], f: Field) -> Field:
        if self.A is None or u is None:
            return self.S(f)
        return u + self.S(f - self.A(u))


class MgConv(nn.Module):
    """One multi-channel V-cycle ``f -> u`` with untied smoothers, restrictions and prolongations.

    Args:
        in_channels: channels of ``f``.
        channels: channels of ``u``.
        iterations: ``[pre, post]`` smoothing steps for every level, finest first (``len`` = number of levels).
        dim: spatial dimensions (1, 2, 3).
        padding_mode: boundary condition of every 3x3 convolution (zeros, circular, reflect, replicate).
        bias: bias in the smoothing convolutions (restriction and prolongation never have one).
        resolution: grid size (int, or one per axis) of the learned finest level, normally the training grid;
            other grids ``resolution * 2**k`` are averaged to it and interpolated back (module docstring).
            None: the cycle's finest level is the input grid (the authors' model; not resolution-consistent).
        transfer_init: ``random`` (torch's default, the authors') or ``multigrid`` (restrictions/prolongations
            start as cell-centred averaging/interpolation plus random weights; module docstring).
    """

    def __init__(
        self, in_channels: int, channels: int, iterations: Sequence[Sequence[int]] = DARCY_ROUGH_ITERATIONS,
        dim: int = 2, padding_mode: str = "zeros", bias: bool = False,
        resolution: Union[None, int, Sequence[int]] = None, transfer_init: str = "random",
    ) -> None:
        super().__init__()
        if dim not in _CONV:
            raise ValueError(f"dim must be 1, 2 or 3, but got {dim}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, but got {padding_mode!r}")
        if transfer_init not in _TRANSFER_INITS:
            raise ValueError(f"transfer_init must be one of {_TRANSFER_INITS}, but got {transfer_init!r}")
        self.iterations = _check_iterations(iterations)
        self.levels = len(self.iterations)
        self.resolution = _check_resolution(resolution, dim, self.levels)
        self.dim, self.in_channels, self.channels, self.padding_mode = dim, in_channels, channels, padding_mode
        Conv, ConvT = _CONV[dim], _CONV_T[dim]

        def conv3(cin: int, cout: int, stride: int = 1, b: bool = bias) -> nn.Module:
            return Conv(cin, cout, 3, stride=stride, padding=1, bias=b, padding_mode=padding_mode)

        def step(first: bool) -> _Smooth:
            S = conv3(in_channels, channels)
            return _Smooth(None if first else conv3(channels, in_channels), S)

        self.pre = nn.ModuleList()
        self.post = nn.ModuleList()
        for lvl, (n_pre, n_post) in enumerate(self.iterations):
            self.pre.append(nn.ModuleList(step(lvl == 0 and i == 0) for i in range(n_pre)))
            self.post.append(nn.ModuleList(step(False) for _ in range(n_post)))
        self.restrict_u = nn.ModuleList(conv3(channels, channels, 2, False) for _ in range(self.levels - 1))
        self.restrict_f = nn.ModuleList(conv3(in_channels, in_channels, 2, False) for _ in range(self.levels - 1))
        self.prolong = nn.ModuleList(
            ConvT(channels, channels, 4, stride=2, padding=1, bias=False) for _ in range(self.levels - 1)
        )
        if transfer_init == "multigrid":
            _multigrid_transfer_init(list(self.restrict_u) + list(self.restrict_f), list(self.prolong), dim)
            with torch.no_grad():  # the cycle now sums every level's correction: keep its initial gain O(1)
                for steps in list(self.pre) + list(self.post):
                    for st in steps:
                        st.S.weight.div_(self.levels)

    def octaves(self, shape: Sequence[int]) -> int:
        """``k`` such that the grid ``shape`` is ``resolution * 2**k`` (0 without a resolution); ValueError naming
        the nearest valid sizes for a grid this cycle cannot take."""
        sizes = tuple(int(v) for v in shape)
        m = 2 ** (self.levels - 1)
        if self.resolution is None:
            bad = [s for s in sizes if s < m or s % m]
            if bad:
                near = " and ".join(str(v) for v in valid_sizes(bad[0], self.levels))
                raise ValueError(
                    f"MgNO with {self.levels} levels needs every grid size divisible by 2**(levels-1) = {m}, but got "
                    f"{sizes}; the nearest valid sizes to {bad[0]} are {near}"
                )
            return 0
        ks = set()
        for s, r in zip(sizes, self.resolution):
            k = 0
            while r * 2 ** k < s:
                k += 1
            while k > -(self.levels - 1) and r * 2.0 ** k > s:
                k -= 1
            if r * 2.0 ** k != s:
                near = " and ".join(str(v) for v in valid_sizes(s, self.levels, r))
                coarse = r // m
                why = (f"coarser than its coarsest level ({coarse})" if s < coarse
                       else f"not its learned finest grid {r} times a power of two")
                raise ValueError(
                    f"this MgNO/MgConv was built for grid {self.resolution} with {self.levels} levels; size {s} is "
                    f"{why}; the nearest valid sizes are {near} (grid {sizes})"
                )
            ks.add(k)
        if len(ks) > 1:
            raise ValueError(
                f"every axis must be refined by the same factor of this MgNO's grid {self.resolution}, but got {sizes}"
            )
        return ks.pop()

    def forward(self, f: Field) -> Field:
        k = self.octaves(f.shape[2:])
        if k == 0:
            return self._cycle(f)
        f, grids = _to_grid(f, k, self.dim, self.padding_mode)
        return _from_grid(self._cycle(f), k, self.dim, self.padding_mode, grids)

    def _cycle(self, f: Field) -> Field:
        us: list[Field] = []
        fs: list[Field] = []
        u: Optional[Field] = None
        for lvl in range(self.levels):
            if lvl > 0:
                f = self.restrict_f[lvl - 1](f)
                u = self.restrict_u[lvl - 1](u)
            for s in self.pre[lvl]:
                u = s(u, f)
            us.append(u)  # type: ignore[arg-type]
            fs.append(f)
        for s in self.post[-1]:  # the coarsest level has no correction to wait for
            us[-1] = s(us[-1], fs[-1])
        for lvl in range(self.levels - 2, -1, -1):
            fine = us[lvl]
            if isinstance(fine, GridTensor):
                up = self.prolong[lvl](us[lvl + 1], output_grid=fine.grid)
            else:
                up = self.prolong[lvl](us[lvl + 1])
            u = fine + up
            for s in self.post[lvl]:
                u = s(u, fs[lvl])
            us[lvl] = u
        return us[0]


class MgNO(nn.Module):
    """Multigrid neural operator: ``num_layers`` layers ``u <- act(MgConv(u) + Conv1x1(u))`` and a 1x1 head.

    Args:
        in_channels: input channels (the first layer maps them directly; no lifting network).
        out_channels: output channels of the 1x1 head.
        channels: hidden channels.
        num_layers: number of MgConv layers.
        iterations: ``[pre, post]`` smoothing steps per level, finest first; defaults to the Darcy "rough"
            schedule ``[[1, 0]] * 5 + [[2, 0]]`` (6 levels).
        dim: spatial dimensions (1, 2, 3).
        padding_mode: boundary condition: zeros (Dirichlet), circular (periodic), reflect, replicate.
        activation: gelu, relu, tanh or silu.
        bias: bias in the V-cycle smoothing convolutions (False in the authors' model).
        resolution: the training grid (int, or one per axis): the V-cycles' learned levels keep their physical
            scale on every grid ``resolution * 2**k`` (module docstring). None: the authors' grid-tied cycle.
        transfer_init: ``random`` (torch's, the authors', default) or ``multigrid`` initial transfers.
        head_bias: a bias (initially 0) in the 1x1 head: the output's constant level as one parameter (module
            docstring); the authors' head has none.
        resample: where a grid other than ``resolution`` is transferred to it and back: ``model`` (around the
            whole network, default) or ``layer`` (around each V-cycle; skips and activations on the input grid).

    Shape:
        ``(batch, in_channels, *spatial)`` tensor or GridTensor, every spatial size ``resolution * 2**k`` (not
        coarser than the coarsest level), or divisible by ``2**(levels-1)`` without a resolution; output
        ``(batch, out_channels, *spatial)``.
    """

    def __init__(
        self, in_channels: int = 1, out_channels: int = 1, channels: int = 24, num_layers: int = 4,
        iterations: Sequence[Sequence[int]] = DARCY_ROUGH_ITERATIONS, dim: int = 2, padding_mode: str = "zeros",
        activation: str = "gelu", bias: bool = False, resolution: Union[None, int, Sequence[int]] = None,
        transfer_init: str = "random", head_bias: bool = True, resample: str = "model",
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, but got {activation!r}")
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("channels", channels),
                        ("num_layers", num_layers)):
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, but got {v}")
        if dim not in _CONV:
            raise ValueError(f"dim must be 1, 2 or 3, but got {dim}")
        self.iterations = _check_iterations(iterations)
        self.dim, self.in_channels, self.out_channels = dim, in_channels, out_channels
        self.channels, self.num_layers, self.padding_mode = channels, num_layers, padding_mode
        self.activation, self.bias, self.transfer_init, self.head_bias = activation, bias, transfer_init, head_bias
        self.resolution = _check_resolution(resolution, dim, len(self.iterations))
        if resample not in ("layer", "model"):
            raise ValueError(f"resample must be 'layer' or 'model', but got {resample!r}")
        self.resample = resample
        self._act = _ACTIVATIONS[activation]
        Conv = _CONV[dim]
        self.mg = nn.ModuleList(
            MgConv(in_channels if i == 0 else channels, channels, self.iterations, dim, padding_mode, bias,
                   self.resolution, transfer_init)
            for i in range(num_layers)
        )
        self.skip = nn.ModuleList(Conv(in_channels if i == 0 else channels, channels, 1) for i in range(num_layers))
        self.head = Conv(channels, out_channels, 1, bias=head_bias)
        if head_bias:
            nn.init.zeros_(self.head.bias)

    @property
    def levels(self) -> int:
        return len(self.iterations)

    def config(self) -> dict:
        """Constructor arguments (for checkpoints and the CLI)."""
        return {
            "in_channels": self.in_channels, "out_channels": self.out_channels, "channels": self.channels,
            "num_layers": self.num_layers, "iterations": [list(i) for i in self.iterations], "dim": self.dim,
            "padding_mode": self.padding_mode, "activation": self.activation, "bias": self.bias,
            "resolution": None if self.resolution is None else list(self.resolution),
            "transfer_init": self.transfer_init, "head_bias": self.head_bias, "resample": self.resample,
        }

    def check_input(self, x: Field) -> None:
        """Raise ValueError unless ``x`` has this model's dimension, channel count and an admissible grid."""
        shape = tuple(x.shape)
        if len(shape) != self.dim + 2:
            raise ValueError(
                f"this MgNO is {self.dim}D and takes (batch, channels, *{self.dim} sizes), but got shape {shape}"
            )
        if shape[1] != self.in_channels:
            raise ValueError(f"this MgNO takes {self.in_channels} input channels, but got {shape[1]} (shape {shape})")
        self.mg[0].octaves(shape[2:])

    def forward(self, x: Field) -> Field:
        self.check_input(x)
        k = self.mg[0].octaves(x.shape[2:]) if self.resample == "model" else 0
        u, grids = _to_grid(x, k, self.dim, self.padding_mode)
        for mg, skip in zip(self.mg, self.skip):
            u = _apply(self._act, mg(u) + skip(u))
        return _from_grid(self.head(u), k, self.dim, self.padding_mode, grids)
