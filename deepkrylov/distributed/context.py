"""``init()``: find out how this process was launched and build the matching communicator.

Launchers are recognised from their environment: OpenMPI (``OMPI_COMM_WORLD_*``), MPICH/Hydra and Slurm's PMI
(``PMI_RANK``/``PMI_SIZE``, ``MPI_LOCALRANKID``), and torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from typing import Optional

import torch

from .comm import Comm, MPIComm, SelfComm, TorchComm, install_abort_on_error

__all__ = ["Context", "init", "launch_environment"]

_BACKENDS = ("auto", "mpi", "torch", "gloo", "nccl", "self")
log = logging.getLogger("deepkrylov.distributed")


@dataclasses.dataclass(frozen=True)
class LaunchEnvironment:
    """What the launcher told this process: its world rank and size, its rank on this node, who launched it."""

    launcher: str  # "openmpi" | "mpich" | "torchrun" | "none"
    rank: int
    size: int
    local_rank: int


def launch_environment() -> LaunchEnvironment:
    """Read the launcher's variables; a plain ``python`` run is rank 0 of 1."""
    env = os.environ
    if "OMPI_COMM_WORLD_SIZE" in env:
        return LaunchEnvironment(
            "openmpi",
            int(env["OMPI_COMM_WORLD_RANK"]),
            int(env["OMPI_COMM_WORLD_SIZE"]),
            int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", 0)),
        )
    if "PMI_SIZE" in env and "PMI_RANK" in env:
        return LaunchEnvironment(
            "mpich", int(env["PMI_RANK"]), int(env["PMI_SIZE"]), int(env.get("MPI_LOCALRANKID", 0))
        )
    if "TORCHELASTIC_RUN_ID" in env or ("WORLD_SIZE" in env and "RANK" in env):
        return LaunchEnvironment(
            "torchrun", int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
        )
    return LaunchEnvironment("none", 0, 1, 0)


@dataclasses.dataclass
class Context:
    """The result of :func:`init`: the communicator and where this rank computes."""

    comm: Comm
    local_rank: int
    device: torch.device
    launcher: str

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def size(self) -> int:
        return self.comm.size

    @property
    def is_root(self) -> bool:
        return self.comm.rank == 0

    def init_torch_distributed(self) -> None:
        """Make sure torch.distributed's default group exists (for DDP); no-op on one process."""
        if self.size > 1:
            _init_torch_process_group(self._torch_backend(), self.rank, self.size, self.launcher)

    def close_torch_distributed(self) -> None:
        """Barrier, then destroy torch.distributed's default group so its worker threads are joined before the
        interpreter exits (a gloo thread that drops a tensor during finalisation aborts the process). Drop DDP
        modules first: they hold the group. No-op when no group exists."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            import gc

            torch.distributed.barrier()
            gc.collect()
            torch.distributed.destroy_process_group()
            gc.collect()

    def _torch_backend(self) -> str:
        if isinstance(self.comm, TorchComm):
            return self.comm.backend
        return "nccl" if self.device.type == "cuda" else "gloo"


def _device_for(local_rank: int, want_cuda: Optional[bool] = None) -> torch.device:
    use_cuda = torch.cuda.is_available() if want_cuda is None else want_cuda
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("backend 'nccl' needs CUDA, but torch.cuda.is_available() is False")
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
        return dev
    return torch.device("cpu")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _init_torch_process_group(backend: str, rank: int, size: int, launcher: str) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if launcher == "torchrun":
        dist.init_process_group(backend=backend)
        return
    # Under mpiexec: rank 0 picks the rendezvous address and port and broadcasts it over MPI.
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    addr = os.environ.get("MASTER_ADDR")
    port = os.environ.get("MASTER_PORT")
    local = _all_local(world)  # collective: every rank calls it
    if world.Get_rank() == 0:
        if not addr:
            addr = "127.0.0.1" if local else socket.gethostbyname(socket.gethostname())
        port = port or str(_free_port())
    addr, port = world.bcast((addr, port), root=0)
    dist.init_process_group(backend=backend, init_method=f"tcp://{addr}:{port}", rank=rank, world_size=size)


def _all_local(world) -> bool:  # type: ignore[no-untyped-def]
    names = world.allgather(socket.gethostname())
    return len(set(names)) == 1


def init(backend: str = "auto", abort_on_error: bool = True) -> Context:
    """Set up the communicator for however this process was started.

    Args:
        backend: ``auto`` (one process: :class:`SelfComm`; ``torchrun``: torch.distributed; ``mpiexec``: MPI
            through mpi4py on CPU, torch.distributed with NCCL when CUDA is available), or one of ``mpi``,
            ``torch`` (gloo on CPU, NCCL on CUDA), ``gloo``, ``nccl``, ``self``.
        abort_on_error: under several ranks, an uncaught exception on any rank aborts the whole job with its
            traceback instead of leaving the other ranks waiting.

    Returns:
        A :class:`Context` with ``comm``, ``rank``, ``size``, ``local_rank`` and ``device``.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, but got {backend!r}")
    env = launch_environment()
    if backend == "auto":
        if env.size == 1:
            backend = "self"
        elif env.launcher == "torchrun":
            backend = "torch"
        else:
            backend = "nccl" if torch.cuda.is_available() else "mpi"
    if backend == "self":
        if env.size > 1:
            raise ValueError(f"backend 'self' is for one process, but the launcher started {env.size}")
        return Context(SelfComm(), 0, _device_for(0), env.launcher)
    if backend == "mpi":
        comm: Comm = MPIComm()
        ctx = Context(comm, env.local_rank, _device_for(env.local_rank), env.launcher)
    else:
        torch_backend = {"torch": "nccl" if torch.cuda.is_available() else "gloo"}.get(backend, backend)
        device = _device_for(env.local_rank, want_cuda=(torch_backend == "nccl"))
        _init_torch_process_group(torch_backend, env.rank, env.size, env.launcher)
        abort_comm = MPIComm() if env.launcher in ("openmpi", "mpich") else None
        comm = TorchComm(abort_comm=abort_comm)
        ctx = Context(comm, env.local_rank, device, env.launcher)
    if abort_on_error:
        install_abort_on_error(ctx.comm)
    log.debug("deepkrylov.distributed.init: %s rank %d/%d on %s", ctx.comm.name, ctx.rank, ctx.size, ctx.device)
    return ctx
