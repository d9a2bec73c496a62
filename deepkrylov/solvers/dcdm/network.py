"""The DCDM network: a residual CNN with one pooling level that maps a residual to a search direction.

Layout as in the DCDM paper's public models: every layer a 3x3(x3) convolution with ``width`` channels and zero
padding at the box boundary. A linear first convolution lifts the input; ReLU convolutions follow in residual
pairs at full resolution, then (after 2x average pooling) at half resolution, then (after 2x nearest upsampling,
added to the last full-resolution features) at full resolution again; a per-voxel linear layer gives the output.
With the defaults (``pre=4, mid=3, post=2`` in 3D) the model has 97,457 parameters, like the paper's 64^3 model;
``pre=6, mid=5, post=3`` gives the 152,881 of its 128^3 model.

The layers are :mod:`deepkrylov.distributed` HaloConv modules, so the same weights run on a whole tensor or on a
:class:`~deepkrylov.distributed.GridTensor` split over ranks, with identical results.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import torch
import torch.nn.functional as F
from torch import nn

from deepkrylov.distributed import GridTensor, HaloConv2d, HaloConv3d, as_grid_tensor, conv, conv_transpose

__all__ = ["DCDMNet"]

Field = Union[torch.Tensor, GridTensor]


def _relu(x: GridTensor) -> GridTensor:
    return x.map(F.relu)


class DCDMNet(nn.Module):
    """Residual CNN ``q = f(r)`` for DCDM.

    Args:
        dim: 2 or 3 spatial dimensions.
        width: channels of every hidden layer (16 in the paper).
        pre: full-resolution convolutions before pooling (even, >= 2).
        mid: residual pairs at half resolution.
        post: residual pairs after upsampling.

    Shape:
        input ``(batch, 1, *spatial)`` tensor or GridTensor, every spatial size even; output the same shape.
    """

    takes_grid_tensors = True

    def __init__(self, dim: int = 3, width: int = 16, pre: int = 4, mid: int = 3, post: int = 2) -> None:
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, but got {dim}")
        if pre < 2 or pre % 2:
            raise ValueError(f"pre must be an even number >= 2, but got {pre}")
        if mid < 0 or post < 0 or width < 1:
            raise ValueError(f"mid, post must be >= 0 and width >= 1, but got mid={mid}, post={post}, width={width}")
        self.dim, self.width, self.pre, self.mid, self.post = dim, width, pre, mid, post
        Conv = HaloConv3d if dim == 3 else HaloConv2d

        def c(cin: int = width) -> nn.Module:
            return Conv(cin, width, 3, padding=1)

        self.lift = c(1)
        self.down = nn.ModuleList(c() for _ in range(pre))
        self.coarse = nn.ModuleList(c() for _ in range(2 * mid))
        self.up = nn.ModuleList(c() for _ in range(2 * post))
        self.head = Conv(width, 1, 1)

    def config(self) -> dict:
        return {"dim": self.dim, "width": self.width, "pre": self.pre, "mid": self.mid, "post": self.post}

    def _check(self, x: Field) -> None:
        shape = x.shape
        if len(shape) != self.dim + 2 or shape[1] != 1:
            raise ValueError(
                f"this DCDM model is {self.dim}D and takes (batch, 1, *{self.dim} spatial sizes), but got a "
                f"{len(shape) - 2}D input of shape {tuple(shape)}"
            )
        if any(s % 2 for s in shape[2:]):
            raise ValueError(
                f"DCDM pools by 2 along every axis: grid sizes must be even, but got {tuple(shape[2:])}"
            )

    def _pool(self, x: GridTensor) -> GridTensor:
        """2x average pooling: a strided depthwise convolution with weights ``1 / 2**dim``."""
        w = x.local.new_full((self.width, 1) + (2,) * self.dim, 1.0 / 2**self.dim)
        return conv(x, w, None, stride=2, groups=self.width)

    def _upsample(self, x: GridTensor, like: GridTensor) -> GridTensor:
        """2x nearest upsampling onto ``like``'s grid: a strided depthwise transposed convolution with ones."""
        w = x.local.new_ones((self.width, 1) + (2,) * self.dim)
        return conv_transpose(x, w, None, stride=2, groups=self.width, output_grid=like.grid)

    def _pool_block(self, x: torch.Tensor) -> torch.Tensor:
        return (F.avg_pool3d if self.dim == 3 else F.avg_pool2d)(x, 2)

    @staticmethod
    def _upsample_block(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if x.is_mkldnn:  # oneDNN has no nearest upsampling: through a dense tensor (half resolution, cheap)
            return F.interpolate(x.to_dense(), scale_factor=2, mode="nearest").to_mkldnn()
        return F.interpolate(x, scale_factor=2, mode="nearest")

    def _fast_path(self, local: torch.Tensor) -> bool:
        """Inference on a float32 CPU block of a one-rank grid: run the oneDNN (mkldnn) twin of the network.
        torch's default CPU conv3d takes a slow path at these sizes (16x slower at 32^3 on the project's machine)."""
        return (not self.training and not torch.is_grad_enabled() and local.device.type == "cpu"
                and local.dtype == torch.float32 and torch.backends.mkldnn.is_available())

    def _mkldnn_twin(self) -> nn.Module:
        """A oneDNN copy of this network, rebuilt when the weights change."""
        import copy

        import torch.utils.mkldnn

        key = tuple((p.data_ptr(), p._version) for p in self.parameters())
        hit = self.__dict__.get("_twin")
        if hit is None or hit[0] != key:
            twin = copy.deepcopy(self)
            twin.__dict__.pop("_twin", None)
            hit = self.__dict__["_twin"] = (key, torch.utils.mkldnn.to_mkldnn(twin))
        return hit[1]

    def forward(self, r: Field) -> Field:
        self._check(r)
        g, restore = as_grid_tensor(r, r.shape[2:])
        if g.grid.size > 1 or any(g.grid.periodic):
            return restore(self._layers(self, g, _relu, self._pool, self._upsample))
        # One rank: the block is the whole field, so torch's convolutions with their own zero padding run on it
        # directly (no halo copies: 15% of a training step at 16^3), or oneDNN's for float32 inference.
        if self._fast_path(g.local):
            q = self._layers(self._mkldnn_twin(), g.local.contiguous().to_mkldnn(), F.relu, self._pool_block,
                             self._upsample_block).to_dense()
        else:
            q = self._layers(self, g.local, F.relu, self._pool_block, self._upsample_block)
        return restore(g.with_local(q))

    def _layers(self, net: nn.Module, h: Any, relu: Callable, pool: Callable, upsample: Callable) -> Any:
        """The network's layer sequence on ``h`` (a GridTensor, or the block of a one-rank grid as a dense or
        mkldnn tensor) with ``net``'s convolutions (this network's or its oneDNN twin's) and the matching
        activation, pooling and upsampling."""
        h = net.lift(h)
        a = relu(net.down[0](h))
        b = relu(net.down[1](a))
        for i in range(2, self.pre, 2):
            a = relu(net.down[i](b)) + a
            b = relu(net.down[i + 1](a))
        u = pool(b)
        for i in range(0, 2 * self.mid, 2):
            u = relu(net.coarse[i + 1](relu(net.coarse[i](u)))) + u
        v = upsample(u, b) + b
        for i in range(0, 2 * self.post, 2):
            v = relu(net.up[i + 1](relu(net.up[i](v)))) + v
        return net.head(v)
