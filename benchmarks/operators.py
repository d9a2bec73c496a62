"""MgNO vs our FNO vs neuraloperator's FNO on Darcy 2D (and MgNO vs FNO on Navier-Stokes), same data and epochs.

Run ``python benchmarks/operators.py`` (the paper-size run: ``--n-train 1000 --n-test 100 --res 64 --epochs 100``;
the defaults are a reduced budget for a small shared CPU). The Darcy data (thresholded GRF coefficient, -div(a grad
u) = 1, u = 0 on the boundary) comes from ``deepkrylov.operators.data``; the test set is also generated at twice
the resolution for zero-shot evaluation. All models train with Adam + OneCycle on the same batches and loss
(relative H1 by default, as in the MgNO paper, or relative L2); reported: relative L2 and H1 test error at the
training resolution and at 2x (zero-shot), parameters, seconds per epoch. Prints a table and writes
``benchmarks/results/operators.json``.

The peer is PyPI ``neuraloperator`` (``pip install --no-deps neuraloperator tensorly tensorly-torch opt-einsum``);
its ``n_modes`` counts all kept frequencies of a full axis, so ``n_modes = 2 * modes`` matches our FNO.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepkrylov.operators.fno import FNO
from deepkrylov.operators.mgno import MgNO
from deepkrylov.operators.normalization import Normalized

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


# ---- metrics: the peer library's relative Lp and H1 losses (same definitions for every model) --------------------
def _metrics(periodic: bool) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    from neuralop.losses import H1Loss, LpLoss

    return {
        "l2": LpLoss(d=2, p=2, reduction="mean"),
        "h1": H1Loss(d=2, reduction="mean", periodic_in_x=periodic, periodic_in_y=periodic),
    }


# ---- data ------------------------------------------------------------------------------------------------------
def darcy(num: int, res: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(coefficient, solution) as (num, 1, res, res) float32 from the package's Darcy generator."""
    try:
        mod = importlib.import_module("deepkrylov.operators.data.darcy")
    except ImportError as err:
        raise SystemExit(f"the Darcy generator deepkrylov.operators.data.darcy is not available yet ({err})")
    gen = getattr(mod, "generate_darcy")
    data = gen(num_samples=num, n=res, seed=seed)
    a, u = (data["a"], data["u"]) if isinstance(data, dict) else data
    a = torch.as_tensor(np.asarray(a), dtype=torch.float32).reshape(num, 1, res, res)
    u = torch.as_tensor(np.asarray(u), dtype=torch.float32).reshape(num, 1, res, res)
    return a, u


def navier_stokes(num: int, res: int, seed: int, T: float, nu: float) -> tuple[torch.Tensor, torch.Tensor]:
    from deepkrylov.operators.data.navier_stokes import generate_navier_stokes

    d = generate_navier_stokes(num, n=res, viscosity=nu, T=T, dt=1e-3, record_steps=1, seed=seed)
    return (torch.as_tensor(d["w0"], dtype=torch.float32)[:, None], torch.as_tensor(d["w"][:, -1:], dtype=torch.float32))


# ---- models ----------------------------------------------------------------------------------------------------
def build(name: str, args: argparse.Namespace, periodic: bool) -> nn.Module:
    if name == "mgno":
        return MgNO(1, 1, channels=args.mgno_channels, num_layers=args.mgno_layers,
                    padding_mode="circular" if periodic else "zeros")
    if name == "fno":
        return FNO(1, 1, modes=args.modes, width=args.width, num_layers=4, padding=0.0 if periodic else 0.1,
                   projection_channels=2 * args.width)
    if name == "neuralop-fno":
        from neuralop.models import FNO as PeerFNO

        return PeerFNO(n_modes=(2 * args.modes, 2 * args.modes), hidden_channels=args.width, in_channels=1,
                       out_channels=1, n_layers=4, domain_padding=None if periodic else 0.1)
    raise ValueError(f"model must be one of mgno, fno, neuralop-fno, but got {name!r}")


def train_eval(
    name: str, args: argparse.Namespace, data: dict[str, torch.Tensor], periodic: bool
) -> dict[str, float]:
    torch.manual_seed(args.seed)
    model = Normalized.fit(build(name, args, periodic), data["x"], data["y"])
    metrics = _metrics(periodic)
    loss_fn = metrics[args.loss]
    n = data["x"].shape[0]
    steps = args.epochs * math.ceil(n / args.batch)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    g = torch.Generator().manual_seed(args.seed)
    times = []
    for epoch in range(args.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=g)
        for b in range(0, n, args.batch):
            idx = perm[b:b + args.batch]
            opt.zero_grad()
            loss = loss_fn(model(data["x"][idx]), data["y"][idx])
            loss.backward()
            opt.step()
            sched.step()
        times.append(time.perf_counter() - t0)
    model.eval()
    # real numbers: neuraloperator stores complex spectral weights (numel counts each once), ours real/imag pairs
    out = {"params": sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters()), "s_per_epoch": float(np.median(times))}
    with torch.no_grad():
        for tag, (x, y) in (("", (data["xt"], data["yt"])), ("_2x", (data.get("xt2"), data.get("yt2")))):
            if x is None:
                continue
            pred = torch.cat([model(x[i:i + args.batch]) for i in range(0, x.shape[0], args.batch)])
            for m, fn in metrics.items():
                out[f"{m}{tag}"] = float(fn(pred, y))
    return out


def _table(title: str, rows: dict[str, dict[str, float]]) -> str:
    cols = ["params", "s_per_epoch", "l2", "h1", "l2_2x", "h1_2x"]
    lines = [title, f"{'model':<14}" + "".join(f"{c:>13}" for c in cols)]
    for name, r in rows.items():
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append(f"{'-':>13}" if v is None else (f"{int(v):>13d}" if c == "params" else f"{v:>13.4g}"))
        lines.append(f"{name:<14}" + "".join(cells))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-test", type=int, default=50)
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--loss", choices=("h1", "l2"), default="h1")
    p.add_argument("--models", default="mgno,fno,neuralop-fno")
    p.add_argument("--mgno-channels", type=int, default=24)
    p.add_argument("--mgno-layers", type=int, default=4)
    p.add_argument("--modes", type=int, default=12)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--no-zero-shot", action="store_true", help="skip the 2x-resolution test set")
    p.add_argument("--tasks", default="darcy,ns", help="comma list of darcy (3 models) and ns (MgNO vs our FNO)")
    p.add_argument("--ns-T", type=float, default=1.0)
    p.add_argument("--ns-nu", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "operators.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    result: dict = {"config": vars(args), "machine": platform.platform(), "torch": torch.__version__}

    tasks = [t for t in args.tasks.split(",") if t]
    if any(t not in ("darcy", "ns") for t in tasks):
        raise SystemExit(f"--tasks must list darcy and/or ns, but got {args.tasks!r}")
    if "darcy" in tasks:
        _run_darcy(args, models, result)
    if "ns" in tasks:
        _run_ns(args, models, result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return result


def _run_darcy(args: argparse.Namespace, models: list[str], result: dict) -> None:
    t0 = time.perf_counter()
    x, y = darcy(args.n_train + args.n_test, args.res, args.seed)
    data = {"x": x[:args.n_train], "y": y[:args.n_train], "xt": x[args.n_train:], "yt": y[args.n_train:]}
    if not args.no_zero_shot:
        data["xt2"], data["yt2"] = darcy(args.n_test, 2 * args.res, args.seed + 1)
    result["darcy_data_s"] = time.perf_counter() - t0
    rows = {m: train_eval(m, args, data, periodic=False) for m in models}
    result["darcy"] = rows
    print(_table(f"Darcy {args.res}x{args.res}, {args.n_train}/{args.n_test}, {args.epochs} epochs, "
                 f"{args.loss} loss (2x = zero-shot at {2 * args.res})", rows))


def _run_ns(args: argparse.Namespace, models: list[str], result: dict) -> None:
    t0 = time.perf_counter()
    x, y = navier_stokes(args.n_train + args.n_test, args.res, args.seed + 2, args.ns_T, args.ns_nu)
    data = {"x": x[:args.n_train], "y": y[:args.n_train], "xt": x[args.n_train:], "yt": y[args.n_train:]}
    result["ns_data_s"] = time.perf_counter() - t0
    rows = {m: train_eval(m, args, data, periodic=True) for m in models if m in ("mgno", "fno")}
    result["navier_stokes"] = rows
    print(_table(f"Navier-Stokes {args.res}x{args.res}, w(0) -> w({args.ns_T}), nu={args.ns_nu}", rows))


if __name__ == "__main__":
    main()
