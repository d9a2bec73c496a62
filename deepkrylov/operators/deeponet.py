"""DeepONet (Lu et al. 2021) with DeepXDE's conventions.

``G(u)(y) = sum_k b_k(u) t_k(y) + b0``: the branch net sees the input function at fixed sensors (or, with a
CNN branch, on a grid), the trunk net sees the query coordinates. Unstacked (one branch with ``p`` outputs) or
stacked (``p`` branch nets with one output each). Cartesian-product (aligned) data merge with
``einsum("bi,ni->bn")`` (every function at the same points), pointwise (unaligned triples) with
a row-wise dot product. Branch output linear, trunk output activated, scalar bias initialised to 0,
Glorot-normal weights. Optional trunk feature transform (e.g. periodic features), output transform, several
outputs (branch and trunk widths ``p * num_outputs``, split per output) and POD-DeepONet (the trunk replaced by
a fixed POD basis of the training outputs, :func:`pod_basis`). ``DeepONet.init_trunk_biases`` replaces the zero
first-layer trunk biases by kinks at training coordinates (the CLI's default; much better 50k-iteration results).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

__all__ = ["MLP", "CNNBranch", "DeepONet", "pod_basis", "periodic_features"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU, "sigmoid": nn.Sigmoid, "elu": nn.ELU,
}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, but got {name!r}")
    return _ACTIVATIONS[name]()


class MLP(nn.Module):
    """Fully connected net with widths ``layers`` (first = input size); ``last_activation`` activates the
    output too (DeepONet's trunk). Glorot-normal weights, zero biases."""

    def __init__(self, layers: Sequence[int], activation: str = "relu", last_activation: bool = False) -> None:
        super().__init__()
        if len(layers) < 2 or any(int(w) < 1 for w in layers):
            raise ValueError(f"layers must have >= 2 positive widths, but got {list(layers)}")
        mods: list[nn.Module] = []
        for i in range(len(layers) - 1):
            lin = nn.Linear(int(layers[i]), int(layers[i + 1]))
            nn.init.xavier_normal_(lin.weight)
            nn.init.zeros_(lin.bias)
            mods.append(lin)
            if i < len(layers) - 2 or last_activation:
                mods.append(_activation(activation))
        self.net = nn.Sequential(*mods)
        self.in_features, self.out_features = int(layers[0]), int(layers[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNNBranch(nn.Module):
    """Branch net for inputs on a 1D/2D/3D grid ``(batch, channels, *spatial)``: strided convolutions, global
    average pooling, a linear map to ``out_features``. Works at any resolution."""

    def __init__(self, in_channels: int, out_features: int, ndim: int = 2, width: int = 32, depth: int = 3,
                 activation: str = "relu") -> None:
        super().__init__()
        if ndim not in (1, 2, 3):
            raise ValueError(f"ndim must be 1, 2 or 3, but got {ndim}")
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1]
        pool = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[ndim - 1]
        mods: list[nn.Module] = []
        c = in_channels
        for _ in range(depth):
            mods += [conv(c, width, 3, stride=2, padding=1), _activation(activation)]
            c = width
        mods += [pool(1), nn.Flatten(), nn.Linear(width, out_features)]
        self.net = nn.Sequential(*mods)
        self.ndim, self.out_features = ndim, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == self.ndim + 1:
            x = x.unsqueeze(1)
        return self.net(x)


def periodic_features(y: torch.Tensor, period: float = 1.0, harmonics: int = 1) -> torch.Tensor:
    """Trunk feature transform ``[cos(2 pi k y / P), sin(2 pi k y / P)]_{k=1..harmonics}`` (periodic outputs)."""
    k = torch.arange(1, harmonics + 1, dtype=y.dtype, device=y.device)
    a = 2 * torch.pi * y[..., None] * k / period
    return torch.cat([torch.cos(a), torch.sin(a)], -1).flatten(-2)


def pod_basis(outputs: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean (N,), modes (N, p))`` of training outputs ``(num_samples, N)``: the POD-DeepONet trunk."""
    if outputs.ndim != 2:
        raise ValueError(f"outputs must have shape (num_samples, num_points), but got {tuple(outputs.shape)}")
    if not 1 <= p <= min(outputs.shape):
        raise ValueError(f"p must be in [1, {min(outputs.shape)}], but got {p}")
    mean = outputs.mean(0)
    _, _, vh = torch.linalg.svd(outputs - mean, full_matrices=False)
    return mean, vh[:p].T.contiguous()


class DeepONet(nn.Module):
    """DeepONet; see the module docstring.

    ``branch``: MLP widths ``[m, ..., p]`` or any module mapping ``u -> (batch, p * num_outputs)``;
    ``trunk``: MLP widths ``[d, ..., p]`` or a module ``y -> (..., p * num_outputs)``; ignored with POD.
    With widths, the last width ``p`` is multiplied by ``num_outputs``. ``stacked``: ``p * num_outputs`` branch
    MLPs ``[m, ..., 1]`` instead of one. ``aligned``: forward(u (B, m), y (N, d)) -> (B, N); otherwise
    forward(u (B, m), y (B, d)) -> (B,). With ``num_outputs > 1`` a last axis of that size is appended.
    ``pod``: ``(mean (N,), modes (N, p))`` from :func:`pod_basis` (aligned only; y is then ignored and may be
    None). ``feature_transform(y)`` precedes the trunk; ``output_transform(y, out)`` follows the merge.
    """

    def __init__(self, branch: Union[Sequence[int], nn.Module], trunk: Union[Sequence[int], nn.Module, None],
                 activation: str = "relu", num_outputs: int = 1, stacked: bool = False, aligned: bool = True,
                 feature_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 output_transform: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
                 pod: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> None:
        super().__init__()
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, but got {num_outputs}")
        self.num_outputs, self.aligned, self.stacked = int(num_outputs), bool(aligned), bool(stacked)
        k = self.num_outputs
        if pod is not None:
            if not aligned:
                raise ValueError("POD-DeepONet needs aligned (Cartesian-product) data, but got aligned=False")
            mean, modes = pod
            if modes.ndim != 2 or mean.shape != modes.shape[:1]:
                raise ValueError(f"pod must be (mean (N,), modes (N, p)), but got {tuple(mean.shape)}, "
                                 f"{tuple(modes.shape)}")
            if k != 1:
                raise ValueError(f"POD-DeepONet supports num_outputs=1, but got {k}")
            self.register_buffer("pod_mean", mean.clone())
            self.register_buffer("pod_modes", modes.clone())
            self.trunk: Optional[nn.Module] = None
            p_trunk = modes.shape[1]
        else:
            self.pod_mean = self.pod_modes = None  # type: ignore[assignment]
            if trunk is None:
                raise ValueError("trunk is required unless pod is given, but got trunk=None")
            if isinstance(trunk, nn.Module):
                self.trunk = trunk
                p_trunk = None
            else:
                widths = list(trunk)
                self.trunk = MLP(widths[:-1] + [widths[-1] * k], activation, last_activation=True)
                p_trunk = widths[-1] * k
        if isinstance(branch, nn.Module):
            self.branch: nn.Module = branch
        else:
            widths = list(branch)
            p = widths[-1] * k if pod is None else widths[-1]
            if p_trunk is not None and p != p_trunk:
                raise ValueError(f"branch output {p} must equal trunk output {p_trunk}")
            if stacked:
                self.branch = _Stacked([MLP(widths[:-1] + [1], activation) for _ in range(p)])
            else:
                self.branch = MLP(widths[:-1] + [p], activation)
        self.b = nn.Parameter(torch.zeros(k))
        self.feature_transform, self.output_transform = feature_transform, output_transform

    def forward(self, u: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        bu = self.branch(u)
        k = self.num_outputs
        if self.pod_modes is not None:
            out = torch.einsum("bi,ni->bn", bu, self.pod_modes) + self.pod_mean + self.b
            return self.output_transform(y, out) if self.output_transform is not None and y is not None else out
        if y is None:
            raise ValueError("y (trunk coordinates) is required, but got None")
        if y.ndim == 1:
            y = y[:, None]
        if not self.aligned and y.shape[0] != u.shape[0]:
            raise ValueError(f"pointwise (aligned=False) data needs one point per function: u has {u.shape[0]} "
                             f"rows, y has {y.shape[0]}")
        ty = self.trunk(self.feature_transform(y) if self.feature_transform is not None else y)  # type: ignore
        if bu.shape[-1] != ty.shape[-1]:
            raise ValueError(f"branch output {bu.shape[-1]} must equal trunk output {ty.shape[-1]}")
        bu = bu.reshape(bu.shape[0], k, -1)
        ty = ty.reshape(ty.shape[0], k, -1)
        if self.aligned:
            out = torch.einsum("bki,nki->bnk", bu, ty) + self.b
        else:
            out = (bu * ty).sum(-1) + self.b  # a batched dot product; einsum would run it as a slow bmm
        if k == 1:
            out = out.squeeze(-1)
        if self.output_transform is not None:
            out = self.output_transform(y, out)
        return out

    @torch.no_grad()
    def init_trunk_biases(self, y: torch.Tensor, generator: Optional[torch.Generator] = None) -> None:
        """Place each first-layer trunk unit's kink (its tanh centre, ...) at a random point of ``y``, the training
        coordinates: ``b_i = -w_i . f(y_j)`` with ``f`` the feature transform.

        Why: with the usual zero biases a ReLU trunk is positively homogeneous in its input, so on a domain like
        [0, 1] every first-layer unit is linear or dead and the trunk starts as a multiple of ``y``; it must then
        grow every kink through its biases, which Adam does slowly and very unevenly across seeds. In the paper's
        antiderivative setting the 50,000-iteration test MSE drops from a median 1.5e-6 (0.9-3.1e-6) over five
        seeds to 3.6e-7 (2.8-6.0e-7) (benchmarks/deeponet.py). Needs the trunk built from widths (an :class:`MLP`)."""
        if not isinstance(self.trunk, MLP):
            raise ValueError("init_trunk_biases needs the trunk built from widths (an MLP), but the model has "
                             f"{type(self.trunk).__name__ if self.trunk is not None else 'a POD basis'}")
        first = self.trunk.net[0]
        y = y.reshape(-1, 1) if y.ndim == 1 else y.reshape(-1, y.shape[-1])
        feats = self.feature_transform(y) if self.feature_transform is not None else y
        feats = feats.to(first.weight)
        if feats.shape[-1] != first.in_features:
            raise ValueError(f"trunk input has {first.in_features} features, but y gives {feats.shape[-1]}")
        idx = torch.randint(0, feats.shape[0], (first.out_features,), generator=generator)
        first.bias.copy_(-(first.weight * feats[idx]).sum(1))


class _Stacked(nn.Module):
    def __init__(self, nets: Sequence[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([n(x) for n in self.nets], -1)
