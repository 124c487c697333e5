"""Resumable checkpoints: DeepSpeed engine state (ZeRO-3 shards, optimiser, scheduler), every RNG, the step.

A checkpoint is written to ``checkpoints/.tmp-stepNNNNNNNN`` by every rank, renamed to ``stepNNNNNNNN`` by rank
0 once all ranks finished, then recorded in ``checkpoints/LATEST``; only then is the previous one deleted, so
a kill at any moment leaves the last good checkpoint in place. The data position needs no state of its own:
which samples a step uses is a pure function of (seed, step), and so is the perturbation noise.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from vgid_dist.io import write_text_atomic

CHECKPOINTS = "checkpoints"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    def __init__(self, out_dir: Path, strategy):
        self.dir = Path(out_dir) / CHECKPOINTS
        self.strategy = strategy

    def latest(self) -> tuple[int, Path] | None:
        """(step, folder) of the last complete checkpoint, or None."""
        record = self.dir / "LATEST"
        if not record.is_file():
            return None
        info = json.loads(record.read_text())
        folder = self.dir / info["tag"]
        return (int(info["step"]), folder) if folder.is_dir() else None

    def save(self, engine, step: int, state: dict) -> Path:
        """Every rank must call this (each writes its own ZeRO shards)."""
        tag = f"step{step:08d}"
        tmp_tag = f".tmp-{tag}"
        if self.strategy.is_main:
            shutil.rmtree(self.dir / tmp_tag, ignore_errors=True)
        self.strategy.barrier()
        self.strategy.save_engine_checkpoint(engine, self.dir, tmp_tag, {"step": step, **state})
        torch.save(rng_state(), self.dir / tmp_tag / f"rng_rank{self.strategy.rank}.pt")
        self.strategy.barrier()  # every shard is on disk before the checkpoint is declared complete
        if self.strategy.is_main:
            previous = self.latest()
            final = self.dir / tag
            shutil.rmtree(final, ignore_errors=True)
            os.replace(self.dir / tmp_tag, final)
            write_text_atomic(self.dir / "LATEST", json.dumps({"step": step, "tag": tag}))
            if previous is not None and previous[1] != final:
                shutil.rmtree(previous[1], ignore_errors=True)
        self.strategy.barrier()
        return self.dir / tag

    def load(self, engine) -> dict:
        """Restore the engine and this rank's RNGs from the latest checkpoint; returns its saved state."""
        found = self.latest()
        if found is None:
            raise FileNotFoundError(f"{self.dir}: no complete checkpoint")
        step, folder = found
        state = self.strategy.load_engine_checkpoint(engine, self.dir, folder.name)
        rng_file = folder / f"rng_rank{self.strategy.rank}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return state

    def clear(self) -> None:
        if self.strategy.is_main:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.strategy.barrier()
