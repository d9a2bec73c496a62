"""DeepONet on the antiderivative operator ``u -> s`` with ``s' = u``, ``s(0) = 0`` (Lu et al. 2021), through the
Python API: generate the data, train, evaluate, plot.

What it shows: ``deepkrylov.operators.data.generate_antiderivative`` (GRF inputs at 100 sensors, exact
antiderivatives at 100 points, seeded), a ``DeepONet([100, 40, 40], [1, 40, 40])`` (unstacked, aligned data:
``forward(u (B, 100), y (100, 1)) -> (B, 100)``) with its trunk's first-layer kinks placed at the data's
coordinates (``init_trunk_biases``), the shared ``Trainer`` (full batch, MSE, Adam; one epoch is one step), the
test MSE and relative L2 error, and ``deeponet_antiderivative.png``: three test inputs, their antiderivatives and
the predictions.

Run (from the repository root):
    .venv/bin/python examples/deeponet_antiderivative.py                          # 2,000 steps
    .venv/bin/python examples/deeponet_antiderivative.py --steps 50000 --lr-drop 40000   # the paper's setting

Time on a 2-core CPU machine: the default about 10 s (test MSE ~1e-4); the paper's 50,000 steps about 6 minutes
(test MSE a few 1e-7, see the README's results table).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import TensorDataset

from deepkrylov.operators import DeepONet, Trainer
from deepkrylov.operators.data import generate_antiderivative


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ntrain", type=int, default=150, help="training functions (x 100 points: the paper's 10k+)")
    p.add_argument("--ntest", type=int, default=1000, help="test functions")
    p.add_argument("--steps", type=int, default=2000, help="Adam steps (full batch)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-drop", type=int, default=0, help="multiply the learning rate by 0.1 at this step (0: never)")
    p.add_argument("--width", type=int, default=40, help="branch and trunk width (two layers each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/deeponet_antiderivative")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. data: aligned sets u (N, 100) at the sensors, y (100, 1) output points, s (N, 100) = antiderivative at y
    train = generate_antiderivative(args.ntrain, m=100, num_points=100, seed=args.seed)
    test = generate_antiderivative(args.ntest, m=100, num_points=100, seed=args.seed + 1000)
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    y = as_t(train["y"])
    train_ds = TensorDataset(as_t(train["u"]), as_t(train["s"]))
    test_ds = TensorDataset(as_t(test["u"]), as_t(test["s"]))

    # 2. model: branch [100, w, w] and trunk [1, w, w], ReLU, dot product of the two w-vectors plus a bias
    torch.manual_seed(args.seed)
    model = DeepONet([100, args.width, args.width], [1, args.width, args.width], "relu")
    model.init_trunk_biases(y, generator=torch.Generator().manual_seed(args.seed))

    # 3. train: one full batch per epoch, so an epoch is one Adam step
    config = dict(epochs=args.steps, batch_size=args.ntrain, lr=args.lr, loss="mse", seed=args.seed,
                  eval_every=max(1, args.steps // 10), progress=not args.no_progress)
    if args.lr_drop:
        config.update(scheduler="step", step_size=args.lr_drop, gamma=0.1)
    trainer = Trainer(model, config, forward=lambda m, inputs: m(inputs[0], y))
    history = trainer.fit(train_ds, {"test": test_ds})
    for rec in history:
        if "test/mse" in rec:
            print(f"step {rec['epoch']:6d}  train MSE {rec['train_loss']:.3e}  test MSE {rec['test/mse']:.3e}  "
                  f"test rel L2 {rec['test/rel_l2']:.3e}")

    # 4. evaluate and plot
    metrics = trainer.evaluate(test_ds)
    torch.save({"model": model.state_dict(), "config": dict(trainer.config), "test": metrics}, out / "model.pt")
    with torch.no_grad():
        pred = model.eval()(test_ds.tensors[0][:3], y)
    plot(test, pred.numpy(), out / "deeponet_antiderivative.png")
    print(f"test MSE {metrics['mse']:.3e}, test rel L2 {metrics['rel_l2']:.3e} on {args.ntest} functions; "
          f"wrote {out}/model.pt and {out}/deeponet_antiderivative.png")
    return 0


def plot(test: dict, pred: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 3, figsize=(12, 3.2))
    for i, ax in enumerate(axs):
        ax.plot(test["sensors"], test["u"][i], color="0.6", label="input u")
        ax.plot(test["y"][:, 0], test["s"][i], label="antiderivative s")
        ax.plot(test["y"][:, 0], pred[i], "--", label="DeepONet")
        ax.set_xlabel("x")
        ax.set_title(f"test function {i}")
    axs[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
