"""Distributed FFT: a 3D rfftn + irfftn round trip against torch.fft on one process, and all-to-all times.

Run ``python benchmarks/fft.py`` (it launches itself under ``mpiexec -n N`` for each N of ``--ranks``), or directly
``mpiexec -n N python benchmarks/fft.py --worker``. Prints a table and writes ``benchmarks/results/fft.json``.

- ``roundtrip``: ``irfftn(rfftn(x))`` of a float64 ``(1, 1, n, n, n)`` GridTensor on the default process grid
  (the slowest rank's time, median and minimum over repetitions), its all-to-all share (the repartitions alone),
  and on one rank ``torch.fft.irfftn(torch.fft.rfftn(x))`` on the whole tensor;
- ``alltoall``: one repartition of a complex128 ``(n, n, n)`` field from a slab split along the first axis to one
  along the second (what the FFT does), through :func:`deepkrylov.distributed.redistribute`, for both engines:
  ``bytes_per_rank`` (the block), ``bytes_sent_per_rank`` (to other ranks), ``messages_per_rank``, ``seconds``
  (median) and ``seconds_min``. These rows are for fitting ``t = alpha * messages + beta * bytes_sent`` (use the
  minima on a shared machine).

All timings use 1 thread per rank.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from _timing import slowest_rank_times

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _time_interleaved(fns, comm, reps: int) -> list[tuple[float, float]]:
    """Median and minimum of the slowest rank's time per function (see ``_timing``)."""
    return [(statistics.median(x), min(x)) for x in slowest_rank_times(fns, comm, reps)]


def _time(fn, comm, reps: int) -> tuple[float, float]:
    return _time_interleaved([fn], comm, reps)[0]


def worker(sizes: list[int], a2a_sizes: list[int], reps: int, backend: str) -> None:
    from deepkrylov.distributed import GridTensor, ProcessGrid, init, irfftn, redistribute, rfftn
    from deepkrylov.distributed.fft import _Repartition, _plan

    torch.set_num_threads(1)
    ctx = init(backend=backend)
    comm = ctx.comm
    rows, a2a = [], []
    if backend == "mpi":
        for n in sizes:
            grid = ProcessGrid(ctx, (n, n, n))
            full = torch.randn((1, 1, n, n, n), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            x = GridTensor.from_global(full, grid)
            plan = _plan(grid, True)
            moves = [st for st in plan.stages if st[0] == "move"]
            with torch.no_grad():
                def serial():
                    return torch.fft.irfftn(torch.fft.rfftn(full, dim=(2, 3, 4)), s=(n, n, n), dim=(2, 3, 4))

                t_serial = (None, None)
                if comm.size == 1:  # torch.fft on the whole tensor, interleaved with ours
                    t_dist, t_serial = _time_interleaved([lambda: irfftn(rfftn(x)), serial], comm, reps)
                else:
                    t_dist = _time(lambda: irfftn(rfftn(x)), comm, reps)
                spec = rfftn(x).local
                blocks = {}

                def moves_only():  # the repartitions of the round trip, on blocks of their real sizes
                    for _, s, d in moves:
                        a = blocks.setdefault((s, d), spec.new_zeros((1, 1) + s.local_shape))
                        b = _Repartition.apply(a, s, d, (0, 0, 0))
                        _Repartition.apply(b, d, s, (0, 0, 0))

                t_moves = _time(moves_only, comm, reps) if moves else (0.0, 0.0)
            rows.append({"n": n, "ranks": comm.size, "dims": list(grid.dims), "alltoalls": 2 * len(moves),
                         "roundtrip_s": t_dist[0], "roundtrip_min_s": t_dist[1],
                         "alltoall_share_s": t_moves[0], "alltoall_share_min_s": t_moves[1],
                         "torch_fft_1process_s": t_serial[0], "torch_fft_1process_min_s": t_serial[1]})
            if comm.rank == 0:
                extra = f"  torch.fft {t_serial[0] * 1e3:8.1f} ms" if t_serial[0] is not None else ""
                print(f"roundtrip {n:>4}^3 ranks {comm.size} dims {grid.dims}: {t_dist[0] * 1e3:8.1f} ms "
                      f"(min {t_dist[1] * 1e3:.1f}; all-to-all {t_moves[0] * 1e3:7.1f} ms){extra}", flush=True)
    for n in a2a_sizes:
        if n < comm.size:
            continue
        src = ProcessGrid(ctx, (n, n, n), dims=(comm.size, 1, 1))
        dst = ProcessGrid(ctx, (n, n, n), dims=(1, comm.size, 1))
        x = GridTensor(torch.randn((1, 1) + src.local_shape, dtype=torch.complex128), src)
        with torch.no_grad():
            t, t_min = _time(lambda: redistribute(x, dst), comm, reps if n <= 64 else max(5, (2 * reps) // 3))
        mine = [s for s in src.local_slices]
        keep = dst.local_slices_of(comm.rank)
        self_part = 16 * (mine[0].stop - mine[0].start) * (keep[1].stop - keep[1].start) * n
        nbytes = x.local.numel() * 16
        a2a.append({"engine": backend, "ranks": comm.size, "n": n, "bytes_per_rank": nbytes,
                    "bytes_sent_per_rank": nbytes - self_part, "messages_per_rank": comm.size - 1, "seconds": t,
                    "seconds_min": t_min})
        if comm.rank == 0:
            print(f"alltoall {backend:>5} ranks {comm.size} {n:>4}^3 complex128: {nbytes / 1e6:8.3f} MB/rank "
                  f"({(nbytes - self_part) / 1e6:8.3f} MB sent) {t * 1e3:9.3f} ms (min {t_min * 1e3:.3f})", flush=True)
    if comm.rank == 0:
        out = RESULTS / f"fft_np{comm.size}_{backend}.json"
        out.write_text(json.dumps({"roundtrip": rows, "alltoall": a2a}))
    ctx.close_torch_distributed()  # join gloo's threads before the interpreter exits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help="run the measurement (under mpiexec)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[64, 128])
    parser.add_argument("--alltoall-sizes", type=int, nargs="+", default=[8, 16, 32, 64, 96, 128])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--roundtrip-ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--engines", nargs="+", default=["mpi", "torch"])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--backend", default="mpi", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.sizes, args.alltoall_sizes, args.reps, args.backend)
        return
    merged: dict = {"host": platform.node(), "torch": torch.__version__, "threads_per_rank": 1,
                    "dtype": "float64 field, complex128 spectrum",
                    "note": "times are the slowest rank's, median (and *_min: minimum) over repetitions, on a VM "
                            "shared with other jobs: medians carry scheduling delays of ranks that wait for a core, "
                            "the minimum is closest to the machine's own latency and bandwidth",
                    "load_average_1min_at_start": os.getloadavg()[0], "cpus": os.cpu_count(),
                    "roundtrip": [], "alltoall": []}
    for n in args.ranks:
        for engine in args.engines:
            sizes = args.sizes if (engine == "mpi" and n in args.roundtrip_ranks) else []
            cmd = ["mpiexec", "-n", str(n), "--allow-run-as-root", "--oversubscribe", "--mca",
                   "btl_vader_single_copy_mechanism", "none", sys.executable, __file__, "--worker", "--backend", engine,
                   "--reps", str(args.reps), "--sizes", *map(str, sizes), "--alltoall-sizes",
                   *map(str, args.alltoall_sizes)]
            subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=ROOT)
            part = RESULTS / f"fft_np{n}_{engine}.json"
            got = json.loads(part.read_text())
            part.unlink()
            merged["roundtrip"] += got["roundtrip"]
            merged["alltoall"] += got["alltoall"]
    merged["load_average_1min_at_end"] = os.getloadavg()[0]
    (RESULTS / "fft.json").write_text(json.dumps(merged, indent=2))
    print(f"wrote {RESULTS / 'fft.json'}")


if __name__ == "__main__":
    main()
