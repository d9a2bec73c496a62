"""The :class:`Comm` interface every engine implements, and the abort-on-error hook.

Everything above the engines talks to a :class:`Comm` only: point-to-point exchange of tensors (``sendrecv``), a
sum all-reduce, variable-size collectives on flat tensors (``alltoall``, ``gatherv``, ``scatterv``,
``allgatherv``), object collectives for metadata, and ``abort``.
"""

from __future__ import annotations

import abc
import itertools
import sys
import traceback
from typing import Any, Optional, Sequence

import torch

__all__ = ["Comm", "install_abort_on_error"]


class Comm(abc.ABC):
    """A group of processes that exchange tensors.

    ``rank`` is this process's index in ``[0, size)``. Peers passed as ``None`` mean "nobody" (like
    ``MPI.PROC_NULL``): the matching send or receive is skipped.

    The variable-size collectives move flat runs of elements, like MPI's ``*v`` collectives with displacements
    equal to the prefix sums of the counts: a tensor's elements in memory order, ``counts[p]`` of them for rank
    ``p``, ranks in order. Counts are Python ints known on every rank that takes part; they are not exchanged.
    None of them is differentiable: autograd wrappers (e.g. :meth:`GridTensor.gather`) give each its adjoint.
    """

    rank: int
    size: int
    name: str = "comm"

    # ---- point to point and reductions ---------------------------------------------------------------------
    @abc.abstractmethod
    def sendrecv(
        self, send: Optional[torch.Tensor], dest: Optional[int], recv: Optional[torch.Tensor], source: Optional[int]
    ) -> None:
        """Send ``send`` to ``dest`` while receiving into ``recv`` from ``source``; both contiguous."""

    @abc.abstractmethod
    def allreduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks, in place; returns it."""

    # ---- variable-size collectives on flat tensors ---------------------------------------------------------
    @abc.abstractmethod
    def alltoall(
        self, send: torch.Tensor, send_counts: Sequence[int], recv_counts: Sequence[int],
        out: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Personalised all-to-all with per-peer sizes (``MPI_Alltoallv``; torch's ``all_to_all_single``).

        Args:
            send: this rank's outgoing elements, a tensor of ``sum(send_counts)`` elements read in memory order
                (made contiguous if it is not): the first ``send_counts[0]`` go to rank 0, the next
                ``send_counts[1]`` to rank 1, and so on.
            send_counts: ``size`` element counts, one per destination rank (zero allowed).
            recv_counts: ``size`` element counts, one per source rank; ``recv_counts[p]`` must equal rank ``p``'s
                ``send_counts[self.rank]``.
            out: optional contiguous tensor of ``sum(recv_counts)`` elements and ``send``'s dtype and device to
                receive into (any shape; e.g. reused across calls).

        Returns:
            ``out``, or a new 1-D tensor of ``sum(recv_counts)`` elements: rank 0's elements first, then rank 1's...

        Its adjoint is the same call with the two count lists swapped.
        """

    @abc.abstractmethod
    def gatherv(
        self, send: torch.Tensor, counts: Sequence[int], root: int = 0, out: Optional[torch.Tensor] = None
    ) -> Optional[torch.Tensor]:
        """Concatenate every rank's ``send`` (``counts[p]`` elements from rank ``p``) on ``root`` only.

        Returns ``out`` or a new 1-D tensor of ``sum(counts)`` elements on ``root`` (rank order), ``None`` elsewhere.
        ``out`` is read on ``root`` only. Its adjoint is :meth:`scatterv` with the same counts.
        """

    @abc.abstractmethod
    def scatterv(
        self, send: Optional[torch.Tensor], counts: Sequence[int], root: int = 0, out: Optional[torch.Tensor] = None,
        *, dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None,
    ) -> torch.Tensor:
        """Split ``send`` (``sum(counts)`` elements, held on ``root`` only, ``None`` elsewhere) and give rank ``p``
        its ``counts[p]`` elements. Off ``root`` the result is ``out``, or a new 1-D tensor of ``dtype`` on
        ``device`` (both required there when ``out`` is not given). Its adjoint is :meth:`gatherv`."""

    @abc.abstractmethod
    def allgatherv(self, send: torch.Tensor, counts: Sequence[int], out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Every rank gets the concatenation of every rank's ``send`` (``counts[p]`` elements from rank ``p``)."""

    # ---- metadata ------------------------------------------------------------------------------------------
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

    # ---- halo exchange -------------------------------------------------------------------------------------
    def exchange(self, messages: Sequence[tuple]) -> "RegionExchange":
        """The engine's executor for a fixed list of region messages ``(send_index, dest, recv_index, source)``
        within one buffer (see :class:`RegionExchange`); :meth:`ProcessGrid.exchange_plan` builds them."""
        return RegionExchange(self, messages)

    # ---- identity ------------------------------------------------------------------------------------------
    def identity(self) -> tuple:
        """Two communicators with equal identities connect the same processes in the same order."""
        return (self.name, self.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"

    # ---- argument checks shared by the engines -------------------------------------------------------------
    def _counts(self, counts: Sequence[int], what: str) -> list[int]:
        out = [int(c) for c in counts]
        if len(out) != self.size or any(c < 0 for c in out):
            raise ValueError(f"{what} must be {self.size} non-negative element counts (one per rank), but got {counts!r}")
        return out

    def _root(self, root: int) -> int:
        if not 0 <= int(root) < self.size:
            raise ValueError(f"root must be a rank in [0, {self.size}), but got {root}")
        return int(root)


def _flat(t: torch.Tensor, n: int, what: str) -> torch.Tensor:
    """``t``'s elements as a contiguous 1-D tensor, checked to hold ``n`` of them."""
    if t.numel() != n:
        raise ValueError(f"{what} has {t.numel()} elements, but the counts add up to {n}")
    return _unit_stride(t.reshape(-1) if t.is_contiguous() else t.contiguous().view(-1))


def _unit_stride(flat: torch.Tensor) -> torch.Tensor:
    """A contiguous 1-D tensor of at most one element may have any stride; give it stride 1 (same memory), so that
    it can be viewed in another dtype."""
    return flat.as_strided((flat.numel(),), (1,)) if flat.numel() <= 1 else flat


def _out(out: Optional[torch.Tensor], n: int, like: torch.Tensor, what: str = "out") -> torch.Tensor:
    """The 1-D receive buffer: ``out`` viewed flat (checked), or a new one like ``like``."""
    if out is None:
        return like.new_empty(n)
    if out.numel() != n or not out.is_contiguous() or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(
            f"{what} must be a contiguous {like.dtype} tensor on {like.device} with {n} elements, but got "
            f"{tuple(out.shape)} {out.dtype} on {out.device} (contiguous: {out.is_contiguous()})"
        )
    return _unit_stride(out.view(-1))


def _displs(counts: Sequence[int]) -> list[int]:
    return [0, *itertools.accumulate(counts)][:-1]


class RegionExchange:
    """Sends and receives regions of one buffer: for each message ``(send_index, dest, recv_index, source)``,
    ``buf[send_index]`` goes to ``dest`` while ``buf[recv_index]`` comes from ``source`` (``None``: nobody).

    ``run`` overwrites the received regions; ``adjoint_run`` is its adjoint: each received region goes back to its
    source and is added into the region it came from (messages in reverse order). This portable executor packs
    regions with ``sendrecv``; engines subclass it (MPI: datatypes and persistent requests).
    """

    def __init__(self, comm: Comm, messages: Sequence[tuple]) -> None:
        self.comm = comm
        self.messages = list(messages)

    def run(self, buf: torch.Tensor) -> None:
        self._move(buf, self.messages, add=False)

    def adjoint_run(self, buf: torch.Tensor) -> None:
        self._move(buf, [(r, src, s, dst) for s, dst, r, src in reversed(self.messages)], add=True)

    def _move(self, buf: torch.Tensor, messages: list, add: bool) -> None:
        rank = self.comm.rank
        for send_index, dest, recv_index, source in messages:
            if dest is None and source is None:
                continue
            send, recv = buf[send_index], buf[recv_index]
            if dest == rank and source == rank:
                recv.add_(send) if add else recv.copy_(send)
                continue
            sbuf = send.contiguous() if dest is not None else None
            rbuf = None
            if source is not None:
                rbuf = recv if (recv.is_contiguous() and not add) else torch.empty(recv.shape, dtype=recv.dtype, device=recv.device)
            self.comm.sendrecv(sbuf, dest, rbuf, source)
            if rbuf is not None and rbuf is not recv:
                recv.add_(rbuf) if add else recv.copy_(rbuf)

    def free(self) -> None:
        """Release engine resources early (they are released with the object otherwise)."""


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


def _write(message: str) -> None:
    if message:
        sys.stderr.write(message.rstrip() + "\n")
        sys.stderr.flush()
