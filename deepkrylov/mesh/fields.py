"""Cell fields on the rank's block of a structured grid: coefficients and masks given as numbers, whole arrays,
GridTensor blocks, functions of the cell centres, or ``.npy``/HDF5 files read block by block.

With a ``partition`` (a :class:`~deepkrylov.distributed.ProcessGrid` over the grid), every function here returns
or keeps only this rank's block; a whole array is accepted for convenience and sliced at once (it costs the whole
array on every rank that builds it). Without one, the block is the whole grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from deepkrylov.distributed import GridTensor, ProcessGrid

from .grid import StructuredGrid

__all__ = ["read_field"]

_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def _check_partition(grid: StructuredGrid, partition: Optional[ProcessGrid]) -> None:
    if partition is None:
        return
    if not isinstance(partition, ProcessGrid):
        raise TypeError(f"partition must be a deepkrylov.distributed.ProcessGrid, but got {type(partition).__name__}")
    if partition.global_shape != grid.shape:
        raise ValueError(f"the partition is over a grid of shape {partition.global_shape}, but the grid has shape "
                         f"{grid.shape}")


def _block_slices(grid: StructuredGrid, partition: Optional[ProcessGrid]) -> tuple[slice, ...]:
    """This rank's index ranges of the grid (the whole grid without a partition)."""
    _check_partition(grid, partition)
    return partition.local_slices if partition is not None else tuple(slice(0, n) for n in grid.shape)


def _block_shape(grid: StructuredGrid, partition: Optional[ProcessGrid]) -> tuple[int, ...]:
    return partition.local_shape if partition is not None else grid.shape


def _same_blocks(a: ProcessGrid, b: ProcessGrid) -> bool:
    """Whether two process grids give every rank the same block (their communicators may be distinct objects)."""
    return (a.global_shape, a.dims, a.splits, a.size, a.rank) == (b.global_shape, b.dims, b.splits, b.size, b.rank)


def _local_field(value: Any, grid: StructuredGrid, partition: Optional[ProcessGrid], what: str) -> torch.Tensor:
    """``value`` on this rank's block, as a tensor of the block's shape: a whole tensor or array of the grid's shape
    (sliced), a GridTensor block on ``partition`` (batch and channels 1), or a callable of the block's cell-centre
    coordinates (``ndim`` tensors of the block's shape, ``indexing='ij'``)."""
    block = _block_shape(grid, partition)
    if isinstance(value, GridTensor):
        if partition is None:
            if value.grid.size > 1:
                raise ValueError(f"{what} is a GridTensor on {value.grid.size} ranks; pass partition=<its grid> to "
                                 "build on blocks")
        elif not _same_blocks(value.grid, partition):
            raise ValueError(f"{what} is a GridTensor on another partition ({value.grid!r}) than the operator's "
                             f"({partition!r})")
        if value.local.shape[:2] != (1, 1):
            raise ValueError(f"{what} must have batch and channels 1, but its block has shape "
                             f"{tuple(value.local.shape)}")
        return value.local.reshape(block)
    if callable(value):
        out = torch.as_tensor(value(grid.meshgrid(partition=partition)))
        if tuple(out.shape) != block:
            try:
                out = out.expand(block)
            except RuntimeError:
                raise ValueError(f"{what}: the function of the cell centres returned shape {tuple(out.shape)}, but the "
                                 f"block has shape {block}") from None
        return out
    arr = torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
    if tuple(arr.shape) != grid.shape:
        raise ValueError(f"{what} must be a number, a function of the cell centres, a GridTensor block or have the "
                         f"grid's shape {grid.shape}, but got shape {tuple(arr.shape)}")
    if partition is None or partition.local_shape == grid.shape:
        return arr
    return arr[_block_slices(grid, partition)].clone()  # a copy: a view would keep the whole array alive


def _field_result(block: torch.Tensor, partition: Optional[ProcessGrid]) -> Union[torch.Tensor, GridTensor]:
    """A block field as the functions here return it: a GridTensor ``(1, 1, *block)`` on ``partition``, or without
    one the tensor itself (the whole grid)."""
    return block if partition is None else GridTensor(block.reshape((1, 1) + partition.local_shape), partition)


def read_field(
    source: Union[str, Path, np.ndarray, torch.Tensor], grid: StructuredGrid, *,
    partition: Optional[ProcessGrid] = None, dataset: Optional[str] = None,
) -> Union[torch.Tensor, GridTensor]:
    """A cell field (coefficients, voxel kinds) of the grid's shape, only this rank's block read.

    ``source``: a ``.npy`` file (memory-mapped: only the block's pages are read), an HDF5 file (``.h5``/``.hdf5``;
    a hyperslab read of ``dataset``, default the file's only dataset), or an array of the grid's shape (sliced).

    Returns: with ``partition``, a GridTensor ``(1, 1, *block)`` on it; without, a tensor of the grid's shape.
    """
    return _field_result(_read_block(source, grid, partition, dataset), partition)


def _read_block(source: Union[str, Path, np.ndarray, torch.Tensor], grid: StructuredGrid,
                partition: Optional[ProcessGrid], dataset: Optional[str]) -> torch.Tensor:
    """This rank's block of :func:`read_field`'s field, a tensor of the block's shape."""
    slices = _block_slices(grid, partition)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"field file not found: {path}")
        if path.suffix.lower() in _HDF5_SUFFIXES:
            arr = _read_hdf5(path, grid, slices, dataset)
        else:
            try:
                whole = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as err:
                raise ValueError(f"cannot read {path} as a .npy array: {err}") from err
            _check_file_shape(whole.shape, grid, path)
            arr = np.array(whole[slices])
            del whole
        return torch.from_numpy(np.ascontiguousarray(arr))
    return _local_field(source, grid, partition, "the field").contiguous()


def _check_file_shape(shape: tuple, grid: StructuredGrid, path: Path) -> None:
    if tuple(shape) != grid.shape:
        raise ValueError(f"{path} holds an array of shape {tuple(shape)}, but the grid has shape {grid.shape}")


def _read_hdf5(path: Path, grid: StructuredGrid, slices: tuple, dataset: Optional[str]) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        if dataset is None:
            names: list = []
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            if len(names) != 1:
                raise ValueError(f"{path} holds {len(names)} datasets ({names[:8]}); say which with dataset=")
            dataset = names[0]
        if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
            raise ValueError(f"{path} has no dataset {dataset!r}")
        d = f[dataset]
        _check_file_shape(d.shape, grid, path)
        return d[slices]  # a hyperslab: only the block is read

