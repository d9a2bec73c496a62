"""``MPIComm``: the mpi4py engine, with halo messages sent straight from the buffer (datatypes, persistent requests)."""

from __future__ import annotations

import math
import weakref
from typing import Any, Optional, Sequence

import torch

from .base import Comm, RegionExchange, _displs, _flat, _out, _write

__all__ = ["MPIComm"]

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

    @staticmethod
    def _sync(t: torch.Tensor) -> None:
        if t.is_cuda:
            torch.cuda.current_stream(t.device).synchronize()

    def sendrecv(self, send, dest, recv, source) -> None:
        MPI = self._MPI
        if send is not None:
            self._sync(send)
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

    def allreduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return tensor
        self._sync(tensor)
        staged = self._stage(tensor.contiguous())
        self.mpi_comm.Allreduce(self._MPI.IN_PLACE, _mpi_buffer(staged, self.cuda_aware), op=self._MPI.SUM)
        if staged is not tensor:
            tensor.copy_(staged)
        return tensor

    # ---- variable-size collectives ---------------------------------------------------------------------------
    def _spec(self, flat: torch.Tensor, counts: Optional[Sequence[int]] = None) -> list:
        """``[buffer, (counts, displacements), datatype]`` for a flat (staged) tensor; dtypes MPI has no name for
        travel as bytes."""
        typ = _MPI_TYPES.get(flat.dtype)
        scale = 1
        if typ is None:
            scale, flat = flat.element_size(), flat.view(torch.uint8)
            typ = self._MPI.BYTE
        else:
            typ = typ(self._MPI)
        buf = _mpi_buffer(flat, self.cuda_aware)
        if counts is None:
            return [buf, flat.numel(), typ]
        c = [n * scale for n in counts]
        return [buf, (c, _displs(c)), typ]

    def _finish(self, staged: torch.Tensor, dst: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
        if staged is not dst:
            dst.copy_(staged)
        return out if out is not None else dst

    def alltoall(self, send, send_counts, recv_counts, out=None) -> torch.Tensor:
        sc, rc = self._counts(send_counts, "send_counts"), self._counts(recv_counts, "recv_counts")
        src = _flat(send, sum(sc), "send")
        dst = _out(out, sum(rc), src)
        self._sync(src)
        staged = self._stage(dst)
        self.mpi_comm.Alltoallv(self._spec(self._stage(src), sc), self._spec(staged, rc))
        return self._finish(staged, dst, out)

    def gatherv(self, send, counts, root=0, out=None) -> Optional[torch.Tensor]:
        c, root = self._counts(counts, "counts"), self._root(root)
        src = _flat(send, c[self.rank], "send")
        self._sync(src)
        if self.rank != root:
            self.mpi_comm.Gatherv(self._spec(self._stage(src)), None, root=root)
            return None
        dst = _out(out, sum(c), src)
        staged = self._stage(dst)
        self.mpi_comm.Gatherv(self._spec(self._stage(src)), self._spec(staged, c), root=root)
        return self._finish(staged, dst, out)

    def scatterv(self, send, counts, root=0, out=None, *, dtype=None, device=None) -> torch.Tensor:
        c, root = self._counts(counts, "counts"), self._root(root)
        if self.rank == root:
            if send is None:
                raise ValueError(f"scatterv: the root (rank {root}) must pass the tensor to scatter, but got None")
            src = _flat(send, sum(c), "send")
            self._sync(src)
            like = src
        else:
            if out is None and dtype is None:
                raise ValueError("scatterv: ranks other than the root need `out` or `dtype` to receive into")
            like = out if out is not None else torch.empty(0, dtype=dtype, device=device)
        dst = _out(out, c[self.rank], like)
        staged = self._stage(dst)
        sendspec = self._spec(self._stage(src), c) if self.rank == root else None
        self.mpi_comm.Scatterv(sendspec, self._spec(staged), root=root)
        return self._finish(staged, dst, out)

    def allgatherv(self, send, counts, out=None) -> torch.Tensor:
        c = self._counts(counts, "counts")
        src = _flat(send, c[self.rank], "send")
        dst = _out(out, sum(c), src)
        self._sync(src)
        staged = self._stage(dst)
        self.mpi_comm.Allgatherv(self._spec(self._stage(src)), self._spec(staged, c))
        return self._finish(staged, dst, out)

    # ---- metadata ------------------------------------------------------------------------------------------
    def allgather_object(self, obj: Any) -> list:
        return self.mpi_comm.allgather(obj)

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.mpi_comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self.mpi_comm.Barrier()

    def abort(self, message: str = "", code: int = 1) -> None:
        _write(message)
        self.mpi_comm.Abort(code)

    def identity(self) -> tuple:
        return (self.name, self.size, self.mpi_comm.py2f())

    # ---- halo exchange -------------------------------------------------------------------------------------
    def exchange(self, messages: Sequence[tuple]) -> RegionExchange:
        return _MPIRegionExchange(self, messages)

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


class _MPIRegionExchange(RegionExchange):
    """Region messages sent straight from the buffer, with no packing copies in Python: contiguous regions as runs
    of the basic type, strided ones with cached MPI subarray datatypes.

    A buffer exchanged again (the same tensor, as in a solver loop that reuses its padded block) gets persistent
    requests bound to its memory: one ``Startall`` and one ``Waitall`` per call, the least Python per message.
    The adjoint (adding received regions) takes the portable path.
    """

    comm: MPIComm

    def __init__(self, comm: MPIComm, messages: Sequence[tuple]) -> None:
        super().__init__(comm, messages)
        self._prepared: dict = {}
        self._bound: Optional[_PersistentExchange] = None
        self._seen: Optional[tuple] = None

    def _prepare(self, shape: tuple, dtype: torch.dtype) -> list:
        prepared = self._prepared.get((shape, dtype))
        if prepared is None:
            comm, MPI = self.comm, self.comm._MPI
            prepared = []
            for tag, (send_index, dest, recv_index, source) in enumerate(self.messages):
                if dest is None and source is None:
                    continue
                if dest == comm.rank and source == comm.rank:
                    prepared.append((None, send_index, None, recv_index, tag))
                    continue
                st = comm._region(shape, dtype, send_index) if dest is not None else None
                rt = comm._region(shape, dtype, recv_index) if source is not None else None
                prepared.append((st, MPI.PROC_NULL if dest is None else dest, rt,
                                 MPI.PROC_NULL if source is None else source, tag))
            self._prepared[(shape, dtype)] = prepared
        return prepared

    def run(self, buf: torch.Tensor) -> None:
        comm = self.comm
        if buf.dtype not in _MPI_TYPES or not buf.is_contiguous() or (buf.is_cuda and not comm.cuda_aware):
            return super().run(buf)
        bound = self._bound
        if bound is not None and bound.ref() is buf and bound.ptr == buf.data_ptr():
            bound.run(buf)
            return
        prepared = self._prepare(tuple(buf.shape), buf.dtype)
        if buf.is_cuda:
            torch.cuda.current_stream(buf.device).synchronize()
        else:
            seen = self._seen
            if seen is not None and seen[0]() is buf and seen[1] == buf.data_ptr():
                self.free()
                self._bound = _PersistentExchange(comm, buf, prepared)
                self._bound.run(buf)
                return
            self._seen = (weakref.ref(buf), buf.data_ptr())
        flat = _mpi_buffer(buf.view(-1), comm.cuda_aware)
        empty = [None, 0, comm._MPI.BYTE]
        sendrecv = comm.mpi_comm.Sendrecv
        for st, dest, rt, source, tag in prepared:  # tags as in _PersistentExchange: the two paths interoperate
            if st is None and rt is None:  # both neighbours are this rank
                buf[source].copy_(buf[dest])
                continue
            sendrecv([flat[st[0]:], st[1], st[2]] if st is not None else empty, dest, tag,
                     [flat[rt[0]:], rt[1], rt[2]] if rt is not None else empty, source, tag)

    def free(self) -> None:
        bound, self._bound = self._bound, None
        if bound is not None:
            bound.free()


class _PersistentExchange:
    """Persistent MPI requests for one buffer's messages (``MPI_Send_init``/``MPI_Recv_init``).

    The requests address the buffer's memory directly and hold only a weak reference to the tensor, so they never
    keep it alive; the owner checks ``ref() is buf`` and ``ptr`` before every ``run``. Each message gets its index
    as tag: with both neighbours on one rank (two ranks, periodic) the two directions stay apart.
    """

    __slots__ = ("ref", "ptr", "reqs", "local", "_MPI", "__weakref__")

    def __init__(self, comm: MPIComm, buf: torch.Tensor, prepared: list) -> None:
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
