"""Atomic training checkpoints and the RNG states that make resume exact.

A checkpoint is one ``torch.save`` file holding the model and optimizer state, the
step, every RNG state (torch, CUDA, numpy, python and each rank's batch sampler),
the resolved configs and the metrics so far. It is written to a temporary file in
the same folder, fsynced and renamed over the old one, so a run killed at any
moment leaves either the previous checkpoint or the new one, never half of one.
Everything in it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emaprobe.utils import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
# what a resume reads (train.lm); model_config and train_s are optional
REQUIRED_KEYS = ("step", "tokens", "model", "optimizer", "sampler", "rng", "train_config", "world_size", "metrics")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file, fsync, rename)."""
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; a clear error if it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(f"{path}: not a readable emaprobe checkpoint: {_why_unreadable(path, err)}") from err
    missing = [k for k in REQUIRED_KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(REQUIRED_KEYS)
    if missing:
        raise ValueError(f"{path}: a torch file but not an emaprobe training checkpoint (it lacks {missing})")
    return ckpt


def _why_unreadable(path: Path, err: Exception) -> str:
    """What failed, in words. torch.load's own message can be a bare number (a KeyError from the
    unpickler) or a paragraph that suggests weights_only=False; neither helps with a damaged file."""
    if path.stat().st_size == 0:
        return "the file is empty"
    first = str(err).strip().split("\n")[0].split(". ")[0].strip().rstrip(".")
    detail = f"{type(err).__name__}: {first}" if any(c.isalpha() for c in first) else type(err).__name__
    return f"torch.load could not read it ({detail}); the file is damaged or cut short, or was not written by emaprobe"


def rng_state() -> dict[str, Any]:
    """The global RNG states of python, numpy, torch and (if present) CUDA."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # numpy's key array as a tensor keeps the checkpoint loadable with weights_only
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
