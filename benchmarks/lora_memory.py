"""Peak memory of a VGID training step: LoRA mode (teacher = the student with its adapters disabled) vs full
fine-tuning (teacher = a second, frozen ZeRO-3 engine), on a LLaVA-shaped random model of about 0.5 B parameters.

The model is built from a config in code (nothing is downloaded) and saved once under ``--work``: a CLIP
ViT-B/16-like vision tower at 224 px (196 image tokens), LLaVA's 2-layer projector and a Llama language model
(hidden 1024, 26 layers, vocabulary 32000), about 0.49 B parameters in float32. The data are the synthetic
benchmark. Each mode runs in its own process (``--child MODE``) through the real trainer (ZeRO-3, one CPU rank,
the ``tiny`` recipe's settings with a global batch of 1 forget + 1 retain sample), so one mode's allocations
cannot inflate the other's figure. Prints one JSON line per mode, then one comparing them:

    {"mode", "params", "trainable_params", "engines", "peak_rss_gb", "setup_rss_gb", "train_peak_rss_gb",
     "step_seconds", ...}

peak_rss_gb: the process's peak resident memory (VmHWM: loading included); setup_rss_gb: resident memory when
the engines are built, before the first step; train_peak_rss_gb: the highest resident memory sampled (every
20 ms) during the training steps (the optimiser state is allocated in the first step).

    python benchmarks/lora_memory.py                       # both modes, 2 steps each
    python benchmarks/lora_memory.py --modes lora --steps 1 --work /tmp/lora-bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MODES = ("full", "lora")
GB = 2**30


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakSampler:
    """Highest RSS seen by a background thread while the block runs."""

    def __init__(self, every_s: float = 0.02):
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.every_s)

    def __enter__(self):
        self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def mem_available_kb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise KeyError("MemAvailable")


def estimate_gb(model_dir: Path, mode: str) -> float:
    """A generous guess of a mode's peak: fp32 weights (safetensors size) x 6 for full fine-tuning (student,
    teacher, ZeRO-3's flat fp32 copy, gradients, two Adam moments) or x 1.5 for LoRA, plus 3 GB."""
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / GB
    return weights * (6 if mode == "full" else 1.5) + 3


def build_assets(work: Path, layers: int, hidden: int, vocab: int) -> tuple[Path, Path]:
    """The synthetic benchmark and the random LLaVA-shaped model (built once, reused)."""
    from vgid_dist.data.synthetic import corpus, write_synthetic_benchmark

    bench = work / "bench"
    if not (bench / "synthetic.json").is_file():
        write_synthetic_benchmark(bench, num_profiles=20, num_celebrities=4, seed=1, overwrite=bench.exists())
    model_dir = work / f"llava-{layers}x{hidden}"
    if (model_dir / "model.safetensors.index.json").is_file() or (model_dir / "model.safetensors").is_file():
        return bench, model_dir

    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from vgid_dist.models.tiny import build_tiny_llava

    # The tokenizer and its special ids come from the tiny builder; the weights are a new, larger model.
    tiny = build_tiny_llava(work / "tokenizer-donor", corpus(bench), vocab_size=1024)
    donor = json.loads((tiny / "config.json").read_text())
    text = donor["text_config"]
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                       num_attention_heads=12, image_size=224, patch_size=16, projection_dim=768),
        text_config=LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.75),
                                num_hidden_layers=layers, num_attention_heads=hidden // 64,
                                num_key_value_heads=hidden // 64, max_position_embeddings=2048,
                                bos_token_id=text["bos_token_id"], eos_token_id=text["eos_token_id"],
                                pad_token_id=text["pad_token_id"], tie_word_embeddings=False),
        image_token_id=donor.get("image_token_id", donor.get("image_token_index")), vision_feature_layer=-2, vision_feature_select_strategy="default",
        tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=work))
    model.save_pretrained(tmp)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny / name).is_file():
            (tmp / name).write_bytes((tiny / name).read_bytes())
    CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(tmp)
    tmp.rename(model_dir)
    return bench, model_dir


def child(mode: str, model_dir: Path, bench: Path, steps: int, out: Path, ds_config: Path | None) -> dict:
    os.environ.setdefault("VGID_TRACKING", "off")
    import torch

    from vgid_dist.config import build_run_config, load_recipe_dict
    from vgid_dist.engine.trainer import Trainer

    data = load_recipe_dict("tiny")
    data.update(output_dir=str(out / mode))
    data["model"] = {"path": str(model_dir), "family": "llava", "dtype": "float32",
                     **({"lora": {"r": 16, "alpha": 16, "dropout": 0.05}} if mode == "lora" else {})}
    data["data"] = {"root": str(bench), "forget_ratio": 5, "max_length": 512}
    data["optim"].update(batch_size=1, max_steps=steps)
    if ds_config is not None:
        data["ds_config"] = str(ds_config)
    cfg = build_run_config(data, f"benchmarks/lora_memory.py ({mode})")
    trainer = Trainer(cfg, force=True)
    trainer.setup()
    setup_rss = rss_bytes()
    module = trainer.engine.module
    # Under ZeRO-3 a parameter's own numel is its local shard; ds_numel is the full size.
    numel = [(getattr(p, "ds_numel", p.numel()), p.requires_grad) for p in module.parameters()]
    times = []
    with PeakSampler() as sampler:
        for step in range(steps):
            t0 = time.perf_counter()
            metrics = trainer.train_step(step)
            times.append(time.perf_counter() - t0)
    result = {
        "mode": mode, "params": sum(n for n, _ in numel), "trainable_params": sum(n for n, t in numel if t),
        "engines": 1 if trainer.frozen is None or trainer.frozen.engine is trainer.engine else 2,
        "teacher": "adapters disabled" if mode == "lora" else "separate frozen engine",
        "dtype": "float32", "zero_stage": trainer.strategy.zero_stage, "world_size": trainer.strategy.world_size,
        "peak_rss_gb": round(status_kb("VmHWM") * 1024 / GB, 3), "setup_rss_gb": round(setup_rss / GB, 3),
        "train_peak_rss_gb": round(sampler.peak / GB, 3), "steps": steps,
        "step_seconds": [round(t, 1) for t in times], "tokens": {k: v for k, v in metrics.items()
                                                                  if k.startswith("tokens/")},
        "torch_threads": torch.get_num_threads(),
    }
    trainer.strategy.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--layers", type=int, default=26, help="language-model decoder layers")
    parser.add_argument("--hidden", type=int, default=1024, help="language-model hidden size")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vgid-lora-memory",
                        help="folder for the model and benchmark (built once, reused)")
    parser.add_argument("--ds-config", type=Path, default=None,
                        help="DeepSpeed JSON for both modes (default: the packaged zero3)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    bench, model_dir = build_assets(args.work, args.layers, args.hidden, args.vocab)

    if args.child:
        result = child(args.child, model_dir, bench, args.steps, args.work / "runs", args.ds_config)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    results = {}
    for mode in args.modes:
        need_gb = estimate_gb(model_dir, mode)
        free_gb = mem_available_kb() * 1024 / GB
        if need_gb > free_gb:
            # Other jobs share this machine: running out of memory would take them down too.
            print(json.dumps({"mode": mode, "skipped": f"needs about {need_gb:.1f} GB, {free_gb:.1f} GB available"}),
                  flush=True)
            continue
        cmd = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps), "--layers", str(args.layers),
               "--hidden", str(args.hidden), "--vocab", str(args.vocab), "--work", str(args.work),
               *(["--ds-config", str(args.ds_config)] if args.ds_config else [])]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", "VGID_TRACKING": "off"})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(json.dumps({"mode": mode, "error": f"exit {proc.returncode}",
                              "tail": (proc.stdout + proc.stderr)[-3000:]}), flush=True)
            continue
        results[mode] = json.loads(lines[-1].removeprefix("RESULT "))
        print(json.dumps(results[mode]), flush=True)
    if len(results) == 2:
        full, lora = results["full"], results["lora"]
        print(json.dumps({"comparison": "lora / full", "peak_rss_ratio": round(lora["peak_rss_gb"] /
                                                                               full["peak_rss_gb"], 3),
                          "train_peak_rss_ratio": round(lora["train_peak_rss_gb"] / full["train_peak_rss_gb"], 3),
                          "saved_gb": round(full["train_peak_rss_gb"] - lora["train_peak_rss_gb"], 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
