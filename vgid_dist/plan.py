"""Per-GPU memory of a VGID training run, from a formula: will this model fit on these GPUs?

Pure arithmetic on an architecture (a built-in table for the packaged recipes, or a model folder's
``config.json``) and the run's shape; nothing is loaded. Terms, in bytes per GPU, with W = gpus_per_node x nodes
ranks, N the base model's parameters (vision tower + projector + language model, embeddings and head included)
and N_t the trainable parameters (N for full fine-tuning, the adapters' for LoRA). Terms that live through a
step:

- parameters: ZeRO-3 partitions the student's weights (N x b / W, b = bytes of the model dtype); ZeRO-2 keeps a
  full copy per GPU (N x b). With ``offload`` (``zero3_offload``: parameters and optimiser on the CPU) 0.
- gradients: the gradient partition (N_t x b / W) and the reduce bucket (``reduce_bucket_size`` elements).
- optimizer: AdamW under DeepSpeed keeps an fp32 master copy and two fp32 moments: 12 bytes per trainable
  parameter, partitioned over W (on the CPU with ``offload``, reported as ``cpu_gb_per_node``).
- teacher: full fine-tuning holds a second, frozen engine (the same weights, no gradients, no optimiser):
  N x b / W under ZeRO-3, N x b under ZeRO-2. LoRA runs the student with its adapters off: 0.
- gathered_parameters: ZeRO-3 keeps the student's gathered weights alive from forward to backward (the
  packaged configs' ``stage3_max_reuse_distance``), up to ``stage3_max_live_parameters`` elements.

Then the larger of two phases that never overlap. Forward/backward: what the student's forward keeps for
backward, at ``rows = 2 x micro_batch`` sequences (forget and retain rows) of image + text tokens, each row with
one image of ``image_patches`` vision-tower tokens:

      tokens x layers x (C_H x hidden + C_I x intermediate) x b                (language model)
    + patches x vision_layers x (C_H' x v_hidden + C_I' x v_intermediate) x b   (vision tower)

LoRA with adapter dropout adds (6 x hidden + intermediate) x (b + 1) bytes per token per layer (the dropped-out
adapter inputs and their masks). With activation checkpointing each layer keeps only its input (hidden x b per
token) and one layer is recomputed at a time. The frozen teacher forward keeps its hidden states of every layer
(the runner asks for ``output_hidden_states``) while it runs: (layers + 1) x teacher tokens x hidden x b, and
gathers its weights module by module. The fused KL works in row chunks sized by ``FUSED_CHUNK_BYTES`` (three
[chunk, vocab] buffers in the model dtype: the compiled row function reads the GEMMs' logits as they are); without
it, the [answer tokens, vocab] logits of both models and nine fp32 buffers of that size are held. Optimiser step: DeepSpeed converts a
sub-group (``sub_group_size``) of the gradient partition to fp32 and the default AdamW's temporaries are of the
same size: 12 bytes per element. The engine uses torch's fused AdamW where the kernel exists, which has no
temporaries; the term is kept as a bound (on CPU the fused step's small-batch peaks came within 8 % of it).

C_H and C_I (elements kept per token per layer, per unit of hidden / intermediate size) come from measurement:
``python benchmarks/train_step.py --measure-activations`` counts the bytes autograd saves per decoder layer of
each family (saved-tensor hooks, parameters excluded; a 2-layer minus a 1-layer stack) at two MLP widths and
solves for both. The measured values are in ``ACTIVATION_COEFFICIENTS``; ``benchmarks/train_step.py --validate``
compares the whole formula with the peak memory of real ZeRO-3 steps on CPU.

``fits``: total x (1 + FRAGMENTATION) + CUDA_CONTEXT_GB <= the GPU's memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vgid_dist.errors import PlanError

GB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Elements autograd keeps per token per layer, as C_H x hidden + C_I x intermediate, by model dtype (the RMSNorms
# of both language models upcast to fp32, so bf16 keeps 2 x hidden more elements' worth). Measured with
# `python benchmarks/train_step.py --measure-activations [--dtype bfloat16]` (SDPA attention, a right-padded
# row; grouped-query attention changes nothing: k and v are saved after repetition to all heads).
ACTIVATION_COEFFICIENTS: dict[str, dict[str, tuple[float, float]]] = {
    "float32": {"llama": (10.5, 4.0), "qwen2_5_vl_text": (10.5, 4.0), "clip": (8.0, 3.0),
                "qwen2_5_vl_vision": (13.0, 4.0)},
    "bfloat16": {"llama": (12.5, 4.0), "qwen2_5_vl_text": (12.5, 4.0), "clip": (8.0, 3.0),
                 "qwen2_5_vl_vision": (15.0, 4.0)},
}
ACTIVATION_COEFFICIENTS["float16"] = ACTIVATION_COEFFICIENTS["bfloat16"]
# losses.fused_kl.DEFAULT_CHUNK_BYTES (accelerators): the chunk's rows are sized for one [chunk, V] fp32 buffer of this
# many bytes; three [chunk, V] buffers in the model dtype are alive (two of logits, the gradient).
FUSED_CHUNK_BYTES = 128 * 2**20
REDUCE_BUCKET_ELEMENTS = 50_000_000  # the packaged DeepSpeed JSON: reduce_bucket_size
MAX_LIVE_ELEMENTS = 1_000_000_000  # the packaged DeepSpeed JSON: stage3_max_live_parameters
SUB_GROUP_ELEMENTS = 1_000_000_000  # DeepSpeed's default sub_group_size: the optimiser steps this many at a time
CUDA_CONTEXT_GB = 1.0  # CUDA context, cuBLAS/NCCL workspaces: outside torch's allocator
FRAGMENTATION = 0.10  # the caching allocator's slack over the live bytes


@dataclass(frozen=True)
class Architecture:
    """The numbers of a model that set its memory. ``family``: llava | qwen2_5_vl."""

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    patch_size: int
    image_size: int
    """Side in pixels of the (square) image the vision tower sees: 336 for LLaVA-1.5; for Qwen2.5-VL the side of
    the resized benchmark image."""
    tie_word_embeddings: bool = False
    spatial_merge_size: int = 2  # Qwen2.5-VL: patches merged into one language-model token per side
    temporal_patch_size: int = 2  # Qwen2.5-VL
    vision_out_hidden: int | None = None  # Qwen2.5-VL merger output (= hidden_size)
    name: str = ""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def image_patches(self) -> int:
        """Tokens through the vision tower per image."""
        side = self.image_size // self.patch_size
        return side * side + (1 if self.family == "llava" else 0)  # CLIP's class token

    @property
    def image_tokens(self) -> int:
        """Language-model tokens per image (LLaVA-1.5 drops CLIP's class token; Qwen merges 2 x 2 patches)."""
        side = self.image_size // self.patch_size
        if self.family == "llava":
            return side * side
        return side * side // self.spatial_merge_size**2

    # -- parameter counts ------------------------------------------------------------------------------------
    def language_layer_params(self) -> int:
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_kv_heads * self.head_dim
        attention = 2 * h * h + 2 * h * kv
        if self.family == "qwen2_5_vl":
            attention += h + 2 * kv  # q/k/v biases
        return attention + 3 * h * i + 2 * h

    def language_params(self) -> int:
        embed = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embed
        return embed + head + self.num_layers * self.language_layer_params() + self.hidden_size

    def vision_layer_params(self) -> int:
        hv, iv = self.vision_hidden, self.vision_intermediate
        if self.family == "llava":  # CLIP: biased q/k/v/o, fc1/fc2, two LayerNorms
            return 4 * (hv * hv + hv) + 2 * hv * iv + iv + hv + 4 * hv
        return 3 * hv * hv + 3 * hv + hv * hv + hv + 3 * hv * iv + 2 * iv + hv + 2 * hv  # Qwen: SwiGLU, RMSNorms

    def vision_params(self) -> int:
        """Vision tower and projector (LLaVA's 2-layer MLP, Qwen's patch merger)."""
        hv, p, h = self.vision_hidden, self.patch_size, self.hidden_size
        layers = self.vision_layers * self.vision_layer_params()
        if self.family == "llava":
            side = self.image_size // p
            embeddings = 3 * p * p * hv + hv + (side * side + 1) * hv
            return embeddings + 4 * hv + layers + (hv * h + h) + (h * h + h)
        merged = hv * self.spatial_merge_size**2
        out = self.vision_out_hidden or h
        merger = hv + merged * merged + merged + merged * out + out
        return 3 * self.temporal_patch_size * p * p * hv + layers + merger

    def num_params(self) -> int:
        return self.language_params() + self.vision_params()

    def lora_params(self, r: int) -> int:
        """Adapters on every linear layer of the decoder layers (``targets: all-linear``): r x (in + out) each."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_kv_heads * self.head_dim
        per_layer = (h + h) * 2 + (h + kv) * 2 + 2 * (h + i) + (i + h)
        return self.num_layers * r * per_layer


# Built-in architectures of the packaged recipes (the real weights are not needed to size a run). Numbers
# from the published config.json files; image_size for Qwen2.5-VL is the benchmark image resized to 448 px.
ARCHITECTURES: dict[str, Architecture] = {
    "llava-1.5-7b": Architecture(
        family="llava", vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
        num_kv_heads=32, vision_hidden=1024, vision_intermediate=4096, vision_layers=24, vision_heads=16,
        patch_size=14, image_size=336, name="llava-1.5-7b"),
    "llava-1.5-13b": Architecture(
        family="llava", vocab_size=32064, hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40,
        num_kv_heads=40, vision_hidden=1024, vision_intermediate=4096, vision_layers=24, vision_heads=16,
        patch_size=14, image_size=336, name="llava-1.5-13b"),
    "qwen2.5-vl-3b": Architecture(
        family="qwen2_5_vl", vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_layers=36,
        num_heads=16, num_kv_heads=2, vision_hidden=1280, vision_intermediate=3420, vision_layers=32,
        vision_heads=16, patch_size=14, image_size=448, tie_word_embeddings=True, vision_out_hidden=2048,
        name="qwen2.5-vl-3b"),
}


def architecture_from_config(config: dict, *, name: str = "", image_size: int | None = None) -> Architecture:
    """An ``Architecture`` from a Hugging Face ``config.json`` dict (LLaVA or Qwen2.5-VL)."""
    model_type = config.get("model_type")
    text, vision = config.get("text_config") or {}, config.get("vision_config") or {}

    def need(section: dict, key: str, where: str):
        if key not in section:
            raise PlanError(f"{name or 'config.json'}: field {where}.{key} missing")
        return section[key]

    tie = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    common = dict(
        vocab_size=need(text, "vocab_size", "text_config"), hidden_size=need(text, "hidden_size", "text_config"),
        intermediate_size=need(text, "intermediate_size", "text_config"),
        num_layers=need(text, "num_hidden_layers", "text_config"),
        num_heads=need(text, "num_attention_heads", "text_config"),
        num_kv_heads=text.get("num_key_value_heads") or text["num_attention_heads"],
        vision_heads=vision.get("num_attention_heads", vision.get("num_heads", 1)),
        patch_size=need(vision, "patch_size", "vision_config"), tie_word_embeddings=tie, name=name)
    if model_type == "llava":
        return Architecture(family="llava", vision_hidden=need(vision, "hidden_size", "vision_config"),
                            vision_intermediate=need(vision, "intermediate_size", "vision_config"),
                            vision_layers=need(vision, "num_hidden_layers", "vision_config"),
                            image_size=image_size or need(vision, "image_size", "vision_config"), **common)
    if model_type == "qwen2_5_vl":
        return Architecture(family="qwen2_5_vl", vision_hidden=need(vision, "hidden_size", "vision_config"),
                            vision_intermediate=need(vision, "intermediate_size", "vision_config"),
                            vision_layers=need(vision, "depth", "vision_config"), image_size=image_size or 448,
                            spatial_merge_size=vision.get("spatial_merge_size", 2),
                            temporal_patch_size=vision.get("temporal_patch_size", 2),
                            vision_out_hidden=vision.get("out_hidden_size"), **common)
    raise PlanError(f"{name or 'config.json'}: model_type {model_type!r} is not sized by the planner "
                    "(expected llava or qwen2_5_vl)")


def resolve_architecture(model: str) -> Architecture:
    """A built-in recipe name (``llava-1.5-7b``, ``llava-1.5-13b``, ``qwen2.5-vl-3b``) or a model folder."""
    if model in ARCHITECTURES:
        return ARCHITECTURES[model]
    folder = Path(model).expanduser()
    config_file = folder / "config.json"
    if folder.is_dir() and config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as exc:
            raise PlanError(f"{config_file}: not valid JSON ({exc})") from None
        return architecture_from_config(config, name=str(folder))
    raise PlanError(f"--model {model!r}: neither a built-in architecture ({', '.join(sorted(ARCHITECTURES))}) nor "
                    "a model folder with a config.json")


@dataclass(frozen=True)
class RunShape:
    """What a step processes on one GPU. ``micro_batch``: forget samples per rank per micro-step (as many retain
    samples ride along); ``text_tokens``: prompt text + answer tokens of a row, image tokens excluded."""

    micro_batch: int = 1
    text_tokens: int = 80
    answer_tokens: int = 20
    instruction_tokens: int = 40  # the teacher's unlearning instruction, on forget rows only
    dtype: str = "bfloat16"
    lora_r: int | None = None
    lora_dropout: bool = True  # model.lora.dropout > 0 (the default 0.05)
    activation_checkpointing: bool = False
    fused_kl: bool = True


@dataclass
class MemoryPlan:
    """Bytes per GPU by term (``terms``), their sum, and the CPU memory offloading needs per node."""

    terms: dict[str, float]
    total_bytes: float
    cpu_bytes_per_node: float
    world_size: int
    params: int
    trainable_params: int
    notes: list[str] = field(default_factory=list)

    @property
    def total_gb(self) -> float:
        return self.total_bytes / GB

    def required_gb(self) -> float:
        """What the GPU must hold: the live bytes plus allocator slack and the CUDA context."""
        return self.total_gb * (1 + FRAGMENTATION) + CUDA_CONTEXT_GB

    def fits(self, gpu_memory_gb: float) -> bool:
        return self.required_gb() <= gpu_memory_gb

    def as_dict(self, gpu_memory_gb: float | None = None) -> dict:
        out = {"world_size": self.world_size, "params": self.params, "trainable_params": self.trainable_params,
               "per_gpu_gb": {k: round(v / GB, 3) for k, v in self.terms.items()},
               "total_gb": round(self.total_gb, 3), "required_gb": round(self.required_gb(), 3),
               "cpu_gb_per_node": round(self.cpu_bytes_per_node / GB, 3), "notes": self.notes}
        if gpu_memory_gb is not None:
            out.update(gpu_memory_gb=gpu_memory_gb, fits=self.fits(gpu_memory_gb))
        return out


def activation_bytes(arch: Architecture, shape: RunShape) -> dict[str, float]:
    """Bytes of the student's saved activations, the teacher forward's transient hidden states, and the loss
    buffers, for one micro-step (see the module docstring)."""
    b = DTYPE_BYTES[shape.dtype]
    rows = 2 * shape.micro_batch
    seq = arch.image_tokens + shape.text_tokens
    tokens = rows * seq
    patches = rows * arch.image_patches
    coefficients = ACTIVATION_COEFFICIENTS[shape.dtype]
    c_h, c_i = coefficients["llama" if arch.family == "llava" else "qwen2_5_vl_text"]
    v_h, v_i = coefficients["clip" if arch.family == "llava" else "qwen2_5_vl_vision"]
    per_lm_layer = tokens * (c_h * arch.hidden_size + c_i * arch.intermediate_size) * b
    if shape.lora_r is not None and shape.lora_dropout:
        # peft applies dropout to the input of every adapter (q, k, v, o, gate, up: hidden wide; down:
        # intermediate wide) and keeps both the dropped-out copy (model dtype) and its mask (one byte).
        per_lm_layer += tokens * (6 * arch.hidden_size + arch.intermediate_size) * (b + 1)
    per_vision_layer = patches * (v_h * arch.vision_hidden + v_i * arch.vision_intermediate) * b
    if shape.activation_checkpointing:
        student = (arch.num_layers * tokens * arch.hidden_size * b + per_lm_layer
                   + arch.vision_layers * patches * arch.vision_hidden * b + per_vision_layer)
    else:
        student = arch.num_layers * per_lm_layer + arch.vision_layers * per_vision_layer
    teacher_tokens = tokens + shape.micro_batch * shape.instruction_tokens
    teacher = (arch.num_layers + 1) * teacher_tokens * arch.hidden_size * b
    answer = rows * shape.answer_tokens
    if shape.fused_kl:
        loss = 3 * min(FUSED_CHUNK_BYTES, answer * arch.vocab_size * 4) // 4 * b
    else:  # both models' logits in the model dtype, then nine fp32 [answer, vocab] buffers: the scaled logits and
        # log-softmaxes of both, the elementwise KL, and in backward the gradients of log-softmax and logits
        loss = answer * arch.vocab_size * (2 * b + 9 * 4)
    return {"activations": student, "teacher_forward": teacher, "loss": loss}


def micro_batch_per_gpu(batch_size: int | None, gpus: int, grad_accum: int) -> int:
    """The micro-batch one GPU takes for a global ``batch_size`` (None: one sample per GPU and accumulation
    step); a batch that does not split evenly is a PlanError."""
    slots = gpus * grad_accum
    micro, rem = divmod(batch_size or slots, slots)
    if rem or micro == 0:
        raise PlanError(f"--batch-size {batch_size} is not a multiple of the {gpus} GPUs x --grad-accum {grad_accum}")
    return micro


def plan_memory(arch: Architecture, *, gpus_per_node: int = 8, nodes: int = 1, zero: int = 3, offload: bool = False,
                shape: RunShape = RunShape()) -> MemoryPlan:
    """Per-GPU memory of a VGID run (see the module docstring for every term).

    Peak = the terms that live through a step (weights, gradient buffers, optimiser states, teacher, gathered
    student weights) + the larger of the two phases that never overlap: forward/backward (activations, the
    teacher forward, the loss buffers, the teacher's layer-wise gathers) and the optimiser step."""
    if zero not in (2, 3):
        raise PlanError(f"--zero {zero}: the service runs ZeRO stage 2 or 3")
    if offload and zero != 3:
        raise PlanError("--offload: the packaged offload config (zero3_offload) is ZeRO-3")
    if gpus_per_node < 1 or nodes < 1:
        raise PlanError(f"--gpus-per-node {gpus_per_node} --nodes {nodes}: both must be at least 1")
    if shape.dtype not in DTYPE_BYTES:
        raise PlanError(f"dtype {shape.dtype!r}: expected one of {sorted(DTYPE_BYTES)}")
    world = gpus_per_node * nodes
    b = DTYPE_BYTES[shape.dtype]
    n = arch.num_params()
    lora = shape.lora_r is not None
    trainable = arch.lora_params(shape.lora_r) if lora else n
    total_params = n + (trainable if lora else 0)
    shard = world if zero == 3 else 1
    largest_module = max(arch.language_layer_params(), arch.vocab_size * arch.hidden_size)
    # Steady terms. The reduce bucket is allocated at its configured size whatever the model's.
    steady = {
        "parameters": 0.0 if offload else total_params * b / shard,
        "gradients": trainable * b / world + (0 if offload else REDUCE_BUCKET_ELEMENTS * b),
        "optimizer": 0.0 if offload else trainable * 12 / world,  # fp32 master + two fp32 moments
        "teacher": 0.0 if (lora or offload) else n * b / shard,
        # The student's whole weights stay gathered from forward to backward (max_reuse_distance), up to
        # stage3_max_live_parameters.
        "gathered_parameters": min(n, MAX_LIVE_ELEMENTS) * b if zero == 3 else 0.0,
    }
    forward_backward = activation_bytes(arch, shape)
    if zero == 3 and not lora:  # the frozen engine gathers module by module and releases after use
        forward_backward["teacher_gathers"] = 2 * largest_module * b
    # The step converts a sub-group of the gradient partition to fp32 and AdamW allocates temporaries of the
    # same size (sqrt of the second moment and its quotient): 12 bytes per element of the sub-group.
    step = {"optimizer_step": 0.0 if offload else 12 * min(trainable / world, SUB_GROUP_ELEMENTS)}
    transient = max(sum(forward_backward.values()), sum(step.values()))
    terms = {**steady, **forward_backward, **step}
    cpu = 0.0
    notes = [f"peak = steady terms + max(forward/backward {sum(forward_backward.values()) / GB:.2f} GB, "
             f"optimizer step {sum(step.values()) / GB:.2f} GB)"]
    if offload:
        cpu = gpus_per_node * (trainable * 16 / world + total_params * b / world + (0 if lora else n * b / world))
        notes.append("offload: optimiser states, the step and both models' parameters in CPU memory (cpu_gb_per_node)")
    if lora:
        notes.append(f"LoRA r={shape.lora_r} on every decoder linear layer; teacher = the student with adapters off")
    return MemoryPlan(terms=terms, total_bytes=sum(steady.values()) + transient, cpu_bytes_per_node=cpu,
                      world_size=world, params=n, trainable_params=trainable, notes=notes)


def format_plan(arch: Architecture, plan: MemoryPlan, gpu_memory_gb: float, *, zero: int, offload: bool,
                shape: RunShape) -> str:
    mode = f"LoRA r={shape.lora_r}" if shape.lora_r else "full fine-tuning"
    lines = [f"{arch.name or arch.family}: {plan.params / 1e9:.2f} B parameters ({plan.trainable_params / 1e9:.3f} B "
             f"trainable, {mode}), ZeRO-{zero}{' + offload' if offload else ''}, {plan.world_size} GPUs, "
             f"micro-batch {shape.micro_batch} forget + {shape.micro_batch} retain rows of "
             f"{arch.image_tokens + shape.text_tokens} tokens, {shape.dtype}"
             f"{', activation checkpointing' if shape.activation_checkpointing else ''}",
             "per GPU:"]
    for name, value in plan.terms.items():
        lines.append(f"  {name:<20} {value / GB:9.2f} GB")
    lines.append(f"  {'total':<20} {plan.total_gb:9.2f} GB  (+{FRAGMENTATION:.0%} allocator slack, "
                 f"+{CUDA_CONTEXT_GB:g} GB CUDA context = {plan.required_gb():.2f} GB)")
    if plan.cpu_bytes_per_node:
        lines.append(f"  CPU memory per node {plan.cpu_bytes_per_node / GB:.1f} GB")
    verdict = "fits" if plan.fits(gpu_memory_gb) else "does NOT fit"
    lines.append(f"{verdict} in {gpu_memory_gb:g} GB per GPU")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


__all__ = ["ACTIVATION_COEFFICIENTS", "ARCHITECTURES", "Architecture", "MemoryPlan", "PlanError", "RunShape",
           "activation_bytes", "architecture_from_config", "format_plan", "plan_memory",
           "resolve_architecture"]
