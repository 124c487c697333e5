"""Model runners: what methods call to get logits/hidden states from the student or the frozen engine."""

from __future__ import annotations

import torch

from vgid_dist.data.collate import ModelInputs


class EngineRunner:
    """Wraps one DeepSpeed engine (or a plain module) for the methods' ``ModelRunner`` protocol.

    Every call is one forward of the whole model, vision tower included, on every rank: a batch without images
    runs the vision tower on a dummy image and adds 0 x its output, because under ZeRO-3 a module skipped on one
    rank leaves the other ranks waiting in its parameter all-gather (and its gradient reduce-scatter).
    """

    def __init__(self, engine, adapter, device: torch.device, dtype: torch.dtype, *, frozen: bool):
        self.engine = engine
        self.adapter = adapter
        self.device = device
        self.dtype = dtype
        self.frozen = frozen
        self._dummy_pixels = None

    @property
    def module(self) -> torch.nn.Module:
        return getattr(self.engine, "module", self.engine)

    def _vision_anchor(self, inputs: ModelInputs) -> torch.Tensor | None:
        if inputs.has_images:
            return None
        if self._dummy_pixels is None:
            encoded = self.adapter.encode_image(self.adapter.dummy_image())
            self._dummy_pixels = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                                  for k, v in encoded.tensors.items()}
        return self.adapter.image_features(self.module, self._dummy_pixels).float().sum() * 0.0

    def forward(self, inputs: ModelInputs, **kwargs):
        context = torch.no_grad() if self.frozen else torch.enable_grad()
        with context:
            anchor = self._vision_anchor(inputs)
            out = self.engine(**self.adapter.model_kwargs(inputs), use_cache=False, **kwargs)
        return out, anchor

    @staticmethod
    def _anchored(t: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
        return t if anchor is None else t + anchor.to(t.dtype)

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
        out, anchor = self.forward(inputs, output_hidden_states=True, logits_to_keep=1)
        return self._anchored(out.hidden_states[-1][inputs.target_mask], anchor)

    def layer_hidden(self, inputs: ModelInputs, layer: int) -> torch.Tensor:
        """[B, L, H] hidden states leaving decoder layer ``layer`` (0-based)."""
        out, anchor = self.forward(inputs, output_hidden_states=True, logits_to_keep=1)
        return self._anchored(out.hidden_states[layer + 1], anchor)


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
