"""Checkpoint files shared by the encoder and the OOD training job.

Both write a plain dict with a ``kind`` tag: written atomically (tmp + rename)
so an interrupted run never leaves a corrupt file, and read with
``weights_only=True`` so a checkpoint cannot run code on load.
"""

from __future__ import annotations

from pathlib import Path

import torch


def write_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def read_checkpoint(path: str | Path, *, kind: str, default_name: str, what: str) -> dict:
    """Load ``path`` (a file, or a run folder holding ``default_name``); errors name ``checkpoint``."""
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for non-checkpoints
        raise ValueError(f"checkpoint: {path} is not a readable checkpoint ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or state.get("kind") != kind:
        raise ValueError(f"checkpoint: {path} is not {what}")
    return state


def restore_training(state: dict, **parts) -> tuple[int, list[dict]]:
    """Load each named part (``model=..., optimizer=...``) from ``state``; return (epochs done, history)."""
    for key, obj in parts.items():
        obj.load_state_dict(state[key])
    return int(state["epoch"]), list(state["history"])
