"""Memory and time scaling of the distributed CG and of ``deepkrylov solve`` over ranks, and a latency-bandwidth
(alpha-beta) model fitted to this machine's halo, all-reduce and all-to-all times, projected to larger machines.

``python benchmarks/scaling.py`` runs every row (heavy: one ``mpiexec`` job at a time), prints a table and writes
``benchmarks/results/scaling.json``; ``--rows memory weak cli allreduce`` picks some. ``--model`` fits the model to
``scaling.json`` (all-reduce), ``halo.json`` (point-to-point) and ``fft.json`` (all-to-all), prints the projections
of docs/scaling.md and writes them to ``scaling.json["model"]``.

Rows (each rank's resident-memory high-water mark minus the same after the imports and the MPI start-up, the
largest over the ranks; one thread per rank; more ranks than cores are oversubscribed):

- ``memory``: build the 256^3 smoke scene's pressure system on the ranks' blocks (``scene_problem(partition=)``) and
  run 20 CG iterations, on 1, 2, 4, 8 ranks; also the time per CG iteration;
- ``weak``: 128^3 cells per rank (128^3, 256x128^2, 256^2x128, 256^3; Dirichlet box), 20 CG iterations, 1-8 ranks;
- ``cli``: ``deepkrylov solve --n 192 --methods cg --max-it 20`` on 1 and 4 ranks (its JSON's
  ``peak_rss_above_start_mb``: each rank's peak minus its own mark after the imports and MPI start-up);
- ``allreduce``: the communicator's in-place all-reduce (what CG calls twice per iteration) of 1 to 2^20 float64 on
  1, 2, 4 ranks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "scaling.json"
MB = 1024.0  # ru_maxrss is in KiB on Linux


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MB


# ---- workers (run under mpiexec) -------------------------------------------------------------------------------
def _worker_cg(shape: tuple, scene: str, its: int) -> dict:
    import torch

    from deepkrylov.distributed import GridTensor, ProcessGrid, init
    from deepkrylov.mesh import BoundaryConditions, StructuredGrid, laplacian
    from deepkrylov.solvers import cg
    from deepkrylov.solvers.problems import scene_problem

    ctx = init()
    base = _rss_mb()
    grid = ProcessGrid(ctx, shape)
    part = grid if ctx.size > 1 else None
    t0 = time.perf_counter()
    if scene == "smoke":
        A, b = scene_problem(shape[0], 3, "smoke", partition=part)
    else:
        A = laplacian(StructuredGrid(shape), BoundaryConditions.uniform(3, "dirichlet"), scaled=False, partition=part)
        g = torch.Generator().manual_seed(ctx.rank)
        local = torch.rand((1, 1) + grid.local_shape, generator=g, dtype=torch.float64)
        b = GridTensor(local, grid) if part is not None else local
    build = time.perf_counter() - t0
    res = cg(A, b, rtol=1e-30, max_it=its)
    out = {"baseline_mb": base, "peak_mb": _rss_mb(), "build_s": build, "solve_s": res.wall_time,
           "iterations": res.iterations}
    rows = ctx.comm.allgather_object(out) if ctx.size > 1 else [out]
    return {"ranks": ctx.size, "shape": list(shape), "dims": list(grid.dims), "scene": scene,
            "iterations": res.iterations, "per_rank": rows,
            "above_baseline_mb": max(r["peak_mb"] - r["baseline_mb"] for r in rows),
            "baseline_mb": max(r["baseline_mb"] for r in rows),
            "build_s": max(r["build_s"] for r in rows),
            "s_per_iteration": max(r["solve_s"] for r in rows) / max(res.iterations, 1)}


def _worker_allreduce(reps: int) -> dict:
    import torch

    from deepkrylov.distributed import init

    ctx = init()
    rows = []
    for count in [1, 8, 64, 512, 4096, 32768, 262144, 1048576]:
        t = torch.ones(count, dtype=torch.float64)
        times = []
        for _ in range(reps):
            ctx.comm.barrier()
            t0 = time.perf_counter()
            ctx.comm.allreduce_(t)
            dt = time.perf_counter() - t0
            times.append(max(ctx.comm.allgather_object(dt)) if ctx.size > 1 else dt)
        rows.append({"ranks": ctx.size, "bytes": 8 * count, "seconds": statistics.median(times)})
    return {"ranks": ctx.size, "engine": ctx.comm.name, "rows": rows}


def _worker(args: argparse.Namespace) -> None:
    if args.worker == "cg":
        out = _worker_cg(tuple(args.shape), args.scene, args.its)
    else:
        out = _worker_allreduce(args.reps)
    from deepkrylov.distributed import init

    if init().is_root:
        print("RESULT " + json.dumps(out), flush=True)


# ---- driver ----------------------------------------------------------------------------------------------------
def _mpiexec(n: int, argv: list[str], timeout: float = 3600) -> subprocess.CompletedProcess:
    cmd = ["mpiexec", "-n", str(n)]
    out = subprocess.run(["mpiexec", "--version"], capture_output=True, text=True)
    if "Open MPI" in out.stdout + out.stderr or "OpenRTE" in out.stdout + out.stderr:
        cmd += ["--allow-run-as-root", "--oversubscribe", "--mca", "btl_vader_single_copy_mechanism", "none"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    res = subprocess.run(cmd + [sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=env,
                         cwd=ROOT)
    if res.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(argv)} on {n} ranks failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def _run_worker(n: int, *argv: str) -> dict:
    res = _mpiexec(n, [str(Path(__file__).resolve()), "--worker", *argv])
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _row_memory() -> list:
    rows = [_run_worker(n, "cg", "--shape", "256", "256", "256", "--scene", "smoke") for n in (1, 2, 4, 8)]
    for r in rows:
        r["ratio_to_1_rank"] = r["above_baseline_mb"] / rows[0]["above_baseline_mb"]
    return rows


def _row_weak() -> list:
    shapes = {1: (128, 128, 128), 2: (256, 128, 128), 4: (256, 256, 128), 8: (256, 256, 256)}
    rows = [_run_worker(n, "cg", "--shape", *map(str, s), "--scene", "box") for n, s in shapes.items()]
    for r in rows:
        r["ratio_to_1_rank"] = r["above_baseline_mb"] / rows[0]["above_baseline_mb"]
    return rows


def _row_cli() -> list:
    rows = []
    for n in (1, 4):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "solve.json"
            cmd = ["-m", "deepkrylov.cli", "solve", "--n", "192", "--methods", "cg", "--max-it", "20",
                   "--allow-diverged", "--no-progress", "--json", str(path)]
            t0 = time.perf_counter()
            _mpiexec(n, cmd)
            wall = time.perf_counter() - t0
            solve = json.loads(path.read_text())
        row = solve["rows"][0]  # peak_rss_above_start_mb: each rank's peak minus its own after imports and MPI init
        rows.append({"ranks": n, "command": "deepkrylov solve " + " ".join(cmd[3:-3]), "peak_mb": row["peak_rss_mb"],
                     "above_baseline_mb": row["peak_rss_above_start_mb"],
                     "s_per_iteration": row["seconds_per_iteration"], "wall_s": wall})
    for r in rows:
        r["ratio_to_1_rank"] = r["above_baseline_mb"] / rows[0]["above_baseline_mb"]
    return rows


def _row_allreduce() -> list:
    return [_run_worker(n, "allreduce", "--reps", "50") for n in (1, 2, 4)]


ROWS = {"memory": _row_memory, "weak": _row_weak, "cli": _row_cli, "allreduce": _row_allreduce}


def _table(results: dict) -> str:
    lines = []
    for key, title in (("memory", "256^3 smoke scene, build + 20 CG iterations"),
                       ("weak", "weak scaling: 128^3 cells per rank, build + 20 CG iterations"),
                       ("cli", "deepkrylov solve --n 192 --methods cg --max-it 20")):
        if key not in results:
            continue
        lines.append(f"{title}\n{'ranks':>5} {'grid':>13} {'MB/rank above import':>21} {'x 1 rank':>9} {'s/iteration':>12}")
        for r in results[key]:
            grid = "x".join(map(str, r.get("shape", [192] * 3)))
            lines.append(f"{r['ranks']:>5} {grid:>13} {r['above_baseline_mb']:>21.0f} {r['ratio_to_1_rank']:>9.3f} "
                         f"{r['s_per_iteration']:>12.4f}")
        lines.append("")
    if "allreduce" in results:
        lines.append("all-reduce (in place, float64), median of the slowest rank, microseconds")
        sizes = [row["bytes"] for row in results["allreduce"][0]["rows"]]
        lines.append(f"{'ranks':>5} " + " ".join(f"{b:>9}B" for b in sizes))
        for r in results["allreduce"]:
            lines.append(f"{r['ranks']:>5} " + " ".join(f"{row['seconds'] * 1e6:>10.1f}" for row in r["rows"]))
        lines.append("")
    return "\n".join(lines)


# ---- the alpha-beta model --------------------------------------------------------------------------------------
ASSUME = {
    "alpha_net_s": 2.0e-6,             # MPI latency between nodes over InfiniBand HDR, software included
    "node_bandwidth_Bps": 25.0e9,      # HDR 200 Gb/s, one port per node
    "ranks_per_node": 64,              # one rank per core, 64 cores per node, ranks packed 4x4x4 per node
    "node_memory_bandwidth_Bps": 200.0e9,  # STREAM-like DRAM bandwidth of a two-socket node
    "cg_bytes_per_cell": 116,          # 14 float64 vector passes per CG iteration + the 4-byte operator (krylov.py)
    "allreduces_per_cg_iteration": 2,  # <p, Ap> and <r, r> (deepkrylov.solvers.cg, unpreconditioned)
}
"""The machine the projections are for (docs/scaling.md); change and rerun ``--model`` for another."""


def _fit(x: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Least-squares ``t = alpha * x[:, 0] + beta * x[:, 1]`` with non-negative alpha, beta (relative errors:
    each point weighted by 1/t so that small messages count)."""
    from scipy.optimize import nnls

    w = 1.0 / t
    coef, _ = nnls(x * w[:, None], t * w)
    return float(coef[0]), float(coef[1])


def fit_model(results: dict) -> dict:
    """alpha (s) and beta (s/byte) on this machine (shared memory between the ranks of one VM) of point-to-point
    (halo.json: mpi4py Sendrecv of a rank's faces, 2 or 4 messages), all-reduce (recursive doubling:
    ``log2 p (alpha + beta n)``, this script's all-reduce row up to 256 KiB) and all-to-all (pairwise:
    ``(p-1) alpha + (p-1)/p n beta``, fft.json, MPI engine, fastest repetitions), from the 2- and 4-rank points; the CG time per cell
    (the 256^3 row on one rank) and the FFT round trip's time per cell and log2(cells) (fft.json, torch on one
    process, the fastest repetition)."""
    fits = {}
    halo = json.loads((RESULTS / "halo.json").read_text())
    pts = [(r["bytes_sent_per_rank"], r["sendrecv_s"], r["ranks"]) for k in halo for r in halo[k]["halo"]]
    x = np.array([[2 if p == 2 else 4, b] for b, _, p in pts], dtype=float)
    t = np.array([s for _, s, _ in pts])
    fits["p2p"] = dict(zip(("alpha_s", "beta_s_per_byte"), _fit(x, t)), points=len(t), source="halo.json sendrecv")
    ar = [(row["bytes"], row["seconds"], r["ranks"]) for r in results.get("allreduce", []) for row in r["rows"]
          if r["ranks"] > 1 and row["bytes"] <= 262144]  # larger ones hit the other jobs' memory traffic here
    if ar:
        x = np.array([[math.log2(p), math.log2(p) * b] for b, _, p in ar])
        t = np.array([s for _, s, _ in ar])
        fits["allreduce"] = dict(zip(("alpha_s", "beta_s_per_byte"), _fit(x, t)), points=len(t),
                                 source="scaling.json allreduce")
    fft_path = RESULTS / "fft.json"
    if fft_path.exists():
        fft = json.loads(fft_path.read_text())
        a2a = [(r["bytes_per_rank"], r.get("seconds_min") or r["seconds"], r["ranks"]) for r in fft.get("alltoall", [])
               if r["ranks"] > 1 and r.get("engine", "mpi") == "mpi"]  # the fastest repetition: least disturbed
        if a2a:
            x = np.array([[p - 1, (p - 1) / p * b] for b, _, p in a2a])
            t = np.array([s for _, s, _ in a2a])
            fits["alltoall"] = dict(zip(("alpha_s", "beta_s_per_byte"), _fit(x, t)), points=len(t),
                                    source="fft.json alltoall")
        local = [r for r in fft.get("roundtrip", []) if r["ranks"] == 1 and r.get("torch_fft_1process_s")]
        if local:
            r = max(local, key=lambda r: r["n"])
            cells = r["n"] ** 3
            t = r.get("torch_fft_1process_min_s") or r["torch_fft_1process_s"]
            fits["fft_roundtrip_s_per_cell_log"] = t / (cells * math.log2(cells))
    one = [r for r in results.get("memory", []) if r["ranks"] == 1]
    if one:
        fits["cg_s_per_cell_here"] = one[0]["s_per_iteration"] / float(np.prod(one[0]["shape"]))
    return fits


def _cg_iteration(fits: dict, cells: float, p: int, assume: dict) -> dict:
    """One CG iteration's parts on ``p`` ranks with ``cells`` cells each (cubic blocks)."""
    rpn = assume["ranks_per_node"]
    comp = cells * assume["cg_bytes_per_cell"] / (assume["node_memory_bandwidth_Bps"] / min(rpn, p))
    edge = cells ** (1 / 3)
    nodes = max(p // rpn, 1)
    off_node = 6 * (4 * edge) ** 2 * 8 if nodes > 1 else 0.0  # face bytes leaving a 4x4x4 node block
    halo = (6 * (assume["alpha_net_s"] if nodes > 1 else fits["p2p"]["alpha_s"])
            + off_node / assume["node_bandwidth_Bps"] + 6 * edge**2 * 8 * fits["p2p"]["beta_s_per_byte"])
    ar_alpha = fits.get("allreduce", {}).get("alpha_s", 1e-6)
    allreduce = assume["allreduces_per_cg_iteration"] * (
        math.log2(min(p, rpn)) * ar_alpha + math.log2(nodes) * assume["alpha_net_s"])
    it = comp + halo + allreduce
    return {"cg_compute_s": comp, "cg_halo_s": halo, "cg_allreduce_s": allreduce, "cg_iteration_s": it,
            "cg_efficiency": comp / it, "cg_dominant_comm": "all-reduce" if allreduce > halo else "halo"}


def project(fits: dict, assume: dict = ASSUME) -> dict:
    """CG iteration time and parallel efficiency, and a 3D FFT round trip's time, for N^3 grids on P ranks:

    - compute: memory bound, ``cg_bytes_per_cell`` at the node's DRAM bandwidth shared by its ranks;
    - halo: a cubic block per rank, 6 float64 faces; ranks packed 4x4x4 per node, so the node block's faces leave
      the node: ``6 alpha_net + off-node bytes / node bandwidth`` plus every face at the fitted on-node beta;
    - all-reduce: 2 per iteration of 8 bytes, recursive doubling: ``log2(ranks per node)`` steps at the fitted
      shared-memory alpha and ``log2(nodes)`` at ``alpha_net``;
    - FFT round trip (rfftn + irfftn, complex128 half spectrum: 8 N^3/P bytes per rank): pencils with one
      process axis inside a node: the local 1D FFTs (this machine's measured rate per cell and log2 cell), two
      transposes among a node's ranks (fitted shared-memory all-to-all) and two across nodes (``(nodes-1)
      alpha_net +`` the node's bytes over its link).

    Also the per-rank block below which the all-reduce costs more than the halo exchange and below which the
    efficiency falls under 50 %, on 4096 to 262,144 ranks."""
    rpn = assume["ranks_per_node"]
    a2a = fits.get("alltoall", {"alpha_s": 5e-6, "beta_s_per_byte": 2e-10})
    fft_c = fits.get("fft_roundtrip_s_per_cell_log", 5e-9)
    rows = []
    for n in (1024, 2048, 4096):
        for p in (64, 256, 1024, 4096):
            cells = n**3 / p
            row = {"n": n, "ranks": p, "nodes": max(p // rpn, 1), "cells_per_rank": cells,
                   "memory_per_node_GB": cells * 60 * min(p, rpn) / 1e9}  # ~60 B/cell for CG (measured: 46-56)
            row.update(_cg_iteration(fits, cells, p, assume))
            nodes = row["nodes"]
            bytes_rank = 8 * cells
            fft_local = fft_c * n**3 * math.log2(n**3) / p
            on = (rpn - 1) * a2a["alpha_s"] + (rpn - 1) / rpn * bytes_rank * a2a["beta_s_per_byte"]
            off = ((nodes - 1) * assume["alpha_net_s"] + (nodes - 1) / nodes * bytes_rank * rpn
                   / assume["node_bandwidth_Bps"]) if nodes > 1 else 0.0
            fft = fft_local + 2 * (on + off)
            row.update({"fft_local_s": fft_local, "fft_alltoall_on_node_s": 2 * on, "fft_alltoall_off_node_s": 2 * off,
                        "fft_roundtrip_s": fft, "fft_alltoall_share": 2 * (on + off) / fft})
            rows.append(row)
    crossover = []
    for p in (4096, 32768, 262144):
        edges = np.arange(4, 257)
        parts = [_cg_iteration(fits, float(e) ** 3, p, assume) for e in edges]
        ar_wins = [int(e) for e, r in zip(edges, parts) if r["cg_allreduce_s"] > r["cg_halo_s"]]
        half = [int(e) for e, r in zip(edges, parts) if r["cg_efficiency"] < 0.5]
        crossover.append({"ranks": p, "allreduce_over_halo_below_edge": max(ar_wins) if ar_wins else None,
                          "efficiency_below_half_below_edge": max(half) if half else None,
                          "efficiency_at_edge_32": _cg_iteration(fits, 32.0**3, p, assume)["cg_efficiency"],
                          "efficiency_at_edge_16": _cg_iteration(fits, 16.0**3, p, assume)["cg_efficiency"]})
    return {"rows": rows, "crossover": crossover}


def _model_table(fits: dict, proj: dict) -> str:
    lines = ["fitted on this machine (shared memory, 2 and 4 ranks):"]
    for k in ("p2p", "allreduce", "alltoall"):
        if k in fits:
            f = fits[k]
            lines.append(f"  {k:<10} alpha {f['alpha_s'] * 1e6:8.2f} us   beta {f['beta_s_per_byte'] * 1e9:8.4f} ns/B "
                         f"({1 / max(f['beta_s_per_byte'], 1e-30) / 1e9:.2f} GB/s)   [{f['source']}, {f['points']} points]")
    lines.append(f"  CG here {fits.get('cg_s_per_cell_here', float('nan')) * 1e9:.1f} ns per cell per iteration (1 rank); "
                 f"FFT round trip {fits.get('fft_roundtrip_s_per_cell_log', float('nan')) * 1e9:.2f} ns per cell and "
                 "log2(cells)")
    lines.append(f"assumed: {ASSUME}")
    lines.append(f"{'N^3':>6} {'ranks':>5} {'cells/rank':>11} {'GB/node':>8} {'CG it ms':>9} {'compute':>8} {'halo':>8} "
                 f"{'allred':>8} {'eff':>5} {'FFT ms':>9} {'a2a %':>6}")
    for r in proj["rows"]:
        lines.append(f"{r['n']:>6} {r['ranks']:>5} {r['cells_per_rank']:>11.3g} {r['memory_per_node_GB']:>8.0f} "
                     f"{r['cg_iteration_s'] * 1e3:>9.3f} {r['cg_compute_s'] * 1e3:>8.3f} {r['cg_halo_s'] * 1e3:>8.3f} "
                     f"{r['cg_allreduce_s'] * 1e3:>8.3f} {r['cg_efficiency']:>5.2f} {r['fft_roundtrip_s'] * 1e3:>9.1f} "
                     f"{100 * r['fft_alltoall_share']:>6.0f}")
    for c in proj["crossover"]:
        lines.append(f"{c['ranks']:>7} ranks: all-reduce > halo below a {c['allreduce_over_halo_below_edge']}^3 block, "
                     f"efficiency < 50% below {c['efficiency_below_half_below_edge']}^3; efficiency at 32^3 "
                     f"{c['efficiency_at_edge_32']:.2f}, at 16^3 {c['efficiency_at_edge_16']:.2f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=list(ROWS))
    ap.add_argument("--model", action="store_true", help="fit the alpha-beta model and project (no runs)")
    ap.add_argument("--worker", choices=("cg", "allreduce"), help=argparse.SUPPRESS)
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 256, 256], help=argparse.SUPPRESS)
    ap.add_argument("--scene", default="smoke", help=argparse.SUPPRESS)
    ap.add_argument("--its", type=int, default=20, help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=50, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    if args.model:
        fits = fit_model(results)
        proj = project(fits)
        results["model"] = {"fits": fits, "assume": ASSUME, "projections": proj}
        print(_model_table(fits, proj))
    else:
        results.update({"host": platform.node(), "cpus": os.cpu_count(), "threads_per_rank": 1})
        for key in args.rows:
            results[key] = ROWS[key]()
            OUT.write_text(json.dumps(results, indent=1))  # after every row: a long run keeps what it measured
        print(_table(results))
    OUT.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
