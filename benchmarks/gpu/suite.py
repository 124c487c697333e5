"""The GPU measurement suite (``bash benchmarks/gpu/suite.sh``): every stage a child process under its own
timeout, inside one overall deadline, results written after each stage so that a killed run keeps what finished.

Stages (GPU shapes; ``--cpu-smoke``: the same stages at tiny shapes on this machine's CPU):

  install           the carried wheels (.whl/, benchmarks/gpu/wheelhouse.sh) installed offline into a target
                    folder, then the versions every later stage runs with (cpu-smoke: the wheelhouse checked by
                    a dry run for CPython 3.12, the current environment's versions)
  unit_tests        the unit tests parametrised over devices, on the device (tests/unit/test_fused_kl.py)
  vgid_step         the tiny demo's VGID run through `vgid train` and `vgid eval` (benchmarks/gpu/vgid_step.py)
  fused_kl          naive vs ours vs Liger, forward + backward, N=8192 H=4096 V=151936 bf16: seconds, memory
                    above the inputs and max_memory_allocated, and ours/Liger against naive (relative errors)
  train_qwen_full   benchmarks/train_step.py, Qwen2.5-VL-3B shape, full fine-tuning: product vs reference
  train_llava_lora  benchmarks/train_step.py, LLaVA-1.5-7B shape, LoRA: product vs reference
  plan              `vgid plan --json` for both runs against the product steps' measured peaks

Writes ``OUT/suite.json`` ({"suite": ..., "stages": {name: {status, seconds, timeout_s, error, result}}}),
``OUT/suite.md`` (one table per stage) and ``OUT/suite.log`` (every child's output). ``status`` is ok, failed,
timeout or not_run. Every result field is always present; null only where the figure needs a GPU
(``GPU_ONLY``) or, on a GPU, where an optional package (flash-attn) is absent.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))

from suite_report import render_markdown  # noqa: E402

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
VERSIONS = ["torch", "transformers", "deepspeed", "pydantic", "peft", "accelerate", "triton",
            "liger_kernel", "flash_attn"]
# Figures that exist only on a GPU (null under --cpu-smoke, or where the package is absent on the GPU).
GPU_ONLY = {"cuda", "gpu_memory_gb", "triton", "liger_kernel", "flash_attn", "max_memory_allocated_mb", "mfu",
            "liger"}


@dataclass
class Stage:
    name: str
    budget_s: tuple[int, int]  # (GPU, cpu-smoke)
    fields: list[str]
    result: dict = field(default_factory=dict)


# Field lists are what the CI test checks: present in every result, null only if in GPU_ONLY.
KL_FIELDS = ["seconds", "peak_extra_mb", "max_memory_allocated_mb", "loss"]
STEP_FIELDS = ["tokens_per_s_per_gpu", "samples_per_s", "step_time_s", "peak_memory_gb", "mfu", "params",
               "trainable_params"]
TRAIN_FIELDS = ["shape", "lora", "batch_size", "dtype", "vgid", "reference", "memory_ratio", "speedup"]
# Budgets in seconds (GPU, cpu-smoke); they add up to the default deadlines, and time a stage leaves unused
# passes to the later ones.
STAGES = [
    Stage("install", (30, 45), ["python", "device", *VERSIONS, "cuda", "gpu_memory_gb", "package_path",
                                "wheelhouse", "wheelhouse_wheels", "wheelhouse_mib"]),
    Stage("unit_tests", (60, 30), ["selection", "passed", "failed", "skipped"]),
    Stage("vgid_step", (60, 70), ["device", "dtype", "attention", "steps", "loss_first", "loss_last", "finite",
                                  "step_time_s", "train_seconds", "eval_questions", "eval_seconds"]),
    Stage("fused_kl", (110, 40), ["N", "H", "V", "dtype", "naive", "ours", "liger", "ours_row_path", "check"]),
    Stage("train_qwen_full", (100, 45), TRAIN_FIELDS),
    Stage("train_llava_lora", (100, 50), TRAIN_FIELDS),
    Stage("plan", (10, 10), ["train_qwen_full", "train_llava_lora"]),
]


class Suite:
    def __init__(self, args):
        self.args = args
        self.cpu = args.cpu_smoke
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="vgid-suite-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.python = sys.executable
        self.site = self.work / "site"
        self.deadline = time.monotonic() + args.deadline
        self.stage_end = self.deadline
        self.log = (self.out / "suite.log").open("w")
        self.stages = {s.name: s for s in STAGES}
        self.report = {"suite": {"mode": "cpu-smoke" if self.cpu else "gpu", "started": _now(), "finished": None,
                                 "deadline_s": args.deadline, "commit": _git("rev-parse", "HEAD"),
                                 "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))},
                       "stages": {s.name: {"status": "not_run", "seconds": None, "timeout_s": None, "error": None,
                                           "result": None} for s in STAGES}}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "VGID_TRACKING": "off", "PYTHONPATH": str(REPO)}
        self.env.setdefault("VGID_CACHE_DIR", str(self.work / "cache"))
        self.env.setdefault("TORCH_EXTENSIONS_DIR", str(self.work / "torch_extensions"))
        self.env.setdefault("VGID_KERNEL_CACHE", str(self.work / "kernels"))

    # -- running children ------------------------------------------------------------------------------------
    def left(self) -> float:
        """Seconds left in the current stage."""
        return self.stage_end - time.monotonic()

    def child(self, cmd: list[str], timeout: float, env: dict | None = None, cwd: Path = REPO) -> tuple[int, str]:
        """Run ``cmd`` in its own process group; on timeout the whole group is killed. (exit code, output)."""
        self.log.write(f"\n$ {' '.join(cmd)}\n")
        self.log.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env or self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            self.log.write(out)
            raise
        self.log.write(out)
        self.log.flush()
        return proc.returncode, out

    def json_lines(self, cmd: list[str], timeout: float, prefix: str = "{") -> list[dict]:
        code, out = self.child(cmd, timeout)
        lines = [json.loads(line) for line in out.splitlines() if line.startswith(prefix)]
        if code != 0 or not lines:
            raise StageError(f"exit {code}: {_tail(out)}")
        return lines

    # -- stages -----------------------------------------------------------------------------------------------
    def run(self, only: set[str] | None) -> int:
        names = [s.name for s in STAGES if not only or s.name in only]
        for i, name in enumerate(names):
            stage = self.stages[name]
            later = sum(self.stages[n].budget_s[self.cpu] for n in names[i + 1:])
            remaining = self.deadline - time.monotonic()
            # A stage may use what earlier stages left unused, but never the later stages' own budgets.
            timeout = min(remaining, max(stage.budget_s[self.cpu], remaining - later))
            entry = self.report["stages"][name]
            entry["timeout_s"] = round(timeout, 1)
            if timeout < 5:
                entry["error"] = "no time left before the suite's deadline"
                continue
            start = time.monotonic()
            self.stage_end = start + timeout
            try:
                entry["result"] = getattr(self, f"stage_{name}")(timeout)
                entry["status"] = "ok"
            except subprocess.TimeoutExpired as exc:
                entry["status"] = "timeout"
                entry["error"] = f"{' '.join(map(str, exc.cmd))[:300]}: killed at the stage's {timeout:.0f} s limit"
            except Exception as exc:  # noqa: BLE001 - a failed stage is a result; the next stage still runs
                entry["status"], entry["error"] = "failed", f"{type(exc).__name__}: {exc}"[:2000]
            entry["seconds"] = round(time.monotonic() - start, 1)
            self.write()
        self.report["suite"]["finished"] = _now()
        self.write()
        failed = [n for n in names if self.report["stages"][n]["status"] != "ok"]
        print(render_markdown(self.report), flush=True)
        return 1 if failed else 0

    def write(self) -> None:
        for name, text in (("suite.json", json.dumps(self.report, indent=1) + "\n"),
                           ("suite.md", render_markdown(self.report))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.out / name)

    def stage_install(self, timeout: float) -> dict:
        wheel_dir = REPO / ".whl"
        wheels = sorted(wheel_dir.glob("*.whl"))
        mib = round(sum(w.stat().st_size for w in wheels) / 2**20, 2)
        if not wheels:
            state = "absent"
            if not self.cpu:
                raise StageError(f"no wheels in {wheel_dir}: run benchmarks/gpu/wheelhouse.sh where PyPI answers, "
                                 "and carry .whl")
        elif self.cpu and not self.args.install:
            code, out = self.child([self.python, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps",
                                    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                                    *[a for p in PLATFORMS for a in ("--platform", p)], "--target",
                                    str(self.work / "dry-run"), *map(str, wheels)], self.left())
            if code != 0:
                raise StageError(f"the wheelhouse does not install on CPython 3.12: {_tail(out)}")
            state = "checked (pip dry run for CPython 3.12)"
        else:
            code, out = self.child([self.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                    "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(self.site),
                                    *map(str, wheels)], self.left())
            if code != 0:
                raise StageError(f"pip install from the wheelhouse failed: {_tail(out)}")
            # The working tree first (what is measured), the carried packages after it.
            self.env["PYTHONPATH"] = f"{REPO}{os.pathsep}{self.site}"
            state = f"installed into {self.site}"
        # The versions, imported from outside the repository: the package as installed (its wheel on the GPU).
        installed = bool(wheels) and (not self.cpu or self.args.install)
        probe_env = {**self.env, "PYTHONPATH": str(self.site) if installed else str(REPO)}
        versions = self._probe(probe_env, self.left())
        return {**versions, "wheelhouse": state, "wheelhouse_wheels": len(wheels), "wheelhouse_mib": mib}

    def _probe(self, env: dict, timeout: float) -> dict:
        code, out = self.child([self.python, str(REPO / "benchmarks" / "gpu" / "suite_probe.py")], timeout, env=env,
                               cwd=self.work)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if code != 0 or not lines:
            raise StageError(f"the installed packages do not import: {_tail(out)}")
        return json.loads(lines[-1])

    def stage_unit_tests(self, timeout: float) -> dict:
        # On a GPU: every device-parametrised test's CUDA case. CPU: the CPU cases that compile nothing (the
        # compiled row function's CPU cases run in the unit suite).
        selection = "cpu and failed_compilation" if self.cpu else "cuda"
        code, out = self.child([self.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                                "tests/unit/test_fused_kl.py", "-k", selection], timeout)
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", out.splitlines()[-1]
                                                      if out.strip() else "")}
        result = {"selection": selection, "passed": counts.get("passed", 0),
                  "failed": counts.get("failed", 0) + counts.get("error", 0), "skipped": counts.get("skipped", 0)}
        if code != 0 or result["passed"] == 0:
            raise StageError(f"pytest exit {code} ({result}): {_tail(out)}")
        return result

    def stage_vgid_step(self, timeout: float) -> dict:
        (line,) = self.json_lines([self.python, str(REPO / "benchmarks" / "gpu" / "vgid_step.py"), "--work",
                                   str(self.work / "vgid_step"), "--timeout", str(int(timeout))], timeout,
                                  prefix='{"vgid_step"')
        if not line["finite"]:
            raise StageError(f"non-finite training loss: {line}")
        return line

    def stage_fused_kl(self, timeout: float) -> dict:
        n, h, v, dtype, device = (256, 64, 4096, "float32", "cpu") if self.cpu else (8192, 4096, 151936, "bfloat16",
                                                                                      "cuda")
        script = str(REPO / "benchmarks" / "fused_kl.py")
        common = ["--n", str(n), "--h", str(h), "--v", str(v), "--dtype", dtype, "--device", device]
        lines = self.json_lines([self.python, script, *common, "--repeat", "3"], self.left() - 0.25 * timeout)
        by_impl = {line["impl"]: line for line in lines}
        (check,) = self.json_lines([self.python, script, *common, "--check"], self.left())

        def figures(impl: str) -> dict | None:
            line = by_impl.get(impl)
            if line is None or "error" in line or "skipped" in line:
                if impl == "liger" and (self.cpu or "error" in (line or {})):
                    return None  # Liger is Triton code: GPU only, and only where it is installed
                raise StageError(f"{impl}: {line}")
            return {k: line.get(k) for k in KL_FIELDS}

        return {"N": n, "H": h, "V": v, "dtype": dtype, "naive": figures("naive"), "ours": figures("ours"),
                "liger": figures("liger"), "ours_row_path": by_impl["ours"].get("row_path"),
                "check": {k: val for k, val in check.items() if "rel_err" in k}}

    def _train(self, timeout: float, shape: str, lora: bool, batch: int) -> dict:
        cmd = [self.python, str(REPO / "benchmarks" / "train_step.py"), "--shape", shape, "--batch-size", str(batch),
               "--steps", "2" if self.cpu else "4", "--warmup", "1",
               "--child-timeout", str(int(timeout))]
        lines = self.json_lines(cmd + (["--lora"] if lora else []), timeout, prefix='{"step"')
        steps = {line["step"]: line for line in lines}
        vgid, ref = steps["vgid"], steps["reference"]
        return {"shape": shape, "lora": lora, "batch_size": batch, "dtype": vgid["dtype"],
                "vgid": {k: vgid.get(k) for k in STEP_FIELDS}, "reference": {k: ref.get(k) for k in STEP_FIELDS},
                "memory_ratio": round(vgid["peak_memory_gb"] / ref["peak_memory_gb"], 3),
                "speedup": round(vgid["tokens_per_s_per_gpu"] / ref["tokens_per_s_per_gpu"], 3),
                "peak_above_baseline_gb": vgid.get("peak_above_baseline_gb")}

    def stage_train_qwen_full(self, timeout: float) -> dict:
        return self._train(timeout, "tiny-qwen" if self.cpu else "qwen2.5-vl-3b", False, 2 if self.cpu else 4)

    def stage_train_llava_lora(self, timeout: float) -> dict:
        return self._train(timeout, "tiny" if self.cpu else "llava-1.5-7b", True, 2 if self.cpu else 4)

    def stage_plan(self, timeout: float) -> dict:
        """`vgid plan` for each measured run (its shape, batch, dtype, LoRA) against the product step's peak: on
        a GPU max_memory_allocated, on CPU the resident peak above the process's baseline."""
        out = {}
        for name in ("train_qwen_full", "train_llava_lora"):
            measured = self.report["stages"][name]["result"]
            if measured is None:
                out[name] = None
                continue
            model = measured["shape"]
            if self.cpu:  # the tiny shapes are model folders written by train_step.py
                model = str(Path(self.env["VGID_CACHE_DIR"]) / "train_step" / model)
            cmd = [self.python, "-m", "vgid_dist.cli", "plan", "--model", model, "--gpus-per-node", "1",
                   "--batch-size", str(measured["batch_size"]), "--dtype", measured["dtype"], "--json",
                   "--gpu-memory-gb", "141"]
            (plan,) = self.json_lines(cmd + (["--lora"] if measured["lora"] else []), self.left())
            got = measured["peak_above_baseline_gb"] if self.cpu else measured["vgid"]["peak_memory_gb"]
            out[name] = {"predicted_gb": plan["total_gb"], "required_gb": plan["required_gb"], "measured_gb": got,
                         "error": round(plan["total_gb"] / got - 1, 3), "fits": plan["fits"]}
        return out


class StageError(RuntimeError):
    pass


def _tail(text: str, lines: int = 15) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])[-1500:]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="the same stages at tiny shapes on this CPU")
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "runs" / "gpu-suite"),
                   help="results folder (default $OUT, else runs/gpu-suite)")
    p.add_argument("--work", default=None, help="scratch folder (default: a new temporary folder)")
    p.add_argument("--deadline", type=float, default=None, help="seconds for the whole suite (480 / 290 smoke)")
    p.add_argument("--install", action="store_true",
                   help="with --cpu-smoke: install the wheelhouse as on the GPU machine (this Python must be 3.12)")
    p.add_argument("--stages", default=None, help="comma-separated subset, e.g. fused_kl,plan")
    args = p.parse_args(argv)
    if args.deadline is None:
        args.deadline = 290.0 if args.cpu_smoke else 470.0
    only = set(args.stages.split(",")) if args.stages else None
    unknown = (only or set()) - {s.name for s in STAGES}
    if unknown:
        p.error(f"--stages: unknown {sorted(unknown)}; known: {', '.join(s.name for s in STAGES)}")
    if only and not args.cpu_smoke:
        only.add("install")  # a fresh GPU machine has nothing installed: every subset starts with the wheels
    return Suite(args).run(only)


if __name__ == "__main__":
    sys.exit(main())
