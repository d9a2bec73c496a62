"""DeepONet benchmark: antiderivative (paper configuration) vs DeepXDE on the same generated data, and Burgers
(128 points, 1000/200) relative L2 for DeepONet and POD-DeepONet.

    DDE_BACKEND=pytorch .venv/bin/python benchmarks/deeponet.py --iterations 50000   # the paper's budget
    .venv/bin/python benchmarks/deeponet.py --iterations 2000                          # a quick run
    .venv/bin/python benchmarks/deeponet.py --parts triples --seeds 3 --only ours --schedules constant step:40000:0.1
    .venv/bin/python benchmarks/deeponet.py --parts triples --seeds 5 --only ours --trunk-init --schedules constant

Antiderivative, the paper's setting: 10,000 training triples (u, y, s(y)) from 10,000 functions, one random point
each, and 100,000 test triples (DeepXDE ``Triple`` / ``DeepONet``); the protocol of the paper's code: the
training MSE checked every 1,000 iterations and the best step restored before testing. Both libraries: branch
[100,40,40], trunk [1,40,40], ReLU, Glorot normal, Adam 1e-3 (optionally decayed, the same for both), full batch,
MSE loss, float32, one thread. Also aligned data: 100 training functions x 100 points; 1,000 test functions x 100
points (last iterate). Prints a table and writes benchmarks/results/deeponet.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("DDE_BACKEND", "pytorch")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from deepkrylov.operators import DeepONet, LpLoss, Trainer, pod_basis  # noqa: E402
from deepkrylov.operators.data import generate_antiderivative, generate_burgers  # noqa: E402


_CHECK_EVERY = 1000


def _fit(model, ds, iterations, forward, lr=1e-3, loss="mse", seed=0, decay=None,  # type: ignore[no-untyped-def]
         best=True):
    """Full-batch training; ``decay``: (kind, steps, rate), kind ``step``, ``inverse-time`` or ``cosine`` (see
    ``--schedules``), None for a constant rate. ``best``: the paper code's protocol, the training MSE checked
    every 1,000 iterations and the best step restored; otherwise the last iterate. Returns (trainer, seconds)."""
    if decay and decay[0] == "cosine" and decay[1] != iterations:
        raise ValueError(f"cosine schedules here run over all {iterations} iterations, but got {decay[1]}")
    sched = dict(scheduler=decay[0].replace("-", "_"), step_size=decay[1], gamma=decay[2]) if decay else {}
    check = min(_CHECK_EVERY, iterations) if best else iterations + 1
    trainer = Trainer(model, dict(epochs=iterations, batch_size=len(ds), lr=lr, loss=loss, progress=False, seed=seed,
                                  eval_every=check, monitor="mse", **sched), forward=forward)
    t0 = time.perf_counter()
    trainer.fit(ds, evals={"train": ds} if best else None)
    dt = time.perf_counter() - t0
    if best:
        trainer.restore_best()
    return trainer, dt


def ours(u_tr, s_tr, u_te, s_te, y, branch, trunk, iterations, pod=None, loss="mse",  # type: ignore[no-untyped-def]
         activation="relu", lr=1e-3, decay=None, features=None, standardize=False, best=True):
    """Aligned DeepONet trained as in :func:`_fit`; ``features``: trunk transform; ``standardize``: the output
    de-standardised per point with the training mean and std (Lu et al. 2022)."""
    torch.manual_seed(0)
    out_tf = None
    if standardize:
        mean, std = (torch.as_tensor(v, dtype=torch.float32) for v in (s_tr.mean(0), s_tr.std(0)))
        out_tf = lambda _y, out: out * std + mean  # noqa: E731
    model = DeepONet(branch, trunk, activation, pod=pod, feature_transform=features, output_transform=out_tf)
    yt = torch.as_tensor(y, dtype=torch.float32)
    ds = TensorDataset(torch.as_tensor(u_tr, dtype=torch.float32), torch.as_tensor(s_tr, dtype=torch.float32))
    _, dt = _fit(model, ds, iterations, lambda m, inp: m(inp[0], yt), lr=lr, loss=loss, decay=decay, best=best)
    with torch.no_grad():
        pred = model(torch.as_tensor(u_te, dtype=torch.float32), yt)
    return _aligned_scores(pred, s_te, dt, iterations)


def _aligned_scores(pred, truth, seconds, iterations):  # type: ignore[no-untyped-def]
    """Test MSE and mean per-function relative L2 (LpLoss) of (functions, points) predictions, in float64."""
    pred, truth = (torch.as_tensor(a).double() for a in (pred, truth))
    return {"test_mse": float(((pred - truth) ** 2).mean()), "rel_l2": float(LpLoss(2)(pred, truth)),
            "s_per_1000_it": 1000 * seconds / iterations}


def ours_triples(tr, te, iterations, seed=0, decay=None, lr=1e-3, trunk_init=False):  # type: ignore[no-untyped-def]
    """The paper's setting: unaligned triples (one point per function), trained as in :func:`_fit`;
    ``trunk_init``: first-layer trunk kinks at training coordinates (``DeepONet.init_trunk_biases``)."""
    torch.manual_seed(seed)
    model = DeepONet([tr["u"].shape[1], 40, 40], [1, 40, 40], "relu", aligned=False)
    f32 = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    if trunk_init:
        model.init_trunk_biases(f32(tr["y"]), generator=torch.Generator().manual_seed(12345 + seed))
    ds = TensorDataset(f32(tr["u"]), f32(tr["y"]), f32(tr["s"]))
    trainer, dt = _fit(model, ds, iterations, lambda m, inp: m(inp[0], inp[1]), seed=seed, decay=decay, lr=lr)
    with torch.no_grad():
        pred = model(f32(te["u"]), f32(te["y"])).reshape(-1).numpy()
    return {**_scores(pred, te["s"], dt, iterations), "best_step": _best_step(trainer.history)}


def _best_step(history):  # type: ignore[no-untyped-def]
    rows = [r for r in history if "train/mse" in r]
    return min(rows, key=lambda r: r["train/mse"])["epoch"]


def deepxde_triples(tr, te, iterations, seed=0, decay=None, lr=1e-3):  # type: ignore[no-untyped-def]
    """DeepXDE with the same protocol: ``ModelCheckpoint(save_better_only=True, period=1000)`` on the training
    loss, the best step restored (its display test set is a 1,000-triple slice; scoring uses all triples)."""
    import tempfile

    import deepxde as dde

    dde.config.set_random_seed(seed)
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    data = dde.data.Triple(X_train=(f32(tr["u"]), f32(tr["y"])), y_train=f32(tr["s"])[:, None],
                           X_test=(f32(te["u"][:1000]), f32(te["y"][:1000])), y_test=f32(te["s"][:1000])[:, None])
    net = dde.nn.DeepONet([tr["u"].shape[1], 40, 40], [1, 40, 40], "relu", "Glorot normal")
    model = dde.Model(data, net)
    model.compile("adam", lr=lr, decay=(decay[0].replace("-", " "), decay[1], decay[2]) if decay else None)
    with tempfile.TemporaryDirectory() as tmp:
        check = dde.callbacks.ModelCheckpoint(os.path.join(tmp, "model"), save_better_only=True,
                                              period=min(_CHECK_EVERY, iterations))
        t0 = time.perf_counter()
        _, state = model.train(iterations=iterations, display_every=min(_CHECK_EVERY, iterations), verbose=0,
                               callbacks=[check])
        dt = time.perf_counter() - t0
        model.restore(os.path.join(tmp, f"model-{state.best_step}.pt"))
    pred = model.predict((f32(te["u"]), f32(te["y"]))).reshape(-1)
    return {**_scores(pred, te["s"], dt, iterations), "best_step": int(state.best_step)}


def _scores(pred, truth, dt, iterations):  # type: ignore[no-untyped-def]
    """Test MSE over all triples and relative L2 of the stacked predictions."""
    pred, truth = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64).reshape(-1)
    return {"test_mse": float(np.mean((pred - truth) ** 2)),
            "rel_l2": float(np.linalg.norm(pred - truth) / np.linalg.norm(truth)),
            "s_per_1000_it": 1000 * dt / iterations}


def deepxde(u_tr, s_tr, u_te, s_te, y, iterations):  # type: ignore[no-untyped-def]
    import deepxde as dde

    dde.config.set_random_seed(0)
    data = dde.data.TripleCartesianProd(X_train=(u_tr.astype(np.float32), y.astype(np.float32)),
                                        y_train=s_tr.astype(np.float32),
                                        X_test=(u_te.astype(np.float32), y.astype(np.float32)),
                                        y_test=s_te.astype(np.float32))
    net = dde.nn.DeepONetCartesianProd([u_tr.shape[1], 40, 40], [y.shape[1], 40, 40], "relu", "Glorot normal")
    model = dde.Model(data, net)
    model.compile("adam", lr=1e-3)
    t0 = time.perf_counter()
    model.train(iterations=iterations, display_every=max(iterations, 1), verbose=0)
    dt = time.perf_counter() - t0
    pred = model.predict((u_te.astype(np.float32), y.astype(np.float32)))
    return _aligned_scores(pred, s_te, dt, iterations)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=50000)
    ap.add_argument("--burgers-iterations", type=int, default=None, help="default: --iterations")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-deepxde", action="store_true")
    ap.add_argument("--seeds", type=int, default=1,
                    help="initialisation seeds for the 10k-triples comparison (the final MSE varies several-fold "
                         "between seeds for both codes); rows report the median, per-seed values are kept")
    ap.add_argument("--trunk-init", action="store_true",
                    help="ours with DeepONet.init_trunk_biases (first-layer trunk kinks at training coordinates) "
                         "instead of DeepXDE's zero biases")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    ap.add_argument("--only", choices=("ours", "deepxde"), default=None,
                    help="run one side of the 10k-triples comparison only (to run the two sides in parallel)")
    ap.add_argument("--schedules", nargs="+", type=_schedule, default=[_schedule("constant")],
                    help="learning-rate schedules of the 10k-triples comparison, the same for both codes: constant "
                         "(the paper's), step:STEPS:GAMMA (lr * GAMMA^(step // STEPS)), inverse-time:STEPS:RATE "
                         "(lr / (1 + RATE * step / STEPS)), cosine:ITERATIONS:0 (to 0 at the last iteration)")
    ap.add_argument("--lr", type=float, default=1e-3, help="initial learning rate of the 10k-triples comparison "
                    "(both codes; the paper's is 1e-3)")
    ap.add_argument("--parts", nargs="+", choices=("triples", "aligned", "burgers"),
                    default=["triples", "aligned", "burgers"], help="which comparisons to run")
    ap.add_argument("--out", default="benchmarks/results/deeponet.json")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of --out that this run does not replace (same problem, model, schedule); "
                         "a row of other seeds (--first-seed) is pooled with this run's")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    if "triples" in a.parts:
        rows += triples(a)
    if "aligned" in a.parts:
        rows += aligned(a)
    if "burgers" in a.parts:
        rows += burgers(a.burgers_iterations or a.iterations)
    _report(a, rows)


def _schedule(text: str) -> tuple:
    """``constant`` -> (label, None); ``KIND:STEPS:RATE`` -> (label, (KIND, STEPS, RATE))."""
    if text == "constant":
        return "constant lr (paper)", None
    kind, steps, rate = text.split(":")
    if kind not in ("step", "inverse-time", "cosine") or (kind == "cosine" and float(rate) != 0):
        raise argparse.ArgumentTypeError(f"schedule must be constant, step:N:G, inverse-time:N:R or cosine:N:0, "
                                         f"got {text!r}")
    return f"{kind} lr ({steps}, {rate})", (kind, int(steps), float(rate))


def triples(a: argparse.Namespace) -> list[dict]:  # type: ignore[type-arg]
    """The paper's antiderivative setting, both codes, ``a.seeds`` seeds, the chosen learning-rate schedules."""
    rows = []
    tr = generate_antiderivative(10000, m=100, aligned=False, seed=0)
    te = generate_antiderivative(100000, m=100, aligned=False, seed=1)
    sides = [("deepkrylov DeepONet", ours_triples), ("DeepXDE DeepONet", deepxde_triples)]
    if a.trunk_init:
        sides[0] = ("deepkrylov DeepONet, trunk biases at data points",
                    lambda *args, **kw: ours_triples(*args, trunk_init=True, **kw))
    for label, decay in a.schedules:
        label = label if a.lr == 1e-3 else f"{label}, lr {a.lr:g}"
        for name, run in sides:
            is_ours = run is not deepxde_triples
            if (a.skip_deepxde and not is_ours) or (a.only and (a.only == "ours") != is_ours):
                continue
            per_seed = [{"seed": k, **run(tr, te, a.iterations, seed=k, decay=decay, lr=a.lr)}
                        for k in range(a.first_seed, a.first_seed + a.seeds)]
            rows.append({"problem": "antiderivative (paper: 10k triples)", "model": name, "schedule": label,
                         **_medians(per_seed)})
            print(rows[-1], flush=True)
    return rows


def _medians(per_seed: list[dict]) -> dict:  # type: ignore[type-arg]
    """A row's figures: the median of each per-seed figure, with the seeds kept (sorted by seed)."""
    per_seed = sorted(per_seed, key=lambda r: r["seed"])
    med = {key: float(np.median([r[key] for r in per_seed])) for key in per_seed[0] if key != "seed"}
    return {**med, "seeds": len(per_seed), "per_seed": per_seed}


def aligned(a: argparse.Namespace) -> list[dict]:  # type: ignore[type-arg]
    """The aligned antiderivative, against DeepXDE's Cartesian-product DeepONet."""
    rows = []
    tr = generate_antiderivative(100, m=100, num_points=100, seed=0)
    te = generate_antiderivative(1000, m=100, num_points=100, seed=1)
    y = tr["y"]
    r = ours(tr["u"], tr["s"], te["u"], te["s"], y, [100, 40, 40], [1, 40, 40], a.iterations, best=False)
    rows.append({"problem": "antiderivative (aligned 100x100)", "model": "deepkrylov DeepONet", **r})
    if not a.skip_deepxde:
        r = deepxde(tr["u"], tr["s"], te["u"], te["s"], y, a.iterations)
        rows.append({"problem": "antiderivative (aligned 100x100)", "model": "DeepXDE DeepONetCartesianProd", **r})
    return rows


def burgers(iterations: int) -> list[dict]:  # type: ignore[type-arg]
    """Burgers as in the FNO paper (viscosity 0.1, see generate_burgers), 128 points, 1000 train / 200 test, with
    a linear least-squares map as the floor to beat; the recipe of Lu et al. 2022 (lu-group/deeponet-fno):
    DeepONet tanh, branch [128, 128 x 4], trunk [cos/sin 2 pi x, 4 pi x; 128 x 3], outputs de-standardised per
    point, MSE, Adam 1e-3 with inverse-time decay (iterations / 5, 0.5);
    POD-DeepONet 32 modes, branch [128, 128, 128, 32], tanh, Adam 3e-4. The paper trains 500,000 iterations."""
    from deepkrylov.operators import periodic_features

    rows = []
    b = generate_burgers(1200, n=128, seed=0, progress_bar=False)
    ub, sb, xb = b["a"], b["u"], b["x"][:, None]
    args = (ub[:1000], sb[:1000], ub[1000:], sb[1000:], xb)
    lin = np.linalg.lstsq(np.c_[ub[:1000], np.ones(1000)], sb[:1000], rcond=None)[0]
    pred = np.c_[ub[1000:], np.ones(200)] @ lin
    rows.append({"problem": "burgers", "model": "linear map (least squares)", **_aligned_scores(pred, sb[1000:], 0, 1)})
    r = ours(*args, [128, 128, 128, 128, 128], [4, 128, 128, 128], iterations, activation="tanh",
             decay=("inverse-time", max(1, iterations // 5), 0.5), features=lambda y: periodic_features(y, harmonics=2),
             standardize=True)
    rows.append({"problem": "burgers", "model": "deepkrylov DeepONet", **r})
    print(rows[-1], flush=True)
    pod = pod_basis(torch.as_tensor(sb[:1000], dtype=torch.float32), 32)
    r = ours(*args, [128, 128, 128, 32], None, iterations, pod=pod, activation="tanh", lr=3e-4)
    rows.append({"problem": "burgers", "model": "deepkrylov POD-DeepONet (32 modes)", **r})
    print(rows[-1], flush=True)
    return rows


def _report(a: argparse.Namespace, rows: list[dict]) -> None:  # type: ignore[type-arg]
    bi = a.burgers_iterations or a.iterations
    print(f"{'problem':36s} {'model':36s} {'schedule':28s} {'test MSE':>10s} {'rel L2':>9s} {'s/1000 it':>10s}")
    for r in rows:
        print(f"{r['problem']:36s} {r['model']:36s} {r.get('schedule', ''):28s} {r['test_mse']:10.3e} "
              f"{r['rel_l2']:9.4f} {r['s_per_1000_it']:10.3f}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    meta = {"iterations": a.iterations, "burgers_iterations": bi, "threads": a.threads, "torch": torch.__version__}
    if a.merge and os.path.exists(a.out):
        with open(a.out) as f:
            old = json.load(f)
        key = lambda r: (r["problem"], r["model"], r.get("schedule"))  # noqa: E731
        new = {key(r): r for r in rows}
        for r in old["rows"]:
            r.setdefault("iterations", old.get("iterations"))
            mine = new.get(key(r))
            if mine is None:
                rows = rows + [r]
            elif "per_seed" in r and "per_seed" in mine and r["iterations"] == a.iterations and not (
                    {x["seed"] for x in r["per_seed"]} & {x["seed"] for x in mine["per_seed"]}):
                mine.update(_medians(r["per_seed"] + mine["per_seed"]))  # other seeds of the same run: pooled
    for r in rows:
        r.setdefault("iterations", bi if r["problem"] == "burgers" else a.iterations)
    with open(a.out, "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
