"""Saving and loading DCDM models, and the model that ships with deepkrylov.

A model file is a ``torch.save`` dict ``{"config": DCDMNet kwargs, "state_dict": ...}``; the shipped one is
``deepkrylov/solvers/models/dcdm3d.pt`` with its training record beside it (``dcdm3d.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch

from .network import DCDMNet

__all__ = ["SHIPPED_MODEL", "load_model", "save_model", "shipped_model_record"]

SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "models" / "dcdm3d.pt"


def save_model(model: DCDMNet, path: Union[str, Path], **extra: object) -> None:
    torch.save({"config": model.config(), "state_dict": model.state_dict(), **extra}, path)


def load_model(path: Optional[Union[str, Path]] = None, *, dtype: torch.dtype = torch.float32,
               device: Union[str, torch.device, None] = None) -> DCDMNet:
    """Load a DCDM model (default: the shipped one), with a clear error for a missing, corrupt or foreign file."""
    path = Path(path) if path is not None else SHIPPED_MODEL
    if not path.exists():
        hint = " (the shipped model is missing: reinstall, or train one with `deepkrylov train dcdm`)" \
            if path == SHIPPED_MODEL else ""
        raise FileNotFoundError(f"DCDM model file not found: {path}{hint}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling/zip failure means a corrupt file
        raise ValueError(f"cannot read DCDM model file {path}: it is corrupt or not a torch file ({err})") from err
    if not isinstance(blob, dict) or "config" not in blob or "state_dict" not in blob:
        raise ValueError(f"{path} is not a DCDM model file: expected keys 'config' and 'state_dict'")
    try:
        model = DCDMNet(**blob["config"])
        model.load_state_dict(blob["state_dict"])
    except (TypeError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path} does not fit a DCDMNet with config {blob['config']}: {err}") from err
    return model.to(dtype=dtype, device=device).eval()


def shipped_model_record() -> dict:
    """How the shipped model was trained (command, data, epochs, loss, hardware, time)."""
    record = SHIPPED_MODEL.with_suffix(".json")
    return json.loads(record.read_text()) if record.exists() else {}
