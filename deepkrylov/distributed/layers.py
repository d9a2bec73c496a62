"""Convolutions that run on a whole tensor or on a :class:`GridTensor` split over ranks, with the same result.

``HaloConv{1,2,3}d`` subclass ``torch.nn.Conv{1,2,3}d`` (same constructor, same ``state_dict``): on a plain tensor
they *are* the torch layer; on a GridTensor each rank pads its block by a halo exchange and convolves locally.
Strided convolutions give each rank the outputs whose window starts in its block, so restriction works on
uneven blocks; ``HaloConvTranspose{1,2,3}d`` prolongs back onto a given (finer) grid.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .grid import ProcessGrid
from .halo import halo
from .tensor import GridTensor

__all__ = [
    "HaloConv1d", "HaloConv2d", "HaloConv3d",
    "HaloConvTranspose1d", "HaloConvTranspose2d", "HaloConvTranspose3d",
    "conv", "conv_transpose",
]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _tuple(v, n: int) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _conv_output_splits(grid: ProcessGrid, k, s, p, dil) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:  # type: ignore[no-untyped-def]
    """Global output shape and its split: rank owns the outputs ``i`` with ``i*stride`` inside its block."""
    shape, splits = [], []
    for a in range(grid.ndim):
        n_in = grid.global_shape[a]
        n_out = (n_in + 2 * p[a] - dil[a] * (k[a] - 1) - 1) // s[a] + 1
        if n_out < 1:
            raise ValueError(f"convolution output would be empty along axis {a} (input {n_in}, kernel {k[a]})")
        offs = grid.offsets[a]
        starts = [min(-(-o // s[a]), n_out) for o in offs[:-1]] + [n_out]
        sizes = tuple(starts[c + 1] - starts[c] for c in range(grid.dims[a]))
        if any(b < 1 for b in sizes):
            raise ValueError(
                f"stride-{s[a]} convolution leaves a rank with no outputs along axis {a}: input blocks "
                f"{grid.splits[a]} give output blocks {sizes}; use fewer ranks along this axis or a larger grid"
            )
        shape.append(n_out)
        splits.append(sizes)
    return tuple(shape), tuple(splits)


def _window(grid: ProcessGrid, out_grid: ProcessGrid, lo_need_of, hi_need_of):  # type: ignore[no-untyped-def]
    """Uniform halo widths (the maximum over blocks) and this rank's crop of the padded block."""
    widths, crops = [], []
    for a in range(grid.ndim):
        los, his = [], []
        for c in range(grid.dims[a]):
            s_in, e_in = grid.offsets[a][c], grid.offsets[a][c + 1]
            o0, o1 = out_grid.offsets[a][c], out_grid.offsets[a][c + 1]
            los.append(lo_need_of(a, s_in, o0))
            his.append(hi_need_of(a, e_in, o1))
        lo_w, hi_w = max(0, max(los)), max(0, max(his))
        c = grid.coords[a]
        n = grid.local_shape[a]
        start = lo_w - los[c]
        stop = lo_w + n + his[c]
        widths.append((lo_w, hi_w))
        crops.append(slice(start, stop))
    return tuple(widths), (slice(None), slice(None)) + tuple(crops)


def conv(
    x: GridTensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride=1, padding=0,  # type: ignore[no-untyped-def]
    dilation=1, groups: int = 1, padding_mode: str = "zeros",
) -> GridTensor:
    """Distributed ``F.conv{1,2,3}d`` with ``padding_mode``; equals the global convolution of the whole field."""
    grid, nd = x.grid, x.grid.ndim
    if weight.dim() != nd + 2:
        raise ValueError(f"a {nd}D GridTensor needs a {nd}D convolution weight, but got {weight.dim() - 2}D")
    if isinstance(padding, str):
        raise ValueError(f"string padding {padding!r} is not supported on a GridTensor; give integers")
    k, s, p, dil = weight.shape[2:], _tuple(stride, nd), _tuple(padding, nd), _tuple(dilation, nd)
    out_shape, out_splits = _conv_output_splits(grid, k, s, p, dil)
    out_grid = grid if (out_shape == grid.global_shape and out_splits == grid.splits) else grid.derived(out_shape, out_splits)
    widths, crop = _window(
        grid, out_grid,
        lambda a, s_in, o0: s_in - (o0 * s[a] - p[a]),
        lambda a, e_in, o1: (o1 - 1) * s[a] - p[a] + dil[a] * (k[a] - 1) - (e_in - 1),
    )
    padded = halo(x.local, grid, widths, padding_mode)[crop]
    if _onednn_ok(padded, weight):  # torch's default CPU conv3d is ~15x slower at these sizes
        y = torch.mkldnn_convolution(padded.contiguous(), weight.contiguous(), bias, [0] * nd, list(s), list(dil),
                                     groups)
    else:
        y = _CONV[nd](padded, weight, bias, stride=s, padding=0, dilation=dil, groups=groups)
    return GridTensor(y, out_grid)


def _onednn_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Inference of a float32 3D convolution on CPU: run it through oneDNN."""
    return (x.dim() == 5 and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and torch.backends.mkldnn.is_available())


def conv_transpose(
    x: GridTensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride=1, padding=0,  # type: ignore[no-untyped-def]
    output_padding=0, groups: int = 1, dilation=1, output_grid: Optional[ProcessGrid] = None,
) -> GridTensor:
    """Distributed ``F.conv_transpose{1,2,3}d`` (zero padding) onto ``output_grid``.

    ``output_grid`` defaults to the blocks of ``x`` scaled by the stride, which undoes a strided ``conv``.
    """
    grid, nd = x.grid, x.grid.ndim
    if weight.dim() != nd + 2:
        raise ValueError(f"a {nd}D GridTensor needs a {nd}D convolution weight, but got {weight.dim() - 2}D")
    k, s, p, dil = weight.shape[2:], _tuple(stride, nd), _tuple(padding, nd), _tuple(dilation, nd)
    op = _tuple(output_padding, nd)
    out_shape = tuple(
        (grid.global_shape[a] - 1) * s[a] - 2 * p[a] + dil[a] * (k[a] - 1) + op[a] + 1 for a in range(nd)
    )
    if output_grid is None:
        splits = []
        for a in range(nd):
            starts = [min(o * s[a], out_shape[a]) for o in grid.offsets[a][:-1]] + [out_shape[a]]
            splits.append(tuple(starts[c + 1] - starts[c] for c in range(grid.dims[a])))
        output_grid = grid.derived(out_shape, splits)
    elif output_grid.global_shape != out_shape or output_grid.dims != grid.dims:
        raise ValueError(
            f"output_grid has shape {output_grid.global_shape} and dims {output_grid.dims}, but this transposed "
            f"convolution gives shape {out_shape} on dims {grid.dims}"
        )
    # inputs that reach outputs [o0, o1): i*s - p + t*dil in [o0, o1) for some tap t
    first = lambda a, o0: -(-(o0 + p[a] - dil[a] * (k[a] - 1)) // s[a])  # noqa: E731
    last = lambda a, o1: (o1 - 1 + p[a]) // s[a]  # noqa: E731
    widths, crop = _window(
        grid, output_grid,
        lambda a, s_in, o0: s_in - first(a, o0),
        lambda a, e_in, o1: last(a, o1) - (e_in - 1),
    )
    padded = halo(x.local, grid, widths, "zeros")[crop]
    y = _CONV_T[nd](padded, weight, None, stride=s, padding=0, groups=groups, dilation=dil)
    # y[u] is global output first*s - p + u; cut (or zero-extend) to this rank's block
    index = [slice(None), slice(None)]
    pads = []
    for a in range(nd):
        o0 = output_grid.starts[a]
        n_out = output_grid.local_shape[a]
        u0 = o0 - (first(a, o0) * s[a] - p[a])
        have = y.shape[2 + a]
        pads.append((0, max(0, u0 + n_out - have)))
        index.append(slice(u0, u0 + n_out))
    if any(hi for _, hi in pads):
        flat = [v for lohi in reversed(pads) for v in lohi]
        y = F.pad(y, flat)
    y = y[tuple(index)]
    if bias is not None:
        y = y + bias.view((1, -1) + (1,) * nd)
    return GridTensor(y, output_grid)


class _HaloConvMixin:
    def forward(self, x):  # type: ignore[no-untyped-def]
        if isinstance(x, GridTensor):
            return conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups, self.padding_mode)
        return super().forward(x)  # type: ignore[misc]


class HaloConv1d(_HaloConvMixin, nn.Conv1d):
    """``nn.Conv1d`` that also accepts a :class:`GridTensor` (halo exchange, then the local convolution)."""


class HaloConv2d(_HaloConvMixin, nn.Conv2d):
    """``nn.Conv2d`` that also accepts a :class:`GridTensor` (halo exchange, then the local convolution)."""


class HaloConv3d(_HaloConvMixin, nn.Conv3d):
    """``nn.Conv3d`` that also accepts a :class:`GridTensor` (halo exchange, then the local convolution)."""


class _HaloConvTransposeMixin:
    def forward(self, x, output_size: Optional[Sequence[int]] = None, output_grid: Optional[ProcessGrid] = None):  # type: ignore[no-untyped-def]
        if isinstance(x, GridTensor):
            op = self.output_padding
            if output_grid is not None:
                nd = x.grid.ndim
                op = tuple(
                    output_grid.global_shape[a]
                    - ((x.grid.global_shape[a] - 1) * self.stride[a] - 2 * self.padding[a]
                       + self.dilation[a] * (self.kernel_size[a] - 1) + 1)
                    for a in range(nd)
                )
                if any(v < 0 or v >= max(self.stride[a], self.dilation[a]) for a, v in enumerate(op)):
                    raise ValueError(
                        f"output_grid shape {output_grid.global_shape} cannot be reached from input shape "
                        f"{x.grid.global_shape} with stride {self.stride}"
                    )
            return conv_transpose(
                x, self.weight, self.bias, self.stride, self.padding, op, self.groups, self.dilation, output_grid
            )
        return super().forward(x, output_size)  # type: ignore[misc]


class HaloConvTranspose1d(_HaloConvTransposeMixin, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` that also accepts a :class:`GridTensor` (zero padding only, as in torch)."""


class HaloConvTranspose2d(_HaloConvTransposeMixin, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` that also accepts a :class:`GridTensor` (zero padding only, as in torch)."""


class HaloConvTranspose3d(_HaloConvTransposeMixin, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` that also accepts a :class:`GridTensor` (zero padding only, as in torch)."""
