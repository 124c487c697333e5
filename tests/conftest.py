"""Shared fixtures: a small synthetic benchmark and tiny random models of both families, built once per
session in a temporary folder (nothing is downloaded)."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))

# The MLflow server of the end-to-end tests (``.ci/services.sh`` names it in MLFLOW_TRACKING_URI), read before
# anything runs. Every other test, and every process a test starts, tracks into a temporary SQLite store:
# never ./mlflow.db of the working folder, never a server the user's shell names.
MLFLOW_SERVER = os.environ.get("MLFLOW_TRACKING_URI", "")
MLFLOW_SERVER = MLFLOW_SERVER if MLFLOW_SERVER.startswith(("http://", "https://")) else ""
_STORE = Path(tempfile.mkdtemp(prefix="vgid-tests-mlflow-"))
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_STORE / 'mlflow.db'}"
atexit.register(shutil.rmtree, _STORE, ignore_errors=True)


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory) -> Path:
    from vgid_dist.data.synthetic import write_synthetic_benchmark

    return write_synthetic_benchmark(tmp_path_factory.mktemp("bench") / "bench", num_profiles=20,
                                     num_celebrities=4, seed=1)


@pytest.fixture(scope="session")
def corpus_texts(bench_dir) -> list[str]:
    from vgid_dist.data.synthetic import corpus

    return corpus(bench_dir)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory, corpus_texts) -> Path:
    from vgid_dist.models.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("models") / "llava", corpus_texts, hidden=32, vocab_size=512)


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory, corpus_texts) -> Path:
    from vgid_dist.models.tiny import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("models") / "qwen", corpus_texts, hidden=32,
                                 vocab_size=512)


def run_launcher(args: list[str], *, timeout: int = 300, env: dict | None = None,
                 cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run a (possibly multi-process) command with a hard timeout; the whole process group dies on expiry so a
    stuck collective cannot hang the test session."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(args, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout}s: {' '.join(args)}\n{out[-4000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, "")


PYTHON = sys.executable


# ---- test layers ---------------------------------------------------------------------------------------------
# `python -m pytest` runs the fast layer: the unit tests and the integration tests marked `quick` (a few minutes
# on two cores). `--full` runs every test, as CI does (.ci/run); so does naming a test file or a test, or choosing
# tests with `-m`.
INTEGRATION = REPO / "tests" / "integration"


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true",
                     help="run the whole suite: every integration test (DeepSpeed over 2 CPU ranks, Slurm, MLflow "
                          "server), as CI does; without it, the unit tests and the integration tests marked quick")


def _named_files(config) -> set[Path]:
    named = set()
    for arg in config.args:
        path = Path(arg.split("::", 1)[0])
        if path.is_file():
            named.add(path.resolve())
    return named


def pytest_collection_modifyitems(config, items):
    if config.getoption("--full") or config.option.markexpr:
        return
    named = _named_files(config)
    keep, left = [], []
    for item in items:
        path = Path(str(item.fspath)).resolve()
        full_only = INTEGRATION in path.parents and item.get_closest_marker("quick") is None
        (left if full_only and path not in named else keep).append(item)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = keep
        config.stash[LEFT_FOR_FULL] = len(left)


LEFT_FOR_FULL = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter, config):
    left = config.stash.get(LEFT_FOR_FULL, 0)
    if left:
        terminalreporter.write_line(f"fast layer: {left} integration tests not run; `--full` runs the whole suite "
                                    "(as CI does)")
