"""``GridTensor``: a field split over a :class:`ProcessGrid`, one block per rank.

The local block is an ordinary ``torch.Tensor`` of shape ``(batch, channels, *local_spatial)``; pointwise
arithmetic is local, and everything that needs other ranks (halos, reductions, gather) goes through the grid's
communicator. Reductions return values that are replicated on every rank; their backward assumes, as serial code
does, that every rank goes on to compute the same function of them, so gradients equal the serial ones.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, Optional, Sequence, Union

import torch

from .comm import SelfComm
from .grid import ProcessGrid
from .halo import halo as _halo

__all__ = ["GridTensor", "as_grid_tensor", "serial_grid"]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the result is one replicated value, so its gradient passes through unchanged."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, comm) -> torch.Tensor:  # type: ignore[no-untyped-def, override]
        return comm.allreduce_(x.clone())

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return g, None


def _block_counts(grid: ProcessGrid, lead: Sequence[int]) -> list[int]:
    """Elements of every rank's block ``(*lead, *local_shape)``, in rank order."""
    n = math.prod(lead)
    return [n * math.prod(s.stop - s.start for s in grid.local_slices_of(r)) for r in range(grid.size)]


def _pack(full: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:
    """The blocks of a whole tensor, flattened one after another in rank order (what ``scatterv`` sends)."""
    lead = (slice(None), slice(None))
    return torch.cat([full[lead + grid.local_slices_of(r)].reshape(-1) for r in range(grid.size)])


def _unpack(flat: torch.Tensor, grid: ProcessGrid, lead: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`_pack`: the whole tensor from its blocks (what ``gatherv`` returns)."""
    full = flat.new_empty(tuple(lead) + grid.global_shape)
    start = 0
    for r, n in enumerate(_block_counts(grid, lead)):
        sl = grid.local_slices_of(r)
        full[(slice(None), slice(None)) + sl] = flat[start:start + n].view(tuple(lead) + tuple(s.stop - s.start for s in sl))
        start += n
    return full


class _GatherAll(torch.autograd.Function):
    """Every rank gets the whole tensor (an all-gather of the blocks); each block's gradient is its slice of the
    (replicated) gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, grid: ProcessGrid) -> torch.Tensor:  # type: ignore[override]
        lead = tuple(x.shape[:2])
        ctx.grid = grid
        return _unpack(grid.comm.allgatherv(x, _block_counts(grid, lead)), grid, lead)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return g[(slice(None), slice(None)) + ctx.grid.local_slices], None


Scalar = Union[numbers.Number, torch.Tensor]


class GridTensor:
    """A distributed field: ``local`` is this rank's block ``(batch, channels, *local_spatial)`` of ``grid``."""

    __slots__ = ("local", "grid")

    def __init__(self, local: torch.Tensor, grid: ProcessGrid) -> None:
        if not isinstance(local, torch.Tensor):
            raise TypeError(f"local must be a torch.Tensor, but got {type(local).__name__}")
        if not isinstance(grid, ProcessGrid):
            raise TypeError(f"grid must be a ProcessGrid, but got {type(grid).__name__}")
        if local.dim() != 2 + grid.ndim or tuple(local.shape[2:]) != grid.local_shape:
            raise ValueError(
                f"local block must have shape (batch, channels, *{grid.local_shape}) on rank {grid.rank}, "
                f"but got {tuple(local.shape)}"
            )
        self.local = local
        self.grid = grid

    # ---- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_global(cls, tensor: torch.Tensor, grid: ProcessGrid) -> "GridTensor":
        """Take this rank's block of a whole tensor ``(batch, channels, *global_shape)`` present on every rank."""
        if tensor.dim() != 2 + grid.ndim or tuple(tensor.shape[2:]) != grid.global_shape:
            raise ValueError(
                f"tensor must have shape (batch, channels, *{grid.global_shape}) to match the grid, "
                f"but got {tuple(tensor.shape)}"
            )
        return cls(tensor[(slice(None), slice(None)) + grid.local_slices], grid)

    @classmethod
    def scatter(cls, tensor: Optional[torch.Tensor], grid: ProcessGrid, root: int = 0) -> "GridTensor":
        """Distribute a whole tensor held on ``root`` only (``None`` elsewhere): each rank receives its block
        (``scatterv``); the whole tensor exists on the root only. Not differentiable."""
        comm = grid.comm
        meta = None
        if comm.rank == root:
            if tensor is None or tuple(tensor.shape[2:]) != grid.global_shape or tensor.dim() != 2 + grid.ndim:
                got = None if tensor is None else tuple(tensor.shape)
                meta = ("error", f"scatter: root tensor must have shape (batch, channels, *{grid.global_shape}), got {got}")
            else:
                meta = ("ok", tuple(tensor.shape), tensor.dtype, str(tensor.device))
        meta = comm.bcast_object(meta, root=root)
        if meta[0] == "error":
            raise ValueError(meta[1])
        _, shape, dtype, device = meta
        lead = tuple(shape[:2])
        packed = _pack(tensor.detach(), grid) if comm.rank == root else None
        local = comm.scatterv(packed, _block_counts(grid, lead), root=root, dtype=dtype, device=torch.device(device))
        return cls(local.view(lead + grid.local_shape), grid)

    @classmethod
    def zeros(
        cls, grid: ProcessGrid, batch: int = 1, channels: int = 1, *, dtype: Optional[torch.dtype] = None,
        device: Union[str, torch.device, None] = None,
    ) -> "GridTensor":
        return cls(torch.zeros((batch, channels) + grid.local_shape, dtype=dtype, device=device), grid)

    # ---- metadata -------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """Global shape ``(batch, channels, *global_spatial)``."""
        return tuple(self.local.shape[:2]) + self.grid.global_shape

    @property
    def dtype(self) -> torch.dtype:
        return self.local.dtype

    @property
    def device(self) -> torch.device:
        return self.local.device

    @property
    def requires_grad(self) -> bool:
        return self.local.requires_grad

    def requires_grad_(self, flag: bool = True) -> "GridTensor":
        self.local.requires_grad_(flag)
        return self

    @property
    def grad(self) -> Optional["GridTensor"]:
        g = self.local.grad
        return None if g is None else GridTensor(g, self.grid)

    def numel(self) -> int:
        """Number of entries of the whole field."""
        n = 1
        for s in self.shape:
            n *= s
        return n

    # ---- communication --------------------------------------------------------------------------------------
    def halo(self, width: Union[int, Sequence] = 1, mode: str = "zeros") -> torch.Tensor:
        """This block padded by ``width`` cells: neighbours' data inside, ``mode`` padding at the boundary."""
        return _halo(self.local, self.grid, width, mode)

    def _check_same(self, other: "GridTensor", what: str) -> None:
        if not isinstance(other, GridTensor):
            raise TypeError(f"{what} needs a GridTensor, but got {type(other).__name__}")
        if other.grid != self.grid:
            raise ValueError(f"{what}: mismatched grids {self.grid!r} and {other.grid!r}")

    def _reduce(self, local: torch.Tensor, keep_batch: bool) -> torch.Tensor:
        part = local.reshape(local.shape[0], -1).sum(1) if keep_batch else local.sum()
        return _AllReduceSum.apply(part, self.grid.comm)

    def dot(self, other: "GridTensor", keep_batch: bool = False) -> torch.Tensor:
        """Global inner product (over channels and space, and batch unless ``keep_batch``)."""
        self._check_same(other, "dot")
        return self._reduce(self.local * other.local, keep_batch)

    def sum(self, keep_batch: bool = False) -> torch.Tensor:
        return self._reduce(self.local, keep_batch)

    def norm(self, keep_batch: bool = False) -> torch.Tensor:
        """Global Euclidean norm."""
        return torch.sqrt(self._reduce(self.local * self.local, keep_batch))

    def max_abs(self) -> torch.Tensor:
        """Global maximum of ``|x|`` (not differentiable)."""
        m = self.local.detach().abs().max() if self.local.numel() else self.local.new_zeros(())
        values = self.grid.comm.allgather_object(float(m))
        return torch.tensor(max(values), dtype=self.dtype)

    def gather(self, root: Optional[int] = None) -> Optional[torch.Tensor]:
        """The whole tensor: on every rank (``root=None``, an all-gather, differentiable) or on ``root`` only
        (``gatherv`` of the blocks: the whole tensor exists there only; None elsewhere; not differentiable)."""
        if root is None:
            return _GatherAll.apply(self.local, self.grid)
        if not 0 <= root < self.grid.size:
            raise ValueError(f"root must be a rank in [0, {self.grid.size}), but got {root}")
        lead = tuple(self.local.shape[:2])
        flat = self.grid.comm.gatherv(self.local.detach(), _block_counts(self.grid, lead), root=root)
        return None if flat is None else _unpack(flat, self.grid, lead)

    # ---- pointwise arithmetic -------------------------------------------------------------------------------
    def with_local(self, local: torch.Tensor) -> "GridTensor":
        """A GridTensor on the same grid with another local block (e.g. ``x.with_local(torch.relu(x.local))``)."""
        return GridTensor(local, self.grid)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "GridTensor":
        """Apply a pointwise function to the local block."""
        return GridTensor(fn(self.local), self.grid)

    def _operand(self, other: Any, what: str) -> Any:
        if isinstance(other, GridTensor):
            self._check_same(other, what)
            return other.local
        if isinstance(other, (numbers.Number, torch.Tensor)):
            return other
        return NotImplemented

    def _binary(self, other: Any, fn: Callable, what: str) -> Any:
        o = self._operand(other, what)
        if o is NotImplemented:
            return NotImplemented
        return GridTensor(fn(self.local, o), self.grid)

    def __add__(self, o): return self._binary(o, torch.add, "add")  # noqa: E704
    def __radd__(self, o): return self._binary(o, lambda a, b: b + a, "add")  # noqa: E704
    def __sub__(self, o): return self._binary(o, torch.sub, "sub")  # noqa: E704
    def __rsub__(self, o): return self._binary(o, lambda a, b: b - a, "sub")  # noqa: E704
    def __mul__(self, o): return self._binary(o, torch.mul, "mul")  # noqa: E704
    def __rmul__(self, o): return self._binary(o, lambda a, b: b * a, "mul")  # noqa: E704
    def __truediv__(self, o): return self._binary(o, torch.div, "div")  # noqa: E704
    def __rtruediv__(self, o): return self._binary(o, lambda a, b: b / a, "div")  # noqa: E704
    def __neg__(self): return GridTensor(-self.local, self.grid)  # noqa: E704

    def add_(self, other: Any, alpha: Scalar = 1) -> "GridTensor":
        """In-place ``self += alpha * other``."""
        o = self._operand(other, "add_")
        if isinstance(alpha, torch.Tensor):
            self.local.add_(o * alpha)
        else:
            self.local.add_(o, alpha=alpha)
        return self

    def mul_(self, other: Any) -> "GridTensor":
        self.local.mul_(self._operand(other, "mul_"))
        return self

    def copy_(self, other: "GridTensor") -> "GridTensor":
        self._check_same(other, "copy_")
        self.local.copy_(other.local)
        return self

    def zero_(self) -> "GridTensor":
        self.local.zero_()
        return self

    def clone(self) -> "GridTensor":
        return GridTensor(self.local.clone(), self.grid)

    def detach(self) -> "GridTensor":
        return GridTensor(self.local.detach(), self.grid)

    def zeros_like(self) -> "GridTensor":
        return GridTensor(torch.zeros_like(self.local), self.grid)

    def to(self, *args: Any, **kwargs: Any) -> "GridTensor":
        return GridTensor(self.local.to(*args, **kwargs), self.grid)

    def __repr__(self) -> str:
        return (
            f"GridTensor(shape={self.shape}, local_shape={tuple(self.local.shape)}, rank={self.grid.rank}/"
            f"{self.grid.size}, dtype={self.dtype}, device={self.device})"
        )



@functools.lru_cache(maxsize=64)
def serial_grid(shape: tuple[int, ...]) -> ProcessGrid:
    """The one-rank process grid over ``shape`` (cached): where a plain tensor lives when it becomes a GridTensor."""
    return ProcessGrid(SelfComm(), tuple(int(n) for n in shape))


Restore = Callable[[GridTensor], Any]


def _identity(y: GridTensor) -> GridTensor:
    return y


def as_grid_tensor(x: Union[torch.Tensor, GridTensor], spatial: Optional[Sequence[int]] = None
                   ) -> tuple[GridTensor, Restore]:
    """The one field type below ``operators``: ``x`` as a GridTensor, and the function that turns a result on the
    same grid back into ``x``'s kind and layout.

    A GridTensor is returned as it is (``restore`` is the identity). A plain tensor becomes a view on the one-rank
    grid :func:`serial_grid`: with ``spatial`` (a grid's shape, 1 to 3 axes) ``x`` is ``spatial``,
    ``(batch, *spatial)`` or ``(batch, channels, *spatial)``; without it every sample is flattened to one axis
    (``(n,)`` is one sample, ``(batch, ...)`` a batch), as matrices see vectors. Entry points call this once, so
    the code below them has one path whatever the rank count.
    """
    if isinstance(x, GridTensor):
        return x, _identity
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor or GridTensor, but got {type(x).__name__}")
    shape = tuple(x.shape)
    if spatial is None:
        if x.dim() == 0:
            raise ValueError("expected a vector or a batch of fields, but got a 0-dim tensor")
        lead, sp = ((1, 1), shape) if x.dim() == 1 else ((shape[0], 1), (math.prod(shape[1:]),))
    else:
        sp = tuple(int(n) for n in spatial)
        nd = len(sp)
        if shape[len(shape) - nd:] != sp or not nd <= len(shape) <= nd + 2:
            raise ValueError(f"field of shape {shape} must be {sp}, (batch, *{sp}) or (batch, channels, *{sp})")
        lead = ((1, 1), (shape[0], 1), shape[:2])[len(shape) - nd]
    g = GridTensor(x.reshape(tuple(lead) + tuple(sp)), serial_grid(sp))

    def restore(y: GridTensor) -> torch.Tensor:
        if y.local.shape[:2] != g.local.shape[:2]:  # another channel count (a network's output): as it is
            return y.local
        return y.local.reshape(shape)

    return g, restore
