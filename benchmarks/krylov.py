"""Krylov solvers on the 3D Poisson problem: deepkrylov's CG against PETSc's, and PETSc's preconditioners.

Run ``python benchmarks/krylov.py`` (1 rank, then it launches itself under ``mpiexec -n 2``), or one rank count
directly with ``mpiexec -n N python benchmarks/krylov.py --worker``. Prints a table and writes
``benchmarks/results/krylov.json``.

Problem: 7-point -Laplacian with Dirichlet boundaries (eliminated), unit spacing, on n^3 cells (64^3, 128^3 by
default; ``--sizes 64 128 256``), random right-hand side, zero initial guess, DMDA decomposition on every rank
count. Measured per size and rank count:

- ``copy``: ``y.copy_(x)`` on one n^3 float64 block per rank: the machine's streaming bandwidth (16 bytes/cell);
- ``DRAM``: the same copy on arrays four times the last-level cache, every rank at once: the memory bandwidth
  limit, the same for every size (the issue's "about 30 GB/s");
- ``stencil``: one matrix-free apply of our operator into a reused buffer (``apply_into``, as CG does): effective
  bandwidth counting 16 bytes/cell (read x, write y) and its ratio to ``copy``. Note that at 64^3 and 128^3 a
  copy's two 8n^3-byte arrays fit in a 32 MB L3 cache, so ``copy`` then measures cache, not memory, bandwidth;
  256^3 (134 MB per array) measures memory;
- ``time/it``: deepkrylov's CG+Jacobi on the matrix-free stencil (plain, and ``fused=True``: the vector updates
  and reductions in one compiled pass) vs PETSc KSPCG+PCJACOBI on the assembled AIJ matrix, same fixed number of
  iterations, unpreconditioned norm; ``vs 14-pass bound``: the time 14 vector passes take at the copy bandwidth
  over our best time per iteration (1.0 = at the bandwidth limit of an unfused-stencil PCG), against the
  same-size copy (cache-resident below 256^3) and against the DRAM copy (``it_vs_dram_bound``);
- ``to 1e-6``: iterations, set-up and solve time to rtol 1e-6 for ours (CG+Jacobi) and PETSc CG with Jacobi,
  ICC (block Jacobi + ICC(0) in parallel), GAMG and hypre BoomerAMG.

The operator: ``deepkrylov.mesh``'s matrix-free 7-point Laplacian when it is available, else a reference
implementation here (halo exchange + shifted slices). It is checked against the assembled matrix before timing.

Masked vs uniform (``masked_vs_uniform`` in the JSON; ``--masked-only`` runs just these rows, one process, and
merges them into the existing JSON): one ``apply_into`` of the 128^3/256^3 smoke-scene pressure operator
(``scene_problem(n, 3, "smoke")``: unscaled Laplacian, FLUID/SOLID/EMPTY mask, Neumann walls) against the uniform
Dirichlet Laplacian of the same size, median of ``--reps`` interleaved repetitions; the masked operator's compiled
form (``compact``: 2 bytes per cell) and, for reference, the same operator through the general seven-array pass
(what it took before the compact form); and unpreconditioned CG ms/iteration on both (``--fixed-its`` iterations,
median of 3 solves).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


class _SliceLaplacian:
    """Fallback matrix-free 7-point -Laplacian (Dirichlet, eliminated boundary) on GridTensors."""

    def __init__(self, grid, dtype=torch.float64) -> None:
        self.grid, self._dtype = grid, dtype
        n = int(np.prod(grid.global_shape))
        self.shape = (n, n)
        self.is_symmetric = True
        self.is_positive_definite = True
        self.dtype = dtype
        self.device = torch.device("cpu")

    def apply(self, x):
        h = x.halo(1, mode="zeros")
        c = h[..., 1:-1, 1:-1, 1:-1]
        y = c * 6.0
        y -= h[..., :-2, 1:-1, 1:-1]
        y -= h[..., 2:, 1:-1, 1:-1]
        y -= h[..., 1:-1, :-2, 1:-1]
        y -= h[..., 1:-1, 2:, 1:-1]
        y -= h[..., 1:-1, 1:-1, :-2]
        y -= h[..., 1:-1, 1:-1, 2:]
        return x.with_local(y)

    def diagonal(self):
        from deepkrylov.distributed import GridTensor

        return GridTensor.zeros(self.grid, dtype=self._dtype).map(lambda t: t + 6.0)


def make_operator(grid):
    """deepkrylov.mesh's stencil Laplacian (Dirichlet faces, unit spacing) if present, else the fallback; returns
    (operator, its CSR in natural order for PETSc, name)."""
    try:
        from deepkrylov.mesh import StructuredGrid, laplacian

        op = laplacian(StructuredGrid(grid.global_shape), scaled=False)
        return op, op.to_scipy(), "deepkrylov.mesh"
    except ImportError:  # the mesh package is not there: the reference stencil on the eliminated-boundary matrix
        return _SliceLaplacian(grid), csr_laplacian(grid.global_shape[0]), "fallback (halo + slices)"


def csr_laplacian(n: int) -> sp.csr_matrix:
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n), format="csr")
    return sp.kronsum(sp.kronsum(t, t), t).tocsr()


def _best(fn, comm, reps: int) -> float:
    fn()
    out = []
    for _ in range(reps):
        comm.barrier()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        out.append(max(comm.allgather_object(dt)))
    return min(out)


def _llc_bytes() -> int:
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        return int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]]
    except (OSError, ValueError, KeyError):
        return 32 << 20


def dram_copy_GBs(comm) -> float:  # type: ignore[no-untyped-def]
    """Per-rank copy bandwidth on arrays four times the last-level cache, all ranks copying at once."""
    n = 4 * _llc_bytes() // 8
    x, y = torch.ones(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    return 16 * n / _best(lambda: y.copy_(x), comm, 10) / 1e9


def run_worker(sizes: list[int], fixed_its: int) -> list[dict]:
    from deepkrylov.distributed import GridTensor, ProcessGrid, init
    from deepkrylov.solvers import Jacobi, cg
    from deepkrylov.solvers import petsc as P

    ctx = init()
    comm = ctx.comm
    rows = []
    dram = dram_copy_GBs(comm)
    for n in sizes:
        grid = ProcessGrid(ctx, (n, n, n))
        op, A, opname = make_operator(grid)
        g = torch.Generator().manual_seed(0)
        full = torch.randn(1, 1, n, n, n, dtype=torch.float64, generator=g)
        b = GridTensor.from_global(full, grid).clone()
        del full
        mat = P.assemble_aij(A, grid)
        del A
        pop = P.PetscMatOperator(mat, grid)
        err = float((op.apply(b) - pop.apply(b)).max_abs())
        cells = int(np.prod(grid.local_shape))
        x = b.local.clone()
        y = torch.empty_like(x)
        t_copy = _best(lambda: y.copy_(x), comm, 10)
        out = b.clone()  # the stencil into a reused buffer, as the Krylov loops apply it (apply_into)
        t_st = _best((lambda: op.apply_into(b, out)) if hasattr(op, "apply_into") else (lambda: op.apply(b)), comm, 10)
        row = {"n": n, "ranks": comm.size, "operator": opname, "stencil_vs_matrix_maxdiff": err,
               "copy_GBs": 16 * cells / t_copy / 1e9, "stencil_GBs": 16 * cells / t_st / 1e9}
        row["stencil_vs_copy"] = row["stencil_GBs"] / row["copy_GBs"]
        row["dram_copy_GBs"] = dram
        row["stencil_vs_dram"] = row["stencil_GBs"] / dram
        jac = Jacobi(op)
        ours = cg(op, b, M=jac, rtol=1e-30, max_it=fixed_its)
        ours_t = max(comm.allgather_object(ours.wall_time))
        base = P.petsc_solve(mat, b, pc_type="jacobi", rtol=1e-30, max_it=fixed_its)
        base_t = max(comm.allgather_object(base.info["solve_time"]))
        row["ours_ms_per_it"] = 1e3 * ours_t / ours.iterations
        cg(op, b, M=jac, rtol=1e-30, max_it=2, fused=True)  # compile outside the timing
        fz = cg(op, b, M=jac, rtol=1e-30, max_it=fixed_its, fused=True)
        row["ours_fused_ms_per_it"] = 1e3 * max(comm.allgather_object(fz.wall_time)) / fz.iterations
        row["petsc_ms_per_it"] = 1e3 * base_t / base.iterations
        row["speedup_per_it"] = row["petsc_ms_per_it"] / min(row["ours_ms_per_it"], row["ours_fused_ms_per_it"])
        # a Jacobi-PCG iteration must move at least ~14 vector passes (apply 2, two axpys 3+3, z=Dr 3, p=z+bp 3)
        best = min(row["ours_ms_per_it"], row["ours_fused_ms_per_it"]) / 1e3
        row["ours_it_vs_copy_bound"] = (14 * 8 * cells / (row["copy_GBs"] * 1e9)) / best
        row["ours_it_vs_dram_bound"] = (14 * 8 * cells / (dram * 1e9)) / best
        solves = {}
        t0 = time.perf_counter()
        r = cg(op, b, M=Jacobi(op), rtol=1e-6)
        solves["ours cg+jacobi"] = {"its": r.iterations, "setup_s": 0.0,
                                    "solve_s": max(comm.allgather_object(time.perf_counter() - t0)),
                                    "reason": r.reason.name}
        for pc in ("jacobi", "icc", "gamg", "hypre"):
            r = P.petsc_solve(mat, b, pc_type=pc, rtol=1e-6)
            solves[f"petsc cg+{pc}"] = {"its": r.iterations, "setup_s": max(comm.allgather_object(r.info["setup_time"])),
                                        "solve_s": max(comm.allgather_object(r.info["solve_time"])),
                                        "reason": r.reason.name}
        row["to_1e-6"] = solves
        rows.append(row)
        pop.close()
        mat.destroy()
        del b, x, y
    return rows


def masked_rows(sizes: list[int], reps: int, fixed_its: int) -> list[dict]:
    """The masked (smoke scene) vs uniform apply and CG timings, one process (see the module docstring)."""
    import statistics

    from deepkrylov.mesh import StructuredGrid, laplacian
    from deepkrylov.solvers import cg
    from deepkrylov.solvers.problems import scene_problem

    rows = []
    for n in sizes:
        uni = laplacian(StructuredGrid((n,) * 3), scaled=False)
        masked, b = scene_problem(n, 3, "smoke")
        x = torch.randn((1, 1, n, n, n), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        y = torch.empty_like(x)
        form = masked.form

        def general() -> None:  # the same operator through the seven-array pass: the masked path before "compact"
            masked.form = "general"
            try:
                masked.apply_into(x, y)
            finally:
                masked.form = form

        fns = {"uniform": lambda: uni.apply_into(x, y), "masked": lambda: masked.apply_into(x, y), "general": general}
        times: dict = {k: [] for k in fns}
        for f in fns.values():
            f()
            f()
        for _ in range(reps):  # interleaved, so that load from other processes hits all three alike
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        its = {"uniform": [], "masked": []}
        for _ in range(3):
            for k, A in (("uniform", uni), ("masked", masked)):
                r = cg(A, b, rtol=1e-30, max_it=fixed_its)
                its[k].append(1e3 * r.wall_time / r.iterations)
        rows.append({
            "n": n, "masked_form": form, "fluid_fraction": float(masked.fluid.float().mean()),
            "uniform_apply_ms": med["uniform"], "masked_apply_ms": med["masked"], "general_apply_ms": med["general"],
            "masked_vs_uniform": med["masked"] / med["uniform"], "general_vs_uniform": med["general"] / med["uniform"],
            "uniform_cg_ms_per_it": statistics.median(its["uniform"]),
            "masked_cg_ms_per_it": statistics.median(its["masked"]),
        })
        del uni, masked, b, x, y
    return rows


def masked_table(rows: list[dict]) -> str:
    out = ["masked (smoke scene) vs uniform Laplacian, one apply_into, float64:",
           "n^3   uniform ms  masked ms (form)     x uniform  general-pass ms  x uniform   CG ms/it uniform  masked"]
    for r in rows:
        out.append(f"{r['n']:>4}  {r['uniform_apply_ms']:10.2f}  {r['masked_apply_ms']:9.2f} ({r['masked_form']:<7})"
                   f"  {r['masked_vs_uniform']:9.2f}  {r['general_apply_ms']:15.2f}  {r['general_vs_uniform']:9.2f}"
                   f"   {r['uniform_cg_ms_per_it']:16.2f}  {r['masked_cg_ms_per_it']:6.2f}")
    return "\n".join(out)


def table(rows: list[dict]) -> str:
    out = ["n^3   ranks  copy GB/s  DRAM GB/s  stencil GB/s (x copy, x DRAM)  ours ms/it  fused ms/it  PETSc ms/it"
           "  speedup  best vs 14-pass bound (copy, DRAM)"]
    for r in rows:
        out.append(
            f"{r['n']:>4}  {r['ranks']:>5}  {r['copy_GBs']:9.2f}  {r['dram_copy_GBs']:9.2f}  {r['stencil_GBs']:8.2f}"
            f" ({r['stencil_vs_copy']:.2f}, {r['stencil_vs_dram']:.2f})"
            f"           {r['ours_ms_per_it']:9.2f}  {r['ours_fused_ms_per_it']:10.2f}  {r['petsc_ms_per_it']:10.2f}"
            f"  {r['speedup_per_it']:6.2f}x"
            f"  {r['ours_it_vs_copy_bound']:.2f}, {r['ours_it_vs_dram_bound']:.2f}"
        )
    out.append("")
    out.append("to rtol 1e-6:  n^3 ranks  method               its   setup s   solve s   reason")
    for r in rows:
        for name, s in r["to_1e-6"].items():
            out.append(f"               {r['n']:>3} {r['ranks']:>5}  {name:<20} {s['its']:>4}  {s['setup_s']:8.3f}  "
                       f"{s['solve_s']:8.3f}   {s['reason']}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--fixed-its", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank (PETSc is single-threaded)")
    ap.add_argument("--worker", action="store_true", help="run on the current ranks and print JSON rows")
    ap.add_argument("--masked-only", action="store_true",
                    help="only the masked-vs-uniform apply rows (one process), merged into the existing JSON")
    ap.add_argument("--reps", type=int, default=21, help="repetitions of each apply in the masked-vs-uniform rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    masked_meta = {"torch_threads": args.threads, "reps": args.reps, "fixed_its": args.fixed_its,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.masked_only:
        mrows = masked_rows(args.sizes, args.reps, args.fixed_its)
        print(masked_table(mrows))
        path = RESULTS / "krylov.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data["masked_vs_uniform"] = {"meta": masked_meta, "rows": mrows}
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))
        print(f"merged into {path}")
        return
    if args.worker:
        rows = run_worker(args.sizes, args.fixed_its)
        if int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0"))) == 0:
            print("JSON:" + json.dumps(rows))
        return
    rows: list[dict] = []
    for nr in args.ranks:
        cmd = [sys.executable, __file__, "--worker", "--sizes", *map(str, args.sizes), "--fixed-its",
               str(args.fixed_its), "--threads", str(args.threads)]
        if nr > 1:
            cmd = ["mpiexec", "-n", str(nr), "--allow-run-as-root", "--oversubscribe", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        if out.returncode != 0:
            sys.stderr.write(out.stdout[-4000:] + out.stderr[-4000:])
            raise SystemExit(f"{nr}-rank run failed (rc={out.returncode})")
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith("JSON:"))
        rows += json.loads(line[5:])
    print(table(rows))
    mrows = masked_rows(args.sizes, args.reps, args.fixed_its)
    print()
    print(masked_table(mrows))
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": args.threads, "fixed_its": args.fixed_its,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (RESULTS / "krylov.json").write_text(json.dumps(
        {"meta": meta, "rows": rows, "masked_vs_uniform": {"meta": masked_meta, "rows": mrows}}, indent=1))
    print(f"wrote {RESULTS / 'krylov.json'}")


if __name__ == "__main__":
    main()
