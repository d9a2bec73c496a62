"""A small incompressible smoke simulation with deepkrylov as its pressure solver (2D or 3D, 1 or more ranks).

What it shows: a simulation code that calls a deepkrylov solver every time step. Smoke rises from a source near
the floor by buoyancy, around a solid sphere and a solid box, and leaves through the open top: the DCDM paper's
scene (``deepkrylov.mesh.smoke_scene``: SOLID cells = zero-flux obstacles and floor, EMPTY top layer = p = 0).
Each step: semi-Lagrangian advection (second-order back-trace, linear interpolation) of the density and of the
velocity on a MAC grid (normal velocities on cell faces), buoyancy, then the pressure projection: solve
``A p = -div u`` (``A``: the mask-aware 5/7-point Laplacian, ``laplacian(..., scaled=False)``) with the method of
``--method``, warm-started from the last step's pressure, and subtract the pressure gradient on the faces. On a
MAC grid the divergence left on fluid cells is exactly minus the solver's residual, so it is at most
``rtol * ||rhs||``; the script checks that every step.

Methods: ``learned`` (PCG with LearnedMultigrid; until its shipped 3D weights exist, and always in 2D, it falls
back to ``mg`` and says so), ``mg`` (PCG with the geometric Multigrid V-cycle, cycle in float32), ``cg`` (PCG with
Jacobi), ``dcdm`` (the DCDM iteration with the shipped 3D network; in 2D the same iteration with the multigrid
V-cycle as its direction, and it says so), ``petsc-icc`` (a PETSc KSP: CG with ICC). With ``--compare-icc`` (the
default when petsc4py is present) every step's system is also solved by PETSc CG+ICC from the same initial guess,
and its iterations and time are printed beside the method's.

Parallelism: the pressure solve runs on GridTensors split over the ranks of ``mpiexec`` (every solver above is
distributed). For simplicity the advection runs on rank 0 on whole arrays: rank 0 scatters each step's right-hand
side and gathers the pressure. Only rank 0 prints and writes files.

Outputs in ``--out``: ``frame_0001.png``... (density; 3D: its maximum along the depth axis; obstacles in grey),
``smoke.gif`` (matplotlib's PillowWriter, when pillow is installed), ``stats.json`` (per-step iterations, times,
residuals and divergences).

Run (from the repository root):
    .venv/bin/python examples/smoke/smoke.py                                 # 2D 64x64, 20 steps, method mg
    .venv/bin/python examples/smoke/smoke.py --dim 3 --n 32 --method dcdm
    mpiexec -n 2 .venv/bin/python examples/smoke/smoke.py --method cg        # OpenMPI as root: add
        # --allow-run-as-root --oversubscribe --mca btl_vader_single_copy_mechanism none
    .venv/bin/python examples/smoke/smoke.py --dim 3 --n 64 --steps 100 --method learned --out runs/smoke64

Time on a 2-core CPU machine: the default (2D 64x64, 20 steps, with the ICC comparison and the frames) under 10 s,
most of it Python start-up; 3D 32^3, 20 steps about 12 s; 3D 64^3, 100 steps a few minutes (most of it advection
and frames, not the multigrid solves). ``--method dcdm`` is much slower: every iteration is a network call, and
the shipped (preliminary, CPU-trained) network needs ~50 iterations per step at 16^3 (well under a second) and
~200 at 32^3 (about 10 s per step on one rank; on several ranks the network runs on GridTensors, much slower).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from scipy.ndimage import map_coordinates

from deepkrylov.distributed import GridTensor, ProcessGrid, init
from deepkrylov.mesh import FLUID, SOLID, BoundaryConditions, StructuredGrid, laplacian, smoke_scene

METHODS = ("learned", "mg", "cg", "dcdm", "petsc-icc")


# ---- the MAC grid: velocities on faces, density and pressure at cell centres (cell units, spacing 1) ----------
class MACGrid:
    """Cell kinds ``mask`` (axis 0 points up) and the face classification used by the projection.

    ``u[a]`` has ``n + 1`` entries along axis ``a``: face ``i`` lies between cells ``i - 1`` and ``i``."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask, self.shape, self.dim = mask, mask.shape, mask.ndim
        self.fluid = mask == FLUID
        self.closed, self.open = [], []  # faces with zero normal velocity / faces the pressure gradient acts on
        for a in range(self.dim):
            lo, hi = self.face_neighbours(np.pad(mask, [(1, 1) if b == a else (0, 0) for b in range(self.dim)],
                                                 constant_values=SOLID), a)
            closed = (lo == SOLID) | (hi == SOLID)  # obstacle faces and the domain's walls
            self.closed.append(closed)
            self.open.append(~closed & ((lo == FLUID) | (hi == FLUID)))

    def face_neighbours(self, padded: np.ndarray, a: int) -> tuple[np.ndarray, np.ndarray]:
        n = padded.shape[a]
        return np.take(padded, np.arange(0, n - 1), axis=a), np.take(padded, np.arange(1, n), axis=a)

    def zero_velocity(self) -> list[np.ndarray]:
        return [np.zeros(tuple(n + (b == a) for b, n in enumerate(self.shape))) for a in range(self.dim)]

    def divergence(self, u: list[np.ndarray]) -> np.ndarray:
        """Net outflow of every cell (the divergence times the cell volume, in cell units)."""
        return sum(np.diff(u[a], axis=a) for a in range(self.dim))

    def subtract_gradient(self, u: list[np.ndarray], p: np.ndarray) -> None:
        """``u -= grad p`` on the open faces (``p`` is 0 in EMPTY cells: the free surface's Dirichlet value)."""
        for a in range(self.dim):
            padded = np.pad(p, [(1, 1) if b == a else (0, 0) for b in range(self.dim)])
            lo, hi = self.face_neighbours(padded, a)
            u[a] -= np.where(self.open[a], hi - lo, 0.0)

    def enforce_walls(self, u: list[np.ndarray]) -> None:
        for a in range(self.dim):
            u[a][self.closed[a]] = 0.0


def _sample(field: np.ndarray, pos: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``field`` at positions ``pos (dim, ...)``; ``offset``: position of index 0."""
    coords = pos - offset.reshape((-1,) + (1,) * (pos.ndim - 1))
    return map_coordinates(field, coords.reshape(pos.shape[0], -1), order=1, mode="nearest").reshape(pos.shape[1:])


def _face_offset(dim: int, a: int) -> np.ndarray:
    off = np.full(dim, 0.5)
    off[a] = 0.0
    return off


def velocity_at(u: list[np.ndarray], pos: np.ndarray) -> np.ndarray:
    return np.stack([_sample(u[a], pos, _face_offset(len(u), a)) for a in range(len(u))])


def backtrace(u: list[np.ndarray], pos: np.ndarray, dt: float, shape: tuple) -> np.ndarray:
    """Where the fluid at ``pos`` was ``dt`` ago (midpoint rule), kept inside the box."""
    mid = pos - 0.5 * dt * velocity_at(u, pos)
    back = pos - dt * velocity_at(u, mid)
    hi = np.array(shape, dtype=float).reshape((-1,) + (1,) * (pos.ndim - 1))
    return np.clip(back, 0.0, hi)


def advect(mac: MACGrid, u: list[np.ndarray], density: np.ndarray, dt: float) -> tuple[list[np.ndarray], np.ndarray]:
    """Semi-Lagrangian advection of the density (cell centres) and of every velocity component (its faces)."""
    dim = mac.dim
    centres = np.indices(mac.shape, dtype=float) + 0.5
    new_density = _sample(density, backtrace(u, centres, dt, mac.shape), np.full(dim, 0.5))
    new_u = []
    for a in range(dim):
        pos = np.indices(u[a].shape, dtype=float) + _face_offset(dim, a).reshape((-1,) + (1,) * dim)
        new_u.append(_sample(u[a], backtrace(u, pos, dt, mac.shape), _face_offset(dim, a)))
    return new_u, new_density


def add_buoyancy(u: list[np.ndarray], density: np.ndarray, strength: float, dt: float) -> None:
    """Upward force ``strength * density`` on the vertical (axis 0) faces, density averaged to the faces."""
    padded = np.pad(density, [(1, 1)] + [(0, 0)] * (density.ndim - 1), mode="edge")
    u[0] += dt * strength * 0.5 * (padded[:-1] + padded[1:])


def source_region(shape: tuple) -> np.ndarray:
    """A disc (2D) or ball (3D) of radius 0.08 n (at least a cell) just above the floor, centred horizontally."""
    n = shape[0]
    c = np.indices(shape, dtype=float) + 0.5
    centre = [max(0.09 * n, 1.5)] + [0.5 * s for s in shape[1:]]
    return sum((ci - x0) ** 2 for ci, x0 in zip(c, centre)) <= max(0.08 * n, 1.0) ** 2


# ---- the pressure solvers ----------------------------------------------------------------------------------------
Solve = Callable[[GridTensor, Optional[GridTensor]], Any]


def on_plain_tensors(solve: Solve, pgrid: ProcessGrid) -> Solve:
    """On one rank, solve on the plain tensors inside the GridTensors (no halo bookkeeping; DCDM's network then
    takes its fast CPU inference path, ~10x faster at 32^3) and hand back a GridTensor."""
    if pgrid.size > 1:
        return solve

    def run(b: GridTensor, x0: Optional[GridTensor]) -> Any:
        res = solve(b.local, None if x0 is None else x0.local)
        res.x = GridTensor(res.x, pgrid)
        return res

    return run


def make_solver(method: str, A: Any, pgrid: ProcessGrid, args: argparse.Namespace, say: Callable[[str], None]) -> Solve:
    """``solve(b, x0) -> SolveResult`` for ``method``; preconditioners are set up once (the obstacles do not move)."""
    if method == "petsc-icc":
        return petsc_icc_solver(A, pgrid, args.rtol, args.max_it)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, but got {method!r}")
    return on_plain_tensors(_deepkrylov_solver(method, A, pgrid, args, say), pgrid)


def _deepkrylov_solver(method: str, A: Any, pgrid: ProcessGrid, args: argparse.Namespace,
                       say: Callable[[str], None]) -> Solve:
    from deepkrylov.solvers import Jacobi, Multigrid, cg

    dim = A.grid.ndim
    setup_grid = pgrid if pgrid.size > 1 else None
    rtol, max_it = args.rtol, args.max_it

    def multigrid() -> Any:
        return Multigrid(dtype=torch.float32).setup(A, setup_grid)

    if method == "learned":
        from deepkrylov.solvers import LearnedMultigrid
        from deepkrylov.solvers.learned_multigrid import load_stencil_net

        try:
            net = load_stencil_net(args.learned_model)
            if net.dim != dim:
                raise ValueError(f"the learned multigrid weights are {net.dim}D but this simulation is {dim}D")
            M = LearnedMultigrid(net=net, dtype=torch.float32).setup(A, setup_grid)
        except (FileNotFoundError, ValueError) as err:
            say(f"learned multigrid unavailable ({err}); using the geometric multigrid (--method mg) instead")
            M = multigrid()
        return lambda b, x0: cg(A, b, x0, M=M, rtol=rtol, max_it=max_it)
    if method == "mg":
        M = multigrid()
        return lambda b, x0: cg(A, b, x0, M=M, rtol=rtol, max_it=max_it)
    if method == "cg":
        M = Jacobi(A)
        return lambda b, x0: cg(A, b, x0, M=M, rtol=rtol, max_it=max_it)
    if method == "dcdm":
        from deepkrylov.solvers.dcdm import dcdm, load_model

        net = load_model(args.dcdm_model)
        if net.dim != dim:
            say(f"the DCDM network is {net.dim}D but this simulation is {dim}D: running the DCDM iteration with "
                "the multigrid V-cycle as its direction instead")
            direction: Any = multigrid()
        else:
            direction = net
        return lambda b, x0: dcdm(A, b, direction, x0, rtol=rtol, max_it=max_it)
    raise ValueError(f"method must be one of {METHODS}, but got {method!r}")


def petsc_icc_solver(A: Any, pgrid: ProcessGrid, rtol: float, max_it: int) -> Solve:
    """PETSc KSPCG + ICC (block Jacobi + ICC per block on several ranks) on the matrix assembled once."""
    from deepkrylov.solvers.petsc import assemble_aij, petsc_solve

    mat = assemble_aij(A, pgrid)

    def solve(b: GridTensor, x0: Optional[GridTensor]) -> Any:
        res = petsc_solve(mat, b, x0, ksp_type="cg", pc_type="icc", rtol=rtol, max_it=max_it)
        res.wall_time = res.info["setup_time"] + res.info["solve_time"]  # the ICC factorisation is redone per KSP
        return res

    return solve


# ---- frames ------------------------------------------------------------------------------------------------------
class Frames:
    """PNG frames of the density (3D: its maximum over the last axis) with the obstacles, and an animated GIF."""

    def __init__(self, out: Path, mask: np.ndarray, gif: bool, say: Callable[[str], None]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import animation

        self.out, self.plt = out, plt
        solid = mask == SOLID if mask.ndim == 2 else (mask == SOLID)[..., mask.shape[-1] // 2]
        self.fig, ax = plt.subplots(figsize=(4, 4.3))
        self.image = ax.imshow(np.zeros(solid.shape), origin="lower", cmap="inferno", vmin=0.0, vmax=1.0)
        ax.imshow(np.ma.masked_where(~solid, np.ones(solid.shape)), origin="lower", cmap="gray", vmin=0, vmax=2)
        ax.set_axis_off()
        self.title = ax.set_title("")
        self.fig.tight_layout()
        self.writer = None
        if gif:
            if animation.PillowWriter.isAvailable():
                self.writer = animation.PillowWriter(fps=10)
                self.writer.setup(self.fig, str(out / "smoke.gif"), dpi=60)
            else:
                say("pillow is not installed: no GIF (pip install pillow); PNG frames only")
        self.count = 0

    def add(self, density: np.ndarray, step: int) -> None:
        img = density if density.ndim == 2 else density.max(axis=-1)
        self.image.set_data(np.clip(img, 0.0, 1.0))
        self.title.set_text(f"step {step}")
        self.fig.savefig(self.out / f"frame_{step:04d}.png", dpi=60)
        if self.writer is not None:
            self.writer.grab_frame()
        self.count += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.finish()
        self.plt.close(self.fig)


# ---- the simulation ----------------------------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dim", type=int, default=2, choices=(2, 3))
    p.add_argument("--n", type=int, default=None, help="cells per axis, even (default 64 in 2D, 32 in 3D)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--method", default="mg", choices=METHODS)
    p.add_argument("--rtol", type=float, default=1e-6, help="relative residual of every pressure solve")
    p.add_argument("--max-it", type=int, default=2000)
    p.add_argument("--dt", type=float, default=1.0, help="time step (cell units: a velocity of 1 crosses a cell)")
    p.add_argument("--buoyancy", type=float, default=0.1, help="upward acceleration per unit density (at n = 64; "
                   "scaled with n so the smoke crosses the same fraction of the box per step)")
    p.add_argument("--compare-icc", action=argparse.BooleanOptionalAction, default=None,
                   help="also solve every step's system with PETSc CG+ICC (default: when petsc4py is installed)")
    p.add_argument("--frame-every", type=int, default=1, help="write a frame every this many steps (0: none)")
    p.add_argument("--gif", action=argparse.BooleanOptionalAction, default=True, help="write smoke.gif")
    p.add_argument("--learned-model", default=None, help="learned multigrid weights (default: the shipped ones)")
    p.add_argument("--dcdm-model", default=None, help="DCDM model file (default: the shipped one)")
    p.add_argument("--out", default="runs/smoke", help="output directory")
    args = p.parse_args(argv)
    if args.n is None:
        args.n = 64 if args.dim == 2 else 32
    if args.n < 8 or args.n % 4:
        p.error(f"--n must be a multiple of 4 and at least 8, but got {args.n}")
    if args.steps < 1:
        p.error(f"--steps must be at least 1, but got {args.steps}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    ctx = init()
    root = ctx.is_root

    def say(text: str) -> None:
        if root:
            print(text, flush=True)

    from deepkrylov.solvers.petsc import petsc_available

    compare = args.compare_icc if args.compare_icc is not None else petsc_available()
    if compare and not petsc_available():
        raise SystemExit("--compare-icc needs petsc4py (scripts/setup.sh, or pip install deepkrylov[petsc])")
    if args.method == "petsc-icc" and not petsc_available():
        raise SystemExit("--method petsc-icc needs petsc4py (scripts/setup.sh, or pip install deepkrylov[petsc])")
    out = Path(args.out)
    if root:
        out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))

    shape = (args.n,) * args.dim
    mask_t = smoke_scene(args.n, args.dim)
    A = laplacian(StructuredGrid(shape), BoundaryConditions.uniform(args.dim, "neumann"), mask_t, scaled=False)
    pgrid = ProcessGrid(ctx, shape)
    t0 = time.perf_counter()
    solve = make_solver(args.method, A, pgrid, args, say)
    reference = petsc_icc_solver(A, pgrid, args.rtol, args.max_it) if compare and args.method != "petsc-icc" else None
    setup = time.perf_counter() - t0
    say(f"smoke {args.dim}D {'x'.join(map(str, shape))}, {args.steps} steps, method {args.method}, rtol {args.rtol:g}, "
        f"{ctx.size} rank(s) (pressure solve distributed, advection on rank 0); set-up {setup:.2f} s")
    header = f"{'step':>5} {'its':>5} {'solve s':>8} {'|div|/|b|':>10}"
    say(header + (f" {'ICC its':>8} {'ICC s':>8}" if reference else ""))

    mask = mask_t.numpy()
    mac = MACGrid(mask) if root else None
    u = mac.zero_velocity() if root else None
    density = np.zeros(shape) if root else None
    source = source_region(shape) & (mask == FLUID) if root else None
    strength = args.buoyancy * args.n / 64
    frames = Frames(out, mask, args.gif, say) if root and args.frame_every > 0 else None
    fluid = mask == FLUID
    x_prev: Optional[GridTensor] = None
    records = []
    wall = time.perf_counter()
    for step in range(1, args.steps + 1):
        rhs = None
        if root:
            u, density = advect(mac, u, density, args.dt)
            density[source] = 1.0
            u[0][:-1][source] = np.maximum(u[0][:-1][source], 0.5 * strength / 0.1)  # a gentle upward jet
            add_buoyancy(u, density, strength, args.dt)
            density[mask != FLUID] = 0.0  # smoke leaves through the open top; none inside obstacles
            mac.enforce_walls(u)
            rhs = torch.from_numpy(np.where(fluid, -mac.divergence(u), 0.0))[None, None]
        b = GridTensor.scatter(rhs, pgrid)
        bnorm = float(b.norm())
        rec: dict[str, Any] = {"step": step, "rhs_norm": bnorm}
        if bnorm > 0:
            res = solve(b, x_prev)
            if not res.converged:
                raise SystemExit(f"step {step}: the pressure solve did not converge ({res.reason.name} after "
                                 f"{res.iterations} iterations); try --method mg or a larger --max-it")
            rec.update(iterations=res.iterations, solve_time=res.wall_time)
            if reference is not None:
                ref = reference(b, x_prev)
                rec.update(icc_iterations=ref.iterations, icc_time=ref.wall_time)
            x_prev = res.x
            p = res.x.gather(root=0)
        else:  # nothing moves yet: the pressure is zero
            rec.update(iterations=0, solve_time=0.0)
            p = torch.zeros((1, 1) + shape, dtype=torch.float64) if root else None
        if root:
            # only fluid cells are unknowns: a solver may leave values elsewhere (DCDM's network directions touch
            # every cell), but the free surface is p = 0 in EMPTY cells and SOLID cells have no pressure
            mac.subtract_gradient(u, np.where(fluid, p[0, 0].numpy(), 0.0))
            div = float(np.linalg.norm(mac.divergence(u)[fluid]))
            rec["div_norm"] = div
            line = f"{step:5d} {rec['iterations']:5d} {rec['solve_time']:8.4f} {div / max(bnorm, 1e-300):10.2e}"
            if reference is not None and "icc_iterations" in rec:
                line += f" {rec['icc_iterations']:8d} {rec['icc_time']:8.4f}"
            say(line)
            if frames is not None and step % args.frame_every == 0:
                frames.add(density, step)
        records.append(rec)
    wall = time.perf_counter() - wall
    if root:
        if frames is not None:
            frames.close()
        its = [r["iterations"] for r in records if r["iterations"]]
        summary = {
            "dim": args.dim, "n": args.n, "steps": args.steps, "method": args.method, "rtol": args.rtol,
            "ranks": ctx.size, "setup_time": setup, "wall_time": wall,
            "mean_iterations": float(np.mean(its)) if its else 0.0,
            "total_solve_time": sum(r["solve_time"] for r in records),
            "max_div_over_rhs": max((r["div_norm"] / r["rhs_norm"] for r in records if r["rhs_norm"] > 0), default=0.0),
            "frames": frames.count if frames is not None else 0,
            "gif": bool(frames is not None and frames.writer is not None),
            "records": records,
        }
        if reference is not None and any("icc_iterations" in r for r in records):
            icc = [r["icc_iterations"] for r in records if "icc_iterations" in r]
            summary["icc_mean_iterations"] = float(np.mean(icc))
            summary["icc_total_time"] = sum(r.get("icc_time", 0.0) for r in records)
        (out / "stats.json").write_text(json.dumps(summary, indent=1))
        line = (f"mean iterations {summary['mean_iterations']:.1f}, solve time {summary['total_solve_time']:.2f} s")
        if "icc_mean_iterations" in summary:
            line += f" (PETSc ICC: {summary['icc_mean_iterations']:.1f} its, {summary['icc_total_time']:.2f} s)"
        say(line + f"; {wall:.1f} s for {args.steps} steps; wrote {summary['frames']} frames"
            + (" and smoke.gif" if summary["gif"] else "") + f" to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
