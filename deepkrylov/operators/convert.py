"""Turn ordinary ``torch.nn`` grid models (CNN/ResNet, U-Net, ViT) into resolution-agnostic neural operators.

Following "Principled Approaches for Extending Neural Architectures to Function Spaces" (NNs-to-NOs): every
layer is read as a discretised operator on functions over a fixed physical domain, and re-discretised when the
input grid has ``n = s n0`` cells per axis instead of the training grid's ``n0`` (``s`` rational: finer and
coarser grids both run):

* Convolutions and pooling windows are *local integral operators* with a fixed physical receptive field. The
  stride stays in grid points, so every strided layer's output grid is scaled by ``s`` too (sizes must keep
  every strided layer's output an integer; a bad size raises an error naming the sizes that work). A kernel
  keeps its physical placement: a 3-tap stride-2 kernel sits half a training cell off its output cell's centre
  and stays so on every grid (kept in grid cells, the offset would shrink with ``h``: a first-order
  inconsistency). Three re-discretisations of its taps:

  - ``"point"`` (default): each tap is a point evaluation at its physical offset -- the layer is a
    finite-difference stencil whose spacing is the training ``h`` -- read off the current grid by linear
    interpolation between cell centres: refined by an integer ``s``, an odd kernel is dilated by ``s`` (the
    paper's ``s k - s + 1`` taps, zeros between the trained ones); at a cell vertex, the mean of the two cells.
    Such a layer commutes with averaging over training cells, so a model fed a training-grid field sampled
    finer reproduces its training-grid output; on Darcy (a U-Net trained at 64 in a short run) the zero-shot error
    at 128/256 was 1.04x/1.05x the error at 64, against 1.44x/1.46x for ``"constant"`` and 3.8x/5.1x for ``"linear"``.
  - ``"constant"``: the kernel is a piecewise-constant function on the training cells; each new tap takes its
    cell's overlap with each training cell (``k' = s k``, plus one for odd ``k`` and even ``s``). This keeps the
    kernel's sum and first moment: a converted layer applied to a smooth function sampled at ``h``, ``h/2``,
    ``h/4`` approaches one limit at ``O(h^2)``; but near jumps (a thresholded coefficient, a zero-padded wall)
    the training grid's cell values are not that limit's cell averages.
  - ``"linear"``: the paper's recipe for stride-1 layers refined by an integer ``s``: ``k' = s k - s + 1``
    vertex-centred taps, linear interpolation, divided by ``s`` per axis (area ratio); it does not keep the
    kernel's sum.

  Max pooling is the maximum over the training taps of the cell averages there (the fine cells covering each
  training cell are averaged first): the maximum over ever more fine samples would grow by ``O(h |grad|)``.
  Transposed convolutions (integer refinement only) interpolate their kernel like ``"constant"``; a stride-``k``
  ``k``-tap one paints a period-``k`` pattern that no operator reproduces on other grids (it tends to its
  mean): models meant for conversion should upsample by interpolation, as :class:`UNet` does. ``1``-tap axes
  are pointwise and never rescaled.
* Positional embeddings are functions of the (cell-centred) token coordinates and are interpolated (linear per
  axis) onto the refined token grid; leading extra tokens (a class token) are kept.
* Normalisation: batch/instance/group norm and LayerNorm over channels are already resolution-independent (means
  over space are quadrature averages); a LayerNorm over ``(C, *spatial)`` gets its affine fields interpolated.
* Pointwise layers (activations, 1x1 convolutions, ``Linear`` on channels, attention over tokens -- a softmax-
  normalised quadrature) are kept as they are.

``convert(model, resolution)`` returns a deep copy with the same class and the same ``state_dict`` keys, so it
loads the original's trained weights; at ``resolution`` it computes exactly what the original does. A module
the converter does not know raises ``ValueError`` naming it.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
from fractions import Fraction
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["convert", "UNet", "converted_unet", "ResolutionState", "OperatorConv", "OperatorConvTranspose", "OperatorPool",
           "OperatorLayerNorm", "interpolation_matrix"]

_KERNELS = ("constant", "linear", "point")

# modules that are resolution-independent as they stand
_KEEP: tuple[type, ...] = (
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.SELU, nn.CELU, nn.Softplus,
    nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.PReLU, nn.Softmax, nn.LogSoftmax, nn.GLU,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.Linear, nn.Flatten, nn.Unflatten,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder, nn.TransformerDecoderLayer,
    nn.TransformerDecoder,
)
_CONTAINERS: tuple[type, ...] = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_POOLS: tuple[type, ...] = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


class ResolutionState:
    """The scale ``s = n / n0`` per axis of the current input grid against the training grid, shared by all
    converted layers of one model (rational: finer and coarser grids both run)."""

    def __init__(self, resolution: Sequence[int]) -> None:
        self.resolution = tuple(int(n) for n in resolution)
        self.scale: tuple[Fraction, ...] = (Fraction(1),) * len(self.resolution)
        self.shape = self.resolution
        self.multiple = (1,) * len(self.resolution)  # grid sizes must be multiples of this (learned from strides)

    def sizes_that_work(self, axis: int) -> str:
        m, n0 = self.multiple[axis], self.resolution[axis]
        if m == 1:
            return "any size"
        few = sorted(({m * j for j in range(1, 5)} | {n0 // 2, n0, 2 * n0, 4 * n0}) - {0})
        return f"multiples of {m} ({', '.join(str(n) for n in few if n % m == 0)}, ...)"

    def error(self, detail: str) -> ValueError:
        works = "; ".join(f"axis {a}: {self.sizes_that_work(a)}" for a in range(len(self.resolution)))
        return ValueError(f"a converted operator trained on {self.resolution} cannot run on {self.shape}: {detail}. "
                          f"Grid sizes that work: {works}")

    def update(self, shape: Sequence[int]) -> None:
        sizes = tuple(int(n) for n in shape[-len(self.resolution):])
        self.shape = sizes
        if len(shape) < len(self.resolution) or any(n < 1 for n in sizes):
            raise self.error(f"expected {len(self.resolution)} positive trailing grid sizes, got {tuple(shape)}")
        bad = [a for a, n in enumerate(sizes) if n % self.multiple[a]]
        if bad:
            raise self.error(f"axis {bad[0]} has {sizes[bad[0]]} points, not a multiple of {self.multiple[bad[0]]}")
        self.scale = tuple(Fraction(n, n0) for n, n0 in zip(sizes, self.resolution))

    def learn_multiple(self, axis: int, out0: int) -> None:
        """A strided layer keeps ``out0`` of the training grid's points on ``axis``: every grid must keep an
        integer number, ``n * out0 / n0``."""
        n0 = self.resolution[axis]
        m = n0 // math.gcd(n0, out0)
        self.multiple = tuple(math.lcm(v, m) if a == axis else v for a, v in enumerate(self.multiple))

    def __deepcopy__(self, memo: dict) -> "ResolutionState":
        return self  # shared by every layer of one converted model


@functools.lru_cache(maxsize=256)
def _overlap_rule(k: int, stride: int, pad: int, s: Fraction) -> tuple[torch.Tensor, int]:
    """The ``"constant"`` rule on one axis: ``(M, left)`` with ``M (k', k)`` mapping the ``k`` training taps to
    ``k'`` taps on a grid ``s`` times finer (or coarser) and ``left`` the padding in front of them.

    The training kernel is read as piecewise constant on the training cells, placed where it sat relative to the
    output cell of a strided layer (for stride 2, the output cell covers two input cells; a 3-tap stride-2 kernel
    is centred half a cell off that output cell's centre, and stays so physically); each new tap takes the
    length of its cell's overlap with each training cell (in training cells: columns sum to one, so a kernel's
    integral -- its response to a constant -- is kept)."""
    half = Fraction(stride, 2)
    a = -pad - half  # the kernel's support, in training cells relative to the output cell's centre
    lo = min(math.floor(a * s + half - 1) + 1, 0)
    hi = math.ceil((a + k) * s + half) - 1
    rows = []
    for u in range(lo, hi + 1):
        c0 = (u - half) / s + half + pad  # the new cell, shifted so that training cell m is [m, m + 1]
        c1 = c0 + 1 / s
        rows.append([float(max(Fraction(0), min(c1, Fraction(m + 1)) - max(c0, Fraction(m)))) for m in range(k)])
    return torch.tensor(rows, dtype=torch.float64), -lo


@functools.lru_cache(maxsize=256)
def _point_rule(k: int, stride: int, pad: int, s: Fraction) -> tuple[torch.Tensor, int]:
    """The ``"point"`` rule on one axis, laid out like :func:`_overlap_rule`: training tap ``m`` is a point
    evaluation at its physical offset from the output cell (a finite-difference stencil with physical spacing),
    read off the current grid by linear interpolation between the two nearest cell centres -- on a grid refined
    by an odd-tap integer ``s``, a dilation by ``s``; at a cell vertex, the mean of the two cells."""
    half = Fraction(stride, 2)
    pos = [s * (m + Fraction(1, 2) - half - pad) - Fraction(1, 2) + half for m in range(k)]  # in new cells
    lo = min(min(math.floor(u) for u in pos), 0)
    hi = max(math.ceil(u) for u in pos)
    M = torch.zeros(hi - lo + 1, k, dtype=torch.float64)
    for m, u in enumerate(pos):
        f = math.floor(u)
        M[f - lo, m] += float(1 - (u - f))
        if u != f:
            M[f + 1 - lo, m] += float(u - f)
    return M, -lo


def interpolation_matrix(k: int, s: int, kernel: str = "constant", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(k', k)`` matrix mapping ``k`` taps of a stride-1, centred kernel on the training grid to ``k'`` taps on
    a grid ``s`` times finer, quadrature weights included (columns sum to 1 for ``"constant"``; for
    ``"linear"``, the paper's ``s k - s + 1`` vertex-centred taps, ``1/s`` times the hat interpolation)."""
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, but got {kernel!r}")
    if k == 1 or s == 1:
        return torch.eye(k, dtype=dtype)
    if kernel == "constant":
        # centred on the kernel's middle: a stride-1 odd kernel, or an even one read as a stride-2 window
        return _overlap_rule(k, 1, (k - 1) // 2, Fraction(s))[0].to(dtype) if k % 2 else \
            _overlap_rule(k, 2, k // 2 - 1, Fraction(s))[0].to(dtype)
    if kernel == "point":
        rule = _point_rule(k, 1, (k - 1) // 2, Fraction(s)) if k % 2 else _point_rule(k, 2, k // 2 - 1, Fraction(s))
        return rule[0].to(dtype)
    if k % 2:  # the paper's vertex-centred rule: s k - s + 1 taps, linear interpolation
        kp = s * k - s + 1
        t = (torch.arange(kp, dtype=dtype) - (kp - 1) / 2) / s
        c = torch.arange(k, dtype=dtype) - (k - 1) / 2
    else:  # even kernels are cell-centred (patches): s k taps
        kp = s * k
        t = (torch.arange(kp, dtype=dtype) - (kp - 1) / 2) / s
        c = torch.arange(k, dtype=dtype) - (k - 1) / 2
        t = t.clamp(c[0].item(), c[-1].item())
    hat = (1.0 - (t[:, None] - c[None, :]).abs()).clamp_min(0.0)
    return hat / s


def _apply_axes(w: torch.Tensor, mats: Sequence[torch.Tensor], first_axis: int = 2) -> torch.Tensor:
    for a, m in enumerate(mats):
        if m.shape[0] == m.shape[1] and torch.equal(m, torch.eye(m.shape[0], dtype=m.dtype)):
            continue
        ax = first_axis + a
        w = torch.movedim(torch.tensordot(w, m.to(w.dtype).to(w.device), dims=([ax], [1])), -1, ax)
    return w


class _Scaled(nn.Module):
    state: ResolutionState
    kernel: str
    label: str

    def _scale(self, nd: int) -> tuple[Fraction, ...]:
        s = self.state.scale
        if len(s) != nd:
            raise ValueError(f"a {nd}D layer inside a model converted for {len(s)}D grids {self.state.resolution}")
        return s


class _Strided(_Scaled):
    """A window layer (convolution or pooling) with kernel ``k``, stride and symmetric padding per axis: re-read
    on the current grid with :func:`_overlap_rule` (or the paper's rule for ``kernel="linear"``)."""

    nd: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]

    def _geometry(self, x: torch.Tensor) -> Optional[tuple[list[torch.Tensor], list[tuple[int, int]]]]:
        """Per axis the tap matrix and (left, right) padding (negative right: crop) on the current grid; None at
        the training grid (run the layer as it is)."""
        s = self._scale(self.nd)
        outs = []
        for a in range(self.nd):
            k, st, p, n = self.kernel_size[a], self.stride[a], self.padding[a], x.shape[2 + a]
            n0 = n / s[a]  # this layer's input size on the training grid
            if n0.denominator != 1:
                raise self.state.error(f"{self.label} gets {n} points on axis {a}, {n0} on the training grid")
            out0 = (int(n0) + 2 * p - k) // st + 1
            if st > 1:
                self.state.learn_multiple(a, out0)
            out = out0 * s[a]
            if out.denominator != 1 or out < 1:
                raise self.state.error(f"{self.label} (stride {st}) would need {out} output points on axis {a}")
            outs.append(int(out))
        if all(sa == 1 for sa in s):
            return None
        mats, pads = [], []
        for a in range(self.nd):
            k, st, p, sa = self.kernel_size[a], self.stride[a], self.padding[a], s[a]
            if self.kernel == "point":
                m, left = _point_rule(k, st, p, sa)
            elif self.kernel == "linear" and st == 1 and sa.denominator == 1 and k % 2:
                m = interpolation_matrix(k, int(sa), "linear")
                left = p + (m.shape[0] - k) // 2
            else:
                m, left = _overlap_rule(k, st, p, sa)
            mats.append(m)
            pads.append((left, (outs[a] - 1) * st + m.shape[0] - x.shape[2 + a] - left))
        return mats, pads


def _pad_crop(x: torch.Tensor, pads: Sequence[tuple[int, int]], mode: str = "constant",
              value: float = 0.0) -> torch.Tensor:
    """Pad (or, for negative amounts, crop) the trailing ``len(pads)`` axes of ``x``."""
    flat = [v for lo, hi in reversed(pads) for v in (lo, hi)]
    if mode == "constant":
        return F.pad(x, flat, value=value)
    crop = [max(0, -v) for v in flat]
    x = F.pad(x, [min(0, v) for v in flat]) if any(crop) else x
    return F.pad(x, [max(0, v) for v in flat], mode=mode)


_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class OperatorConv(_Strided):
    """A convolution with a fixed physical receptive field (same parameters as the ``nn.ConvNd`` it replaces)."""

    def __init__(self, conv: nn.modules.conv._ConvNd, state: ResolutionState, kernel: str, label: str = "") -> None:
        super().__init__()
        self.nd = conv.weight.dim() - 2
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.dilation, self.groups = tuple(conv.stride), conv.dilation, conv.groups
        self.padding_mode, self.kernel_size = conv.padding_mode, tuple(conv.kernel_size)
        pad = conv.padding
        if isinstance(pad, str):
            pad = tuple((conv.dilation[a] * (k - 1)) // 2 for a, k in enumerate(conv.kernel_size)) if pad == "same" else (0,) * self.nd
        self.padding = tuple(pad)
        self.state, self.kernel, self.label = state, kernel, f"layer {label}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        geo = self._geometry(x)
        fn = _CONV_FN[self.nd]
        if geo is None:
            if self.padding_mode != "zeros":
                x = _pad_crop(x, [(p, p) for p in self.padding], self.padding_mode)
                return fn(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
            return fn(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        mats, pads = geo
        scale = self._scale(self.nd)
        if self.kernel == "point" and all(st == 1 and sa.denominator == 1 and k % 2 for st, sa, k in
                                          zip(self.stride, scale, self.kernel_size)):
            w, dil = self.weight, tuple(int(sa) for sa in scale)  # the same taps, dilated: k instead of s k - s + 1
        else:
            w, dil = _apply_axes(self.weight, mats), 1
        x = _pad_crop(x, pads, "constant" if self.padding_mode == "zeros" else self.padding_mode)
        return fn(x, w, self.bias, self.stride, 0, dil, self.groups)


class OperatorConvTranspose(_Scaled):
    """A transposed convolution with a fixed physical footprint (same parameters as the layer it replaces); integer
    refinement only. A stride-``k`` ``k``-tap one (patch un-embedding, U-Net up-convolution) paints a pattern
    of period ``k`` cells that no function-space operator reproduces: under refinement it tends to the pattern's
    mean -- prefer interpolation (``nn.Upsample``) followed by a convolution in models meant for conversion."""

    def __init__(self, conv: nn.modules.conv._ConvTransposeNd, state: ResolutionState, kernel: str,
                 label: str = "") -> None:
        super().__init__()
        self.nd = conv.weight.dim() - 2
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding, self.output_padding = conv.stride, conv.padding, conv.output_padding
        self.groups, self.dilation, self.kernel_size = conv.groups, conv.dilation, conv.kernel_size
        self.state, self.kernel, self.label = state, kernel, f"layer {label}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self._scale(self.nd)
        if any(sa.denominator != 1 for sa in s):
            raise self.state.error(f"{self.label} converts for integer refinement only: the sizes that work are "
                                   f"multiples of the training grid {self.state.resolution}")
        si = [int(sa) for sa in s]
        k = self.kernel_size
        mats = [interpolation_matrix(ka, sa, self.kernel) for ka, sa in zip(k, si)]
        w = _apply_axes(self.weight, mats)
        pad = tuple(p + (m.shape[0] - ka) // 2 for p, m, ka in zip(self.padding, mats, k))
        fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[self.nd]
        return fn(x, w, self.bias, self.stride, pad, self.output_padding, self.groups, self.dilation)


class OperatorPool(_Strided):
    """Max/average pooling over a fixed physical window (stride kept in grid points).

    Average pooling is the window's integral (a depthwise convolution under :func:`_overlap_rule`). Max pooling
    is read as the maximum over the training taps of the cell averages there: on a finer grid each tap's value
    is the average of the fine cells covering that training cell, then the maximum is taken -- so the result
    converges to the same function the training grid samples, instead of the maximum over ever more points
    (which grows by ``O(h |grad|)``). Windows that reach past the boundary on the new grid average only the
    cells inside (max: the boundary value is repeated)."""

    def __init__(self, pool: nn.Module, state: ResolutionState, nd: int, label: str = "") -> None:
        super().__init__()
        self.nd, self.is_max = nd, isinstance(pool, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d))
        t = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * nd  # noqa: E731
        self.kernel_size, self.stride, self.padding = t(pool.kernel_size), t(pool.stride or pool.kernel_size), t(pool.padding)
        self.count_include_pad = getattr(pool, "count_include_pad", True)
        self.state, self.kernel, self.label = state, "constant", f"layer {label}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        geo = self._geometry(x)
        if geo is None:
            if self.is_max:
                fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[self.nd]
                return fn(x, self.kernel_size, self.stride, self.padding)
            fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[self.nd]
            return fn(x, self.kernel_size, self.stride, self.padding, count_include_pad=self.count_include_pad)
        mats, pads = geo
        c, conv = x.shape[1], _CONV_FN[self.nd]

        def depthwise(z: torch.Tensor, vecs: Sequence[torch.Tensor]) -> torch.Tensor:
            w = _outer(vecs).to(z)
            return conv(z, w.expand(c, 1, *w.shape), None, self.stride, 0, 1, c)

        if self.is_max:
            xp = _pad_crop(x, pads, "replicate")
            taps = itertools.product(*[range(k) for k in self.kernel_size])
            return torch.stack([depthwise(xp, [m[:, j] for m, j in zip(mats, tap)]) for tap in taps]).amax(0)
        vecs = [m.sum(1) / k for m, k in zip(mats, self.kernel_size)]
        y = depthwise(_pad_crop(x, pads), vecs)
        if not self.count_include_pad or not any(self.padding):
            inside = _pad_crop(torch.ones_like(x[:1, :1]), pads)
            y = y / conv(inside, _outer(vecs).to(x)[None, None], None, self.stride)
        return y


def _outer(vecs: Sequence[torch.Tensor]) -> torch.Tensor:
    w = vecs[0]
    for v in vecs[1:]:
        w = w[..., None] * v
    return w


def _interp_field(p: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Linear, cell-centred interpolation of ``(1, C, *grid)`` onto ``size`` (identity when equal)."""
    if tuple(p.shape[2:]) == tuple(size):
        return p
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(p, size=tuple(size), mode=mode, align_corners=False)


class OperatorLayerNorm(_Scaled):
    """LayerNorm over ``(C, *spatial)`` with its affine fields interpolated to the current grid."""

    def __init__(self, norm: nn.LayerNorm, state: ResolutionState, nd: int) -> None:
        super().__init__()
        self.nd, self.eps = nd, norm.eps
        self.weight, self.bias = norm.weight, norm.bias
        self.normalized_shape = tuple(norm.normalized_shape)
        self.state, self.kernel = state, "constant"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[-(self.nd + 1):])
        w = None if self.weight is None else _interp_field(self.weight.unsqueeze(0), shape[1:])[0]
        b = None if self.bias is None else _interp_field(self.bias.unsqueeze(0), shape[1:])[0]
        return F.layer_norm(x, shape, w, b, self.eps)


def _token_grid(n_tokens: int, resolution: Sequence[int]) -> Optional[tuple[int, tuple[int, ...]]]:
    """(extra tokens, token grid) such that the grid has the aspect of ``resolution`` with a common patch size."""
    for extra in range(0, 5):
        m = n_tokens - extra
        if m < 1:
            break
        p = (math.prod(resolution) / m) ** (1.0 / len(resolution))
        pi = round(p)
        if pi >= 1 and abs(p - pi) < 1e-9 and all(n % pi == 0 for n in resolution):
            grid = tuple(n // pi for n in resolution)
            if math.prod(grid) == m:
                return extra, grid
    return None


def _positional_property(name: str, state: ResolutionState, layout: str, extra: int, grid: tuple[int, ...]) -> property:
    def getter(self: nn.Module) -> torch.Tensor:
        p = self._parameters[name]
        scaled = [g * s for g, s in zip(grid, state.scale)]
        if any(v.denominator != 1 for v in scaled):
            raise state.error(f"the positional embedding {name} on a {grid} token grid would need {scaled} tokens")
        new = tuple(int(v) for v in scaled)
        if new == grid:
            return p
        if layout == "tokens":  # (1, extra + prod(grid), D)
            head, body = p[:, :extra], p[:, extra:]
            field = body.transpose(1, 2).reshape(p.shape[0], p.shape[2], *grid)
            body = _interp_field(field, new).flatten(2).transpose(1, 2)
            return torch.cat([head, body], dim=1)
        return _interp_field(p, new)  # (1, D, *grid)

    return property(getter)


def _install_positional(mod: nn.Module, qual: str, names: Sequence[str], state: ResolutionState) -> None:
    props = {}
    for name, p in list(mod._parameters.items()):
        if p is None or not any(key in name.lower() for key in names):
            continue
        nd = len(state.resolution)
        if p.dim() == 3:
            found = _token_grid(p.shape[1], state.resolution)
            if found is None:
                raise ValueError(
                    f"cannot read positional embedding {qual + '.' + name if qual else name} of shape "
                    f"{tuple(p.shape)} as tokens on a grid with the aspect of {state.resolution}"
                )
            props[name] = _positional_property(name, state, "tokens", *found)
        elif p.dim() == nd + 2:
            props[name] = _positional_property(name, state, "field", 0, tuple(p.shape[2:]))
        else:
            raise ValueError(
                f"cannot convert positional embedding {qual + '.' + name if qual else name} of shape "
                f"{tuple(p.shape)}: expected (1, tokens, dim) or (1, dim, *{nd} grid sizes)"
            )
    if props:
        mod.__class__ = type(mod.__class__.__name__, (mod.__class__,), props)


def _convert_children(
    mod: nn.Module, prefix: str, state: ResolutionState, kernel: str, nd: int, positional: Sequence[str]
) -> None:
    _install_positional(mod, prefix, positional, state)
    for name, child in list(mod.named_children()):
        qual = f"{prefix}.{name}" if prefix else name
        new = _convert_module(child, qual, state, kernel, nd, positional)
        if new is not child:
            setattr(mod, name, new)


def _convert_module(
    mod: nn.Module, qual: str, state: ResolutionState, kernel: str, nd: int, positional: Sequence[str]
) -> nn.Module:
    label = f"{qual or '<model>'} ({type(mod).__name__})"
    if isinstance(mod, nn.modules.conv._ConvTransposeNd):
        if any(d != 1 for d in mod.dilation):
            raise ValueError(f"cannot convert {label}: dilated transposed convolutions are not supported")
        return OperatorConvTranspose(mod, state, kernel, label)
    if isinstance(mod, nn.modules.conv._ConvNd):
        if any(d != 1 for d in mod.dilation):
            raise ValueError(f"cannot convert {label}: dilated convolutions are not supported")
        if isinstance(mod.padding, str) and (mod.padding == "valid" or any(k % 2 == 0 for k in mod.kernel_size)):
            raise ValueError(
                f"cannot convert {label}: padding {mod.padding!r} with kernel {mod.kernel_size} shrinks or shifts the "
                f"grid; use symmetric integer padding"
            )
        return OperatorConv(mod, state, kernel, label)
    if isinstance(mod, _POOLS):
        if getattr(mod, "ceil_mode", False) or getattr(mod, "dilation", 1) not in (1, (1,) * nd):
            raise ValueError(f"cannot convert {label}: ceil_mode/dilation pooling is not supported")
        if getattr(mod, "return_indices", False):
            raise ValueError(f"cannot convert {label}: return_indices pooling is not supported")
        return OperatorPool(mod, state, nd, label)
    if isinstance(mod, nn.LayerNorm):
        shape = tuple(mod.normalized_shape)
        if len(shape) == 1:
            return mod  # over channels/features: resolution-independent
        if len(shape) == nd + 1:
            return OperatorLayerNorm(mod, state, nd)
        raise ValueError(f"cannot convert {label}: LayerNorm over {shape} is neither (features,) nor (C, *{nd}D grid)")
    if isinstance(mod, nn.Upsample):
        if mod.size is not None:
            raise ValueError(f"cannot convert {label}: Upsample to a fixed size ties the model to one resolution; "
                             f"use scale_factor")
        return mod
    if isinstance(mod, _KEEP):
        return mod
    if isinstance(mod, _CONTAINERS) or next(mod.children(), None) is not None:
        _convert_children(mod, qual, state, kernel, nd, positional)
        return mod
    if not list(mod.parameters(recurse=False)) and type(mod).forward is nn.Module.forward:
        return mod
    raise ValueError(
        f"cannot convert module {label}: unknown layer type; supported are convolutions, transposed convolutions, "
        f"pooling, normalisation, pointwise layers, attention and containers of them"
    )


def convert(
    model: nn.Module, resolution: Sequence[int], kernel: str = "point",
    positional: Sequence[str] = ("pos_embed", "pos_embedding", "position_embedding", "positional"),
) -> nn.Module:
    """A resolution-agnostic copy of ``model`` (same class and ``state_dict`` keys) trained at ``resolution``.

    Args:
        model: a torch.nn grid model taking ``(batch, channels, *resolution)``.
        resolution: the spatial grid the model was (or will be) trained on.
        kernel: ``"point"`` (default: taps are point evaluations at their physical offsets), ``"constant"``
            (taps are piecewise-constant kernel cells, moment-preserving) or ``"linear"`` (the paper's
            ``s k - s + 1`` rule, divided by the area ratio).
        positional: substrings of parameter names read as positional embeddings (interpolated).

    The copy runs on any grid refined by integer factors per axis; at ``resolution`` it equals ``model``.
    """
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, but got {kernel!r}")
    res = tuple(int(n) for n in resolution)
    if not 1 <= len(res) <= 3 or any(n < 1 for n in res):
        raise ValueError(f"resolution must be 1 to 3 positive grid sizes, but got {resolution!r}")
    state = ResolutionState(res)
    new = copy.deepcopy(model)
    new = _convert_module(new, "", state, kernel, len(res), tuple(p.lower() for p in positional))

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if x is None:
            raise ValueError("a converted operator needs its input grid tensor as a positional argument")
        state.update(x.shape)

    new.register_forward_pre_hook(hook)
    new._operator_state = state  # type: ignore[assignment]
    return new


class UNet(nn.Module):
    """A plain torch.nn U-Net (3x3 conv + GroupNorm + GELU blocks, 2x max-pooling, 1x1 conv + 2x linear
    upsampling, concatenated skips) -- an ordinary grid model, tied to nothing but ``2**depth``-divisible grids;
    the model that ``converted_unet`` turns into an operator."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 16, depth: int = 3, dim: int = 2,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        if dim not in (1, 2, 3) or depth < 1 or width < 1:
            raise ValueError(f"need dim in (1, 2, 3), depth >= 1, width >= 1, but got {dim}, {depth}, {width}")
        Conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
        Pool = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[dim]

        def block(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(
                Conv(cin, cout, 3, padding=1, padding_mode=padding_mode), nn.GroupNorm(min(4, cout), cout), nn.GELU(),
                Conv(cout, cout, 3, padding=1, padding_mode=padding_mode), nn.GELU(),
            )

        chans = [width * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.inc = block(in_channels, chans[0])
        self.down = nn.ModuleList(block(chans[i], chans[i + 1]) for i in range(depth))
        self.pool = Pool(2)
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[dim]
        # up: a 1x1 convolution, then linear interpolation (a 2x2 stride-2 transposed convolution paints a
        # period-2 pattern that no operator reproduces on other grids; this pair is the same function everywhere)
        self.up = nn.ModuleList(
            nn.Sequential(Conv(chans[i + 1], chans[i], 1), nn.Upsample(scale_factor=2, mode=mode, align_corners=False))
            for i in reversed(range(depth))
        )
        self.dec = nn.ModuleList(block(2 * chans[i], chans[i]) for i in reversed(range(depth)))
        self.out = Conv(chans[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.down:
            skips.append(down(self.pool(skips[-1])))
        h = skips.pop()
        for up, dec in zip(self.up, self.dec):
            h = dec(torch.cat([skips.pop(), up(h)], dim=1))
        return self.out(h)


def converted_unet(
    in_channels: int = 1, out_channels: int = 1, width: int = 16, depth: int = 3,
    resolution: Sequence[int] = (64, 64), kernel: str = "point", padding_mode: str = "zeros",
) -> nn.Module:
    """A :class:`UNet` converted into a neural operator trained at ``resolution`` (the ``converted-unet`` model)."""
    unet = UNet(in_channels, out_channels, width, depth, dim=len(tuple(resolution)), padding_mode=padding_mode)
    return convert(unet, resolution, kernel)
