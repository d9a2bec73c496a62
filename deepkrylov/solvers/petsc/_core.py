"""What every part of the PETSc bridge shares (private): importing petsc4py lazily, communicators, the PETSc
library for the few C calls petsc4py does not wrap, destroying PETSc objects before PETSc finalizes, and
reporting a plugin's Python error to a C host."""

from __future__ import annotations

import atexit
import weakref
from typing import Any, Callable

import numpy as np
import torch

from deepkrylov.distributed import ProcessGrid

_INSTALL_HINT = (
    "petsc4py is not installed: deepkrylov's PETSc interop needs it. Install it with "
    "`pip install deepkrylov[petsc]` (petsc4py 3.18, against the system PETSc; PETSC_DIR="
    "/usr/lib/petscdir/petsc3.18/x86_64-linux-gnu-real) or run scripts/setup.sh"
)


def petsc_available() -> bool:
    try:
        import_petsc()
    except ImportError:
        return False
    return True


def import_petsc() -> Any:
    """``petsc4py.PETSc``, or ImportError saying how to install it."""
    try:
        from petsc4py import PETSc
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return PETSc


def petsc_comm(grid: ProcessGrid) -> Any:
    """The PETSc communicator matching ``grid``'s ranks."""
    PETSc = import_petsc()
    comm = grid.comm
    mpi_comm = getattr(comm, "mpi_comm", None)
    if mpi_comm is not None:
        return PETSc.Comm(mpi_comm)
    if comm.size == 1:
        return PETSc.COMM_SELF
    if PETSc.COMM_WORLD.getSize() != comm.size:
        raise ValueError(f"grid has {comm.size} ranks but PETSc.COMM_WORLD has {PETSc.COMM_WORLD.getSize()}")
    return PETSc.COMM_WORLD


def _libpetsc_path() -> str:
    import os

    import petsc4py

    cfg = petsc4py.get_config()
    base = os.path.join(cfg.get("PETSC_DIR", ""), cfg.get("PETSC_ARCH", "") or "", "lib")
    for name in ("libpetsc_real.so", "libpetsc.so", "libpetsc_real.so.3.18"):
        path = os.path.join(base, name)
        if os.path.exists(path):
            return path
    return "libpetsc.so"


def _sizes(grid: ProcessGrid) -> tuple[int, int]:
    return int(np.prod(grid.local_shape)), int(np.prod(grid.global_shape))


def _zero_copy_ok(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == torch.float64 and t.is_contiguous() and not t.requires_grad


_live_shells: dict = {}
_atexit_registered = False


def _destroy_live_shells() -> None:
    """Destroy shell Mats still alive at exit, while Python can still run their contexts (PETSc finalizes
    after the interpreter and would otherwise call into a dead interpreter)."""
    for ref in list(_live_shells.values()):
        mat = ref()
        if mat is None:
            continue
        try:
            mat.destroy()
        except Exception:  # pragma: no cover - best effort at shutdown
            pass


def _track_petsc_object(obj: Any) -> None:
    """Destroy ``obj`` (a PETSc Mat, PC, Vec) at exit if it is still alive then: before PETSc is finalized."""
    global _atexit_registered
    key = id(obj)
    _live_shells[key] = weakref.ref(obj, lambda _r, key=key: _live_shells.pop(key, None))
    if not _atexit_registered:
        atexit.register(_destroy_live_shells)
        _atexit_registered = True


_PETSC_ERR_ARG_WRONG = 62  # petscerror.h; stable across PETSc versions
_PETSC_ERROR_INITIAL = 0   # PetscErrorType


def _report_to_petsc(where: str, err: BaseException) -> None:
    """Put ``err``'s message on PETSc's error trace (``PetscError``), so that a C program that runs a plugin prints
    it in its ``PETSC ERROR`` report: petsc4py hands PETSc only the code of a Python exception, and an embedded
    Python's traceback is never printed. Under a Python host, petsc4py's handler records it silently and the
    exception itself propagates."""
    import ctypes

    try:
        from mpi4py import MPI

        lib = ctypes.CDLL(_libpetsc_path(), mode=ctypes.RTLD_GLOBAL)
        handle = MPI._handleof(MPI.COMM_SELF)
        comm = ctypes.c_void_p(handle) if MPI._sizeof(MPI.Comm) == ctypes.sizeof(ctypes.c_void_p) else ctypes.c_int(handle)
        msg = f"{type(err).__name__}: {err}".encode(errors="replace")
        lib.PetscError(comm, ctypes.c_int(0), where.encode(), b"deepkrylov/solvers/petsc/plugins.py",
                       ctypes.c_int(_PETSC_ERR_ARG_WRONG), ctypes.c_int(_PETSC_ERROR_INITIAL), b"%s", msg)
    except Exception:  # noqa: BLE001 - reporting is best effort; the exception itself still goes to PETSc
        pass


def _reports_errors(method: Callable) -> Callable:
    """Decorate a plugin method (``setUp``, ``solve``, ``apply``) so that an exception is reported to PETSc with its
    message (see :func:`_report_to_petsc`) before PETSc gets the error code."""
    import functools

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any) -> Any:
        try:
            return method(self, *args)
        except Exception as err:
            _report_to_petsc(f"deepkrylov.solvers.petsc.{type(self).__name__}.{method.__name__}", err)
            raise

    return wrapper

