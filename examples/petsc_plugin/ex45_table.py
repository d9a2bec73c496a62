"""Run PETSc's tutorial ex45 (built here with ``make ex45``) with deepkrylov's multigrid PC plugins and PETSc's
GAMG and hypre BoomerAMG, on 1 and more ranks, and print a table: iterations, the true residual ex45 prints, and
PETSc's own timings of ``PCSetUp`` and ``KSPSolve`` (``-log_view``, slowest rank).

    python examples/petsc_plugin/ex45_table.py --sizes 33 65 --ranks 1 2 [--ksp gmres] [--json out.json]

Every configuration runs the same KSP (ex45's default GMRES unless ``--ksp``) with PETSc's default tolerances.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CONFIGS = {
    "MG": ["-pc_type", "python", "-pc_python_type", "deepkrylov.solvers.petsc.MG"],
    "MG degree 4": ["-pc_type", "python", "-pc_python_type", "deepkrylov.solvers.petsc.MG",
                    "-deepkrylov_mg_degree", "4"],
    "MG float32": ["-pc_type", "python", "-pc_python_type", "deepkrylov.solvers.petsc.MG",
                   "-deepkrylov_mg_dtype", "float32"],
    "LearnedMG": ["-pc_type", "python", "-pc_python_type", "deepkrylov.solvers.petsc.LearnedMG"],
    "LearnedMG classical": ["-pc_type", "python", "-pc_python_type", "deepkrylov.solvers.petsc.LearnedMG",
                            "-deepkrylov_learned_model", "classical"],
    "gamg": ["-pc_type", "gamg"],
    "hypre": ["-pc_type", "hypre"],
}


def run(binary: Path, n: int, ranks: int, ksp: str, extra: list[str], env: dict, python: str) -> dict:
    args = ["-da_grid_x", str(n), "-da_grid_y", str(n), "-da_grid_z", str(n), "-ksp_type", ksp,
            "-ksp_converged_reason", "-log_view", *extra]
    if "python" in extra:
        args += ["-python", python]
    cmd = ["mpiexec", "-n", str(ranks), "--allow-run-as-root", "--oversubscribe", str(binary), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        return {"error": text.strip().splitlines()[-1] if text.strip() else f"exit {out.returncode}"}
    m = re.search(r"Linear solve (?:converged|did not converge) due to (\S+) iterations (\d+)", out.stdout)
    res = re.search(r"^Residual norm (\S+)", out.stdout, flags=re.M)

    def event(name: str) -> float:
        e = re.search(rf"^{name}\s+\d+\s+\S+\s+(\S+)", out.stdout, flags=re.M)
        return float(e[1]) if e else float("nan")

    return {"reason": m[1] if m else "?", "its": int(m[2]) if m else -1,
            "residual": float(res[1]) if res else float("nan"),
            "setup_s": event("PCSetUp"), "solve_s": event("KSPSolve")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[33, 65], help="-da_grid_x/y/z (vertices per axis)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--ksp", default="gmres", help="the KSP type for every row (ex45's default: gmres)")
    ap.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS), help="rows (default: all that apply)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = ap.parse_args(argv)
    binary = HERE / "ex45"
    if not binary.exists():
        raise SystemExit(f"{binary} not found: run `make ex45` in {HERE} first")
    if shutil.which("mpiexec") is None:
        raise SystemExit("mpiexec is not installed")
    sys.path.insert(0, str(HERE.parents[1]))
    from deepkrylov.solvers.learned_multigrid import SHIPPED_LEARNED_MODEL
    from deepkrylov.solvers.petsc import embedding_environment

    emb = embedding_environment()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=emb["PYTHONPATH"])
    names = a.configs or [c for c in CONFIGS if c != "LearnedMG" or SHIPPED_LEARNED_MODEL.exists()]
    rows = []
    print(f"| grid | ranks | PC | iterations ({a.ksp}) | true residual | PCSetUp s | KSPSolve s |")
    print("|---|---|---|---|---|---|---|")
    for n in a.sizes:
        for ranks in a.ranks:
            for name in names:
                r = run(binary, n, ranks, a.ksp, CONFIGS[name], env, emb["python"])
                rows.append({"grid": n, "ranks": ranks, "pc": name, "ksp": a.ksp, **r})
                if "error" in r:
                    print(f"| {n}^3 | {ranks} | {name} | error: {r['error']} | | | |", flush=True)
                else:
                    print(f"| {n}^3 | {ranks} | {name} | {r['its']} ({r['reason']}) | {r['residual']:.3g} | "
                          f"{r['setup_s']:.3g} | {r['solve_s']:.3g} |", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
