"""Resolution table: MgNO, our FNO, a converted U-Net and neuraloperator's FNO trained at one resolution and
evaluated zero-shot at others, on Darcy and on Navier-Stokes, with the same data, batches, loss and epochs.

Run ``python benchmarks/operators.py`` (defaults: train at 64 on 300 samples for 15 epochs, evaluate 50 test
functions at 32, 64, 128 and 256). Prints one table per task and writes ``benchmarks/results/operators_resolution.json``
and a plot of error against resolution, ``operators_resolution.png``.

Test sets are the *same functions* at every resolution (so the columns differ only by the grid):

* Darcy (``-div(a grad u) = 1``, ``u = 0`` on the boundary, ``a`` = 12 where a Matérn GRF is >= 0, else 3): the GRF
  is drawn once on the finest test grid, its cell averages are taken on each coarser grid (4x4 blocks for 64 from
  256: the cell-centred sample of the same function), thresholded there and *solved at that resolution* with the
  package's PCG. The reference at each resolution is that grid's discrete solution, not a subsample of the finest
  one (subsampling a thresholded field would pin the interfaces to the fine grid).
* Navier-Stokes (vorticity, periodic, nu = 1e-3, w(0) -> w(T)): solved pseudo-spectrally on the finest test grid
  and subsampled (the nodes ``i/n`` are nested); at 64 this differs from a 64-grid solve by 4e-4 relative.

Training sets come from the package generators at the training resolution (``generate_darcy``,
``generate_navier_stokes``). Every model trains on the same batches with the CLI's recipe (Adam 1e-3, weight decay
1e-4, cosine decay per epoch, relative H1 loss) inside scalar input/output normalisation (uncentred for MgNO). They
run at the other resolutions as they are: MgNO (built with ``resolution=`` the training grid) and both FNOs
natively, the U-Net through :func:`deepkrylov.operators.convert.convert` (edge-replicating padding and coordinate
channels on Darcy's bounded domain, circular padding on the torus). Metrics are neuraloperator's relative L2 and H1.

The peer is PyPI ``neuraloperator`` (``pip install -e .[bench]``); its ``n_modes`` counts all kept frequencies of
a full axis, so ``n_modes = 2 * modes`` matches our FNO.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepkrylov.operators.convert import converted_unet
from deepkrylov.operators.fno import FNO
from deepkrylov.operators.mgno import MgNO
from deepkrylov.operators.normalization import Normalized

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("mgno", "fno", "converted-unet", "neuralop-fno")
Set = tuple[torch.Tensor, torch.Tensor]


# ---- metrics: the peer library's relative Lp and H1 losses (same definitions for every model) --------------------
def _metrics(periodic: bool) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    from neuralop.losses import H1Loss, LpLoss

    return {
        "l2": LpLoss(d=2, p=2, reduction="mean"),
        "h1": H1Loss(d=2, reduction="mean", periodic_in_x=periodic, periodic_in_y=periodic),
    }


# ---- data ------------------------------------------------------------------------------------------------------
def _cached(cache: Optional[str], key: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not cache:
        return make()
    path = Path(cache) / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
    if path.exists():
        with np.load(path) as f:
            return dict(f)
    data = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return data


def _tensors(a: np.ndarray, u: np.ndarray) -> Set:
    return (torch.as_tensor(a, dtype=torch.float32)[:, None], torch.as_tensor(u, dtype=torch.float32)[:, None])


def darcy_train(num: int, res: int, seed: int, cache: Optional[str] = None) -> Set:
    """``num`` Darcy pairs ``(a, u)`` as ``(num, 1, res, res)`` float32 from ``generate_darcy``."""
    from deepkrylov.operators.data.darcy import generate_darcy

    d = _cached(cache, f"darcy-train {num} {res} {seed}",
                lambda: generate_darcy(num_samples=num, n=res, seed=seed, progress_bar=False))
    return _tensors(d["a"], d["u"])


def darcy_test(num: int, resolutions: list[int], seed: int, cache: Optional[str] = None) -> dict[int, Set]:
    """The same ``num`` GRF draws at every resolution: cell averages of the field drawn on the finest grid,
    thresholded and solved on each grid."""
    from deepkrylov.mesh import StructuredGrid, darcy_coefficient, gaussian_random_field
    from deepkrylov.operators.data.darcy import solve_darcy

    fine = max(resolutions)
    if any(fine % n for n in resolutions):
        raise SystemExit(f"every evaluation resolution must divide the finest one ({fine}), but got {resolutions}")

    def make() -> dict[str, np.ndarray]:
        field = gaussian_random_field(StructuredGrid((fine, fine)), kernel="matern", length=0.1, nu=1.5,
                                      batch=num, seed=seed)
        out = {}
        for n in resolutions:
            a = darcy_coefficient(F.avg_pool2d(field[:, None], fine // n)[:, 0], 12.0, 3.0).numpy()
            out[f"a{n}"], out[f"u{n}"] = a, solve_darcy(a, 1.0)
        return out

    d = _cached(cache, f"darcy-test {num} {resolutions} {seed}", make)
    return {n: _tensors(d[f"a{n}"], d[f"u{n}"]) for n in resolutions}


def ns_train(num: int, res: int, seed: int, T: float, nu: float, cache: Optional[str] = None) -> Set:
    """``num`` pairs ``(w(0), w(T))`` as ``(num, 1, res, res)`` float32 from ``generate_navier_stokes``."""
    from deepkrylov.operators.data.navier_stokes import generate_navier_stokes

    d = _cached(cache, f"ns-train {num} {res} {seed} {T} {nu}",
                lambda: generate_navier_stokes(num, n=res, viscosity=nu, T=T, dt=1e-3, record_steps=1, seed=seed))
    return _tensors(d["w0"], d["w"][:, -1])


def ns_test(num: int, resolutions: list[int], seed: int, T: float, nu: float, cache: Optional[str] = None
            ) -> dict[int, Set]:
    """The same ``num`` flows at every resolution: solved on the finest grid and subsampled (nested nodes)."""
    from deepkrylov.operators.data.navier_stokes import generate_navier_stokes

    fine = max(resolutions)
    if any(fine % n for n in resolutions):
        raise SystemExit(f"every evaluation resolution must divide the finest one ({fine}), but got {resolutions}")
    d = _cached(cache, f"ns-test {num} {fine} {seed} {T} {nu}",
                lambda: generate_navier_stokes(num, n=fine, viscosity=nu, T=T, dt=1e-3, record_steps=1, seed=seed,
                                               batch_size=10))
    return {n: _tensors(d["w0"][:, ::fine // n, ::fine // n], d["w"][:, -1, ::fine // n, ::fine // n])
            for n in resolutions}


# ---- models ----------------------------------------------------------------------------------------------------
def build(name: str, args: argparse.Namespace, periodic: bool) -> nn.Module:
    pad = "circular" if periodic else "zeros"
    if name == "mgno":
        return MgNO(1, 1, channels=args.mgno_channels, num_layers=args.mgno_layers, padding_mode=pad,
                    resolution=args.res)  # the training grid: the V-cycle keeps its physical scale on other grids
    if name == "fno":
        return FNO(1, 1, modes=args.modes, width=args.width, num_layers=4, padding=0.0 if periodic else 0.1,
                   projection_channels=2 * args.width)
    if name == "converted-unet":
        return converted_unet(1, 1, width=args.unet_width, depth=args.unet_depth, resolution=(args.res, args.res),
                              padding_mode=pad)
    if name == "neuralop-fno":
        from neuralop.models import FNO as PeerFNO

        return PeerFNO(n_modes=(2 * args.modes, 2 * args.modes), hidden_channels=args.width, in_channels=1,
                       out_channels=1, n_layers=4, domain_padding=None if periodic else 0.1)
    raise ValueError(f"model must be one of {MODELS}, but got {name!r}")


def train_eval(name: str, args: argparse.Namespace, train: Set, tests: dict[int, Set], periodic: bool) -> dict:
    """Train ``name`` on ``train``; relative L2/H1 on every test resolution (``None`` where the model refuses it)."""
    torch.manual_seed(args.seed)
    x, y = train
    stats = Normalized.statistics(x, y)
    model = Normalized(build(name, args, periodic), *(Normalized.uncentered(*stats) if name == "mgno" else stats))
    metrics = _metrics(periodic)
    loss_fn = metrics[args.loss]
    n = x.shape[0]
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)  # the CLI's recipe, per epoch
    g = torch.Generator().manual_seed(args.seed)
    times = []
    for _ in range(args.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=g)
        for b in range(0, n, args.batch):
            idx = perm[b:b + args.batch]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        sched.step()
        times.append(time.perf_counter() - t0)
    model.eval()
    # real numbers: neuraloperator stores complex spectral weights (numel counts each once), ours real/imag pairs
    out: dict = {"params": sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters()),
                 "s_per_epoch": float(np.median(times)), "train_s": float(sum(times)), "l2": {}, "h1": {}, "eval_s": {}}
    with torch.no_grad():
        for res, (xt, yt) in tests.items():
            t0 = time.perf_counter()
            bs = max(1, args.batch * args.res**2 // res**2)  # the same memory per batch at every resolution
            try:
                pred = torch.cat([model(xt[i:i + bs]) for i in range(0, xt.shape[0], bs)])
            except (ValueError, RuntimeError) as err:
                out.setdefault("refused", {})[str(res)] = str(err).splitlines()[0]
                out["l2"][str(res)] = out["h1"][str(res)] = None
                continue
            for m, fn in metrics.items():
                out[m][str(res)] = float(fn(pred, yt))
            out["eval_s"][str(res)] = time.perf_counter() - t0
    return out


# ---- report ----------------------------------------------------------------------------------------------------
def _table(title: str, rows: dict[str, dict], resolutions: list[int], train_res: int) -> str:
    head = f"{'model':<15}{'params':>9}{'s/epoch':>9}" + "".join(f"{'L2@' + str(r):>10}" for r in resolutions)
    head += "".join(f"{'H1@' + str(r):>10}" for r in resolutions) + f"{'max L2/L2@' + str(train_res):>14}"
    lines = [title, head]
    for name, r in rows.items():
        cells = [f"{name:<15}{r['params']:>9d}{r['s_per_epoch']:>9.2f}"]
        for m in ("l2", "h1"):
            cells += [f"{'-':>10}" if r[m].get(str(n)) is None else f"{r[m][str(n)]:>10.4f}" for n in resolutions]
        cells.append(f"{r['l2_ratio']:>14.2f}" if r.get("l2_ratio") is not None else f"{'-':>14}")
        lines.append("".join(cells))
    return "\n".join(lines)


def _plot(result: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in ("darcy", "navier_stokes") if t in result]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name, r in result[task]["models"].items():
            pts = [(int(n), v) for n, v in r["l2"].items() if v is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        ax.axvline(result["config"]["res"], color="gray", ls=":", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="evaluation resolution n (n x n)", ylabel="relative L2 error",
               title=f"{task.replace('_', '-')}: trained at {result['config']['res']}, zero-shot elsewhere")
        ax.set_xticks(result["config"]["eval_res"], [str(n) for n in result["config"]["eval_res"]])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4)  # below: never hides a point
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=300)
    p.add_argument("--n-test", type=int, default=50, help="test functions, the same ones at every resolution")
    p.add_argument("--res", type=int, default=64, help="training resolution")
    p.add_argument("--eval-res", default="32,64,128,256", help="comma list; each must divide the largest")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--loss", choices=("h1", "l2"), default="h1")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--tasks", default="darcy,ns", help="comma list of darcy and ns")
    p.add_argument("--mgno-channels", type=int, default=24)
    p.add_argument("--mgno-layers", type=int, default=4)
    p.add_argument("--modes", type=int, default=12)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--unet-width", type=int, default=16)
    p.add_argument("--unet-depth", type=int, default=3)
    p.add_argument("--ns-T", type=float, default=1.0)
    p.add_argument("--ns-nu", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default="", help="directory to keep generated data sets in (npz), reused on rerun")
    p.add_argument("--out", default=str(RESULTS / "operators_resolution.json"))
    p.add_argument("--update", action="store_true", help="keep the other models' rows already in --out (same config)")
    p.add_argument("--note", default="", help="a remark stored with the results")
    args = p.parse_args(argv)
    args.eval_res = sorted({int(r) for r in str(args.eval_res).split(",") if r})
    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    tasks = [t for t in args.tasks.split(",") if t]
    if any(t not in ("darcy", "ns") for t in tasks) or any(m not in MODELS for m in models):
        raise SystemExit(f"--tasks must list darcy/ns and --models some of {MODELS}; "
                         f"got {args.tasks!r}, {args.models!r}")
    t_all = time.perf_counter()
    old = json.loads(Path(args.out).read_text()) if args.update and Path(args.out).exists() else {}
    result: dict = {"config": vars(args), "machine": platform.platform(), "torch": torch.__version__,
                    "test_sets": "the same n_test functions at every resolution: Darcy GRF drawn at the finest grid, "
                                 "cell-averaged, thresholded and solved at each resolution; Navier-Stokes solved at "
                                 "the finest grid and subsampled"}
    result.update({k: old[k] for k in ("darcy", "navier_stokes") if k in old})  # --update: tasks not rerun
    for task in tasks:
        t0 = time.perf_counter()
        periodic = task == "ns"
        if task == "darcy":
            train = darcy_train(args.n_train, args.res, args.seed, args.cache)
            tests = darcy_test(args.n_test, args.eval_res, args.seed + 1, args.cache)
        else:
            train = ns_train(args.n_train, args.res, args.seed + 2, args.ns_T, args.ns_nu, args.cache)
            tests = ns_test(args.n_test, args.eval_res, args.seed + 3, args.ns_T, args.ns_nu, args.cache)
        data_s = time.perf_counter() - t0
        key = "darcy" if task == "darcy" else "navier_stokes"
        rows = dict(old.get(key, {}).get("models", {}))
        for m in models:
            rows[m] = r = train_eval(m, args, train, tests, periodic)
            at = r["l2"].get(str(args.res))
            finer = [v for n, v in r["l2"].items() if int(n) > args.res and v is not None]
            r["l2_ratio"] = max(finer) / at if at and finer else None  # worst zero-shot refinement / training res
            print(f"  {task} {m}: " + json.dumps({k: r[k] for k in ("l2", "s_per_epoch")}), flush=True)
        result[key] = {"data_s": data_s, "models": rows}
        title = (f"Darcy, trained at {args.res}" if task == "darcy"
                 else f"Navier-Stokes w(0) -> w({args.ns_T}), nu={args.ns_nu}, trained at {args.res}")
        print(_table(f"{title}, {args.n_train} train / {args.n_test} test per resolution, {args.epochs} epochs, "
                     f"{args.loss} loss", rows, args.eval_res, args.res), flush=True)
        result["total_s"] = time.perf_counter() - t_all
        out = Path(args.out)  # written after every task: a long run keeps what it finished
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        _plot(result, out.with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()
