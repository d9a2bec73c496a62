"""``TorchComm``: the torch.distributed engine (gloo on CPU, NCCL on CUDA) over the default process group."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import torch

from .base import Comm, RegionExchange, _displs, _flat, _out, _write

__all__ = ["TorchComm"]

# dtypes every torch.distributed backend moves as they are; complex travel as pairs of reals, the rest as bytes
_NATIVE = (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int8, torch.uint8)


def _wire(flat: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A flat tensor in a dtype the backend moves, and how many of its elements make one of ``flat``'s."""
    if flat.dtype in _NATIVE:
        return flat, 1
    if flat.is_complex():
        return torch.view_as_real(flat).view(-1), 2
    return flat.view(torch.uint8), flat.element_size()


class TorchComm(Comm):
    """torch.distributed communicator (gloo on CPU, NCCL on CUDA) over the default process group.

    ``alltoall`` is ``all_to_all_single`` with split sizes (gloo and NCCL both take uneven splits); ``gatherv`` and
    ``scatterv`` are batched point-to-point messages to and from the root (``dist.gather``/``scatter`` need equal
    sizes); ``allgatherv`` is ``all_gather`` of blocks padded to the largest.
    """

    name = "torch"

    def __init__(self, abort_comm: Optional[Comm] = None) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError(
                "TorchComm needs torch.distributed to be initialised; use deepkrylov.distributed.init(backend='torch')"
            )
        self._dist = dist
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        self.backend = dist.get_backend()
        self._abort_comm = abort_comm

    def _p2p(self, ops: list) -> None:
        if ops:
            for req in self._dist.batch_isend_irecv(ops):
                req.wait()

    def sendrecv(self, send, dest, recv, source) -> None:
        dist = self._dist
        ops = []
        if dest is not None:
            ops.append(dist.P2POp(dist.isend, send, dest))
        if source is not None:
            ops.append(dist.P2POp(dist.irecv, recv, source))
        self._p2p(ops)

    def allreduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            self._dist.all_reduce(tensor, op=self._dist.ReduceOp.SUM)
        return tensor

    # ---- variable-size collectives ---------------------------------------------------------------------------
    def alltoall(self, send, send_counts, recv_counts, out=None) -> torch.Tensor:
        sc, rc = self._counts(send_counts, "send_counts"), self._counts(recv_counts, "recv_counts")
        src = _flat(send, sum(sc), "send")
        dst = _out(out, sum(rc), src)
        (ws, k), (wr, _) = _wire(src), _wire(dst)
        self._dist.all_to_all_single(wr, ws, [c * k for c in rc], [c * k for c in sc])
        return out if out is not None else dst

    def _segments(self, flat: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
        wire, k = _wire(flat)
        return [wire[d * k:(d + c) * k] for d, c in zip(_displs(counts), counts)]

    def gatherv(self, send, counts, root=0, out=None) -> Optional[torch.Tensor]:
        c, root = self._counts(counts, "counts"), self._root(root)
        src = _flat(send, c[self.rank], "send")
        dist = self._dist
        if self.rank != root:
            self._p2p([dist.P2POp(dist.isend, _wire(src)[0], root)] if c[self.rank] else [])
            return None
        dst = _out(out, sum(c), src)
        parts = self._segments(dst, c)
        parts[root].copy_(_wire(src)[0])
        self._p2p([dist.P2POp(dist.irecv, parts[p], p) for p in range(self.size) if p != root and c[p]])
        return out if out is not None else dst

    def scatterv(self, send, counts, root=0, out=None, *, dtype=None, device=None) -> torch.Tensor:
        c, root = self._counts(counts, "counts"), self._root(root)
        dist = self._dist
        if self.rank != root:
            if out is None and dtype is None:
                raise ValueError("scatterv: ranks other than the root need `out` or `dtype` to receive into")
            like = out if out is not None else torch.empty(0, dtype=dtype, device=device)
            dst = _out(out, c[self.rank], like)
            self._p2p([dist.P2POp(dist.irecv, _wire(dst)[0], root)] if c[self.rank] else [])
            return out if out is not None else dst
        if send is None:
            raise ValueError(f"scatterv: the root (rank {root}) must pass the tensor to scatter, but got None")
        src = _flat(send, sum(c), "send")
        parts = self._segments(src, c)
        dst = _out(out, c[root], src)
        self._p2p([dist.P2POp(dist.isend, parts[p], p) for p in range(self.size) if p != root and c[p]])
        _wire(dst)[0].copy_(parts[root])
        return out if out is not None else dst

    def allgatherv(self, send, counts, out=None) -> torch.Tensor:
        c = self._counts(counts, "counts")
        src = _flat(send, c[self.rank], "send")
        dst = _out(out, sum(c), src)
        wsrc, k = _wire(src)
        width = max(c) * k
        padded = wsrc.new_empty(self.size * width)
        mine = wsrc if wsrc.numel() == width else torch.cat([wsrc, wsrc.new_zeros(width - wsrc.numel())])
        self._dist.all_gather(list(padded.view(self.size, width)), mine)
        for part, p in zip(self._segments(dst, c), range(self.size)):
            part.copy_(padded[p * width:p * width + part.numel()])
        return out if out is not None else dst

    # ---- halo exchange -------------------------------------------------------------------------------------
    def exchange(self, messages: Sequence[tuple]) -> RegionExchange:
        return _TorchRegionExchange(self, messages)

    # ---- metadata ------------------------------------------------------------------------------------------
    def allgather_object(self, obj: Any) -> list:
        out: list = [None] * self.size
        self._dist.all_gather_object(out, obj)
        return out

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        box = [obj]
        self._dist.broadcast_object_list(box, src=root)
        return box[0]

    def barrier(self) -> None:
        self._dist.barrier()

    def abort(self, message: str = "", code: int = 1) -> None:
        if self._abort_comm is not None:
            self._abort_comm.abort(message, code)
        _write(message)
        os._exit(code)  # torchrun's agent then stops the other workers


class _TorchRegionExchange(RegionExchange):
    """All messages of the list in one ``batch_isend_irecv`` (one wait instead of one per message), each tagged with
    its index so that two messages between the same pair of ranks (two ranks, periodic) stay apart. Contiguous
    regions are received in place; the rest through a staging buffer."""

    comm: TorchComm

    def _move(self, buf: torch.Tensor, messages: list, add: bool) -> None:
        comm = self.comm
        dist, ops, staged = comm._dist, [], []
        for tag, (send_index, dest, recv_index, source) in enumerate(messages):
            if dest is None and source is None:
                continue
            send, recv = buf[send_index], buf[recv_index]
            if dest == comm.rank and source == comm.rank:
                recv.add_(send) if add else recv.copy_(send)
                continue
            if dest is not None:
                ops.append(dist.P2POp(dist.isend, send.contiguous(), dest, tag=tag))
            if source is not None:
                rbuf = recv if (recv.is_contiguous() and not add) else torch.empty(recv.shape, dtype=recv.dtype, device=recv.device)
                ops.append(dist.P2POp(dist.irecv, rbuf, source, tag=tag))
                staged.append((recv, rbuf))
        comm._p2p(ops)
        for recv, rbuf in staged:
            if rbuf is not recv:
                recv.add_(rbuf) if add else recv.copy_(rbuf)
