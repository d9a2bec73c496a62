"""MgNO: the multigrid neural operator (He, Liu, Xu, ICLR 2024), 1D/2D/3D, on one rank or many.

Each layer is ``u <- act(MgConv(u) + Conv1x1(u))``. ``MgConv`` is one multi-channel V-cycle whose operators are
untied convolutions: on the finest level ``u = S f``, smoothing steps ``u <- u + S (f - A u)`` (3x3 ``A`` and
``S``), restriction of ``f`` and ``u`` by 3x3 stride-2 convolutions, smoothing on every level, and on the way up
the 4x4 stride-2 transposed-convolution prolongation ``u_l <- u_l + P(u_{l+1})`` (then optional post-smoothing).
The padding mode is the boundary condition: ``zeros`` (Dirichlet), ``circular`` (periodic), ``reflect``. It
applies to the smoothing and restriction convolutions; the prolongation is a zero-padded transposed convolution
in every mode, as in the authors' code.

No layer depends on the grid size, so the same weights run at every resolution divisible by ``2**(levels-1)``.
All convolutions are :mod:`deepkrylov.distributed` Halo layers: the model accepts a plain tensor or a
:class:`~deepkrylov.distributed.GridTensor` split over ranks, with identical results (halo exchange per
convolution, strided restriction on uneven blocks, prolongation onto the finer level's grid).

The authors' Darcy "rough" model -- ``MgNO(in_channels=1, out_channels=1, channels=24, num_layers=4,
iterations=[[1, 0]] * 5 + [[2, 0]])`` -- has 572,661 parameters: 3x3/4x4 V-cycle convolutions without bias,
1x1 skip convolutions with bias, a 1x1 head without bias.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from deepkrylov.distributed import (
    GridTensor,
    HaloConv1d,
    HaloConv2d,
    HaloConv3d,
    HaloConvTranspose1d,
    HaloConvTranspose2d,
    HaloConvTranspose3d,
)

__all__ = ["MgNO", "MgConv", "DARCY_ROUGH_ITERATIONS"]

Field = Union[torch.Tensor, GridTensor]

DARCY_ROUGH_ITERATIONS: tuple[tuple[int, int], ...] = ((1, 0),) * 5 + ((2, 0),)
_CONV = {1: HaloConv1d, 2: HaloConv2d, 3: HaloConv3d}
_CONV_T = {1: HaloConvTranspose1d, 2: HaloConvTranspose2d, 3: HaloConvTranspose3d}
_PADDING_MODES = ("zeros", "circular", "reflect", "replicate")
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
    """

    def __init__(
        self, in_channels: int, channels: int, iterations: Sequence[Sequence[int]] = DARCY_ROUGH_ITERATIONS,
        dim: int = 2, padding_mode: str = "zeros", bias: bool = False,
    ) -> None:
        super().__init__()
        if dim not in _CONV:
            raise ValueError(f"dim must be 1, 2 or 3, but got {dim}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, but got {padding_mode!r}")
        self.iterations = _check_iterations(iterations)
        self.levels = len(self.iterations)
        self.dim, self.in_channels, self.channels = dim, in_channels, channels
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

    def forward(self, f: Field) -> Field:
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

    Shape:
        ``(batch, in_channels, *spatial)`` tensor or GridTensor, every spatial size divisible by
        ``2**(levels-1)``; output ``(batch, out_channels, *spatial)``.
    """

    def __init__(
        self, in_channels: int = 1, out_channels: int = 1, channels: int = 24, num_layers: int = 4,
        iterations: Sequence[Sequence[int]] = DARCY_ROUGH_ITERATIONS, dim: int = 2, padding_mode: str = "zeros",
        activation: str = "gelu", bias: bool = False,
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
        self.activation = activation
        self._act = _ACTIVATIONS[activation]
        Conv = _CONV[dim]
        self.mg = nn.ModuleList(
            MgConv(in_channels if i == 0 else channels, channels, self.iterations, dim, padding_mode, bias)
            for i in range(num_layers)
        )
        self.skip = nn.ModuleList(Conv(in_channels if i == 0 else channels, channels, 1) for i in range(num_layers))
        self.head = Conv(channels, out_channels, 1, bias=False)

    @property
    def levels(self) -> int:
        return len(self.iterations)

    def config(self) -> dict:
        """Constructor arguments (for checkpoints and the CLI)."""
        return {
            "in_channels": self.in_channels, "out_channels": self.out_channels, "channels": self.channels,
            "num_layers": self.num_layers, "iterations": [list(i) for i in self.iterations], "dim": self.dim,
            "padding_mode": self.padding_mode, "activation": self.activation,
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
        m = 2 ** (self.levels - 1)
        if any(s % m for s in shape[2:]):
            raise ValueError(
                f"MgNO with {self.levels} levels needs every grid size divisible by 2**(levels-1) = {m}, but got "
                f"{shape[2:]}"
            )

    def forward(self, x: Field) -> Field:
        self.check_input(x)
        u = x
        for mg, skip in zip(self.mg, self.skip):
            u = _apply(self._act, mg(u) + skip(u))
        return self.head(u)
