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

from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from deepkrylov.distributed import GridTensor, HaloConv2d, HaloConv3d, conv, conv_transpose

__all__ = ["DCDMNet"]

Field = Union[torch.Tensor, GridTensor]


def _relu(x: Field) -> Field:
    return x.map(F.relu) if isinstance(x, GridTensor) else F.relu(x)


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

    def _pool(self, x: Field) -> Field:
        if isinstance(x, GridTensor):
            k = (2,) * self.dim
            w = x.local.new_full((self.width, 1) + k, 1.0 / 2**self.dim)
            return conv(x, w, None, stride=2, groups=self.width)
        return (F.avg_pool3d if self.dim == 3 else F.avg_pool2d)(x, 2)

    def _upsample(self, x: Field, like: Field) -> Field:
        if isinstance(x, GridTensor):
            w = x.local.new_ones((self.width, 1) + (2,) * self.dim)
            return conv_transpose(x, w, None, stride=2, groups=self.width, output_grid=like.grid)
        if x.is_mkldnn:  # oneDNN has no nearest upsampling: through a dense tensor (half resolution, cheap)
            return F.interpolate(x.to_dense(), scale_factor=2, mode="nearest").to_mkldnn()
        return F.interpolate(x, scale_factor=2, mode="nearest")

    def _fast_path(self, r: Field) -> bool:
        """Inference on a plain float32 CPU tensor: run the oneDNN (mkldnn) twin of the network. torch's default
        CPU conv3d takes a slow path at these sizes (16x slower at 32^3 on the project's machine)."""
        return (not self.training and not torch.is_grad_enabled() and isinstance(r, torch.Tensor) and not r.is_mkldnn
                and r.device.type == "cpu" and r.dtype == torch.float32 and torch.backends.mkldnn.is_available())

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
        if isinstance(r, GridTensor) and r.grid.size == 1 and self._fast_path(r.local):
            return r.with_local(self._mkldnn_twin()(r.local.contiguous().to_mkldnn()).to_dense())
        if self._fast_path(r):
            return self._mkldnn_twin()(r.to_mkldnn()).to_dense()
        h = self.lift(r)
        a = _relu(self.down[0](h))
        b = _relu(self.down[1](a))
        for i in range(2, self.pre, 2):
            a = _relu(self.down[i](b)) + a
            b = _relu(self.down[i + 1](a))
        u = self._pool(b)
        for i in range(0, 2 * self.mid, 2):
            u = _relu(self.coarse[i + 1](_relu(self.coarse[i](u)))) + u
        v = self._upsample(u, b) + b
        for i in range(0, 2 * self.post, 2):
            v = _relu(self.up[i + 1](_relu(self.up[i](v)))) + v
        return self.head(v)
