"""Resumable checkpoints: DeepSpeed engine state (ZeRO-3 shards, optimiser, scheduler), every RNG, the step.

DeepSpeed's own layout, so its tools read them (``python checkpoints/zero_to_fp32.py checkpoints OUT`` needs
no ``--tag``)::

    checkpoints/
      latest               the tag of the last complete checkpoint (text)
      global_stepN/        engine, optimiser and scheduler state of every rank, rng_rank<R>.pt
      zero_to_fp32.py      DeepSpeed's consolidation script (copied by DeepSpeed)

A checkpoint is written to ``checkpoints/.tmp-global_stepN`` by every rank, renamed to ``global_stepN`` by rank 0
once all ranks finished, then named in ``latest``; only then are older ones deleted, so a kill at any moment
leaves the last good checkpoint in place. The data position needs no state of its own: which samples a step
uses is a pure function of (seed, step), and so is the perturbation noise.

Loading unpickles nothing but tensors and plain data (``torch.load(weights_only=True)``; the strategy makes
DeepSpeed's own loads do the same): a pickle planted in a checkpoint folder is refused, never run.
"""

from __future__ import annotations

import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from vgid_dist.errors import CheckpointError
from vgid_dist.io import write_text_atomic

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TAG = re.compile(r"global_step(\d+)")


def rng_state() -> dict:
    """Every generator's state as tensors and plain numbers (what a ``weights_only`` load reads back)."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss],
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def safe_load(path: Path, map_location=None, allowed: list | tuple = ()):
    """``torch.load`` of tensors and plain data only (plus the classes in ``allowed``); anything else (a
    planted pickle) raises CheckpointError naming the file, and nothing in it runs."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = next((line.strip() for line in str(exc).splitlines() if "global" in line.lower()), "")
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain data ({found or exc}). "
            "This service never writes such a file; if you did not put it there, someone did: remove "
            f"{Path(path).parent} to resume from an earlier checkpoint or start over") from None


class CheckpointManager:
    def __init__(self, out_dir: Path, strategy):
        self.dir = Path(out_dir) / CHECKPOINTS
        self.strategy = strategy

    def latest(self) -> tuple[int, Path] | None:
        """(step, folder) of the last complete checkpoint, or None."""
        record = self.dir / LATEST
        if not record.is_file():
            return None
        tag = record.read_text().strip()
        match = TAG.fullmatch(tag)
        folder = self.dir / tag
        return (int(match.group(1)), folder) if match and folder.is_dir() else None

    def save(self, engine, step: int, state: dict) -> Path:
        """Every rank must call this (each writes its own ZeRO shards)."""
        tag = f"global_step{step}"
        tmp_tag = f".tmp-{tag}"
        if self.strategy.is_main:
            shutil.rmtree(self.dir / tmp_tag, ignore_errors=True)
        self.strategy.barrier()
        self.strategy.save_engine_checkpoint(engine, self.dir, tmp_tag, {"step": step, **state})
        torch.save(rng_state(), self.dir / tmp_tag / f"rng_rank{self.strategy.rank}.pt")
        self.strategy.barrier()  # every shard is on disk before the checkpoint is declared complete
        if self.strategy.is_main:
            final = self.dir / tag
            shutil.rmtree(final, ignore_errors=True)
            (self.dir / tmp_tag).rename(final)
            write_text_atomic(self.dir / LATEST, tag)
            self.remove_stale()
        self.strategy.barrier()
        return self.dir / tag

    def remove_stale(self) -> list[str]:
        """Checkpoints older than ``latest`` and unfinished ones (a kill mid-save). Rank 0."""
        if not self.dir.is_dir():
            return []
        found = self.latest()
        keep = found[1].name if found else None
        stale = [p for p in self.dir.iterdir() if p.is_dir() and p.name != keep
                 and (TAG.fullmatch(p.name) or p.name.startswith(".tmp-"))]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return sorted(f"{CHECKPOINTS}/{p.name}" for p in stale)

    def load(self, engine) -> dict:
        """Restore the engine and this rank's RNGs from the latest checkpoint; returns its saved state."""
        found = self.latest()
        if found is None:
            raise FileNotFoundError(f"{self.dir}: no complete checkpoint")
        step, folder = found
        state = self.strategy.load_engine_checkpoint(engine, self.dir, folder.name)
        rng_file = folder / f"rng_rank{self.strategy.rank}.pt"
        if rng_file.is_file():
            set_rng_state(safe_load(rng_file))
        return state

    def clear(self) -> None:
        if self.strategy.is_main:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.strategy.barrier()
