"""Communicators: one small interface over mpi4py, torch.distributed, and a single process.

Everything above this module talks to a :class:`Comm` only: point-to-point exchange of tensors
(``sendrecv``), a sum all-reduce, object collectives for metadata, and ``abort``. That is all halo
exchange and global reductions need, and it keeps mpi4py and torch.distributed interchangeable.
"""

from __future__ import annotations

import abc
import math
import sys
import traceback
import weakref
from typing import Any, Optional

import torch

__all__ = ["Comm", "SelfComm", "MPIComm", "TorchComm"]


class Comm(abc.ABC):
    """A group of processes that exchange tensors.

    ``rank`` is this process's index in ``[0, size)``. Peers passed as ``None`` mean "nobody" (like
    ``MPI.PROC_NULL``): the matching send or receive is skipped.
    """

    rank: int
    size: int
    name: str = "comm"

    @abc.abstractmethod
    def sendrecv(
        self, send: Optional[torch.Tensor], dest: Optional[int], recv: Optional[torch.Tensor], source: Optional[int]
    ) -> None:
        """Send ``send`` to ``dest`` while receiving into ``recv`` from ``source``; both contiguous."""

    @abc.abstractmethod
    def allreduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks, in place; returns it."""

    @abc.abstractmethod
    def allgather_object(self, obj: Any) -> list:
        """The list of ``obj`` from every rank, in rank order."""

    @abc.abstractmethod
    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        """``obj`` from ``root`` on every rank."""

    @abc.abstractmethod
    def barrier(self) -> None:
        """Wait until every rank arrives."""

    @abc.abstractmethod
    def abort(self, message: str = "", code: int = 1) -> None:
        """End every process of the job at once, after writing ``message`` to stderr."""

    def exchange_regions(self, buf: torch.Tensor, messages: list, add: bool = False, cache: Optional[dict] = None) -> None:
        """For each ``(send_index, dest, recv_index, source)``: send ``buf[send_index]`` to ``dest`` while receiving
        ``buf[recv_index]`` from ``source`` (or adding into it, with ``add``). Regions are packed as needed.
        ``cache`` is a dict owned by the caller for the same ``messages``, where an engine may keep prepared state."""
        for send_index, dest, recv_index, source in messages:
            if dest is None and source is None:
                continue
            send, recv = buf[send_index], buf[recv_index]
            if dest == self.rank and source == self.rank:
                recv.add_(send) if add else recv.copy_(send)
                continue
            sbuf = send.contiguous() if dest is not None else None
            rbuf = None
            if source is not None:
                rbuf = recv if (recv.is_contiguous() and not add) else torch.empty(recv.shape, dtype=recv.dtype, device=recv.device)
            self.sendrecv(sbuf, dest, rbuf, source)
            if rbuf is not None and rbuf is not recv:
                recv.add_(rbuf) if add else recv.copy_(rbuf)

    def identity(self) -> tuple:
        """Two communicators with equal identities connect the same processes in the same order."""
        return (self.name, self.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class SelfComm(Comm):
    """The one-process communicator: exchanges are local copies, reductions are the identity."""

    name = "self"

    def __init__(self) -> None:
        self.rank = 0
        self.size = 1

    def sendrecv(self, send, dest, recv, source) -> None:
        if (dest is None) != (source is None):
            raise RuntimeError("SelfComm.sendrecv: a send without a matching receive would never complete")
        if dest is not None:
            if dest != 0 or source != 0:
                raise ValueError(f"SelfComm has only rank 0, got dest={dest}, source={source}")
            recv.copy_(send)

    def allreduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def allgather_object(self, obj: Any) -> list:
        return [obj]

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        return obj

    def barrier(self) -> None:
        return None

    def abort(self, message: str = "", code: int = 1) -> None:
        if message:
            sys.stderr.write(message.rstrip() + "\n")
            sys.stderr.flush()
        raise SystemExit(code)


_MPI_TYPES = {
    torch.float64: lambda MPI: MPI.DOUBLE,
    torch.float32: lambda MPI: MPI.FLOAT,
    torch.complex128: lambda MPI: MPI.C_DOUBLE_COMPLEX,
    torch.complex64: lambda MPI: MPI.C_FLOAT_COMPLEX,
    torch.int64: lambda MPI: MPI.INT64_T,
    torch.int32: lambda MPI: MPI.INT32_T,
}


def _mpi_buffer(t: torch.Tensor, cuda_aware: bool) -> Any:
    """A buffer mpi4py can use without a copy: a NumPy view on CPU, the tensor itself on CUDA-aware MPI."""
    if t.device.type == "cpu":
        return t.numpy()
    if cuda_aware:
        return t  # mpi4py reads __cuda_array_interface__
    raise RuntimeError("MPIComm got a device tensor but the MPI library is not CUDA-aware")


class _PersistentExchange:
    """Persistent MPI requests for one buffer's messages (``MPI_Send_init``/``MPI_Recv_init``).

    The requests address the buffer's memory directly and hold only a weak reference to the tensor, so they never
    keep it alive; the owner checks ``ref() is buf`` and ``ptr`` before every ``run``. Each message gets its index
    as tag: with both neighbours on one rank (two ranks, periodic) the two directions stay apart.
    """

    __slots__ = ("ref", "ptr", "reqs", "local", "_MPI", "__weakref__")

    def __init__(self, comm: "MPIComm", buf: torch.Tensor, prepared: list) -> None:
        MPI = comm._MPI
        self._MPI = MPI
        self.ref = weakref.ref(buf, self._on_free)
        self.ptr = buf.data_ptr()
        itemsize, nbytes = buf.element_size(), buf.numel() * buf.element_size()
        self.reqs, self.local = [], []

        def spec(region: tuple) -> list:
            off, count, dtype = region
            return [MPI.buffer.fromaddress(self.ptr + off * itemsize, nbytes - off * itemsize), count, dtype]

        for st, dest, rt, source, tag in prepared:
            if st is None and rt is None:
                self.local.append((dest, source))
                continue
            if rt is not None and source != MPI.PROC_NULL:
                self.reqs.append(comm.mpi_comm.Recv_init(spec(rt), source, tag))
            if st is not None and dest != MPI.PROC_NULL:
                self.reqs.append(comm.mpi_comm.Send_init(spec(st), dest, tag))

    def run(self, buf: torch.Tensor) -> None:
        if self.reqs:
            self._MPI.Prequest.Startall(self.reqs)
            self._MPI.Request.Waitall(self.reqs)
        for send_index, recv_index in self.local:
            buf[recv_index].copy_(buf[send_index])

    def _on_free(self, _ref: Any) -> None:
        self.free()

    def free(self) -> None:
        reqs, self.reqs = self.reqs, []
        if self._MPI.Is_finalized():
            return
        for r in reqs:
            if r:
                r.Free()


class MPIComm(Comm):
    """mpi4py communicator. Device tensors are staged through host memory unless MPI is CUDA-aware."""

    name = "mpi"

    def __init__(self, mpi_comm: Any = None) -> None:
        from mpi4py import MPI

        self._MPI = MPI
        self.mpi_comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank = self.mpi_comm.Get_rank()
        self.size = self.mpi_comm.Get_size()
        self.cuda_aware = _mpi_is_cuda_aware()
        self._types: dict = {}

    def _stage(self, t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if t is None or t.device.type == "cpu" or self.cuda_aware:
            return t
        return t.cpu()

    def sendrecv(self, send, dest, recv, source) -> None:
        MPI = self._MPI
        if send is not None and send.is_cuda:
            torch.cuda.current_stream(send.device).synchronize()
        s = self._stage(send) if dest is not None else None
        r = self._stage(recv) if source is not None else None
        sbuf = _mpi_buffer(s, self.cuda_aware) if s is not None else None
        rbuf = _mpi_buffer(r, self.cuda_aware) if r is not None else None
        self.mpi_comm.Sendrecv(
            sbuf if sbuf is not None else [None, 0, MPI.BYTE],
            dest if dest is not None else MPI.PROC_NULL,
            0,
            rbuf if rbuf is not None else [None, 0, MPI.BYTE],
            source if source is not None else MPI.PROC_NULL,
            0,
        )
        if r is not None and r is not recv:
            recv.copy_(r)

    def identity(self) -> tuple:
        return (self.name, self.size, self.mpi_comm.py2f())

    def _region(self, shape: tuple, dtype: torch.dtype, index: tuple) -> tuple:
        """``(offset, count, datatype)`` addressing ``index`` of a C-contiguous array of ``shape``: a run of the
        basic type where the region is contiguous (sent straight from memory), else a cached subarray type."""
        bounds = [sl.indices(n)[:2] for n, sl in zip(shape, index)]
        sizes = [b - a for a, b in bounds]
        # contiguous iff, after the first axis with more than one index, every axis spans its full extent
        first = next((i for i, n in enumerate(sizes) if n > 1), len(sizes))
        if all(sizes[i] == shape[i] for i in range(first + 1, len(shape))):
            offset = sum(a * math.prod(shape[i + 1:]) for i, (a, _) in enumerate(bounds))
            return offset, math.prod(sizes), _MPI_TYPES[dtype](self._MPI)
        key = (shape, dtype, tuple(bounds))
        t = self._types.get(key)
        if t is None:
            t = _MPI_TYPES[dtype](self._MPI).Create_subarray(list(shape), sizes, [a for a, _ in bounds]).Commit()
            self._types[key] = t
        return 0, 1, t

    def exchange_regions(self, buf: torch.Tensor, messages: list, add: bool = False, cache: Optional[dict] = None) -> None:
        """Send regions straight from the buffer (no packing copies in Python): contiguous regions as runs of the
        basic type, strided ones with cached MPI subarray datatypes.

        A buffer exchanged again (the same tensor, as in a solver loop that reuses its padded block) gets persistent
        requests bound to its memory: one ``Startall`` and one ``Waitall`` per call, the least Python per message.
        """
        if add or buf.dtype not in _MPI_TYPES or not buf.is_contiguous() or (buf.is_cuda and not self.cuda_aware):
            return super().exchange_regions(buf, messages, add)
        if cache is not None and not buf.is_cuda:
            bound = cache.get("mpi-persistent")
            if bound is not None and bound.ref() is buf and bound.ptr == buf.data_ptr():
                bound.run(buf)
                return
        shape = tuple(buf.shape)
        key = ("mpi-subarray", shape, buf.dtype)
        prepared = cache.get(key) if cache is not None else None
        if prepared is None:
            MPI = self._MPI
            prepared = []
            for tag, (send_index, dest, recv_index, source) in enumerate(messages):
                if dest is None and source is None:
                    continue
                if dest == self.rank and source == self.rank:
                    prepared.append((None, send_index, None, recv_index, tag))
                    continue
                st = self._region(shape, buf.dtype, send_index) if dest is not None else None
                rt = self._region(shape, buf.dtype, recv_index) if source is not None else None
                prepared.append((st, MPI.PROC_NULL if dest is None else dest, rt,
                                 MPI.PROC_NULL if source is None else source, tag))
            if cache is not None:
                cache[key] = prepared
        if buf.is_cuda:
            torch.cuda.current_stream(buf.device).synchronize()
        elif cache is not None:
            seen = cache.get("mpi-seen")
            if seen is not None and seen[0]() is buf and seen[1] == buf.data_ptr():
                old = cache.pop("mpi-persistent", None)
                if old is not None:
                    old.free()
                bound = _PersistentExchange(self, buf, prepared)
                cache["mpi-persistent"] = bound
                bound.run(buf)
                return
            cache["mpi-seen"] = (weakref.ref(buf), buf.data_ptr())
        flat = _mpi_buffer(buf.view(-1), self.cuda_aware)
        empty = [None, 0, self._MPI.BYTE]
        sendrecv = self.mpi_comm.Sendrecv
        for st, dest, rt, source, tag in prepared:  # tags as in _PersistentExchange: the two paths interoperate
            if st is None and rt is None:  # both neighbours are this rank
                buf[source].copy_(buf[dest])
                continue
            sendrecv([flat[st[0]:], st[1], st[2]] if st is not None else empty, dest, tag,
                     [flat[rt[0]:], rt[1], rt[2]] if rt is not None else empty, source, tag)

    def allreduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return tensor
        if tensor.is_cuda:
            torch.cuda.current_stream(tensor.device).synchronize()
        staged = self._stage(tensor.contiguous())
        self.mpi_comm.Allreduce(self._MPI.IN_PLACE, _mpi_buffer(staged, self.cuda_aware), op=self._MPI.SUM)
        if staged is not tensor:
            tensor.copy_(staged)
        return tensor

    def allgather_object(self, obj: Any) -> list:
        return self.mpi_comm.allgather(obj)

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.mpi_comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self.mpi_comm.Barrier()

    def abort(self, message: str = "", code: int = 1) -> None:
        if message:
            sys.stderr.write(message.rstrip() + "\n")
            sys.stderr.flush()
        self.mpi_comm.Abort(code)


class TorchComm(Comm):
    """torch.distributed communicator (gloo on CPU, NCCL on CUDA) over the default process group."""

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

    def sendrecv(self, send, dest, recv, source) -> None:
        dist = self._dist
        ops = []
        if dest is not None:
            ops.append(dist.P2POp(dist.isend, send, dest))
        if source is not None:
            ops.append(dist.P2POp(dist.irecv, recv, source))
        if ops:
            for req in dist.batch_isend_irecv(ops):
                req.wait()

    def allreduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            self._dist.all_reduce(tensor, op=self._dist.ReduceOp.SUM)
        return tensor

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
        if message:
            sys.stderr.write(message.rstrip() + "\n")
            sys.stderr.flush()
        import os

        os._exit(code)  # torchrun's agent then stops the other workers


def _mpi_is_cuda_aware() -> bool:
    try:
        from mpi4py import MPI

        vendor = MPI.get_vendor()[0]
        if vendor == "Open MPI":
            import ctypes

            lib = ctypes.CDLL(None)
            fn = getattr(lib, "MPIX_Query_cuda_support", None)
            return bool(fn()) if fn is not None else False
    except Exception:  # noqa: BLE001 - any failure to query means "assume not"
        return False
    return False


def install_abort_on_error(comm: Comm) -> None:
    """Make an uncaught exception on any rank end the whole job with its traceback (no rank waits forever)."""
    if comm.size <= 1:
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):  # type: ignore[no-untyped-def]
        if issubclass(exc_type, KeyboardInterrupt):
            previous(exc_type, exc, tb)
            return
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        comm.abort(f"[deepkrylov] rank {comm.rank}/{comm.size} failed; aborting the job:\n{text}", 1)

    sys.excepthook = hook
