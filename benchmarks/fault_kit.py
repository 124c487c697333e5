"""What every fault row shares: the tiny benchmark and model (built once in the work folder, reused when it is
kept), the commands that run training, and how an outcome is read."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "VGID_TRACKING": "off",
       "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))}
FAULTS_SCRIPT = str(REPO / "benchmarks" / "faults.py")


def sh(cmd: list[str], timeout: int = 600, on_line=None, cwd: Path = REPO,
       env: dict | None = None) -> tuple[int, str]:
    proc = subprocess.Popen(cmd, cwd=cwd, env={**ENV, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    deadline = time.time() + timeout
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line, proc)
            if time.time() > deadline:
                raise subprocess.TimeoutExpired(cmd, timeout)
        proc.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return -9, "".join(lines) + f"\n[timed out after {timeout}s]"
    return proc.returncode, "".join(lines)


def last_error(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.startswith("error:") or "[vgid] stopped" in line:
            return line.strip()[:400]
    return text.strip().splitlines()[-1][:400] if text.strip() else ""


class Matrix:
    """The work folder of one matrix run: the tiny benchmark and model (reused when a kept folder has them), a
    recipe of 12 single-process steps, and runs that several rows start from (made once, copied by each row)."""

    def __init__(self, work: Path):
        from vgid_dist.data.synthetic import corpus, write_synthetic_benchmark
        from vgid_dist.models.tiny import build_tiny_llava

        self.work = work
        self._cache: dict[str, object] = {}
        self.bench = work / "bench"
        if not (self.bench / "synthetic.json").is_file():
            shutil.rmtree(self.bench, ignore_errors=True)
            write_synthetic_benchmark(self.bench, num_profiles=20, num_celebrities=4, seed=2)
        self.model = work / "model"
        if not (self.model / "model.safetensors").is_file():
            shutil.rmtree(self.model, ignore_errors=True)
            build_tiny_llava(self.model, corpus(self.bench), hidden=32, vocab_size=512)
        self.recipe = work / "recipe.yaml"
        self.recipe.write_text(yaml.safe_dump({
            "extends": "tiny", "model": {"path": str(self.model)}, "data": {"root": str(self.bench)},
            "optim": {"max_steps": 12, "batch_size": 2, "lr": 1e-2, "schedule": "constant", "seed": 3},
            "log_every": 1}))  # a line per step: rows act on "step N/12"

    def train(self, out: Path, *extra: str, ranks: int = 1, port: int = 29650, runner: list[str] | None = None,
              on_line=None, timeout: int = 600, env: dict | None = None) -> tuple[int, str]:
        args = ["--ds_config", "zero3", "--config", str(self.recipe), f"output_dir={out}", *extra]
        entry = runner or ["launch/train.py"]
        if ranks == 1:
            cmd = [PY, *entry, *args]
        else:
            cmd = [PY, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", str(port),
                   *entry, *args]
        return sh(cmd, timeout, on_line, env=env)

    def faulty(self, kind: str, steps: str = "") -> list[str]:
        """The training entry with a fault installed in the process (``faults.py _run KIND STEPS``)."""
        return [FAULTS_SCRIPT, "_run", kind, steps]

    def fresh(self, name: str) -> Path:
        """An output_dir path no earlier attempt left anything in."""
        out = self.work / name
        shutil.rmtree(out, ignore_errors=True)
        return out

    def bench_copy(self, name: str) -> Path:
        dst = self.work / name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(self.bench, dst)
        return dst

    def once(self, key: str, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def reference(self) -> Path:
        """An uninterrupted run of the recipe (what a resumed run must equal)."""
        def make():
            out = self.fresh("ref-plain")
            rc, text = self.train(out)
            if rc != 0:
                raise RuntimeError(f"reference run failed: {last_error(text)}")
            return out
        return self.once("reference", make)

    def killed_in_export(self, name: str) -> tuple[Path, int, list[str]]:
        """A copy of one run SIGKILLed inside the model export (its final checkpoint written, the model's
        temporary folder complete but not yet renamed): (folder, exit status, what the kill left beside it)."""
        def make():
            out = self.fresh("killed-in-export")
            rc, _ = self.train(out, runner=self.faulty("kill_export"))
            return out, rc, sorted(p.name for p in out.iterdir() if p.name.startswith(".model."))
        src, rc, left = self.once("killed_in_export", make)
        dst = self.fresh(name)
        shutil.copytree(src, dst)
        return dst, rc, left


def train_log_steps(out: Path) -> list[int] | None:
    """The steps of ``out``'s train_log.jsonl in order; None when a line is not whole JSON."""
    try:
        return [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    except (OSError, ValueError, KeyError):
        return None


def line_with(text: str, needle: str) -> str:
    return next((line.strip() for line in text.splitlines() if needle in line), "")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (what must come out unchanged)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def weights_equal(a: Path, b: Path, tol: float = 1e-6) -> tuple[bool, float]:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    return diff <= tol, diff


def rewrite_pairs(folder: Path, edit) -> None:
    import pyarrow.parquet as pq

    for file in sorted(folder.glob("*.parquet")):
        table = pq.read_table(file)
        pq.write_table(edit(table), file)


def expect_error(rc: int, out: str, *needles: str) -> dict:
    err = last_error(out)
    ok = rc == 2 and all(n in out for n in needles)
    return {"outcome": f"exit {rc}: {err}", "ok": ok, "output_lost": False}


