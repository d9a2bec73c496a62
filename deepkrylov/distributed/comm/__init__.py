"""Communicators: one small interface (:class:`Comm`, in ``base``) over three engines, one module each:
``local`` (:class:`SelfComm`, one process), ``mpi`` (:class:`MPIComm`, mpi4py) and ``torch_dist``
(:class:`TorchComm`, torch.distributed). The rest of the package talks to a :class:`Comm` only, so the engines
are interchangeable.
"""

from .base import Comm, RegionExchange, install_abort_on_error
from .local import SelfComm
from .mpi import MPIComm, _mpi_is_cuda_aware
from .torch_dist import TorchComm

__all__ = ["Comm", "SelfComm", "MPIComm", "TorchComm", "RegionExchange", "install_abort_on_error"]
