"""The ``deepkrylov`` command: ``info`` and the ``train`` parent here; ``datagen``, ``eval``, ``solve`` and the
models under ``train`` come from the subpackages: ``<subpackage>/_cli.py`` defines ``register(subparsers,
train_subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import sys
from typing import Any, Optional, Sequence

import deepkrylov

_SUBCOMMAND_MODULES = ("deepkrylov.operators._cli", "deepkrylov.solvers._cli")


def info_dict() -> dict[str, Any]:
    """Versions of deepkrylov and its engines, the devices seen, and this process's place in the job."""
    import numpy
    import torch

    from deepkrylov.distributed import launch_environment

    out: dict[str, Any] = {
        "deepkrylov": deepkrylov.__version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "devices": ["cpu"] + [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch.distributed": {
            "gloo": torch.distributed.is_available() and torch.distributed.is_gloo_available(),
            "nccl": torch.distributed.is_available() and torch.distributed.is_nccl_available(),
        },
    }
    try:
        import mpi4py
        from mpi4py import MPI

        out["mpi4py"] = mpi4py.__version__
        out["mpi"] = MPI.Get_library_version().strip().splitlines()[0]
    except ImportError as err:
        out["mpi4py"] = f"unavailable ({err})"
    try:
        import petsc4py
        from petsc4py import PETSc

        v = PETSc.Sys.getVersion()
        out["petsc4py"] = petsc4py.__version__
        out["petsc"] = ".".join(map(str, v))
    except ImportError as err:
        out["petsc4py"] = f"unavailable ({err}); install with scripts/setup.sh or pip install deepkrylov[petsc]"
    env = launch_environment()
    out["launcher"] = env.launcher
    out["rank"] = env.rank
    out["size"] = env.size
    out["local_rank"] = env.local_rank
    out["host"] = platform.node()
    return out


def _cmd_info(args: argparse.Namespace) -> int:
    info = info_dict()
    if info["size"] > 1:
        from deepkrylov.distributed import init

        ctx = init(backend="mpi" if info["launcher"] != "torchrun" else "torch")
        layout = ctx.comm.allgather_object(
            {"rank": ctx.rank, "local_rank": ctx.local_rank, "host": info["host"], "device": str(ctx.device)}
        )
        info["ranks"] = layout
        if not ctx.is_root:
            return 0
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "ranks":
            print("ranks:")
            for r in value:
                print(f"  rank {r['rank']}: host {r['host']}, local rank {r['local_rank']}, device {r['device']}")
        else:
            print(f"{key}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepkrylov", description="deepkrylov: distributed Krylov and DCDM solvers, PETSc interop, and neural operators."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (rank 0)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, MPI/PETSc/devices, and the rank layout under mpiexec")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)
    train = sub.add_parser("train", help="train a model: deepkrylov train <model> ...")
    train_sub = train.add_subparsers(dest="model", required=True, metavar="<model>")
    for name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.register(sub, train_sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
