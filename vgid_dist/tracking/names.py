"""Names shared by everything that tracks: environment switches, the store's URI, run and metric names, and the
run id kept in an output folder. Plain functions; nothing here imports mlflow."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vgid_dist.io import write_text_atomic
from vgid_dist.vocab import SPLITS

TRACKING_ENV = "VGID_TRACKING"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
PARENT_ENV = "VGID_MLFLOW_PARENT_RUN_ID"
MODEL_ENV = "VGID_MODEL_NAME"
DEFAULT_EXPERIMENT = "vgid"
RUN_ID_FILE = "mlflow_run_id"
PARENT_TAG = "mlflow.parentRunId"
KIND_TAG = "vgid.kind"  # "train" (one per training job) or "sweep" (a sweep's parent)
COUNT_KEY = "count"  # <split>/count/<metric>: the questions a score averages (tables print them beside it)


SYSTEM_METRICS_ENV = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"
OFF = ("0", "off", "false", "no")


def enabled() -> bool:
    return os.environ.get(TRACKING_ENV, "on").strip().lower() not in OFF


def system_metrics_enabled() -> bool:
    """A training run logs MLflow's system metrics (``system/...``) unless MLflow's own switch says false."""
    return os.environ.get(SYSTEM_METRICS_ENV, "true").strip().lower() not in OFF


def default_store() -> Path:
    return Path.cwd() / "mlflow.db"


def tracking_uri(uri: str | None = None) -> str:
    """The store runs go to, made absolute: a relative SQLite or file path would mean another folder in a
    job whose working directory differs from the submitter's."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{default_store()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


def run_name(model: str, forget_ratio: int, method: str, seed: int | None = None) -> str:
    return f"{model}-fr{forget_ratio}-{method}" + (f"-s{seed}" if seed is not None else "")


def eval_metric_key(split: str, metric: str, attack: str | None = None) -> str:
    return f"{attack}/{split}/{metric}" if attack else f"{split}/{metric}"


def eval_metrics(results: Mapping[str, Any], attack: str | None = None, prefix: str = "") -> dict[str, float]:
    """``{split: {metric: v}, by_type: {split: {type: {metric: v}}}, counts: {split: {metric: n}}}`` ->
    ``{"forget/gen_rougeL": v, "forget/Pure_Text/gen_rougeL": v, "forget/count/gen_rougeL": n, ...}`` (under
    ``<attack>/`` and ``prefix`` when given)."""
    out: dict[str, float] = {}
    for split in SPLITS:
        for metric, value in (results.get(split) or {}).items():
            if isinstance(value, (int, float)):
                out[prefix + eval_metric_key(split, metric, attack)] = float(value)
        for metric, count in ((results.get("counts") or {}).get(split) or {}).items():
            out[prefix + eval_metric_key(f"{split}/{COUNT_KEY}", metric, attack)] = float(count)
        for qtype, metrics in ((results.get("by_type") or {}).get(split) or {}).items():
            for metric, value in metrics.items():
                if isinstance(value, (int, float)):
                    out[prefix + eval_metric_key(f"{split}/{qtype}", metric, attack)] = float(value)
    return out


def reference_prefix(model: str, forget_ratio: int, name: str) -> str:
    """Metric prefix of a sweep's reference evaluation (the untouched model, ``base`` or ``icu``), logged on
    the sweep's parent run: ``ref/<model>/fr<ratio>/<name>/``."""
    return f"ref/{model}/fr{forget_ratio}/{name}/"


def step_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The trainer's per-step dict -> ``train/...`` metric names (scored-token counts under
    ``train/scored_tokens/``)."""
    out = {}
    for key, value in metrics.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue
        if key.startswith("tokens/"):
            out[f"train/scored_tokens/{key[len('tokens/'):]}"] = float(value)
        else:
            out[f"train/{key}"] = float(value)
    return out


def read_run_id(folder: Path, name: str = RUN_ID_FILE) -> str | None:
    path = Path(folder) / name
    text = path.read_text().strip() if path.is_file() else ""
    return text or None


def write_run_id(folder: Path, run_id: str, name: str = RUN_ID_FILE) -> None:
    write_text_atomic(Path(folder) / name, run_id + "\n")


