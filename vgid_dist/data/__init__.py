"""Data: readers (MLLMU-Bench parquet, JSONL), the synthetic benchmark writer, collation per model family."""

from __future__ import annotations

from pathlib import Path

from vgid_dist.data.jsonl import read_jsonl_samples
from vgid_dist.data.mllmu import MLLMUBench
from vgid_dist.data.schema import DataError, ImageRef, Profile, Sample

__all__ = ["DataError", "ImageRef", "MLLMUBench", "Profile", "Sample", "load_unlearning_data"]


def load_unlearning_data(data_cfg) -> tuple[list[Sample], list[Sample]]:
    """(forget, retain) training pairs of a run, from whichever source the config names."""
    if data_cfg.format == "jsonl":
        root = Path(data_cfg.root).expanduser()
        forget = read_jsonl_samples(data_cfg.forget_file or root / "forget.jsonl", "forget")
        retain = read_jsonl_samples(data_cfg.retain_file or root / "retain.jsonl", "retain")
    else:
        bench = MLLMUBench(data_cfg.root, data_cfg.train_root)
        forget = bench.train_samples("forget", data_cfg.forget_ratio)
        retain = bench.train_samples("retain", data_cfg.forget_ratio)
    return forget, retain
