"""Learned multigrid and geometric multigrid against CG+Jacobi, the DCDM paper network and PETSc (CG with ICC,
GAMG, hypre BoomerAMG), set-up included, on the smoke scene and on held-out random-obstacle scenes.

Every (scene, size, ranks, method) runs ``deepkrylov solve`` in a fresh process (the code users run), so the peak
resident memory of a row is that method's alone (import, problem and solve). Prints the table, writes
``benchmarks/results/learned.json`` and the residual histories of the first scene at each size as
``benchmarks/results/learned_residuals_<n>.png``.

    python benchmarks/learned.py --sizes 64                 # three scenes, 1 and 2 ranks: about 5 minutes
    python benchmarks/learned.py --sizes 128 --scenes smoke random:900001 --append     # about 15 minutes
    python benchmarks/learned.py --sizes 256 --scenes smoke --methods learned mg pcg icc gamg hypre --append
                                                                                        # about 15 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
MPIEXEC = ["mpiexec", "--allow-run-as-root", "--oversubscribe", "--mca", "btl_vader_single_copy_mechanism", "none"]


def run(n: int, scene: str, seed: int, method: str, ranks: int, rtol: float, max_it: int, tmp: Path) -> dict:
    out, save = tmp / "solve.json", tmp / "solve.npz"
    cmd = [sys.executable, "-m", "deepkrylov.cli", "solve", "--n", str(n), "--scene", scene, "--scene-seed", str(seed),
           "--rtol", str(rtol), "--max-it", str(max_it), "--methods", method, "--json", str(out), "--save", str(save),
           "--allow-diverged", "--no-progress"]
    if ranks > 1:
        cmd = MPIEXEC + ["-n", str(ranks)] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        return {"method": method, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    row = json.loads(out.read_text())["rows"][0]
    row["history"] = np.load(save)[f"residuals_{method}"].tolist()
    return row


def plot(rows: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in rows:
        h = np.asarray(r.get("history", []))
        if h.size:
            ax.semilogy(np.arange(h.size), h / h[0], label=f"{r['method']} ({r['total_seconds']:.1f} s)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("relative residual")
    ax.set_xscale("symlog", linthresh=20)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--scenes", nargs="+", default=["smoke", "random:900001", "random:900002"],
                    help="smoke, box, or random:SEED (held out: training used seeds below 900000)")
    ap.add_argument("--methods", nargs="+", default=["learned", "mg", "pcg", "icc", "gamg", "hypre", "dcdm"])
    ap.add_argument("--dcdm-max-n", type=int, default=64, help="run the paper network only up to this size")
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--max-it", type=int, default=5000)
    ap.add_argument("--out", type=Path, default=RESULTS / "learned.json")
    ap.add_argument("--append", action="store_true", help="add to the rows already in --out (other sizes/scenes)")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = json.loads(args.out.read_text())["rows"] if args.append and args.out.exists() else []
    head = f"{'scene':<14} {'n':>4} {'ranks':>5} {'method':<8} {'its':>5} {'setup s':>8} {'solve s':>8} {'total s':>8} " \
           f"{'MB':>7}  reason"
    print(head)
    for n in args.sizes:
        for ranks in args.ranks:
            for spec in args.scenes:
                scene, _, seed = spec.partition(":")
                case = []
                for method in args.methods:
                    if method == "dcdm" and n > args.dcdm_max_n:
                        continue
                    with tempfile.TemporaryDirectory() as tmp:
                        r = run(n, scene, int(seed or 0), method, ranks, args.rtol, args.max_it, Path(tmp))
                    r.update(scene=spec, n=n, ranks=ranks)
                    case.append(r)
                    if "error" in r:
                        print(f"{spec:<14} {n:>4} {ranks:>5} {method:<8} failed: {r['error']}", flush=True)
                        continue
                    print(f"{spec:<14} {n:>4} {ranks:>5} {method:<8} {r['iterations']:>5} {r['setup_seconds']:>8.2f} "
                          f"{r['solve_seconds']:>8.2f} {r['total_seconds']:>8.2f} {r['peak_rss_mb']:>7.0f}  "
                          f"{r['reason']}", flush=True)
                ok = [r for r in case if "error" not in r]
                petsc = [r["total_seconds"] for r in ok if r["method"] in ("icc", "gamg", "hypre")
                         and r["reason"].startswith("CONVERGED")]
                for r in ok:
                    if petsc:
                        r["total_over_fastest_petsc"] = r["total_seconds"] / min(petsc)
                rows += case
                if spec == args.scenes[0] and ranks == args.ranks[0]:
                    plot(ok, RESULTS / f"learned_residuals_{n}.png", f"{spec} scene {n}^3, {ranks} rank(s), rtol {args.rtol:g}")
                args.out.write_text(json.dumps({"rtol": args.rtol, "rows": rows}, indent=1))
    print("\nratios of total time to the fastest PETSc baseline (target: learned <= 0.1, mg <= 0.2):")
    for r in rows:
        if r.get("method") in ("learned", "mg") and "total_over_fastest_petsc" in r:
            print(f"  {r['scene']:<14} {r['n']:>4} ranks {r['ranks']} {r['method']:<8} {r['total_over_fastest_petsc']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
