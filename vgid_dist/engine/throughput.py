"""Training throughput, measured by the trainer on every rank: tokens per second, MFU and peak memory.

Forward pre-hooks count the input tokens each forward of the student and of the frozen model sees on this rank;
with the parameter counts they give, per step, ``tokens_per_s`` (all ranks, assuming every rank processes about
as many tokens, which the length-grouped sampler arranges), ``mfu`` on a GPU, and ``peak_mem_gib``. These land in
``train_log.jsonl`` whether or not tracking is on.
"""

from __future__ import annotations

import os
import resource

import torch

# Dense bf16 peak of common training GPUs (TFLOP/s), for the MFU estimate; VGID_PEAK_TFLOPS overrides.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}


def peak_flops() -> float | None:
    """The current GPU's dense bf16 peak in FLOP/s; None when it is not a known GPU (or there is none)."""
    if os.environ.get("VGID_PEAK_TFLOPS"):
        return float(os.environ["VGID_PEAK_TFLOPS"]) * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS.items() if key in name), None)


def peak_memory_gib(on_gpu: bool, device=None) -> float:
    """``torch.cuda.max_memory_allocated`` on a GPU; the process's peak resident memory on a CPU."""
    if on_gpu:
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def model_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    # Under ZeRO-3 a parameter holds only its shard; ds_numel is the full size.
    return sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters() if p.requires_grad or not trainable_only)


class ThroughputMeter:
    """Counts the tokens of every training forward of ``student`` (and of ``frozen``, when it is another module)
    between two ``step_metrics`` calls."""

    def __init__(self, student: torch.nn.Module, frozen: torch.nn.Module | None, *, world_size: int, on_gpu: bool,
                 device=None):
        self.world_size = world_size
        self.on_gpu = on_gpu
        self.device = device
        self.n_params = model_params(student)
        self.n_trainable = model_params(student, trainable_only=True)
        self.peak = peak_flops() if on_gpu else None
        self.tokens = {"student": 0, "frozen": 0}

        def count_student(module, args, kwargs):
            # The student's module also serves as the frozen model in LoRA mode (adapters off, no grad);
            # evaluation forwards (eval mode) are not training throughput.
            if module.training:
                self._count("student" if torch.is_grad_enabled() else "frozen", args, kwargs)

        def count_frozen(module, args, kwargs):
            self._count("frozen", args, kwargs)

        self.hooks = [student.register_forward_pre_hook(count_student, with_kwargs=True)]
        if frozen is not None and frozen is not student:
            self.hooks.append(frozen.register_forward_pre_hook(count_frozen, with_kwargs=True))

    def _count(self, key: str, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and hasattr(ids, "numel"):
            self.tokens[key] += int(ids.numel())

    def step_metrics(self, step_time: float) -> dict[str, float]:
        """``tokens_per_s``, ``mfu`` (GPU of a known peak) and ``peak_mem_gib`` of the step just taken."""
        out: dict[str, float] = {}
        tokens, frozen = self.tokens["student"], self.tokens["frozen"]
        self.tokens = {"student": 0, "frozen": 0}
        if step_time > 0 and tokens:
            out["tokens_per_s"] = tokens * self.world_size / step_time
            if self.peak:
                # Per trained token: 2N forward, 2N for the activations' gradients, 2N_trainable for the weights'
                # (6N under full fine-tuning, ~4N under LoRA); 2N per frozen-model token. Attention's quadratic
                # term is left out, as in the usual estimate. Per rank: this rank's tokens over its own time.
                flops = (4 * self.n_params + 2 * self.n_trainable) * tokens + 2 * self.n_params * frozen
                out["mfu"] = flops / (step_time * self.peak)
        out["peak_mem_gib"] = peak_memory_gib(self.on_gpu, self.device)
        return out

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
