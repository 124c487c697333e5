"""Model runners: what methods call to get logits/hidden states from the student or the frozen engine."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import torch

from vgid_dist.data.collate import ModelInputs
from vgid_dist.losses import fused_linear_kl


class EngineRunner:
    """Wraps one DeepSpeed engine (or a plain module) for the methods' ``ModelRunner`` protocol.

    Every call is one forward of the whole model, vision tower included, on every rank, with the modules in the
    same order: a batch without images gets one extra row holding a dummy image and no scored token. Under
    ZeRO-3 a module skipped on one rank leaves the others waiting in its parameter all-gather, and a module
    order that differs between ranks breaks DeepSpeed's prefetch trace.
    """

    def __init__(self, engine, adapter, device: torch.device, dtype: torch.dtype, *, frozen: bool,
                 gather=None):
        self.engine = engine
        self.adapter = adapter
        self.device = device
        self.dtype = dtype
        self.frozen = frozen
        self.gather = gather or (lambda params: contextlib.nullcontext())
        """Context manager factory making partitioned parameters whole (the strategy's ``gathered``)."""
        self._image_row = None

    @property
    def module(self) -> torch.nn.Module:
        return getattr(self.engine, "module", self.engine)

    def with_image(self, inputs: ModelInputs) -> ModelInputs:
        """``inputs`` itself when it holds an image, else ``inputs`` plus a dummy-image row (appended last, no
        scored token, so gathered targets and the first B rows of hidden states are unchanged)."""
        if inputs.has_images:
            return inputs
        if self._image_row is None:
            image = self.adapter.encode_image(self.adapter.dummy_image())
            ids = self.adapter.tokenize_prompt(self.adapter.render("", True), image)
            self._image_row = (torch.tensor(ids, dtype=torch.long),
                               {k: (v.to(self.dtype) if v.is_floating_point() else v) for k, v in image.tensors.items()})
        ids, pixels = self._image_row
        batch, length = inputs.input_ids.shape
        width = max(length, ids.numel())

        def widen(t: torch.Tensor, fill) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, width - length), value=fill)

        pad_id = self.adapter.tokenizer.pad_token_id
        row_ids = torch.full((1, width), pad_id, dtype=torch.long, device=inputs.input_ids.device)
        row_ids[0, :ids.numel()] = ids
        row_mask = torch.zeros((1, width), dtype=inputs.attention_mask.dtype, device=inputs.input_ids.device)
        row_mask[0, :ids.numel()] = 1
        return replace(
            inputs,
            input_ids=torch.cat([widen(inputs.input_ids, pad_id), row_ids]),
            attention_mask=torch.cat([widen(inputs.attention_mask, 0), row_mask]),
            target_mask=torch.cat([widen(inputs.target_mask, False),
                                   torch.zeros((1, width), dtype=torch.bool, device=inputs.input_ids.device)]),
            pixel_inputs={k: v.to(inputs.input_ids.device) for k, v in pixels.items()},
        )

    def forward(self, inputs: ModelInputs, **kwargs):
        context = torch.no_grad() if self.frozen else torch.enable_grad()
        with context:
            return self.engine(**self.adapter.model_kwargs(self.with_image(inputs)), use_cache=False, **kwargs)

    def target_logits(self, inputs: ModelInputs) -> torch.Tensor:
        """[T, V] logits at positions whose next token is an answer token (row-major).

        The output head runs on the gathered rows only: [B, L, V] logits are never built, which matters for
        151k-token vocabularies and cuts the head's cost to the scored tokens."""
        hidden = self.target_hidden(inputs)
        context = torch.no_grad() if self.frozen else torch.enable_grad()
        with context:
            return self.module.lm_head(hidden)

    def target_hidden(self, inputs: ModelInputs) -> torch.Tensor:
        """[T, H] final normed hidden states at the scored positions; the lm_head is not applied (a one-column
        ``logits_to_keep`` keeps it from materialising [B, L, V])."""
        out = self.forward(inputs, output_hidden_states=True, logits_to_keep=1)
        batch = inputs.input_ids.shape[0]
        return out.hidden_states[-1][:batch, :inputs.target_mask.shape[1]][inputs.target_mask]

    def layer_hidden(self, inputs: ModelInputs, layer: int) -> torch.Tensor:
        """[B, L, H] hidden states leaving decoder layer ``layer`` (0-based)."""
        out = self.forward(inputs, output_hidden_states=True, logits_to_keep=1)
        return out.hidden_states[layer + 1][:inputs.input_ids.shape[0], :inputs.input_ids.shape[1]]

    def layers_hidden(self, inputs: ModelInputs, layers: list[int]) -> list[torch.Tensor]:
        """[B, L, H] hidden states leaving each decoder layer of ``layers`` (0-based), from one forward."""
        out = self.forward(inputs, output_hidden_states=True, logits_to_keep=1)
        batch, length = inputs.input_ids.shape
        return [out.hidden_states[layer + 1][:batch, :length] for layer in layers]


    def fused_kl_sum(self, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, teacher: EngineRunner,
                     temperature: float = 1.0) -> torch.Tensor:
        """Sum over rows of KL(teacher || student) through both output heads, never building [T, V] logits.

        student_hidden [T, H] (from ``target_hidden``, with grad), teacher_hidden [T, H] (the teacher's rows,
        aligned). The loss runs as a call of the student's ``lm_head`` module: under ZeRO-3 its hooks gather
        the partitioned weight for the forward and gather it again before backward, so the gradient reaches
        the partitioned parameter. The frozen head needs no backward and is gathered for the call only; when
        it is the student's own head (LoRA: adapters off), one GEMM serves both.
        """
        head = self.module.lm_head
        teacher_head = teacher.module.lm_head
        shared = teacher_head is head

        def loss_through_head(hidden: torch.Tensor) -> torch.Tensor:
            teacher_weight = head.weight if shared else teacher_head.weight
            return fused_linear_kl(hidden, head.weight, teacher_hidden, teacher_weight, temperature=temperature,
                                   reduction="sum")

        head.forward = loss_through_head  # an instance attribute: module hooks still run around it
        try:
            with contextlib.nullcontext() if shared else teacher.gather([teacher_head.weight]):
                return head(student_hidden)
        finally:
            del head.forward

class AdapterDisabledRunner(EngineRunner):
    """LoRA mode's frozen base model: the student's own engine, run under no_grad with its adapters disabled
    (peft ``disable_adapter()``), so the teacher/reference costs no second copy of the weights. The lm_head,
    applied outside the forward by ``target_logits``, never carries an adapter (``models.lora``).

    The calls are the student's module calls minus the adapters' on every rank alike, so rank symmetry holds;
    under ZeRO-3 the base shards are gathered by the same hooks as in the student's forward."""

    def __init__(self, student: EngineRunner):
        super().__init__(student.engine, student.adapter, student.device, student.dtype, frozen=True)

    def forward(self, inputs: ModelInputs, **kwargs):
        with self.module.disable_adapter():
            return super().forward(inputs, **kwargs)


def make_generate_fn(module: torch.nn.Module, adapter, device: torch.device, dtype: torch.dtype, *,
                     synced: bool):
    """Greedy generation for the evaluator: (left-padded prompts, max_new_tokens) -> [B, new] token ids.

    ``synced``: under ZeRO-3 with several ranks, a rank that finished keeps running forward passes until every
    rank has (``synced_gpus``), since each forward gathers parameter shards from all ranks.
    """
    tokenizer = adapter.tokenizer

    @torch.no_grad()
    def generate(inputs: ModelInputs, max_new_tokens: int) -> torch.Tensor:
        inputs = inputs.to(device, dtype)
        out = module.generate(**adapter.model_kwargs(inputs), max_new_tokens=max_new_tokens, do_sample=False,
                              num_beams=1, synced_gpus=synced, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, use_cache=True)
        return out[:, inputs.input_ids.shape[1]:].cpu()

    return generate
