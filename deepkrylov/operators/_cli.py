"""``deepkrylov datagen``, ``deepkrylov eval`` and ``deepkrylov train deeponet|mgno|fno|converted-unet``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Optional

import numpy as np
import torch

from .trainer import RESAMPLE, SCHEDULERS

log = logging.getLogger("deepkrylov.operators")

# input field, target field, (coordinate field for DeepONet) per problem, by the fields present in the file
_LAYOUTS = (
    ("u", "s", "y"),      # antiderivative
    ("a", "u", "x"),      # burgers (x) / darcy (no coordinates)
    ("w0", "w", None),    # navier-stokes (last recorded step)
)


class _Default:
    """An option's default, marked so that ``--resume`` can tell it from a value given on the command line."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


# options a resumed run takes from the run (checkpoint config / model.json) unless given; given ones must agree
_TRAIN_OPTIONS = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "loss", "scheduler", "step_size",
                  "gamma", "seed", "resolutions", "resample")
_GRID_ONLY = ("resolutions", "resample")  # training options of the grid models only
_MODEL_OPTIONS = {"deeponet": ("branch", "trunk", "pod", "activation"), "mgno": ("width", "layers", "levels"),
                  "fno": ("width", "layers", "modes"), "converted-unet": ("width", "layers")}
_RESUME_MAY_CHANGE = ("epochs",)
# the grid models' defaults are the benchmarks' recipe (benchmarks/operators.py): Adam, lr 1e-3 annealed to 0 by a
# cosine over the epochs, weight decay 1e-4, relative H1 loss, batches of 20 (MgNO: constant lr swings its error)
_GRID_RECIPE = dict(batch_size=20, lr=1e-3, weight_decay=1e-4, loss="h1", scheduler="cosine")


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 100,40,40, but got {text!r}")


def register(sub: Any, train_sub: Any) -> None:
    from .data import GENERATORS

    g = sub.add_parser("datagen", help="generate a seeded PDE data set as HDF5",
                       description="Generate a data set; under mpiexec the ranks split the samples.")
    g.add_argument("problem", help=f"one of {sorted(GENERATORS)}")
    g.add_argument("--samples", type=int, default=1000)
    g.add_argument("--n", type=int, default=None, help="resolution (points per axis); generator default if unset")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--viscosity", type=float, default=None, help="burgers / navier_stokes viscosity")
    g.add_argument("--pointwise", action="store_true", help="antiderivative: unaligned triples")
    g.add_argument("--out", required=True, help="HDF5 file to write")
    g.set_defaults(func=_cmd_datagen)

    e = sub.add_parser("eval", help="errors of a trained operator model on a data set, and a comparison PNG")
    e.add_argument("--run", required=True, help="training output directory (model.json + best.pt/last.pt)")
    e.add_argument("--data", required=True)
    e.add_argument("--checkpoint", default="best.pt")
    e.add_argument("--png", default=None, help="write prediction vs truth for a few samples")
    e.add_argument("--samples", type=int, default=3)
    e.set_defaults(func=_cmd_eval)

    for name, helptext in (("deeponet", "DeepONet (aligned data)"), ("mgno", "MgNO on grid data"),
                           ("fno", "FNO on grid data"),
                           ("converted-unet", "a U-Net converted into a neural operator, on grid data")):
        t = train_sub.add_parser(name, help=f"train {helptext} with the shared Trainer")
        t.add_argument("--data", required=True, help="HDF5 data set from deepkrylov datagen")
        t.add_argument("--test", default=None, help="separate test set (default: hold out of --data)")
        t.add_argument("--ntrain", type=int, default=None, help="training samples (default 80%% of --data)")
        t.add_argument("--epochs", type=int, default=100)
        grid_model = name != "deeponet"
        t.add_argument("--batch-size", type=int, default=_GRID_RECIPE["batch_size"] if grid_model else 32)
        t.add_argument("--lr", type=float, default=1e-3)
        t.add_argument("--optimizer", default="adam", choices=("adam", "adamw", "sgd"))
        t.add_argument("--weight-decay", type=float, default=_GRID_RECIPE["weight_decay"] if grid_model else 0.0)
        t.add_argument("--loss", default=_GRID_RECIPE["loss"] if grid_model else "mse",
                       choices=("l2", "l1", "mse", "h1"))
        t.add_argument("--scheduler", default=_GRID_RECIPE["scheduler"] if grid_model else "none", choices=SCHEDULERS,
                       help="step: lr * gamma^(epoch // step-size); exponential: lr * gamma^epoch; inverse_time: "
                            "lr / (1 + gamma * epoch / step-size); cosine: to 0 over --epochs")
        t.add_argument("--step-size", type=int, default=100, help="scheduler period in epochs")
        t.add_argument("--gamma", type=float, default=0.5, help="scheduler factor or rate")
        t.add_argument("--seed", type=int, default=0)
        t.add_argument("--out", default=f"runs/{name}")
        t.add_argument("--resume", action="store_true",
                       help="continue the run in OUT from OUT/last.pt: options not given are the run's (its loss, "
                            "learning rate, schedule, model sizes, ...); a given option that differs from the run's "
                            "is an error, except --epochs (train on to a new total)")
        if name == "deeponet":
            t.add_argument("--branch", type=_ints, default=[40, 40], help="hidden+output widths (input added)")
            t.add_argument("--trunk", type=_ints, default=[40, 40])
            t.add_argument("--pod", type=int, default=0, help="POD-DeepONet with this many modes")
            t.add_argument("--activation", default="relu")
            t.add_argument("--zero-trunk-biases", action="store_true",
                           help="DeepXDE's init (zero biases) instead of first-layer trunk kinks at the data's "
                                "coordinates (DeepONet.init_trunk_biases)")
        else:
            t.add_argument("--width", type=int, default={"mgno": 24, "fno": 32}.get(name, 16))
            t.add_argument("--layers", type=int, default=4 if name != "converted-unet" else 3,
                           help="MgNO/FNO layers; U-Net depth (number of 2x down-samplings)")
            t.add_argument("--modes", type=int, default=12, help="FNO Fourier modes")
            t.add_argument("--resolutions", type=_ints, default=None,
                           help="multi-resolution training: every batch at one of these grid sizes in turn, e.g. "
                                "32,64 (resampled from the data's grid by --resample; the test set stays at its own)")
            t.add_argument("--resample", default="stride", choices=RESAMPLE,
                           help="how --resolutions grids are made: stride (every s-th point), area (block means), "
                                "linear (interpolation, any size)")
        if name == "mgno":
            t.add_argument("--levels", type=int, default=6,
                           help="V-cycle levels (one smoothing step each, two on the coarsest) on the training grid, "
                                "which must be divisible by 2^(levels-1); other grids: that grid times 2^k")
        if name in ("mgno", "fno"):
            t.add_argument("--domain-parallel", action="store_true",
                           help="under mpiexec: split each sample's grid over the ranks (GridTensor; each rank reads "
                                "only its block of every sample) instead of splitting the batches (DDP), for grids "
                                "too large for one process")
        t.set_defaults(func=_cmd_train, model=name)
        tracked = tuple(o for o in _TRAIN_OPTIONS if name != "deeponet" or o not in _GRID_ONLY) + \
            _MODEL_OPTIONS[name] + ("ntrain",)
        t.set_defaults(**{dest: _Default(t.get_default(dest)) for dest in tracked})


def _context(data_parallel: bool = True) -> Any:
    """The job's context; under mpiexec/torchrun also torch.distributed's default group (DDP in the Trainer)."""
    from deepkrylov.distributed import init

    ctx = init(backend="auto")
    if data_parallel:
        ctx.init_torch_distributed()
    return ctx


def _cmd_datagen(args: argparse.Namespace) -> int:
    from .data import GENERATORS

    if args.problem not in GENERATORS:
        raise SystemExit(f"deepkrylov datagen: problem must be one of {sorted(GENERATORS)}, got {args.problem!r}")
    _check_datagen(args)
    kw: dict[str, Any] = {"seed": args.seed, "path": args.out}
    if args.problem == "antiderivative":
        kw["aligned"] = not args.pointwise
    if args.n is not None:
        kw["nx" if args.problem == "diffusion_reaction" else "m" if args.problem == "antiderivative" else "n"] = args.n
    if args.viscosity is not None:
        kw["viscosity"] = args.viscosity
    from .data._common import rank_size

    comm, rank, size = rank_size()
    try:
        if args.problem == "navier_stokes":  # not rank-split: rank 0 generates and writes
            if rank == 0:
                GENERATORS[args.problem](args.samples, **kw)
        else:  # the ranks split the samples (antiderivative: computed whole), rank 0 writes
            GENERATORS[args.problem](args.samples, comm=comm, **kw)
    except (ValueError, OSError) as err:  # a parameter the generator refuses, or the file cannot be written
        raise SystemExit(f"deepkrylov datagen {args.problem}: {err}")
    if rank == 0:
        print(f"wrote {args.out}")
    return 0


def _writable(path: str) -> Optional[str]:
    """Why ``path`` cannot be written as a new file, or None (checked before hours of generation, not after)."""
    if os.path.isdir(path):
        return f"--out {path!r} is a directory"
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        return f"cannot write --out {path!r} ({parent!r} is not a writable directory)"
    return None


def _check_datagen(args: argparse.Namespace) -> None:
    """One clear line for every bad datagen option, before any work."""
    bad = []
    if args.samples < 1:
        bad.append(f"--samples must be a positive number of samples, got {args.samples}")
    if args.n is not None and args.n < 2:
        bad.append(f"--n must be at least 2 points per axis, got {args.n}")
    if args.viscosity is not None:
        if args.problem not in ("burgers", "navier_stokes"):
            bad.append(f"--viscosity applies to burgers and navier_stokes only, not {args.problem}")
        elif not args.viscosity > 0:
            bad.append(f"--viscosity must be positive, got {args.viscosity}")
    if args.pointwise and args.problem != "antiderivative":
        bad.append(f"--pointwise applies to antiderivative only, not {args.problem}")
    why = _writable(args.out)
    if why:
        bad.append(why)
    if bad:
        raise SystemExit(f"deepkrylov datagen {args.problem}: " + "; ".join(bad))


def _check_train(args: argparse.Namespace) -> None:
    """One clear line for every bad training option, before any data is read."""
    bad = []
    for opt, ok, what in (("epochs", args.epochs >= 1, ">= 1"), ("batch_size", args.batch_size >= 1, ">= 1"),
                          ("lr", args.lr > 0, "> 0"), ("weight_decay", args.weight_decay >= 0, ">= 0"),
                          ("step_size", args.step_size >= 1, ">= 1"), ("gamma", args.gamma > 0, "> 0"),
                          ("ntrain", args.ntrain is None or args.ntrain >= 1, ">= 1")):
        if not ok:
            bad.append(f"{_flag(opt)} must be {what}, got {getattr(args, opt)}")
    for opt in ("width", "layers", "modes", "levels", "pod"):
        v = getattr(args, opt, None)
        if isinstance(v, int) and v < (0 if opt == "pod" else 1):
            bad.append(f"{_flag(opt)} must be {'>= 0' if opt == 'pod' else '>= 1'}, got {v}")
    for opt in ("branch", "trunk"):
        v = getattr(args, opt, None)
        if v is not None and (not v or min(v) < 1):
            bad.append(f"{_flag(opt)} must be positive layer widths like 40,40, got {v}")
    res = getattr(args, "resolutions", None)
    if res is not None and (not res or min(res) < 1):
        bad.append(f"--resolutions must be positive grid sizes like 32,64, got {res}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        bad.append(f"--out {args.out!r} is a file, not a directory")
    if bad:
        raise SystemExit(f"deepkrylov train {args.model}: " + "; ".join(bad))


def _check_layout(args: argparse.Namespace, x: np.ndarray, y: np.ndarray, xs: Optional[np.ndarray],
                  ys: Optional[np.ndarray]) -> None:
    """The data fit the model: grid models need input and target on one grid (and the test set on a grid of the
    same dimension), DeepONet needs (N, m) inputs and (N, P) targets of the same kind in both sets."""
    sets = [(args.data, x, y)] + ([(args.test, xs, ys)] if args.test else [])
    for path, a, b in sets:
        if args.model == "deeponet":
            if a.ndim != 2 or b.ndim != 2:
                raise SystemExit(f"deepkrylov train deeponet: {path!r} holds inputs {a.shape[1:]} and targets "
                                 f"{b.shape[1:]}; DeepONet takes (N, m) sensor values and (N, P) outputs (grid "
                                 f"fields: use mgno, fno or converted-unet)")
        elif a.shape[1:] != b.shape[1:]:
            raise SystemExit(f"deepkrylov train {args.model}: {path!r} holds inputs on {a.shape[1:]} and targets on "
                             f"{b.shape[1:]}; {args.model} maps a field to a field on the same grid (other data: "
                             f"use deeponet)")
    if args.test and (xs.ndim != x.ndim or (args.model == "deeponet" and xs.shape[1] != x.shape[1])):
        raise SystemExit(f"deepkrylov train {args.model}: --test {args.test!r} holds inputs {xs.shape[1:]}, the "
                         f"training data {x.shape[1:]}")


def _build(args: argparse.Namespace, spec: dict[str, Any]) -> torch.nn.Module:
    """``build_model`` with a model's refusal of the data (e.g. MgNO's grid divisibility) as one clear line."""
    try:
        return build_model(spec)
    except ValueError as err:
        hint = ""
        if spec["model"] == "mgno":
            deepest = 1 + min((n & -n).bit_length() - 1 for n in spec["resolution"])
            hint = f"; with this data use --levels {deepest} or fewer"
        raise SystemExit(f"deepkrylov train {args.model}: {err}{hint}")


def _grid_layout(path: str) -> tuple[list[Any], int, tuple[int, ...]]:
    """``(HDF5Fields field specs [input, target], samples, grid shape)`` of a generated grid data file, read from
    its metadata only (no arrays), with the errors of :func:`load_arrays`."""
    from .data._io import _open

    with _open(path) as f:
        for inp, tgt, _ in _LAYOUTS:
            if inp in f and tgt in f:
                x, y = f[inp].shape, f[tgt].shape
                target: Any = (tgt, -1) if tgt == "w" else tgt
                if tgt == "w":
                    y = y[:1] + y[2:]
                if x[0] != y[0]:
                    raise ValueError(f"{path!r}: {inp!r} has {x[0]} samples but {tgt!r} has {y[0]}")
                if x[1:] != y[1:] or len(x) < 2:
                    raise ValueError(f"{path!r}: {inp!r} {x} and {tgt!r} {y} are not fields on one grid")
                return [inp, target], int(x[0]), tuple(int(n) for n in x[1:])
        keys = sorted(f.keys())
    raise KeyError(f"{path!r} has fields {keys}; expected one of the pairs {[(i, t) for i, t, _ in _LAYOUTS]}")


def _statistics(model: str, stats: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """The normalisation of ``model`` from the centred training statistics: MgNO (zero-padded V-cycles, Dirichlet
    data) only scales, so that zero stays zero (``Normalized.uncentered``); the other models centre."""
    from .normalization import Normalized

    return Normalized.uncentered(*stats) if model == "mgno" else tuple(stats)  # type: ignore[return-value]


def load_arrays(path: str) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """``(inputs (N, ...), targets (N, ...), coordinates or None)`` of a generated file, with clear errors."""
    from .data import load_dataset

    arrays, _ = load_dataset(path)
    for inp, tgt, crd in _LAYOUTS:
        if inp in arrays and tgt in arrays:
            x, y = arrays[inp], arrays[tgt]
            if tgt == "w":
                y = y[:, -1]
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"{path!r}: {inp!r} has {x.shape[0]} samples but {tgt!r} has {y.shape[0]}")
            c = arrays.get(crd) if crd else None
            if c is not None and c.ndim == 1:
                c = c[:, None]
            return x, y, c
    raise KeyError(f"{path!r} has fields {sorted(arrays)}; expected one of the pairs "
                   f"{[(i, t) for i, t, _ in _LAYOUTS]}")


def build_model(spec: dict[str, Any]) -> torch.nn.Module:
    """Model from the JSON spec written next to a training run (``model.json``)."""
    from . import FNO, DeepONet, MgNO, Normalized
    from .convert import converted_unet

    name = spec["model"]
    if name == "deeponet":
        pod = None
        if spec.get("pod"):
            pod = (torch.zeros(spec["npoints"]), torch.zeros(spec["npoints"], spec["pod"]))
            return DeepONet([spec["m"]] + spec["branch"][:-1] + [spec["pod"]], None, spec["activation"], pod=pod)
        return DeepONet([spec["m"]] + spec["branch"], [spec["d"]] + spec["trunk"], spec["activation"])
    if name == "mgno":
        levels = spec.get("levels", 6)
        model: torch.nn.Module = MgNO(1, 1, channels=spec["width"], num_layers=spec["layers"], dim=spec["dim"],
                                      iterations=((1, 0),) * (levels - 1) + ((2, 0),),
                                      resolution=spec.get("resolution"))  # the V-cycle's levels: physical scales
    elif name == "fno":
        model = FNO(1, 1, modes=spec["modes"], width=spec["width"], num_layers=spec["layers"], dim=spec["dim"])
    elif name == "converted-unet":
        model = converted_unet(1, 1, width=spec["width"], depth=spec["layers"], resolution=spec["resolution"])
    else:
        raise ValueError(f"model must be one of ('deeponet', 'mgno', 'fno', 'converted-unet'), but got {name!r}")
    return Normalized(model, *spec["normalization"]) if "normalization" in spec else model


def _datasets(model: str, x: np.ndarray, y: np.ndarray, c: Optional[np.ndarray]) -> tuple[Any, Any]:
    from torch.utils.data import TensorDataset

    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    if model == "deeponet":
        if c is None:
            c = np.arange(y.shape[1], dtype=np.float64)[:, None] / y.shape[1]
        if xt.ndim != 2 or yt.ndim != 2:
            raise ValueError(f"deeponet needs 1D inputs/outputs (N, m)/(N, P), got {tuple(xt.shape)}, "
                             f"{tuple(yt.shape)}")
        return TensorDataset(xt, yt), torch.as_tensor(c, dtype=torch.float32)
    return TensorDataset(xt[:, None], yt[:, None]), None


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _resume_options(args: argparse.Namespace, is_root: bool) -> None:
    """Resolve defaults in ``args``; with ``--resume`` and a run in ``--out``, options not given take the run's
    values and a given one that differs is an error (SystemExit naming the option and both values)."""
    given = {k for k, v in vars(args).items() if not isinstance(v, _Default)}
    for k, v in vars(args).items():
        if isinstance(v, _Default):
            setattr(args, k, v.value)
    last = os.path.join(args.out, "last.pt")
    if not (args.resume and os.path.exists(last)):
        return
    from .trainer import checkpoint_config

    try:
        stored = dict(checkpoint_config(last))
    except Exception as err:  # a truncated or foreign last.pt
        raise SystemExit(f"deepkrylov train {args.model} --resume: cannot read {last!r} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); train into a new --out or remove it")
    spec_path = os.path.join(args.out, "model.json")
    if os.path.exists(spec_path):
        with open(spec_path) as f:
            spec = json.load(f)
        if spec.get("model", args.model) != args.model:
            raise SystemExit(f"deepkrylov train {args.model} --resume: {args.out} holds a {spec['model']} run")
        stored.update({k: spec[k] for k in _MODEL_OPTIONS[args.model] + ("ntrain",) if k in spec})
    stored = {k: v for k, v in stored.items()
              if k in _TRAIN_OPTIONS + _MODEL_OPTIONS[args.model] + ("ntrain",) and hasattr(args, k)}
    conflicts = [(k, v, getattr(args, k)) for k, v in stored.items()
                 if k in given and k not in _RESUME_MAY_CHANGE and _plain(v) != _plain(getattr(args, k))]
    if conflicts:
        listed = "; ".join(f"{_flag(k)}: the run used {v!r}, the command gives {now!r}" for k, v, now in conflicts)
        raise SystemExit(f"deepkrylov train {args.model} --resume: {listed}. Drop the option(s) to continue with the "
                         f"run's values, or train into a new --out")
    taken = {k: v for k, v in stored.items() if k not in given and _plain(v) != _plain(getattr(args, k))}
    for k, v in stored.items():
        if k not in given:
            setattr(args, k, v)
    if is_root and taken:
        print(f"resuming {last} with the run's " + ", ".join(f"{_flag(k)} {v}" for k, v in taken.items()),
              file=sys.stderr)


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def _cmd_train(args: argparse.Namespace) -> int:
    from .normalization import Normalized

    domain = getattr(args, "domain_parallel", False)
    ctx = _context(data_parallel=not domain)
    _resume_options(args, ctx.is_root)
    _check_train(args)
    if domain and args.resolutions:
        raise SystemExit(f"deepkrylov train {args.model}: --resolutions and --domain-parallel cannot be combined "
                         f"(the domain grid fixes one resolution)")
    if domain:
        return _train_domain_parallel(args, ctx)
    try:
        x, y, c = load_arrays(args.data)
        xs, ys, _ = load_arrays(args.test) if args.test else (None, None, None)
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise SystemExit(f"deepkrylov train {args.model}: {err}")
    _check_layout(args, x, y, xs, ys)
    if args.test:
        ntrain = x.shape[0] if args.ntrain is None else args.ntrain
    else:
        ntrain = int(0.8 * x.shape[0]) if args.ntrain is None else args.ntrain
        xs, ys = x[ntrain:], y[ntrain:]
    if not 1 <= ntrain <= x.shape[0] or len(xs) == 0:
        raise SystemExit(f"deepkrylov train {args.model}: need 1 <= --ntrain <= {x.shape[0]} (the samples in "
                         f"{args.data!r}) and a non-empty test set, got --ntrain {ntrain}")
    x, y = x[:ntrain], y[:ntrain]
    spec: dict[str, Any] = {"model": args.model, "ntrain": ntrain}
    torch.manual_seed(args.seed)  # the initial weights depend on the seed only (torch's own seed is random)
    train, coords = _datasets(args.model, x, y, c)
    test, _ = _datasets(args.model, xs, ys, c)
    if args.model == "deeponet":
        spec.update(m=x.shape[1], d=coords.shape[1], branch=args.branch, trunk=args.trunk, pod=args.pod,
                    activation=args.activation, npoints=y.shape[1])
        model = build_model(spec)
        if args.pod:
            from .deeponet import pod_basis

            mean, modes = pod_basis(torch.as_tensor(y, dtype=torch.float32), args.pod)
            model.pod_mean.copy_(mean)
            model.pod_modes.copy_(modes)
        elif not args.zero_trunk_biases:
            model.init_trunk_biases(coords, generator=torch.Generator().manual_seed(args.seed))
        cdev = coords

        def fwd(m: torch.nn.Module, inputs: tuple) -> torch.Tensor:
            return m(inputs[0], cdev.to(inputs[0].device))
    else:
        if args.model == "mgno":
            spec["levels"] = args.levels
        spec.update(width=args.width, layers=args.layers, modes=args.modes, dim=x.ndim - 1,
                    resolution=list(x.shape[1:]),
                    normalization=list(_statistics(args.model, Normalized.statistics(*train.tensors))))
        model = _build(args, spec)
        fwd = None  # type: ignore[assignment]
        if args.model == "mgno" and args.resolutions:  # the grids this MgNO takes: training grid * 2^k
            from .mgno import valid_sizes

            for r in args.resolutions:
                for n in spec["resolution"]:
                    ok = valid_sizes(r, args.levels, n)
                    if r not in ok:
                        raise SystemExit(f"deepkrylov train mgno: --resolutions {r} is not a grid this MgNO takes "
                                         f"(trained on {n} with --levels {args.levels}); the nearest valid sizes "
                                         f"are {' and '.join(map(str, ok))}")
    cfg = _train_config(args, x.ndim - 1)
    if ctx.is_root:
        os.makedirs(args.out, exist_ok=True)
        if args.model == "deeponet":
            np.save(os.path.join(args.out, "coords.npy"), coords.numpy())
    return _run(args, ctx, spec, model, cfg, train, test, fwd)


def _train_config(args: argparse.Namespace, dim: int) -> dict[str, Any]:
    """The Trainer's configuration from the command line (``dim``: spatial axes of the data, for H1)."""
    cfg = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, loss=args.loss, scheduler=args.scheduler,
               step_size=args.step_size, gamma=args.gamma, seed=args.seed, loss_dim=max(1, dim),
               optimizer=args.optimizer, weight_decay=args.weight_decay)
    if args.model != "deeponet":
        cfg.update(resolutions=args.resolutions, resample=args.resample)
    return cfg


def _run(args: argparse.Namespace, ctx: Any, spec: dict[str, Any], model: torch.nn.Module, cfg: dict[str, Any],
         train: Any, test: Any, fwd: Any = None, grid: Any = None) -> int:
    """Write ``model.json``, train, print the last metrics (rank 0)."""
    from .trainer import Trainer

    if ctx.is_root:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "model.json"), "w") as f:
            json.dump(spec, f)
    trainer = Trainer(model, cfg, out_dir=args.out, forward=fwd, grid=grid)
    hist = trainer.fit(train, {"test": test}, resume=args.resume)
    del trainer, model  # the DDP wrapper holds the process group
    ctx.close_torch_distributed()
    if ctx.is_root:
        print(json.dumps(hist[-1] if hist else {}))
    return 0


def _train_domain_parallel(args: argparse.Namespace, ctx: Any) -> int:
    """``--domain-parallel``: every rank reads only its block of each sample from the files (``HDF5Fields``), the
    normalisation statistics come from global sums over the blocks, and the Trainer trains on the blocks."""
    from deepkrylov.distributed import ProcessGrid

    from .data import HDF5Fields
    from .normalization import Normalized

    try:
        fields, n, shape = _grid_layout(args.data)
        test_fields, n_test, test_shape = _grid_layout(args.test) if args.test else (fields, n, shape)
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise SystemExit(f"deepkrylov train {args.model}: {err}")
    if test_shape != shape:
        raise SystemExit(f"deepkrylov train {args.model} --domain-parallel: the test set's grid {test_shape} differs "
                         f"from the training grid {shape} (one process grid splits both)")
    ntrain = (n if args.test else int(0.8 * n)) if args.ntrain is None else args.ntrain
    test_ids = range(n_test) if args.test else range(ntrain, n)
    if not 1 <= ntrain <= n or len(test_ids) == 0:
        raise SystemExit(f"deepkrylov train {args.model}: need 1 <= --ntrain <= {n} (the samples in {args.data!r}) "
                         f"and a non-empty test set, got --ntrain {ntrain}")
    try:
        grid = ProcessGrid(ctx, shape)
    except ValueError as err:
        raise SystemExit(f"deepkrylov train {args.model} --domain-parallel: {err}")
    train = HDF5Fields(args.data, fields, grid, samples=range(ntrain))
    test = HDF5Fields(args.test or args.data, test_fields, grid, samples=test_ids)
    spec: dict[str, Any] = {"model": args.model, "ntrain": ntrain}
    if args.model == "mgno":
        spec["levels"] = args.levels
    spec.update(width=args.width, layers=args.layers, modes=args.modes, dim=len(shape), resolution=list(shape),
                normalization=list(_statistics(args.model, Normalized.dataset_statistics(train, ctx.comm))))
    torch.manual_seed(args.seed)  # the initial weights depend on the seed only, as in the serial run
    model = _build(args, spec)
    return _run(args, ctx, spec, model, _train_config(args, len(shape)), train, test, grid=grid)


def _load_run(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model of the run ``args.run`` with the weights of ``args.checkpoint``, or one clear error line."""
    if not os.path.isdir(args.run):
        raise SystemExit(f"deepkrylov eval: run directory {args.run!r} does not exist (give the --out of a "
                         f"deepkrylov train run)")
    spec_path, ckpt = os.path.join(args.run, "model.json"), os.path.join(args.run, args.checkpoint)
    if not os.path.exists(spec_path):
        raise SystemExit(f"deepkrylov eval: {args.run!r} has no model.json; is it the --out of a deepkrylov train run?")
    if not os.path.exists(ckpt):
        have = sorted(f for f in os.listdir(args.run) if f.endswith(".pt"))
        raise SystemExit(f"deepkrylov eval: checkpoint {ckpt!r} does not exist (the run has {have or 'none'})")
    try:
        with open(spec_path) as f:
            spec = json.load(f)
        model = build_model(spec)
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise SystemExit(f"deepkrylov eval: {spec_path!r} is not a model description this version reads ({err!r})")
    try:
        st = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
    except Exception as err:  # unpickling, a foreign file, or weights of another model: all say the same to a user
        raise SystemExit(f"deepkrylov eval: cannot load the weights of {ckpt!r} into the run's "
                         f"{spec.get('model')} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
    model.eval()
    return model, spec


def _cmd_eval(args: argparse.Namespace) -> int:
    from .losses import LpLoss

    if args.png and args.samples < 1:
        raise SystemExit(f"deepkrylov eval: --samples must be >= 1 for --png, got {args.samples}")
    model, spec = _load_run(args)
    try:
        x, y, c = load_arrays(args.data)
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise SystemExit(f"deepkrylov eval: {err}")
    grid_model = spec["model"] != "deeponet"
    if grid_model and x.ndim - 1 != spec.get("dim", x.ndim - 1):
        raise SystemExit(f"deepkrylov eval: {args.data!r} holds {x.ndim - 1}D fields {x.shape[1:]}, but the run "
                         f"trained a {spec['model']} on {spec['dim']}D grids {tuple(spec.get('resolution', ()))}")
    if not grid_model and (x.ndim != 2 or x.shape[1] != spec["m"]):
        raise SystemExit(f"deepkrylov eval: {args.data!r} has inputs {x.shape[1:]}, but the run's DeepONet takes "
                         f"{spec['m']} sensor values")
    ds, coords = _datasets(spec["model"], x, y, c)
    xin, yt = ds.tensors
    try:
        with torch.no_grad():
            pred = model(xin, coords) if spec["model"] == "deeponet" else model(xin)
    except ValueError as err:  # the model refuses this grid (e.g. MgNO's divisibility by 2^(levels-1))
        raise SystemExit(f"deepkrylov eval: {args.data!r}: {err}")
    rel = float(LpLoss(2)(pred, yt))
    mse = float(((pred - yt) ** 2).mean())
    print(json.dumps({"rel_l2": rel, "mse": mse, "samples": int(yt.shape[0])}))
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        k = min(args.samples, yt.shape[0])
        p, t = pred.reshape(yt.shape[0], *yt.shape[1:]).squeeze(1), yt.squeeze(1)
        if t.ndim == 2:
            fig, axs = plt.subplots(1, k, figsize=(4 * k, 3), squeeze=False)
            for i in range(k):
                axs[0, i].plot(t[i].numpy(), label="truth")
                axs[0, i].plot(p[i].numpy(), "--", label="prediction")
                axs[0, i].legend()
        else:
            fig, axs = plt.subplots(k, 3, figsize=(10, 3 * k), squeeze=False)
            for i in range(k):
                for j, (img, title) in enumerate(((t[i], "truth"), (p[i], "prediction"), (p[i] - t[i], "error"))):
                    im = axs[i, j].imshow(img.numpy())
                    axs[i, j].set_title(title)
                    fig.colorbar(im, ax=axs[i, j])
        fig.tight_layout()
        fig.savefig(args.png, dpi=100)
        print(f"wrote {args.png}")
    return 0
