"""Throughput and memory of one training step: the product's VGID step against a reference step written the
way the authors' released code computes VGID.

The model is randomly initialised from a configuration alone (speed does not depend on the values, and no
weights are needed): ``--shape`` names an architecture from ``vgid_dist.plan.ARCHITECTURES`` (``qwen2.5-vl-3b``,
``llava-1.5-7b``, ``llava-1.5-13b``) or a small one defined here (``tiny``, ``tiny-qwen``, ``small``,
``small-wide``, ``small-qwen``, ``small-qwen-vocab``: Qwen2.5-VL's 151,936-token vocabulary on a small body). Its
tokenizer is a byte-level BPE trained in code (``vgid_dist.models.tiny``) on the synthetic words below, so every
word is one token and the batch shapes match the benchmark's: one image, ~60 question tokens, ~20 answer tokens per
sample, as many retain as forget samples.

(a) ``vgid``: the product's code path, as ``engine.trainer.Trainer.train_step`` runs it: ``DeepSpeedStrategy``
    (ZeRO-3, the student engine with its AdamW, a second frozen engine for the teacher, or the student with its
    adapters off under LoRA), ``EngineRunner`` and the ``Vgid`` method (fused KL on answer tokens, retain term).
(b) ``reference``: the same student engine, but a second full model copy as teacher (a plain module on every
    device, not partitioned), the model's full [rows, length, vocab] logits, KL over the whole vocabulary at every
    position of the shared suffix of teacher and student inputs, averaged over the batch's sequences.

One JSON line per step kind:

    {"step", "shape", "device", "world_size", "batch_size", "params", "trainable_params", "tokens_per_s_per_gpu",
     "samples_per_s", "step_time_s", "peak_memory_gb", "mfu", ...}

tokens: non-padding tokens of the student's forget and retain rows on one rank (image tokens included);
samples: forget + retain sequences over all ranks. peak_memory_gb: ``torch.cuda.max_memory_allocated`` on a
GPU; on CPU the process's peak resident memory (VmHWM), with ``baseline_rss_gb`` (after imports, before any
model) and ``peak_above_baseline_gb``. mfu: model FLOPs per second over the device's dense bf16 peak, counting
6N per student token (4N under LoRA: no weight gradients for the frozen base) plus 2N per token of the frozen
model's forward (teacher inputs of forget rows, retain rows), N = vision tower + projector + language model
parameters; null on CPU or on a GPU whose peak is not in ``PEAK_BF16_TFLOPS`` (``--peak-tflops`` sets it).
loss: the last step's loss; the product's is ~0 at random initialisation, since teacher and student hold the
same weights and a freshly initialised model barely reads the context in which their inputs differ (the
reference's is not: it also scores the positions of the question, whose tokens differ).

    python benchmarks/train_step.py --shape tiny                       # both steps, one process each
    python benchmarks/train_step.py --shape qwen2.5-vl-3b --batch-size 4 --steps 10
    deepspeed --num_gpus 8 benchmarks/train_step.py --shape llava-1.5-7b --lora --mode vgid
    python benchmarks/train_step.py --validate                          # planner vs measured peaks (CPU)
    python benchmarks/train_step.py --measure-activations               # the planner's activation coefficients
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vgid_dist.plan import ARCHITECTURES, GB, Architecture, RunShape, plan_memory  # noqa: E402

# Small architectures of both families: the smoke test (tiny) and the planner's validation points (small*).
SMALL_SHAPES: dict[str, Architecture] = {
    "tiny": Architecture(family="llava", vocab_size=1024, hidden_size=64, intermediate_size=256, num_layers=2,
                         num_heads=4, num_kv_heads=4, vision_hidden=64, vision_intermediate=128, vision_layers=2,
                         vision_heads=2, patch_size=7, image_size=28, name="tiny"),
    "tiny-qwen": Architecture(family="qwen2_5_vl", vocab_size=1024, hidden_size=64, intermediate_size=256,
                              num_layers=2, num_heads=4, num_kv_heads=2, vision_hidden=64, vision_intermediate=128,
                              vision_layers=2, vision_heads=2, patch_size=14, image_size=56, vision_out_hidden=64,
                              name="tiny-qwen"),
    "small": Architecture(family="llava", vocab_size=16384, hidden_size=512, intermediate_size=1376, num_layers=6,
                          num_heads=8, num_kv_heads=8, vision_hidden=256, vision_intermediate=1024, vision_layers=4,
                          vision_heads=4, patch_size=14, image_size=112, name="small"),
    "small-wide": Architecture(family="llava", vocab_size=8192, hidden_size=384, intermediate_size=2048,
                               num_layers=8, num_heads=6, num_kv_heads=6, vision_hidden=256,
                               vision_intermediate=1024, vision_layers=4, vision_heads=4, patch_size=14,
                               image_size=112, name="small-wide"),
    "small-qwen": Architecture(family="qwen2_5_vl", vocab_size=16384, hidden_size=512, intermediate_size=1536,
                               num_layers=6, num_heads=8, num_kv_heads=2, vision_hidden=256, vision_intermediate=640,
                               vision_layers=4, vision_heads=4, patch_size=14, image_size=112, vision_out_hidden=512,
                               name="small-qwen"),
    # Qwen2.5-VL's vocabulary (and tied head) on a small body: the case where the logits, not the layers, set the
    # step's memory and time; runs on a CPU.
    "small-qwen-vocab": Architecture(family="qwen2_5_vl", vocab_size=151936, hidden_size=512, intermediate_size=1536,
                                     num_layers=4, num_heads=8, num_kv_heads=2, vision_hidden=256,
                                     vision_intermediate=640, vision_layers=4, vision_heads=4, patch_size=14,
                                     image_size=112, vision_out_hidden=512, tie_word_embeddings=True,
                                     name="small-qwen-vocab"),
}
SHAPES: dict[str, Architecture] = {**SMALL_SHAPES, **ARCHITECTURES}

# Dense bf16 peak (no sparsity) of one device, TFLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0,
                    "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}

QUESTION_TOKENS = 60
ANSWER_TOKENS = 20
# Pseudo-words made of two syllables: the tokenizer is trained on them, so each is one token.
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "du", "fe", "gi", "ho", "ju", "be"]
WORDS = [a + b for a in SYLLABLES for b in SYLLABLES]
JSON_PREFIX = '{"step"'


# -- model folders ----------------------------------------------------------------------------------------------
def cache_root() -> Path:
    from vgid_dist.assets import cache_dir

    return cache_dir() / "train_step"


def donor_folder(family: str) -> Path:
    """A tiny model of the family whose tokenizer (trained on WORDS) every shape of that family reuses."""
    from vgid_dist.assets import file_lock
    from vgid_dist.models.tiny import build_tiny_llava, build_tiny_qwen2_5_vl

    folder = cache_root() / f"tokenizer-{family}"
    texts = [" ".join(WORDS[i:i + 16]) for i in range(0, len(WORDS), 16)] * 4
    with file_lock(cache_root() / f".tokenizer-{family}.lock"):
        if not (folder / "config.json").is_file():
            builder = build_tiny_llava if family == "llava" else build_tiny_qwen2_5_vl
            builder(folder, texts, vocab_size=1024)
    return folder


def hf_config(arch: Architecture, donor: dict):
    """The transformers config of ``arch``, with the special token ids of the donor tokenizer's config."""
    text = donor["text_config"]
    specials = dict(bos_token_id=text.get("bos_token_id"), eos_token_id=text.get("eos_token_id"),
                    pad_token_id=text.get("pad_token_id"))
    if arch.family == "llava":
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

        return LlavaConfig(
            vision_config=CLIPVisionConfig(hidden_size=arch.vision_hidden, intermediate_size=arch.vision_intermediate,
                                           num_hidden_layers=arch.vision_layers,
                                           num_attention_heads=arch.vision_heads, image_size=arch.image_size,
                                           patch_size=arch.patch_size, projection_dim=768),
            text_config=LlamaConfig(vocab_size=arch.vocab_size, hidden_size=arch.hidden_size,
                                    intermediate_size=arch.intermediate_size, num_hidden_layers=arch.num_layers,
                                    num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads,
                                    max_position_embeddings=4096, tie_word_embeddings=arch.tie_word_embeddings,
                                    **specials),
            image_token_id=donor.get("image_token_id", donor.get("image_token_index")), vision_feature_layer=-2,
            vision_feature_select_strategy="default", tie_word_embeddings=arch.tie_word_embeddings)
    from transformers import Qwen2_5_VLConfig

    section = arch.head_dim // 2
    mrope = [section - 2 * (section // 3), section // 3, section // 3]  # [16, 24, 24] at head_dim 128
    full_attention = list(range(7, arch.vision_layers, 8)) or [arch.vision_layers - 1]
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=arch.vocab_size, hidden_size=arch.hidden_size,
                         intermediate_size=arch.intermediate_size, num_hidden_layers=arch.num_layers,
                         num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads,
                         max_position_embeddings=32768, tie_word_embeddings=arch.tie_word_embeddings,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
                         **specials),
        vision_config=dict(depth=arch.vision_layers, hidden_size=arch.vision_hidden,
                           intermediate_size=arch.vision_intermediate, num_heads=arch.vision_heads,
                           out_hidden_size=arch.vision_out_hidden or arch.hidden_size, patch_size=arch.patch_size,
                           spatial_merge_size=arch.spatial_merge_size, temporal_patch_size=arch.temporal_patch_size,
                           window_size=112, fullatt_block_indexes=full_attention),
        image_token_id=donor["image_token_id"], video_token_id=donor["video_token_id"],
        vision_start_token_id=donor["vision_start_token_id"], vision_end_token_id=donor["vision_end_token_id"],
        tie_word_embeddings=arch.tie_word_embeddings)


def shape_folder(name: str) -> tuple[Path, Architecture]:
    """A model folder holding the shape's config.json, tokenizer and image processor, and no weights."""
    from vgid_dist.assets import file_lock

    arch = SHAPES[name]
    donor = donor_folder(arch.family)
    donor_config = json.loads((donor / "config.json").read_text())
    # The tiny shapes' vocabulary is the tokenizer's; real vocabularies are larger than it.
    arch = replace(arch, vocab_size=max(arch.vocab_size, donor_config["text_config"]["vocab_size"]))
    folder = cache_root() / name
    with file_lock(cache_root() / f".{name}.lock"):
        if not (folder / "config.json").is_file():
            tmp = folder.with_name(f".{name}.tmp")
            tmp.mkdir(parents=True, exist_ok=True)
            for item in donor.iterdir():
                if item.is_file() and not item.name.endswith(".safetensors") and item.name not in (
                        "config.json", "generation_config.json", "preprocessor_config.json"):
                    (tmp / item.name).write_bytes(item.read_bytes())
            hf_config(arch, donor_config).save_pretrained(tmp)
            image_processor(arch).save_pretrained(tmp)
            tmp.rename(folder)
    return folder, arch


def image_processor(arch: Architecture):
    if arch.family == "llava":
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil(size={"shortest_edge": arch.image_size},
                                     crop_size={"height": arch.image_size, "width": arch.image_size})
    from transformers import Qwen2VLImageProcessorPil

    pixels = arch.image_size**2
    return Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels, patch_size=arch.patch_size,
                                    merge_size=arch.spatial_merge_size, temporal_patch_size=arch.temporal_patch_size)


# -- synthetic batches ----------------------------------------------------------------------------------------
def synthetic_samples(tokenizer, count: int, image_size: int, seed: int, tag: str):
    """``count`` samples with one random image, QUESTION_TOKENS question and ~ANSWER_TOKENS answer tokens."""
    import numpy as np
    from PIL import Image

    from vgid_dist.data.schema import ImageRef, Sample

    rng = random.Random(seed)
    samples = []
    for k in range(count):
        question = " ".join(rng.choice(WORDS) for _ in range(QUESTION_TOKENS))
        answer = " ".join(rng.choice(WORDS) for _ in range(ANSWER_TOKENS - 1))  # + end-of-turn token
        pixels = np.random.default_rng(seed * 1000 + k).integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        samples.append(Sample(sample_id=f"{tag}{k}", profile_id=f"{tag}{k}", question=question, answer=answer,
                              image=ImageRef(data=buf.getvalue(), origin=f"synthetic {tag}{k}")))
    return samples


def initialise(model) -> None:
    """Random values in place (ZeRO-3: each rank fills its own partition). ZeRO-3 construction skips the usual
    initialisation, leaving whatever memory held: NaNs would make the timed kernels unrepresentative."""
    import torch

    torch.manual_seed(int(os.environ.get("RANK", "0")) + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            target = p.ds_tensor if hasattr(p, "ds_tensor") else p.data
            if target.numel() == 0:
                continue
            if p.ndim >= 2:
                target.normal_(0.0, 0.02)
            elif "norm" in name:
                target.fill_(1.0)
            else:
                target.zero_()


def count_params(model) -> int:
    return sum(getattr(p, "ds_numel", p.numel()) for n, p in model.named_parameters() if ".lora_" not in n)


def rss_gb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / GB
    return float("nan")


def peak_tflops(override: float | None) -> float | None:
    import torch

    if override:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


# -- one step kind in this process --------------------------------------------------------------------------------
def run_step_kind(args) -> dict:
    os.environ.setdefault("VGID_TRACKING", "off")
    import torch

    from vgid_dist.config import build_run_config
    from vgid_dist.data.collate import Collator
    from vgid_dist.engine.runner import AdapterDisabledRunner, EngineRunner
    from vgid_dist.engine.strategy import DeepSpeedStrategy
    from vgid_dist.methods import build_method
    from vgid_dist.models import load_adapter
    from vgid_dist.models.lora import apply_lora

    on_gpu = torch.cuda.is_available()
    dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    folder, arch = shape_folder(args.shape)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    reference = args.mode == "reference"
    lora = {"lora": {"r": args.lora_r, "alpha": args.lora_r}} if args.lora else {}
    attention = args.attention
    if attention == "auto":  # as DeepSpeedStrategy.attention_impl decides, for the reference teacher too
        attention = "sdpa"
        if on_gpu:
            try:
                import flash_attn  # noqa: F401

                attention = "flash_attention_2"
            except ImportError:
                pass
    cfg = build_run_config({
        "model": {"path": str(folder), "dtype": dtype, "gradient_checkpointing": args.activation_checkpointing,
                  "attention": attention, **lora},
        "data": {"root": "unused", "max_length": 4096},
        # The reference scores every position of the shared suffix (kl_positions: all) as the released code does.
        "method": {"name": "vgid", "fused_kl": args.fused, "kl_positions": "all" if reference else "answer"},
        "optim": {"batch_size": args.batch_size * world, "max_steps": args.warmup + args.steps, "lr": 1e-5},
        "ds_config": args.ds_config,
    }, "benchmarks/train_step.py")
    adapter = load_adapter(folder)
    if on_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.reset_peak_memory_stats()
    baseline = rss_gb()
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")

    def new_model():
        return adapter.model_class._from_config(adapter.config, dtype=getattr(torch, dtype),
                                                attn_implementation=attention)

    teacher = None
    if reference:
        # Built before the strategy, whose live ZeRO-3 config would partition it: the reference teacher is a
        # whole second copy on every device.
        with device:
            teacher = new_model()
        initialise(teacher)
        teacher.eval().requires_grad_(False)
    strategy = DeepSpeedStrategy.for_run(cfg)
    collator = Collator(adapter, cfg.data.max_length)
    method = build_method(cfg.method, collator, cfg.optim.seed)
    student_model = new_model()
    params = count_params(student_model)
    initialise(student_model)
    if args.activation_checkpointing:
        student_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = adapter.language_layers(student_model)
    if args.lora:
        student_model = apply_lora(student_model, layers, cfg.model.lora)
    method.configure_trainable(student_model, layers)
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in student_model.parameters() if p.requires_grad)
    engine = strategy.build_student(student_model, args.warmup + args.steps)
    phases = {"student_engine": rss_gb("VmHWM")}
    student = EngineRunner(engine, adapter, strategy.device, strategy.dtype, frozen=False, gather=strategy.gathered)
    frozen = None
    if not reference:
        if args.lora:
            frozen = AdapterDisabledRunner(student)
        else:
            frozen_model = new_model()
            initialise(frozen_model)
            frozen = EngineRunner(strategy.build_frozen(frozen_model), adapter, strategy.device, strategy.dtype,
                                  frozen=True, gather=strategy.gathered)
    engine.train()
    phases["frozen_engine"] = rss_gb("VmHWM")

    # A few distinct batches, built before timing (a data loader prepares them alongside the step).
    batches = []
    for k in range(min(3, args.warmup + args.steps)):
        seed = 1000 * strategy.rank + k
        forget = synthetic_samples(adapter.tokenizer, args.batch_size, arch.image_size, seed, "f")
        retain = synthetic_samples(adapter.tokenizer, args.batch_size, arch.image_size, seed + 500, "r")
        batches.append(method.build_batch(forget, retain, epoch=0).to(strategy.device, strategy.dtype))
    keys = sorted(batches[0].counts)

    def product_step(batch) -> float:
        # Trainer.train_step with one micro-batch: global token counts, loss, backward, optimiser step.
        counts = dict(zip(keys, strategy.all_reduce_sum([float(batch.counts[k]) for k in keys])))
        out = method.compute_loss(batch, student, frozen, counts)
        strategy.backward(engine, out.loss)
        strategy.step(engine)
        return float(out.loss.detach())

    def reference_step(batch) -> float:
        from torch.nn.functional import kl_div, log_softmax

        s_in, t_in = batch.inputs["student"], batch.inputs["teacher"]
        student_logits = engine(**adapter.model_kwargs(s_in), use_cache=False).logits  # [R, L, V]
        with torch.no_grad():
            teacher_logits = teacher(**adapter.model_kwargs(t_in), use_cache=False).logits  # [R, L_t, V]
        rows = s_in.input_ids.shape[0]
        # Forget rows first, then retain rows (Vgid.build_batch); each term is a per-sequence (batch) mean.
        s_rows = student_logits[s_in.target_mask].float()
        t_rows = teacher_logits[t_in.target_mask].float()
        n_forget = sum(s_in.targets_per_row[:rows // 2])
        terms = [kl_div(log_softmax(s, -1), log_softmax(t, -1), log_target=True, reduction="sum") / (rows // 2)
                 for s, t in ((s_rows[:n_forget], t_rows[:n_forget]), (s_rows[n_forget:], t_rows[n_forget:]))]
        loss = terms[0] + terms[1]
        strategy.backward(engine, loss)
        strategy.step(engine)
        return float(loss.detach())

    step = reference_step if reference else product_step
    phases["batches"] = rss_gb("VmHWM")
    for k in range(args.warmup):
        step(batches[k % len(batches)])
        phases[f"warmup_step{k + 1}"] = rss_gb("VmHWM")
    if on_gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    losses = [step(batches[k % len(batches)]) for k in range(args.steps)]
    if on_gpu:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start

    student_tokens = sum(int(b.inputs["student"].attention_mask.sum()) for b in batches) / len(batches)
    frozen_tokens = sum(int(b.inputs["teacher"].attention_mask.sum()) for b in batches) / len(batches)
    rows = 2 * args.batch_size
    student_factor = 4 if args.lora else 6
    flops_per_step = params * (student_factor * student_tokens + 2 * frozen_tokens)
    peak = peak_tflops(args.peak_tflops)
    step_time = elapsed / args.steps
    result = {
        "step": "reference" if reference else "vgid", "shape": args.shape, "family": arch.family,
        "device": torch.cuda.get_device_name() if on_gpu else "cpu", "world_size": strategy.world_size,
        "dtype": dtype, "batch_size": args.batch_size, "lora": args.lora,
        "activation_checkpointing": args.activation_checkpointing,
        "fused_kl": None if reference else args.fused, "params": params, "trainable_params": trainable,
        "rows_per_step": rows, "student_tokens_per_step": student_tokens, "frozen_tokens_per_step": frozen_tokens,
        "image_tokens_per_row": arch.image_tokens, "warmup_steps": args.warmup, "steps": args.steps,
        "step_time_s": round(step_time, 4),
        "tokens_per_s_per_gpu": round(student_tokens / step_time, 2),
        "samples_per_s": round(rows * strategy.world_size / step_time, 3),
        "mfu": round(flops_per_step / step_time / (peak * 1e12), 4) if peak else None,
        "loss": losses[-1],
    }
    if on_gpu:
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / GB, 3)
    else:
        peak_rss = rss_gb("VmHWM")
        result.update(peak_memory_gb=round(peak_rss, 3), baseline_rss_gb=round(baseline, 3),
                      peak_above_baseline_gb=round(peak_rss - baseline, 3),
                      peak_rss_above_baseline_after_gb={k: round(v - baseline, 3) for k, v in phases.items()})
    strategy.close()
    return result


# -- several processes --------------------------------------------------------------------------------------------
def child_args(args, **changes) -> list[str]:
    values = {**vars(args), **changes}
    out = [sys.executable, str(Path(__file__).resolve()), "--shape", values["shape"], "--mode", values["mode"],
           "--batch-size", str(values["batch_size"]), "--steps", str(values["steps"]), "--warmup",
           str(values["warmup"]), "--ds-config", values["ds_config"], "--attention", values["attention"],
           "--lora-r", str(values["lora_r"]), "--fused" if values["fused"] else "--no-fused"]
    for flag in ("lora", "activation_checkpointing"):
        if values[flag]:
            out.append("--" + flag.replace("_", "-"))
    if values["dtype"]:
        out += ["--dtype", values["dtype"]]
    if values["peak_tflops"]:
        out += ["--peak-tflops", str(values["peak_tflops"])]
    return out


def run_child(args, env_extra: dict | None = None, **changes) -> dict:
    """One step kind in a fresh process, so its peak memory is its own."""
    env = {**os.environ, **(env_extra or {})}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"):
        env.pop(key, None)  # a fresh single-process group with a free port
    proc = subprocess.run(child_args(args, **changes), env=env, capture_output=True, text=True,
                          timeout=args.child_timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(JSON_PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"train_step child ({changes}) failed with exit code {proc.returncode}")
    return json.loads(lines[-1])


# (shape, forget samples per rank, LoRA, activation checkpointing, fused KL). Full fine-tuning at small batches
# peaks in the optimiser step; batch 8 and LoRA peak in forward/backward (the activation formula).
VALIDATION_CASES = [("small", 1, False, False, True), ("small", 8, False, False, True), ("small", 2, True, False, True),
                    ("small", 6, True, False, False), ("small", 2, False, True, True),
                    ("small-wide", 2, False, False, True), ("small-qwen", 4, False, False, True)]


def validate(args) -> list[dict]:
    """Planner prediction vs the measured peak above the process baseline, for ZeRO-3 VGID steps on CPU.

    The children run with glibc's mmap threshold at 64 KiB, so every tensor's memory goes back to the system when
    freed and the resident peak counts live bytes, as ``torch.cuda.max_memory_allocated`` does on a GPU (with
    the default dynamic threshold, freed heap memory stays resident and the peak grows with the allocation
    history: 10-20% more here)."""
    results = []
    for shape, batch, lora, checkpointing, fused in VALIDATION_CASES:
        measured = run_child(args, {"MALLOC_MMAP_THRESHOLD_": "65536"}, shape=shape, mode="vgid",
                             batch_size=batch, lora=lora, activation_checkpointing=checkpointing, fused=fused,
                             steps=2, warmup=1, dtype="float32")
        _, arch = shape_folder(shape)
        rows = measured["rows_per_step"]
        text_tokens = measured["student_tokens_per_step"] / rows - arch.image_tokens
        instruction = (measured["frozen_tokens_per_step"] - measured["student_tokens_per_step"]) / batch
        run = RunShape(micro_batch=batch, text_tokens=round(text_tokens), answer_tokens=ANSWER_TOKENS,
                       instruction_tokens=round(instruction), dtype="float32",
                       lora_r=args.lora_r if lora else None, activation_checkpointing=checkpointing,
                       fused_kl=fused)
        plan = plan_memory(arch, gpus_per_node=1, nodes=1, zero=3, shape=run)
        got = measured["peak_above_baseline_gb"]
        results.append({"validate": shape, "batch_size": batch, "lora": lora, "activation_checkpointing": checkpointing,
                        "fused_kl": fused, "params": measured["params"], "planned_params": plan.params,
                        "predicted_gb": round(plan.total_gb, 3), "measured_gb": got,
                        "error": round(plan.total_gb / got - 1, 3),
                        "terms_gb": {k: round(v / GB, 3) for k, v in plan.terms.items()}})
        print(json.dumps(results[-1]), flush=True)
    worst = max(results, key=lambda r: abs(r["error"]))
    print(json.dumps({"validate": "summary", "cases": len(results), "max_abs_error": abs(worst["error"]),
                      "worst": worst["validate"]}), flush=True)
    return results


# -- the activation coefficients ------------------------------------------------------------------------------------
def saved_bytes_per_layer(family: str, tower: str, hidden: int, intermediate: int, dtype) -> float:
    """Bytes autograd saves per token per layer: a 2-layer minus a 1-layer stack, parameters excluded."""
    import torch

    def saved(layers: int) -> tuple[float, int]:
        torch.manual_seed(0)
        kv_heads = 4 if family == "llava" else 2
        arch = replace(SMALL_SHAPES["tiny" if family == "llava" else "tiny-qwen"], hidden_size=hidden,
                       intermediate_size=intermediate, num_layers=layers, num_heads=4, num_kv_heads=kv_heads,
                       vision_hidden=hidden, vision_intermediate=intermediate, vision_layers=layers, vision_heads=4,
                       vision_out_hidden=hidden, image_size=224, patch_size=14)
        donor = json.loads((donor_folder(family) / "config.json").read_text())
        config = hf_config(arch, donor)
        from transformers import AutoModel

        if tower == "text":
            model = AutoModel.from_config(config.text_config, attn_implementation="sdpa", dtype=dtype)
            tokens = 2 * 128
            ids = torch.randint(0, 500, (2, 128))
            mask = torch.ones(2, 128, dtype=torch.long)
            mask[1, 100:] = 0  # a right-padded row, as in the training batches
            run = lambda: model(input_ids=ids, attention_mask=mask).last_hidden_state  # noqa: E731
        elif family == "llava":
            model = AutoModel.from_config(config.vision_config, attn_implementation="sdpa", dtype=dtype)
            pixels = torch.randn(2, 3, 224, 224, dtype=dtype)
            tokens = 2 * ((224 // 14) ** 2 + 1)
            run = lambda: model(pixel_values=pixels).last_hidden_state  # noqa: E731
        else:
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
                Qwen2_5_VisionTransformerPretrainedModel,
            )

            model = Qwen2_5_VisionTransformerPretrainedModel._from_config(config.vision_config, dtype=dtype,
                                                                          attn_implementation="sdpa")
            grid = torch.tensor([[1, 16, 16], [1, 16, 16]])
            tokens = int(grid.prod(-1).sum())
            pixels = torch.randn(tokens, 3 * 2 * 14 * 14, dtype=dtype)
            run = lambda: main_output(model(pixels, grid_thw=grid))  # noqa: E731
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        storages: dict[int, int] = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                storages[ptr] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = run()
        del out
        return float(sum(storages.values())), tokens

    two, tokens = saved(2)
    one, _ = saved(1)
    return (two - one) / tokens


def main_output(out):
    """The features tensor of a vision tower's output, whatever its return type in this transformers version."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    hidden = getattr(out, "last_hidden_state", None)
    return hidden if hidden is not None else out[0]


def measure_activations(args) -> dict:
    """Elements saved per token per layer = C_H x hidden + C_I x intermediate, from two MLP widths."""
    import torch

    results = {}
    dtype = getattr(torch, args.dtype or "float32")
    size = torch.finfo(dtype).bits // 8
    hidden = 256
    for family, tower, key in (("llava", "text", "llama"), ("qwen2_5_vl", "text", "qwen2_5_vl_text"),
                               ("llava", "vision", "clip"), ("qwen2_5_vl", "vision", "qwen2_5_vl_vision")):
        narrow = saved_bytes_per_layer(family, tower, hidden, 512, dtype) / size
        wide = saved_bytes_per_layer(family, tower, hidden, 1024, dtype) / size
        c_i = (wide - narrow) / 512
        c_h = (narrow - c_i * 512) / hidden
        results[key] = {"c_h": round(c_h, 2), "c_i": round(c_i, 2), "elements_per_token_per_layer": [narrow, wide]}
    line = {"measure_activations": str(dtype).removeprefix("torch."), "hidden": hidden, "intermediate": [512, 1024],
            **results}
    print(json.dumps(line), flush=True)
    return line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    p.add_argument("--mode", default="both", choices=["both", "vgid", "reference"],
                   help="both: each step kind in its own process (single-process runs only)")
    p.add_argument("--batch-size", type=int, default=2, help="forget samples per rank (as many retain samples)")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocations, kernel selection)")
    p.add_argument("--lora", action="store_true", help="LoRA on every decoder linear layer instead of full fine-tuning")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                   help="the product's fused KL through the output heads (--no-fused: from logits)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="default bfloat16 on a GPU, float32 on CPU")
    p.add_argument("--attention", default="auto", choices=["auto", "sdpa", "eager", "flash_attention_2"])
    p.add_argument("--ds-config", default="zero3", help="packaged DeepSpeed config or JSON path")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, for MFU")
    p.add_argument("--child-timeout", type=int, default=1800)
    p.add_argument("--validate", action="store_true", help="planner prediction vs measured peaks (CPU)")
    p.add_argument("--measure-activations", action="store_true",
                   help="the planner's activation coefficients (saved-tensor bytes per token per layer)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.measure_activations:
        measure_activations(args)
        return 0
    if args.validate:
        validate(args)
        return 0
    if args.mode != "both":
        result = run_step_kind(args)
        if result["world_size"] == 1 or int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result), flush=True)
        return 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit("under a multi-process launcher, pass --mode vgid or --mode reference (one launch each)")
    for mode in ("vgid", "reference"):
        print(json.dumps(run_child(args, mode=mode)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
