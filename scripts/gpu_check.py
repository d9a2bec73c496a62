"""CUDA and NCCL checks for a machine with a GPU (``scripts/gpu_check.sh`` runs this; CI has no GPU).

Each check runs the same computation on the GPU and on the CPU and compares them (float64), then times the GPU
path. Results go to ``benchmarks/results/gpu_check.json`` (``--out``), one record per check, so a session that is
lent a GPU records the figures in one call.

Modes:

- ``python scripts/gpu_check.py``: one process: HaloConv3d, the diffusion stencil, CG (plain and Jacobi), MgNO and
  FNO forward/backward on CUDA against CPU, and timings (CG time per iteration at 64^3-256^3, HaloConv3d
  throughput).
- ``torchrun --nproc-per-node N scripts/gpu_check.py --nccl``: the torch.distributed engine with NCCL on CUDA
  tensors: halo exchange, all-reduce and a HaloConv3d forward/backward on GridTensor blocks equal the serial
  result; halo-exchange time per call.
- ``--device cpu`` runs every check on the CPU against itself (a dry run of the script where no GPU exists).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, reps: int = 5) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


def single(device: torch.device) -> list[dict]:
    from deepkrylov.distributed import HaloConv3d
    from deepkrylov.mesh import BoundaryConditions, DiffusionOperator, StructuredGrid, smoke_scene
    from deepkrylov.operators import FNO, MgNO
    from deepkrylov.solvers import Jacobi, cg

    rows: list[dict] = []
    g = torch.Generator().manual_seed(0)

    conv = HaloConv3d(4, 8, 3, padding=1, dtype=torch.float64)
    x = torch.randn(2, 4, 24, 20, 16, generator=g, dtype=torch.float64)
    ref = conv(x)
    got = conv.to(device)(x.to(device))
    rows.append({"check": "HaloConv3d forward", "rel_err": _err(got, ref)})
    nb = 64 if device.type == "cuda" else 16
    xb = torch.randn(4, 8, nb, nb, nb, generator=g, device=device, dtype=torch.float32)
    conv32 = HaloConv3d(8, 8, 3, padding=1).to(device)
    with torch.no_grad():
        t = _timed(lambda: conv32(xb), device)
    rows.append({"check": f"HaloConv3d 8->8 ch, 4x{nb}^3 float32", "seconds": t, "gcells_per_s": xb.numel() / 8 / t / 1e9})

    for n in ((32, 64, 128, 256) if device.type == "cuda" else (32,)):
        grid = StructuredGrid((n, n, n))
        bc = BoundaryConditions([["neumann", "neumann"], ["neumann", "dirichlet"], ["neumann", "neumann"]])
        mask = smoke_scene(n, 3)
        A_cpu = DiffusionOperator(grid, bc, mask=mask, scaled=False)
        A_dev = DiffusionOperator(grid, bc, mask=mask, scaled=False, device=device)
        b = torch.randn(1, 1, n, n, n, generator=g, dtype=torch.float64) * (mask == 0).to(torch.float64)
        if n <= 32:
            rows.append({"check": f"stencil apply {n}^3 smoke", "rel_err": _err(A_dev.apply(b.to(device)), A_cpu.apply(b))})
            r_cpu = cg(A_cpu, b, M=Jacobi(A_cpu), rtol=1e-8, max_it=2000)
            r_dev = cg(A_dev, b.to(device), M=Jacobi(A_dev), rtol=1e-8, max_it=2000)
            rows.append({"check": f"Jacobi-CG {n}^3 smoke", "iterations_cpu": r_cpu.iterations,
                         "iterations_gpu": r_dev.iterations, "solution_rel_err": _err(r_dev.x, r_cpu.x)})
        bd = b.to(device)
        its = 50
        t = _timed(lambda: cg(A_dev, bd, rtol=0.0, atol=0.0, max_it=its), device, reps=3)
        rows.append({"check": f"CG {n}^3 smoke time per iteration", "seconds_per_it": t / its, "device": str(device)})

    for name, model, shape in (
        ("MgNO 2D", MgNO(1, 1, channels=8, num_layers=2, iterations=[[1, 0]] * 4), (2, 1, 64, 64)),
        ("FNO 2D", FNO(1, 1, modes=(8, 8), width=16, num_layers=2), (2, 1, 64, 64)),
    ):
        model = model.double()
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        ref = model(x)
        ref.square().sum().backward()
        g_ref = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        model = model.to(device)
        out = model(x.to(device))
        out.square().sum().backward()
        g_err = max(_err(p.grad, q) for p, q in zip(model.parameters(), g_ref))
        rows.append({"check": f"{name} forward/backward", "rel_err": _err(out, ref), "grad_rel_err": g_err})
    return rows


def nccl(device_kind: str) -> list[dict]:
    import torch.distributed as dist

    from deepkrylov.distributed import GridTensor, HaloConv3d, ProcessGrid, init

    ctx = init(backend="nccl" if device_kind == "cuda" else "gloo")
    device = ctx.device
    rows: list[dict] = []
    shape = (48, 40, 36)
    grid = ProcessGrid(ctx, shape)
    g = torch.Generator().manual_seed(1)
    x_full = torch.randn(1, 3, *shape, generator=g, dtype=torch.float64)
    torch.manual_seed(2)  # the same weights on every rank
    conv = HaloConv3d(3, 4, 3, padding=1, dtype=torch.float64)
    ref = conv(x_full)
    ref.square().sum().backward()
    g_ref = [p.grad.clone() for p in conv.parameters()]
    conv.zero_grad()
    conv = conv.to(device)
    x = GridTensor.from_global(x_full.to(device), grid)
    y = conv(x)
    y.local.square().sum().backward()
    grads = [ctx.comm.allreduce_(p.grad.clone()) for p in conv.parameters()]
    y_full = y.gather()
    rows.append({"check": f"NCCL HaloConv3d on {ctx.size} rank(s)", "rel_err": _err(y_full, ref),
                 "grad_rel_err": max(_err(a, b) for a, b in zip(grads, g_ref))})
    s = x.sum()
    rows.append({"check": "NCCL all-reduce sum", "rel_err": _err(s.reshape(1), x_full.sum().reshape(1))})
    big = GridTensor(torch.randn((1, 1) + grid.local_shape, dtype=torch.float64, device=device), grid)
    t = _timed(lambda: big.halo(1), device, reps=20)
    rows.append({"check": f"NCCL halo exchange {shape} float64 on {ctx.size} rank(s)", "seconds": t})
    if dist.is_initialized():
        dist.barrier()
    return rows if ctx.rank == 0 else []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--nccl", action="store_true", help="the torch.distributed/NCCL checks (launch with torchrun)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: torch.cuda.is_available() is False: run it on a GPU machine, or with --device cpu")
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    device = torch.device(args.device)
    rows = nccl(args.device) if args.nccl else single(device)
    if not rows:
        return
    bad = [r for r in rows if max(r.get("rel_err", 0.0), r.get("grad_rel_err", 0.0), r.get("solution_rel_err", 0.0)) > 1e-8]
    for r in rows:
        print("  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {}
    key = "nccl" if args.nccl else "single"
    record.setdefault("runs", {})[f"{args.device}:{key}"] = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__, "host": platform.node(),
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None, "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    if bad:
        sys.exit(f"gpu_check: {len(bad)} check(s) differ from the CPU by more than 1e-8: {[r['check'] for r in bad]}")


if __name__ == "__main__":
    main()
