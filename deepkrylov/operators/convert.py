"""Turn ordinary ``torch.nn`` grid models (CNN/ResNet, U-Net, ViT) into resolution-agnostic neural operators.

Following "Principled Approaches for Extending Neural Architectures to Function Spaces" (NNs-to-NOs): every
layer is read as a discretised operator on functions over a fixed physical domain, and re-discretised when the
input grid is refined by an integer factor ``s`` (per axis) relative to the training grid:

* Convolutions (and transposed convolutions, pooling windows) are *local integral operators*: the kernel keeps
  its physical footprint -- ``k`` taps become ``k'`` taps on the finer grid -- its values are interpolated as a
  function of the physical offset and divided by the area ratio ``s`` per kernel axis (quadrature weights). The
  stride stays in grid points, so every strided layer's output grid is refined by ``s`` too; padding grows by
  ``(k' - k) / 2`` so windows stay centred. Two interpolations:

  - ``"constant"`` (default): the discrete kernel is a piecewise-constant function on cells of the training
    grid; fine taps take the cell overlap (``k' = s k``, plus one for odd ``k`` and even ``s``). This keeps the
    kernel's sum and first moment exactly, so the converted model's response to smooth inputs matches the
    training-resolution model to ``O(h^2)``.
  - ``"linear"``: the paper's recipe, ``k' = s k - s + 1`` vertex-centred taps, linear interpolation.

  ``1``-tap axes are pointwise and never rescaled.
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
import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["convert", "UNet", "converted_unet", "ResolutionState", "OperatorConv", "OperatorConvTranspose", "OperatorPool",
           "OperatorLayerNorm", "interpolation_matrix"]

_KERNELS = ("constant", "linear")

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
    """The refinement factor of the current input against the training grid, shared by all converted layers."""

    def __init__(self, resolution: Sequence[int]) -> None:
        self.resolution = tuple(int(n) for n in resolution)
        self.scale = (1,) * len(self.resolution)

    def update(self, shape: Sequence[int]) -> None:
        sizes = tuple(int(n) for n in shape[-len(self.resolution):])
        scale = []
        for n, n0 in zip(sizes, self.resolution):
            if n % n0:
                raise ValueError(
                    f"a converted operator runs on grids refined by an integer factor from its training grid "
                    f"{self.resolution}, but got {sizes}"
                )
            scale.append(n // n0)
        self.scale = tuple(scale)

    def __deepcopy__(self, memo: dict) -> "ResolutionState":
        return self  # shared by every layer of one converted model


def interpolation_matrix(k: int, s: int, kernel: str = "constant", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(k', k)`` matrix mapping ``k`` kernel taps on the training grid to ``k'`` taps on a grid ``s`` times finer,
    quadrature weights included (columns sum to 1 for ``"constant"``)."""
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, but got {kernel!r}")
    if k == 1 or s == 1:
        return torch.eye(k, dtype=dtype)
    if kernel == "constant":
        kp = s * k + (1 if (k % 2 and s % 2 == 0) else 0)
        t = (torch.arange(kp, dtype=dtype) - (kp - 1) / 2) / s  # fine tap positions, in training cells
        c = torch.arange(k, dtype=dtype) - (k - 1) / 2  # coarse cell centres
        lo = torch.maximum((t - 0.5 / s)[:, None], (c - 0.5)[None, :])
        hi = torch.minimum((t + 0.5 / s)[:, None], (c + 0.5)[None, :])
        return (hi - lo).clamp_min(0.0)  # overlap length = fine quadrature weight (coarse units)
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


def _grow(k: Sequence[int], s: Sequence[int], kernel: str) -> tuple[int, ...]:
    return tuple(interpolation_matrix(ka, sa, kernel).shape[0] for ka, sa in zip(k, s))


class _Scaled(nn.Module):
    state: ResolutionState
    kernel: str

    def _scale(self, nd: int) -> tuple[int, ...]:
        s = self.state.scale
        if len(s) != nd:
            raise ValueError(f"a {nd}D layer inside a model converted for {len(s)}D grids {self.state.resolution}")
        return s


class OperatorConv(_Scaled):
    """A convolution with a fixed physical receptive field (same parameters as the ``nn.ConvNd`` it replaces)."""

    def __init__(self, conv: nn.modules.conv._ConvNd, state: ResolutionState, kernel: str) -> None:
        super().__init__()
        self.nd = conv.weight.dim() - 2
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
        self.padding_mode, self.kernel_size = conv.padding_mode, conv.kernel_size
        pad = conv.padding
        if isinstance(pad, str):
            pad = tuple((conv.dilation[a] * (k - 1)) // 2 for a, k in enumerate(conv.kernel_size)) if pad == "same" else (0,) * self.nd
        self.padding = tuple(pad)
        self.state, self.kernel = state, kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self._scale(self.nd)
        k = self.kernel_size
        kp = _grow(k, s, self.kernel)
        w = _apply_axes(self.weight, [interpolation_matrix(ka, sa, self.kernel) for ka, sa in zip(k, s)])
        pad = tuple(p + (kk - ka) // 2 for p, kk, ka in zip(self.padding, kp, k))
        fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[self.nd]
        if self.padding_mode != "zeros" and any(pad):
            flat = [v for p in reversed(pad) for v in (p, p)]
            x = F.pad(x, flat, mode=self.padding_mode)
            pad = (0,) * self.nd
        return fn(x, w, self.bias, self.stride, pad, self.dilation, self.groups)


class OperatorConvTranspose(_Scaled):
    """A transposed convolution with a fixed physical footprint (same parameters as the layer it replaces)."""

    def __init__(self, conv: nn.modules.conv._ConvTransposeNd, state: ResolutionState, kernel: str) -> None:
        super().__init__()
        self.nd = conv.weight.dim() - 2
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding, self.output_padding = conv.stride, conv.padding, conv.output_padding
        self.groups, self.dilation, self.kernel_size = conv.groups, conv.dilation, conv.kernel_size
        self.state, self.kernel = state, kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self._scale(self.nd)
        k = self.kernel_size
        kp = _grow(k, s, self.kernel)
        w = _apply_axes(self.weight, [interpolation_matrix(ka, sa, self.kernel) for ka, sa in zip(k, s)])
        pad = tuple(p + (kk - ka) // 2 for p, kk, ka in zip(self.padding, kp, k))
        fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[self.nd]
        return fn(x, w, self.bias, self.stride, pad, self.output_padding, self.groups, self.dilation)


class OperatorPool(_Scaled):
    """Max/average pooling over a fixed physical window (stride kept in grid points)."""

    def __init__(self, pool: nn.Module, state: ResolutionState, nd: int) -> None:
        super().__init__()
        self.nd, self.is_max = nd, isinstance(pool, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d))
        t = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * nd  # noqa: E731
        self.kernel_size, self.stride, self.padding = t(pool.kernel_size), t(pool.stride or pool.kernel_size), t(pool.padding)
        self.count_include_pad = getattr(pool, "count_include_pad", True)
        self.state, self.kernel = state, "constant"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self._scale(self.nd)
        kp = _grow(self.kernel_size, s, "constant")
        pad = tuple(p + (kk - ka) // 2 for p, kk, ka in zip(self.padding, kp, self.kernel_size))
        if self.is_max:
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[self.nd]
            return fn(x, kp, self.stride, pad)
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[self.nd]
        return fn(x, kp, self.stride, pad, count_include_pad=self.count_include_pad)


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
        new = tuple(g * s for g, s in zip(grid, state.scale))
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
        return OperatorConvTranspose(mod, state, kernel)
    if isinstance(mod, nn.modules.conv._ConvNd):
        if any(d != 1 for d in mod.dilation):
            raise ValueError(f"cannot convert {label}: dilated convolutions are not supported")
        if isinstance(mod.padding, str) and (mod.padding == "valid" or any(k % 2 == 0 for k in mod.kernel_size)):
            raise ValueError(
                f"cannot convert {label}: padding {mod.padding!r} with kernel {mod.kernel_size} shrinks or shifts the "
                f"grid; use symmetric integer padding"
            )
        return OperatorConv(mod, state, kernel)
    if isinstance(mod, _POOLS):
        if getattr(mod, "ceil_mode", False) or getattr(mod, "dilation", 1) not in (1, (1,) * nd):
            raise ValueError(f"cannot convert {label}: ceil_mode/dilation pooling is not supported")
        if getattr(mod, "return_indices", False):
            raise ValueError(f"cannot convert {label}: return_indices pooling is not supported")
        return OperatorPool(mod, state, nd)
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
    model: nn.Module, resolution: Sequence[int], kernel: str = "constant",
    positional: Sequence[str] = ("pos_embed", "pos_embedding", "position_embedding", "positional"),
) -> nn.Module:
    """A resolution-agnostic copy of ``model`` (same class and ``state_dict`` keys) trained at ``resolution``.

    Args:
        model: a torch.nn grid model taking ``(batch, channels, *resolution)``.
        resolution: the spatial grid the model was (or will be) trained on.
        kernel: ``"constant"`` (moment-preserving, default) or ``"linear"`` (the paper's ``s k - s + 1`` rule).
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
    """A plain torch.nn U-Net (3x3 conv + GroupNorm + GELU blocks, 2x max-pooling, 2x2 transposed-conv upsampling,
    concatenated skips) -- an ordinary grid model, tied to nothing but ``2**depth``-divisible grids; the model that
    ``converted_unet`` turns into an operator."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 16, depth: int = 3, dim: int = 2) -> None:
        super().__init__()
        if dim not in (1, 2, 3) or depth < 1 or width < 1:
            raise ValueError(f"need dim in (1, 2, 3), depth >= 1, width >= 1, but got {dim}, {depth}, {width}")
        Conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
        ConvT = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dim]
        Pool = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[dim]

        def block(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(
                Conv(cin, cout, 3, padding=1), nn.GroupNorm(min(4, cout), cout), nn.GELU(),
                Conv(cout, cout, 3, padding=1), nn.GELU(),
            )

        chans = [width * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.inc = block(in_channels, chans[0])
        self.down = nn.ModuleList(block(chans[i], chans[i + 1]) for i in range(depth))
        self.pool = Pool(2)
        self.up = nn.ModuleList(ConvT(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth)))
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
    resolution: Sequence[int] = (64, 64), kernel: str = "constant",
) -> nn.Module:
    """A :class:`UNet` converted into a neural operator trained at ``resolution`` (the ``converted-unet`` model)."""
    return convert(UNet(in_channels, out_channels, width, depth, dim=len(tuple(resolution))), resolution, kernel)
