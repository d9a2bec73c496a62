"""DCDM against CG and PETSc (CG with ICC, GAMG, hypre BoomerAMG) on the obstacle scene, at several grid sizes
and tolerances: iterations, wall time, time per iteration. Prints a table, writes ``benchmarks/results/dcdm.json``
and the residual histories of one scene as ``benchmarks/results/dcdm_residuals.png``.

Each case runs ``deepkrylov solve`` (the same code users run) and reads its JSON. Defaults are sized for a small
CPU machine; the paper's setting is ``--sizes 32 64 128 --tols 1e-4 1e-6`` with a model trained at 64^3 or 128^3
(``--model``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--tols", type=float, nargs="+", default=[1e-4, 1e-6])
    ap.add_argument("--methods", nargs="+", default=["dcdm", "cg", "icc", "gamg", "hypre"])
    ap.add_argument("--max-it", type=int, default=400)
    ap.add_argument("--model", type=Path, help="DCDM model file (default: the shipped model)")
    ap.add_argument("--ranks", type=int, default=1)
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'n':>4} {'tol':>7} {'method':<7} {'its':>5} {'time s':>9} {'s/it':>9} {'rel.res':>9}  reason")
    for n in args.sizes:
        for tol in args.tols:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "solve.json"
                cmd = [sys.executable, "-m", "deepkrylov.cli", "solve", "--n", str(n), "--rtol", str(tol),
                       "--max-it", str(args.max_it), "--methods", *args.methods, "--json", str(out)]
                if args.model:
                    cmd += ["--model", str(args.model)]
                if n == args.sizes[0] and tol == args.tols[-1]:
                    cmd += ["--plot", str(RESULTS / "dcdm_residuals.png")]
                if args.ranks > 1:
                    cmd = ["mpiexec", "-n", str(args.ranks), "--allow-run-as-root", "--oversubscribe"] + cmd
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
                table = json.loads(out.read_text())
            for r in table["rows"]:
                r.update(n=n, tol=tol, ranks=args.ranks)
                rows.append(r)
                print(f"{n:>4} {tol:>7.0e} {r['method']:<7} {r['iterations']:>5} {r['seconds']:>9.3f} "
                      f"{r['seconds_per_iteration']:>9.2e} {r['relative_residual']:>9.1e}  {r['reason']}", flush=True)
    cg_its = {(r["n"], r["tol"]): r["iterations"] for r in rows if r["method"] == "icc"}
    for r in rows:
        if r["method"] == "dcdm" and (r["n"], r["tol"]) in cg_its:
            r["icc_its_over_dcdm_its"] = cg_its[(r["n"], r["tol"])] / max(r["iterations"], 1)
    (RESULTS / "dcdm.json").write_text(json.dumps({"rows": rows, "model": str(args.model or "shipped")}, indent=2))
    print(f"wrote {RESULTS / 'dcdm.json'}")


if __name__ == "__main__":
    main()
