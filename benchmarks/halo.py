"""Halo exchange against a bare mpi4py Sendrecv of the same bytes, and HaloConv3d against torch.nn.Conv3d.

Run ``python benchmarks/halo.py`` (it launches itself under ``mpiexec -n 2`` and ``-n 4``), or directly under
``mpiexec -n N python benchmarks/halo.py --worker``. Prints a table and writes
``benchmarks/results/halo.json``.

Per rank, blocks of 32^3, 64^3 and 128^3 float64 cells, halo widths 1 and 2, zero boundary padding:
- ``exchange``: :func:`deepkrylov.distributed.fill_halo_` on a pre-padded buffer (packing, messages, boundary
  fill): the ghost update a solver does every iteration;
- ``sendrecv``: mpi4py ``Sendrecv`` of pre-packed contiguous buffers holding the least data a ghost update
  must move (faces over the interior of the later axes), with the same neighbours;
- ``messages``: only the messages of that update, through deepkrylov's exchange plan (persistent requests on
  cached MPI subarray datatypes; faces over the padded extent of the later axes, a few % more bytes, so that
  the first split axis's face is contiguous);
- ``halo()``: the functional form, which also allocates the padded block and copies the interior in.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _timing import slowest_rank_times

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _time_interleaved(fns, comm, reps: int) -> list[float]:
    """Median of the slowest rank's time per function, after two warm-up calls each (see ``_timing``)."""
    return [statistics.median(x) for x in slowest_rank_times(fns, comm, reps, warmup=2)]


def _time(fn, comm, reps: int) -> float:
    return _time_interleaved([fn], comm, reps)[0]


def worker(blocks: list[int], widths: list[int], reps: int) -> None:
    from mpi4py import MPI

    from deepkrylov.distributed import GridTensor, HaloConv3d, ProcessGrid, fill_halo_, init
    from deepkrylov.distributed.halo import normalize_widths, padded_shape

    torch.set_num_threads(1)
    ctx = init(backend="mpi")
    comm = MPI.COMM_WORLD
    rows = []
    for b in blocks:
        for w in widths:
            probe = ProcessGrid(ctx, (b, b, b))
            dims = probe.dims
            grid = ProcessGrid(ctx, tuple(b * d for d in dims), dims=dims)
            wd = normalize_widths(w, 3)
            buf = torch.randn((1, 1) + padded_shape(grid.local_shape, wd), dtype=torch.float64)
            x = GridTensor(buf[(slice(None), slice(None)) + tuple(slice(w, w + b) for _ in range(3))].clone(), grid)

            # bare Sendrecv: the least data a ghost update must move (faces over the earlier axes' padded extent and
            # the later axes' interior), pre-packed; deepkrylov sends the later axes' padded extent (contiguous)
            msgs = []
            for a in range(3):
                shape = (1, 1) + tuple(b + 2 * w if c < a else (w if c == a else b) for c in range(3))
                lo, hi = grid.neighbour(a, -1, False), grid.neighbour(a, +1, False)
                if lo is None and hi is None:
                    continue
                msgs.append((np.random.rand(*shape), hi, np.empty(shape), lo))
                msgs.append((np.random.rand(*shape), lo, np.empty(shape), hi))
            nbytes = sum(m[0].nbytes for m in msgs)

            def bare():
                for s, dest, r, src in msgs:
                    comm.Sendrecv(
                        s if dest is not None else [None, 0, MPI.BYTE], dest if dest is not None else MPI.PROC_NULL,
                        0, r if src is not None else [None, 0, MPI.BYTE], src if src is not None else MPI.PROC_NULL, 0,
                    )

            plan = grid.exchange_plan(wd, "zeros", buf.dtype, buf.device)

            def messages_only():
                for a in range(3):
                    plan._messages(buf, a)

            t_sr, t_msg, t_ex, t_halo = _time_interleaved(
                [bare, messages_only, lambda: fill_halo_(buf, grid, wd, "zeros"), lambda: x.halo(w, "zeros")],
                comm, reps)
            rows.append({
                "ranks": comm.size, "dims": list(dims), "block": b, "width": w, "bytes_sent_per_rank": nbytes,
                "messages_s": t_msg, "exchange_s": t_ex, "sendrecv_s": t_sr, "halo_s": t_halo,
                "messages_over_sendrecv": t_msg / t_sr,
                "exchange_over_sendrecv": t_ex / t_sr, "halo_over_sendrecv": t_halo / t_sr,
            })
            if comm.rank == 0:
                r = rows[-1]
                print(f"{comm.size:>5} {str(tuple(dims)):>10} {b:>4}^3 {w:>2} {nbytes / 1e6:>8.2f} MB "
                      f"{t_sr * 1e3:>10.3f} {t_msg * 1e3:>10.3f} {r['messages_over_sendrecv']:>6.2f}x "
                      f"{t_ex * 1e3:>10.3f} {r['exchange_over_sendrecv']:>6.2f}x "
                      f"{t_halo * 1e3:>10.3f} {r['halo_over_sendrecv']:>6.2f}x", flush=True)

    conv_rows = []
    if comm.size == 2:
        for b in blocks:
            torch.manual_seed(0)
            layer = HaloConv3d(16, 16, 3, padding=1).double()
            grid = ProcessGrid(ctx, (2 * b, b, b), dims=(2, 1, 1))
            full = torch.randn(1, 16, 2 * b, b, b, dtype=torch.float64)
            x = GridTensor.from_global(full, grid)
            with torch.no_grad():
                t_dist = _time(lambda: layer(x), comm, max(3, reps // 10))
                t_serial = None
                if comm.rank == 0:
                    layer(full)
                    ts = []
                    for _ in range(max(3, reps // 10)):
                        t0 = time.perf_counter()
                        layer(full)
                        ts.append(time.perf_counter() - t0)
                    t_serial = statistics.median(ts)
                t_serial = comm.bcast(t_serial, root=0)
            conv_rows.append({"global": [2 * b, b, b], "channels": 16, "halo_conv3d_2ranks_s": t_dist,
                              "conv3d_1process_s": t_serial, "speedup": t_serial / t_dist})
            if comm.rank == 0:
                print(f"HaloConv3d 16->16 on {2 * b}x{b}x{b}: 2 ranks {t_dist * 1e3:.1f} ms, "
                      f"nn.Conv3d 1 process {t_serial * 1e3:.1f} ms, speed-up {t_serial / t_dist:.2f}x", flush=True)
    if comm.rank == 0:
        out = RESULTS / f"halo_np{comm.size}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"host": platform.node(), "torch": torch.__version__, "threads_per_rank": 1,
                                   "halo": rows, "conv": conv_rows}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help="run the measurement (under mpiexec)")
    parser.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    if args.worker:
        worker(args.blocks, args.widths, args.reps)
        return
    print(f"{'ranks':>5} {'dims':>10} {'block':>6} {'w':>2} {'sent':>11} {'Sendrecv ms':>10} {'messages':>10} "
          f"{'ratio':>7} {'ghost upd.':>10} {'ratio':>7} {'halo() ms':>10} {'ratio':>7}")
    merged = {}
    for n in args.ranks:
        cmd = ["mpiexec", "-n", str(n), "--allow-run-as-root", "--oversubscribe", "--mca",
               "btl_vader_single_copy_mechanism", "none", sys.executable, __file__, "--worker",
               "--blocks", *map(str, args.blocks), "--widths", *map(str, args.widths), "--reps", str(args.reps)]
        subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        merged[f"np{n}"] = json.loads((RESULTS / f"halo_np{n}.json").read_text())
        (RESULTS / f"halo_np{n}.json").unlink()
    (RESULTS / "halo.json").write_text(json.dumps(merged, indent=2))
    print(f"wrote {RESULTS / 'halo.json'}")


if __name__ == "__main__":
    main()
