"""One training loop for every operator model (DeepONet, MgNO, FNO, ...).

Optimizer and scheduler from config, relative Lp/H1 losses, evaluation on several data sets (e.g. several
resolutions), best and last checkpoints with resume to bitwise-identical parameters (model, optimizer,
scheduler, epoch and RNG states are saved), the best weights also kept in memory (``restore_best``, as DeepXDE
restores its best step by training loss), metrics as JSON lines, a progress bar on rank 0, a seed, DDP when
``torch.distributed`` is initialised (gloo on CPU, NCCL on CUDA; the ranks split each global batch of the
serial order, so a data-parallel run follows the serial one up to rounding), CUDA when present.
Domain-parallel instead when a ``ProcessGrid`` is given: every rank takes the same batches but holds only its
block of every grid field -- best read from the file as blocks (``data.HDF5Fields(path, fields, grid)``: each rank
reads its hyperslab of each sample); whole fields in memory are cut to blocks. The model runs on the blocks
(``GridTensor``; MgNO and HaloConv models), the loss and the metrics are computed on the blocks with global
reductions (the losses of ``losses.py``; a custom ``loss`` must accept GridTensors too), nothing is gathered, and
the weight gradients are summed over the ranks, so the run follows the serial one -- for grids whose data or
activations do not fit one process.
Multi-resolution training: ``TrainConfig(resolutions=[32, 64])`` trains each batch at one of these grids in turn
(resampled from the data's; see :class:`TrainConfig`).
Data sets yield tuples ``(*inputs, target)``; the model is called as ``model(*inputs)``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .losses import H1Loss, LpLoss, MSELoss

__all__ = ["Trainer", "TrainConfig", "make_loss", "MODELS", "register_model", "RESUMABLE_OPTIONS",
           "config_conflicts", "checkpoint_config"]

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw", "sgd")
RESAMPLE = ("stride", "area", "linear")
SCHEDULERS = ("none", "step", "cosine", "exponential", "inverse_time")
MONITORS = ("rel_l2", "mse", "loss")
LOSSES = ("l2", "l1", "mse", "h1")

MODELS: dict[str, Callable[..., torch.nn.Module]] = {}


def register_model(name: str, builder: Callable[..., torch.nn.Module]) -> None:
    """Add ``builder(**kwargs) -> nn.Module`` under ``name`` (used by ``deepkrylov train <name>``)."""
    MODELS[name] = builder


def make_loss(name: str, d: int = 1) -> torch.nn.Module:
    """Loss by name: relative ``l2``/``l1`` (LpLoss), relative ``h1`` (H1Loss on ``d`` trailing dims), ``mse``."""
    if name == "l2":
        return LpLoss(2)
    if name == "l1":
        return LpLoss(1)
    if name == "h1":
        return H1Loss(d)
    if name == "mse":
        return MSELoss()
    raise ValueError(f"loss must be one of {LOSSES}, but got {name!r}")


class TrainConfig(dict):
    """Plain dict of training options with defaults (kept JSON-serialisable for checkpoints and logs).

    Multi-resolution training: ``resolutions`` (e.g. ``[32, 64]``; an int is the size of every spatial axis, a
    list one size per axis) trains every batch at one of these grids, in turn: global batch ``k`` (counted over
    the epochs) at ``resolutions[k % len(resolutions)]``, so each resolution gets an equal share of the steps and
    of the (shuffled) samples. Inputs and targets of shape ``(batch, channels, *spatial)`` -- every input with
    the target's spatial shape -- are resampled from the data's grid by ``resample``: ``"stride"`` every ``s``-th
    point (``s = n // r``, needs ``r`` to divide ``n``; the FNO benchmarks' ``[::s]``), ``"area"`` the mean over
    ``s``-cell blocks (cell-centred data, needs ``r | n``), ``"linear"`` (bi/tri)linear interpolation between
    cell centres to any size (``torch.nn.functional.interpolate``, ``align_corners=False``; also refines).
    Evaluation sets are used at their own grids (pass one per resolution to compare)."""

    DEFAULTS: dict[str, Any] = dict(
        epochs=10, batch_size=32, lr=1e-3, weight_decay=0.0, optimizer="adam", scheduler="none",
        step_size=100, gamma=0.5, loss="l2", loss_dim=1, seed=0, eval_every=1, progress=True, monitor="rel_l2",
        resolutions=None, resample="stride",
    )

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"unknown training option(s) {sorted(unknown)}; allowed: {sorted(self.DEFAULTS)}")
        super().__init__({**self.DEFAULTS, **kwargs})
        if self["resolutions"] is not None:
            self["resolutions"] = _resolutions(self["resolutions"])
        if self["resample"] not in RESAMPLE:
            raise ValueError(f"resample must be one of {RESAMPLE}, but got {self['resample']!r}")


def _resolutions(value: Any) -> list:
    """``resolutions`` as a JSON-friendly list of ints (same size on every axis) or lists of ints (per axis)."""
    if isinstance(value, (int, np.integer)) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"resolutions must be a non-empty list of grid sizes like [32, 64], but got {value!r}")
    out: list = []
    for r in value:
        sizes = [r] if isinstance(r, (int, np.integer)) else list(r) if isinstance(r, (list, tuple)) else None
        if not sizes or any(not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1 for n in sizes):
            raise ValueError(f"resolutions must hold positive ints or lists of them, but got {value!r}")
        out.append(int(r) if isinstance(r, (int, np.integer)) else [int(n) for n in sizes])
    return out


def _resample(t: torch.Tensor, size: tuple[int, ...], mode: str) -> torch.Tensor:
    """``t`` (batch, channels, *spatial) on the grid ``size`` (see TrainConfig: stride, area, linear)."""
    shape = tuple(t.shape[2:])
    if shape == size:
        return t
    if mode == "linear":
        kind = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
        return torch.nn.functional.interpolate(t, size=size, mode=kind, align_corners=False)
    if any(r > n or n % r for n, r in zip(shape, size)):
        raise ValueError(f"resample={mode!r} needs every resolution to divide the data's grid {shape}, but got "
                         f"{size}; use resample='linear' for other sizes")
    if mode == "stride":
        return t[(slice(None), slice(None)) + tuple(slice(None, None, n // r) for n, r in zip(shape, size))]
    pool = {1: torch.nn.functional.avg_pool1d, 2: torch.nn.functional.avg_pool2d,
            3: torch.nn.functional.avg_pool3d}[len(size)]
    k = tuple(n // r for n, r in zip(shape, size))
    return pool(t, kernel_size=k, stride=k)


RESUMABLE_OPTIONS = ("epochs", "eval_every", "progress")
"""Training options that may differ between a run and its resume: how long to train on, how often to evaluate,
the progress bar. Every other option (loss, learning rate, schedule, batch size, seed, ...) must equal the
checkpoint's, or the resumed run would silently train a different way."""


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def config_conflicts(stored: Mapping[str, Any], current: Mapping[str, Any],
                     allowed: tuple = RESUMABLE_OPTIONS) -> list[tuple[str, Any, Any]]:
    """``(option, stored value, current value)`` for every option of ``current`` (a TrainConfig) that differs from
    the checkpoint's ``stored`` config, except the ``allowed`` ones. An option a checkpoint lacks (written before
    the option existed) counts as its default."""
    out = []
    for key, now in current.items():
        if key in allowed:
            continue
        then = stored.get(key, TrainConfig.DEFAULTS.get(key))
        if _plain(then) != _plain(now):
            out.append((key, then, now))
    return out


def checkpoint_config(path: str) -> dict[str, Any]:
    """The training configuration stored in a Trainer checkpoint (``last.pt``/``best.pt``); ``{}`` for a checkpoint
    written without one."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    st = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(st, dict) or "model" not in st:
        raise KeyError(f"{path!r} is not a Trainer checkpoint")
    return dict(st.get("config") or {})


def _dist() -> tuple[bool, int, int]:
    ok = torch.distributed.is_available() and torch.distributed.is_initialized()
    return ok, (torch.distributed.get_rank() if ok else 0), (torch.distributed.get_world_size() if ok else 1)


def _rng_state() -> dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: Mapping[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


class Trainer:
    """Train ``model`` on ``(*inputs, target)`` data sets; see the module docstring.

    ``out_dir``: where ``last.pt``, ``best.pt`` and ``metrics.jsonl`` go (None: nothing written).
    ``forward``: optional ``forward(model, inputs) -> prediction`` for models with other call conventions.
    """

    def __init__(self, model: torch.nn.Module, config: Optional[Mapping[str, Any]] = None,
                 out_dir: Optional[str] = None, device: Union[str, torch.device, None] = None,
                 forward: Optional[Callable[[torch.nn.Module, tuple], torch.Tensor]] = None,
                 loss: Optional[torch.nn.Module] = None, grid: Optional[Any] = None) -> None:
        self.config = TrainConfig(**dict(config or {}))
        c = self.config
        if c["optimizer"] not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, but got {c['optimizer']!r}")
        if c["scheduler"] not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, but got {c['scheduler']!r}")
        if c["monitor"] not in MONITORS:
            raise ValueError(f"monitor must be one of {MONITORS}, but got {c['monitor']!r}")
        self.distributed, self.rank, self.world = _dist()
        self.grid = grid
        if grid is not None and c["resolutions"]:
            raise ValueError("resolutions (multi-resolution training) and a domain-parallel grid cannot be combined: "
                             "the grid fixes one resolution")
        if grid is not None:  # domain-parallel: no data split, no DDP; ranks share every batch
            self.distributed, self.rank, self.world = False, grid.comm.rank, 1
        self._part = 0 if grid is not None else self.rank  # this rank's share of each batch (of ``world``)
        if device is None:
            if torch.cuda.is_available():
                device = torch.device("cuda", torch.cuda.current_device() if not (self.distributed or grid)
                                      else int(os.environ.get("LOCAL_RANK", self.rank % torch.cuda.device_count())))
            else:
                device = torch.device("cpu")
        self.device = torch.device(device)
        torch.manual_seed(c["seed"])
        np.random.seed(c["seed"] % 2**32)
        random.seed(c["seed"])
        self.module = model.to(self.device)
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        else:
            self.model = self.module
        self.loss_fn = loss if loss is not None else make_loss(c["loss"], c["loss_dim"])
        self.eval_loss = LpLoss(2)
        params = [p for p in self.module.parameters() if p.requires_grad]
        if c["optimizer"] == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=c["lr"], weight_decay=c["weight_decay"])
        elif c["optimizer"] == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=c["lr"], weight_decay=c["weight_decay"])
        else:
            self.optimizer = torch.optim.SGD(params, lr=c["lr"], weight_decay=c["weight_decay"], momentum=0.9)
        if c["scheduler"] == "step":
            self.scheduler: Optional[Any] = torch.optim.lr_scheduler.StepLR(self.optimizer, c["step_size"], c["gamma"])
        elif c["scheduler"] == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, max(1, c["epochs"]))
        elif c["scheduler"] == "exponential":
            self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, c["gamma"])
        elif c["scheduler"] == "inverse_time":  # lr / (1 + gamma * epoch / step_size), DeepXDE's "inverse time"
            rate, steps = float(c["gamma"]), float(c["step_size"])
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: 1.0 / (1.0 + rate * e / steps))
        else:
            self.scheduler = None
        self.forward = forward or (lambda m, inputs: m(*inputs))
        self.out_dir = out_dir
        self.epoch = 0
        self.best = float("inf")
        self.best_state: Optional[dict[str, torch.Tensor]] = None  # weights at ``best`` (this process's run)
        self.history: list[dict[str, Any]] = []
        if out_dir and self.rank == 0:
            os.makedirs(out_dir, exist_ok=True)

    def _block(self, t: Any) -> Any:
        """Domain-parallel: a grid field as this rank's GridTensor block (a block as read, or cut from a whole
        field); anything else unchanged."""
        from deepkrylov.distributed import GridTensor

        if not isinstance(t, torch.Tensor) or t.dim() != 2 + self.grid.ndim:
            return t
        if tuple(t.shape[2:]) == self.grid.local_shape:
            return GridTensor(t, self.grid)
        if tuple(t.shape[2:]) == self.grid.global_shape:
            return GridTensor.from_global(t, self.grid)
        return t

    def _predict(self, model: torch.nn.Module, inputs: list[Any], y: Any) -> Any:
        """The model's output; domain-parallel, a whole replicated output (a model that does not take blocks) is
        cut to this rank's block, so the loss sees the target's form."""
        out = self.forward(model, tuple(inputs))
        if self.grid is not None and isinstance(out, torch.Tensor):
            from deepkrylov.distributed import GridTensor

            if isinstance(y, GridTensor):
                if tuple(out.shape) != tuple(y.shape):
                    raise ValueError(f"domain-parallel: the model returned a tensor of shape {tuple(out.shape)}, "
                                     f"neither a GridTensor nor the whole field {tuple(y.shape)}")
                out = GridTensor.from_global(out, self.grid)
        return out

    def _batch(self, ds: Dataset, idx: Union[torch.Tensor, slice]) -> tuple[list[Any], Any]:
        *inputs, y = self._to(self._fetch(ds, idx))
        if self.grid is not None:
            inputs, y = [self._block(t) for t in inputs], self._block(y)
        return inputs, y

    def _sum_gradients(self) -> None:
        """Domain-parallel: each rank holds its blocks' share of every weight gradient; sum them."""
        for p in self.module.parameters():
            if p.grad is not None:
                self.grid.comm.allreduce_(p.grad)

    # -- checkpoints ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch, "best": self.best, "rng": _rng_state(), "config": dict(self.config),
        }

    def save_checkpoint(self, path: str) -> None:
        """Write the full training state (rank 0 only; atomic rename so an interrupt leaves the old file)."""
        if self.rank != 0:
            return
        tmp = path + ".tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: str) -> None:
        """Restore the state written by :meth:`save_checkpoint`; training continues at the next epoch.

        The checkpoint's training configuration must equal this Trainer's except for :data:`RESUMABLE_OPTIONS`
        (e.g. more ``epochs``); otherwise a ValueError names every differing option with both values, and nothing
        is loaded. To continue with other settings, start a new run from the weights (``model.load_state_dict``)."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint {path!r} does not exist")
        st = torch.load(path, map_location=self.device, weights_only=False)
        missing = [k for k in ("model", "optimizer", "epoch", "rng") if k not in st]
        if missing:
            raise KeyError(f"checkpoint {path!r} lacks {missing}; is it a Trainer checkpoint?")
        if st.get("config") is not None:
            conflicts = config_conflicts(st["config"], self.config)
            if conflicts:
                listed = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, a, b in conflicts)
                raise ValueError(
                    f"cannot resume from {path!r}: the training configuration differs from the checkpoint's "
                    f"({listed}). Use the checkpoint's values, or train into a new output directory; options that "
                    f"may change on resume: {', '.join(RESUMABLE_OPTIONS)}"
                )
            if (self.config["scheduler"] == "cosine" and st["config"].get("epochs") != self.config["epochs"]
                    and self.rank == 0):
                log.warning("resuming a cosine schedule with epochs %s instead of %s: the schedule keeps its "
                            "stored period of %s epochs, so past it the learning rate rises again from its "
                            "minimum (a warm restart)", self.config["epochs"], st["config"].get("epochs"),
                            st["config"].get("epochs"))
        self.module.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        if self.scheduler is not None and st.get("scheduler") is not None:
            self.scheduler.load_state_dict(st["scheduler"])
        self.epoch, self.best = int(st["epoch"]), float(st["best"])
        _set_rng_state(st["rng"])

    def restore_best(self) -> None:
        """Load the weights of the best evaluation so far (in memory; after a resume only if one improved since)."""
        if self.best_state is None:
            raise RuntimeError("no best weights: fit() with an evaluation set first (best.pt holds earlier runs')")
        self.module.load_state_dict(self.best_state)

    # -- loops ---------------------------------------------------------------------------------------------
    def _order(self, ds: Dataset, train: bool) -> torch.Tensor:
        """Sample order: a permutation seeded by (seed, epoch) for training, identity for evaluation. The same
        on every rank, so a data-parallel run visits exactly the batches of the serial run."""
        n = len(ds)  # type: ignore[arg-type]
        if not train:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.config["seed"] * 100003 + self.epoch)
        return torch.randperm(n, generator=g)

    @staticmethod
    def _fetch(ds: Dataset, idx: Union[torch.Tensor, slice]) -> Any:
        """The samples ``idx`` (indices, or a contiguous slice) of ``ds`` as one batch: a TensorDataset is indexed
        (a slice gives views, no copy), others are collated (read at once through ``__getitems__`` where the data
        set has it, e.g. one HDF5 read per field for ``HDF5Fields``)."""
        if isinstance(ds, torch.utils.data.TensorDataset):
            return tuple(t[idx] for t in ds.tensors)
        ids = [int(i) for i in (range(len(ds))[idx] if isinstance(idx, slice) else idx)]  # type: ignore[arg-type]
        many = getattr(ds, "__getitems__", None)
        return torch.utils.data.default_collate(many(ids) if many is not None else [ds[i] for i in ids])

    def _to(self, batch: Any) -> list[torch.Tensor]:
        return [b.to(self.device) for b in batch]

    def train_epoch(self, ds: Dataset) -> float:
        """One pass over ``ds``; returns the mean training loss (averaged over ranks).

        ``batch_size`` is the global batch. Under DDP each global batch of the serial order is split into
        ``world`` near-equal parts and each rank's loss is weighted by ``world * n_rank / n_batch``, so the
        averaged gradient is that of the whole batch (for losses that are means over samples, as all here are);
        a rank left without samples runs a zero-weighted step so the collective still matches."""
        self.model.train()
        total, count = 0.0, 0
        n, bs = len(ds), self.config["batch_size"]  # type: ignore[arg-type]
        # one batch holding every sample: its order cannot change a mean loss, so take contiguous views
        order = self._order(ds, True) if bs < n else None
        for i in range(0, n, bs):
            nb = min(bs, n - i)
            lo, hi = nb * self._part // self.world, nb * (self._part + 1) // self.world
            weight = (hi - lo) * self.world / nb
            if hi == lo:
                lo, hi = 0, 1
            idx = order[i + lo:i + hi] if order is not None else slice(i + lo, i + hi)
            inputs, y = self._batch(ds, idx)
            if self.config["resolutions"]:
                inputs, y = self._at_resolution(inputs, y, self.epoch * -(-n // bs) + i // bs)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self._predict(self.model, inputs, y), y)
            (loss if weight == 1.0 else loss * weight).backward()
            if self.grid is not None:
                self._sum_gradients()
            self.optimizer.step()
            if weight > 0:
                total += float(loss.detach()) * y.shape[0]
                count += y.shape[0]
        if self.scheduler is not None:
            self.scheduler.step()
        return self._allmean(total, count)

    def _at_resolution(self, inputs: list[torch.Tensor], y: torch.Tensor,
                       step: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Global batch ``step`` resampled to ``resolutions[step % len(resolutions)]`` (inputs on the target's grid
        only; others, e.g. coordinates or parameters, pass unchanged)."""
        res = self.config["resolutions"]
        r = res[step % len(res)]
        if y.ndim < 3:
            raise ValueError(f"resolutions needs grid data (batch, channels, *spatial), but the target has shape "
                             f"{tuple(y.shape)}")
        shape = tuple(y.shape[2:])
        size = tuple(r) if isinstance(r, list) else (r,) * len(shape)
        if len(size) != len(shape):
            raise ValueError(f"resolution {r} has {len(size)} axes, the data's grid {shape} has {len(shape)}")
        mode = self.config["resample"]
        return ([_resample(t, size, mode) if t.ndim == y.ndim and tuple(t.shape[2:]) == shape else t
                 for t in inputs], _resample(y, size, mode))

    def _allmean(self, total: float, count: int) -> float:
        if self.distributed:
            t = torch.tensor([total, float(count)], dtype=torch.float64,
                             device=self.device if self.device.type == "cuda" else "cpu")
            torch.distributed.all_reduce(t)
            total, count = float(t[0]), int(t[1])
        return total / max(count, 1)

    @torch.no_grad()
    def evaluate(self, ds: Dataset) -> dict[str, float]:
        """Relative L2 error, MSE and the training loss on ``ds`` (per-sample values averaged; the loss is what a
        model with its own objective, e.g. a solver's network, is selected by: ``monitor="loss"``); under DDP each
        rank evaluates a contiguous share and the sums are all-reduced (no sample counted twice)."""
        self.model.eval()
        rel, mse, loss, count = 0.0, 0.0, 0.0, 0
        n, bs = len(ds), self.config["batch_size"]  # type: ignore[arg-type]
        lo, hi = n * self._part // self.world, n * (self._part + 1) // self.world
        for i in range(lo, hi, bs):
            inputs, y = self._batch(ds, torch.arange(i, min(i + bs, hi)))
            pred = self._predict(self.module, inputs, y)
            rel += float(LpLoss(2, reduction="sum")(pred, y))
            mse += float(MSELoss(reduction="sum")(pred, y))
            loss += float(self.loss_fn(pred, y)) * y.shape[0]
            count += y.shape[0]
        return {"rel_l2": self._allmean(rel, count), "mse": self._allmean(mse, count),
                "loss": self._allmean(loss, count)}

    def fit(self, train: Dataset, evals: Optional[Mapping[str, Dataset]] = None,
            resume: Union[bool, str] = False) -> list[dict[str, Any]]:
        """Train until ``config['epochs']``; ``evals``: name -> data set (e.g. per resolution); the first one's
        ``config['monitor']`` metric picks the best checkpoint (pass the training set first to select by training
        error, as DeepXDE does). ``resume``: True (``out_dir/last.pt`` if present) or a checkpoint path."""
        if resume:
            path = resume if isinstance(resume, str) else os.path.join(self.out_dir or ".", "last.pt")
            if isinstance(resume, str) or os.path.exists(path):
                self.load_checkpoint(path)
        evals = dict(evals or {})
        bar = None
        if self.rank == 0 and self.config["progress"]:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.config["epochs"], initial=self.epoch, desc="train", leave=False)
        while self.epoch < self.config["epochs"]:
            train_loss = self.train_epoch(train)
            self.epoch += 1
            rec: dict[str, Any] = {"epoch": self.epoch, "train_loss": train_loss,
                                   "lr": self.optimizer.param_groups[0]["lr"]}
            if evals and (self.epoch % self.config["eval_every"] == 0 or self.epoch == self.config["epochs"]):
                for name, ds in evals.items():
                    for k, v in self.evaluate(ds).items():
                        rec[f"{name}/{k}"] = v
                key = f"{next(iter(evals))}/{self.config['monitor']}"
                if rec[key] < self.best:
                    self.best = rec[key]
                    self.best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
                    if self.out_dir:
                        self.save_checkpoint(os.path.join(self.out_dir, "best.pt"))
            self.history.append(rec)
            if self.out_dir:
                self.save_checkpoint(os.path.join(self.out_dir, "last.pt"))
                if self.rank == 0:
                    with open(os.path.join(self.out_dir, "metrics.jsonl"), "a") as f:
                        f.write(json.dumps(rec) + "\n")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.3e}")
        if bar is not None:
            bar.close()
        return self.history
