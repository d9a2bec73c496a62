"""``SelfComm``: the one-process communicator; exchanges are local copies, reductions the identity."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from .base import Comm, _flat, _out, _write

__all__ = ["SelfComm"]


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

    def _copy(self, send: torch.Tensor, counts: Sequence[int], out: Optional[torch.Tensor], what: str) -> torch.Tensor:
        (n,) = self._counts(counts, what)
        src = _flat(send, n, "send")
        dst = _out(out, n, src)
        if dst.data_ptr() != src.data_ptr():  # out may be send itself: nothing to move
            dst.copy_(src)
        return out if out is not None else dst

    def alltoall(self, send, send_counts, recv_counts, out=None) -> torch.Tensor:
        if self._counts(send_counts, "send_counts") != self._counts(recv_counts, "recv_counts"):
            raise ValueError(f"alltoall on one rank must receive what it sends, but got send_counts={send_counts!r}, "
                             f"recv_counts={recv_counts!r}")
        return self._copy(send, send_counts, out, "send_counts")

    def gatherv(self, send, counts, root=0, out=None) -> Optional[torch.Tensor]:
        self._root(root)
        return self._copy(send, counts, out, "counts")

    def scatterv(self, send, counts, root=0, out=None, *, dtype=None, device=None) -> torch.Tensor:
        self._root(root)
        if send is None:
            raise ValueError("scatterv: the root (this rank) must pass the tensor to scatter, but got None")
        return self._copy(send, counts, out, "counts")

    def allgatherv(self, send, counts, out=None) -> torch.Tensor:
        return self._copy(send, counts, out, "counts")

    def allgather_object(self, obj: Any) -> list:
        return [obj]

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        return obj

    def barrier(self) -> None:
        return None

    def abort(self, message: str = "", code: int = 1) -> None:
        _write(message)
        raise SystemExit(code)
