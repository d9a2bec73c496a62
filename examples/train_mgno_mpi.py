"""An ``mpirun`` training job: domain-parallel MgNO on Darcy flow, with checkpoints and resume.

What it shows: every rank reads and holds only its block of every sample's 2D grid (``data.HDF5Fields`` on a
ProcessGrid, split as PETSc's DMDA would split it: an HDF5 hyperslab read per batch); the normalisation comes
from float64 sums over the blocks; MgNO's convolutions exchange halos; the Trainer computes the loss and metrics
on the blocks with global reductions and sums the weight gradients over the ranks. No rank ever holds a whole
field, and the run follows the serial one up to float32 rounding -- the way to train on grids whose samples and
activations do not fit one process. The Trainer writes ``last.pt`` (full state: weights,
optimizer, learning-rate schedule (x0.9 per epoch), epoch, RNG) every epoch, ``best.pt`` at the best test error,
and ``metrics.jsonl``; ``--resume`` continues from ``last.pt`` bit for bit, and refuses options that differ from
the run's (except ``--epochs``), naming them. At the end rank 0 writes ``prediction.png`` (a test sample: input,
truth, prediction, error) and ``summary.json``.

Data first (about 5 s on 2 cores; 200 samples at 64x64, 160 for training, 40 for testing):
    .venv/bin/deepkrylov datagen darcy --samples 200 --n 64 --out data/darcy64.h5

Run (OpenMPI as root needs the extra flags; elsewhere plain ``mpiexec -n 2`` or ``mpirun -np 2``):
    mpiexec -n 2 --allow-run-as-root --oversubscribe --mca btl_vader_single_copy_mechanism none \\
        .venv/bin/python examples/train_mgno_mpi.py --data data/darcy64.h5 --out runs/mgno_mpi
Interrupt it (Ctrl-C) and continue, or train on to more epochs:
    mpiexec -n 2 ... .venv/bin/python examples/train_mgno_mpi.py --data data/darcy64.h5 --out runs/mgno_mpi --resume
    mpiexec -n 2 ... .venv/bin/python examples/train_mgno_mpi.py --data data/darcy64.h5 --out runs/mgno_mpi \\
        --resume --epochs 40
One process works too (``.venv/bin/python examples/train_mgno_mpi.py ...``), and so does torchrun
(``.venv/bin/torchrun --nproc-per-node 2 examples/train_mgno_mpi.py ...``: torch.distributed, gloo on CPU).

Time on a 2-core CPU machine (shared with other jobs): the defaults (160 samples, 64x64, width 16, 3 layers,
10 epochs) take about 45 s in one process (~4 s per epoch) and 2-3 minutes on 2 ranks (~15 s per epoch: at 64x64
the halo exchanges of 32x64 blocks cost more than the split saves; domain parallelism pays off on grids too large
for one process). This small budget gives a rough model (test rel L2 about 0.4). The authors' configuration is
``--width 24 --layers 4 --levels 6`` (572,661 parameters) with 1000 samples and 100+ epochs: hours on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from deepkrylov.distributed import ProcessGrid, init
from deepkrylov.operators import MgNO, Normalized, Trainer
from deepkrylov.operators.data import HDF5Fields


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="Darcy HDF5 from `deepkrylov datagen darcy`")
    p.add_argument("--test", default=None, help="separate test set (default: the last 20%% of --data)")
    p.add_argument("--ntrain", type=int, default=None, help="training samples (default: 80%% of --data)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--loss", default="h1", choices=("l2", "h1"))
    p.add_argument("--width", type=int, default=16, help="MgNO channels")
    p.add_argument("--layers", type=int, default=3, help="MgNO layers")
    p.add_argument("--levels", type=int, default=4, help="V-cycle levels; the grid must divide by 2^(levels-1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/mgno_mpi")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def samples(path: str) -> tuple[int, tuple[int, ...]]:
    """Number of samples and grid shape of the Darcy file's coefficient field ``a`` (metadata only)."""
    import h5py

    with h5py.File(path, "r") as f:
        return f["a"].shape[0], tuple(f["a"].shape[1:])


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    ctx = init()  # mpi4py under mpiexec/mpirun; one process: no communication
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))

    n, shape = samples(args.data)
    ntrain = (n if args.test else int(0.8 * n)) if args.ntrain is None else args.ntrain
    n_test, test_shape = samples(args.test) if args.test else (n - ntrain, shape)
    if not 1 <= ntrain <= n or n_test <= 0:
        raise SystemExit(f"need 1 <= --ntrain <= {n} and a non-empty test set, but got ntrain={ntrain}")
    if test_shape != shape:
        raise SystemExit(f"the test grid {test_shape} differs from the training grid {shape}")
    if any(s % 2 ** (args.levels - 1) for s in shape):
        raise SystemExit(f"--levels {args.levels} needs grid sizes divisible by {2 ** (args.levels - 1)}, "
                         f"but the data are {shape}")

    grid = ProcessGrid(ctx, shape)  # each rank: one block of every sample
    train = HDF5Fields(args.data, ("a", "u"), grid, samples=range(ntrain))  # reads only this rank's block
    test_ids = range(n_test) if args.test else range(ntrain, n)
    test = HDF5Fields(args.test or args.data, ("a", "u"), grid, samples=test_ids)
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    net = MgNO(1, 1, channels=args.width, num_layers=args.layers, dim=2,
               iterations=((1, 0),) * (args.levels - 1) + ((2, 0),), resolution=list(shape))
    # scalar statistics from sums over the blocks, scale only (zero stays zero: Dirichlet data, see Normalized)
    stats = Normalized.uncentered(*Normalized.dataset_statistics(train, ctx.comm))
    model = Normalized(net, *stats)  # saved in the state dict
    config = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, loss=args.loss, loss_dim=2,
                  scheduler="exponential", gamma=0.9, seed=args.seed, progress=ctx.is_root and not args.no_progress)
    trainer = Trainer(model, config, out_dir=args.out, grid=grid)
    if ctx.is_root:
        params = sum(p.numel() for p in net.parameters())
        print(f"MgNO ({params:,} parameters) on {shape[0]}x{shape[1]}, {ntrain} training / {len(test)} test samples, "
              f"{ctx.size} rank(s): blocks {grid.dims} of about {grid.local_shape} cells", flush=True)
    try:
        history = trainer.fit(train, {"test": test}, resume=args.resume)
    except ValueError as err:  # a resume whose options differ from the run's: the same message on every rank
        raise SystemExit(f"{Path(sys.argv[0]).name}: {err}")

    last = trainer.evaluate(test)  # collective: every rank runs its blocks
    if ctx.is_root:
        for rec in history:
            print(f"epoch {rec['epoch']:3d}  train loss {rec['train_loss']:.4f}  test rel L2 {rec['test/rel_l2']:.4f}")
        summary = {"epochs": trainer.epoch, "ranks": ctx.size, "grid": list(shape), "ntrain": ntrain,
                   "test_rel_l2": last["rel_l2"], "best_test_rel_l2": trainer.best, "config": dict(trainer.config)}
        Path(args.out, "summary.json").write_text(json.dumps(summary, indent=1))
        first = HDF5Fields(args.test or args.data, ("a", "u"), samples=test_ids[:1])  # one whole sample, rank 0
        plot(trainer.module, first, Path(args.out, "prediction.png"))
        print(f"test rel L2 {last['rel_l2']:.4f} after {trainer.epoch} epochs; wrote {args.out}/last.pt, best.pt, "
              f"metrics.jsonl, summary.json, prediction.png")
    return 0


@torch.no_grad()
def plot(model: torch.nn.Module, test: HDF5Fields, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, u = (t[None] for t in test[0])
    pred = model.eval()(a)
    panels = [(a, "coefficient a"), (u, "truth u"), (pred, "prediction"), (pred - u, "error")]
    fig, axs = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, (img, title) in zip(axs, panels):
        im = ax.imshow(np.asarray(img[0, 0]), origin="lower")
        ax.set_title(title)
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
