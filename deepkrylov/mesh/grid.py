"""``StructuredGrid``: a uniform 1D/2D/3D grid of cells, in tensor order ``(z, y, x)`` with x fastest."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch

if TYPE_CHECKING:
    from deepkrylov.distributed import ProcessGrid

__all__ = ["StructuredGrid"]


class StructuredGrid:
    """Uniform cell-centred grid on the box ``[0, extent_0] x ... `` (tensor order).

    Args:
        shape: cells per axis, 1 to 3 axes, tensor order ``(z, y, x)``.
        extent: physical length per axis (default 1.0 each); spacing is ``extent / shape``.
    """

    def __init__(self, shape: Sequence[int], extent: Optional[Sequence[float]] = None) -> None:
        shape = tuple(int(s) for s in shape)
        if not 1 <= len(shape) <= 3 or any(s < 1 for s in shape):
            raise ValueError(f"shape must have 1 to 3 positive sizes, but got {shape}")
        extent = tuple(float(e) for e in (extent if extent is not None else (1.0,) * len(shape)))
        if len(extent) != len(shape) or any(e <= 0 for e in extent):
            raise ValueError(f"extent must have {len(shape)} positive lengths, but got {extent}")
        self.shape, self.extent = shape, extent
        self.ndim = len(shape)
        self.spacing = tuple(e / n for e, n in zip(extent, shape))

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def centers(self, dtype: torch.dtype = torch.float64,
                partition: Optional["ProcessGrid"] = None) -> list[torch.Tensor]:
        """1D cell-centre coordinates per axis; with ``partition``, those of this rank's block (the same numbers as
        the whole grid's, sliced)."""
        if partition is None:
            return [(torch.arange(n, dtype=dtype) + 0.5) * h for n, h in zip(self.shape, self.spacing)]
        if partition.global_shape != self.shape:
            raise ValueError(f"the partition is over a grid of shape {partition.global_shape}, but the grid has "
                             f"shape {self.shape}")
        return [(torch.arange(s, s + n, dtype=dtype) + 0.5) * h
                for s, n, h in zip(partition.starts, partition.local_shape, self.spacing)]

    def meshgrid(self, dtype: torch.dtype = torch.float64,
                 partition: Optional["ProcessGrid"] = None) -> list[torch.Tensor]:
        """Cell-centre coordinates as ``ndim`` arrays of ``shape`` (``indexing='ij'``; broadcast views, no copies);
        with ``partition``, of this rank's block."""
        return list(torch.meshgrid(*self.centers(dtype, partition), indexing="ij"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StructuredGrid) and (self.shape, self.extent) == (other.shape, other.extent)

    def __repr__(self) -> str:
        return f"StructuredGrid(shape={self.shape}, extent={self.extent})"
