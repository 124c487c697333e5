"""Representation misdirection (RMU; Li et al., 2024, with the adaptive target of Dang et al., 2025; VGID paper
eqs. 11-15): at decoder layer ``layer``, push the student's hidden states on forget samples toward a fixed random
direction scaled by the frozen model's own activation norm, and hold its hidden states on retain samples at the
frozen model's.

    L = mean_f || h_theta(x_f) - lambda * ||h_ref(x_f)|| * u ||^2 + gamma * mean_r || h_theta(x_r) - h_ref(x_r) ||^2

Scored positions: the answer-target positions of each sample (``target_mask``: the last prompt position and the
answer positions that predict the next answer token), the same positions every other method scores. They are
where the model produces the forgotten answer; the prompt template and image tokens, shared by forget and retain
samples alike, are left out so the two terms do not pull the same positions in opposite directions. Each term
is a sum of squared L2 distances over its positions divided by the global count of those positions
(``forget_tokens``, ``retain_tokens``). ``||h_ref(x_f)||`` is the norm at each position; ``u`` is a unit vector
drawn once from the run seed (uniform on the sphere) and is the same on every rank.

By default only the language model's decoder layers 0..``layer`` train (``configure_trainable``): nothing after
the layer affects the loss, and the vision tower, projector and embeddings stay as they were.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import ConfigDict, Field

from vgid_dist.errors import ConfigError
from vgid_dist.losses import token_mean
from vgid_dist.losses.preference import rmu_sum
from vgid_dist.methods.base import LossOutput, MethodParams
from vgid_dist.methods.ga import GradientAscent


class RmuParams(MethodParams):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    layer: int = Field(7, ge=0)
    """Decoder layer (0-based) whose output is steered; 7 of 32 as in the WMDP RMU runs on 7B models."""
    lambda_: float = Field(5.0, gt=0, alias="lambda")
    """Target scale relative to the frozen activation norm (written ``lambda`` in recipes); Adaptive RMU's
    scaling factor 5."""
    gamma: float = Field(1200.0, ge=0)
    """Weight of the retain term (eq. 15); WMDP RMU's retain weight alpha = 1200."""
    trainable: Literal["up_to_layer", "all"] = "up_to_layer"
    """``up_to_layer``: only decoder layers 0..layer train; ``all``: every parameter that would train otherwise."""


class Rmu(GradientAscent):
    """A diff from ``ga`` in its batch only (forget rows then retain rows, one student and one frozen forward)."""

    name = "rmu"
    Params = RmuParams
    needs_frozen = True
    uses_retain = True

    def __init__(self, params, collator, seed):
        super().__init__(params, collator, seed)
        self._direction: torch.Tensor | None = None

    def configure_trainable(self, model: torch.nn.Module, layers: torch.nn.ModuleList) -> None:
        p = self.params
        if p.layer >= len(layers):
            raise ConfigError(f"method.layer: {p.layer} is not a decoder layer of this model (it has {len(layers)}: "
                             f"0..{len(layers) - 1})")
        if p.trainable == "all":
            return
        keep = {id(q) for layer in layers[: p.layer + 1] for q in layer.parameters()}
        for q in model.parameters():
            if id(q) not in keep:
                q.requires_grad_(False)

    def direction(self, hidden_size: int, device: torch.device) -> torch.Tensor:
        """u: [H] fp32 unit vector, a function of the run seed only (same on every rank and every step)."""
        if self._direction is None or self._direction.shape[0] != hidden_size:
            g = torch.Generator().manual_seed(self.seed)
            u = torch.randn(hidden_size, generator=g, dtype=torch.float32)
            self._direction = u / u.norm()
        return self._direction.to(device)

    def compute_loss(self, batch, student, frozen, counts) -> LossOutput:
        p = self.params
        inputs = batch.inputs["student"]
        n_forget = batch.counts["forget_tokens"]
        # [B, L, H] -> [T, H] at the scored positions (row-major: the forget positions come first).
        hidden = student.layer_hidden(inputs, p.layer)[inputs.target_mask]
        ref = frozen.layer_hidden(inputs, p.layer)[inputs.target_mask].float()
        u = self.direction(ref.shape[-1], ref.device)
        target = p.lambda_ * ref[:n_forget].norm(dim=-1, keepdim=True) * u
        forget = token_mean(rmu_sum(hidden[:n_forget], target), counts["forget_tokens"])
        retain = token_mean(rmu_sum(hidden[n_forget:], ref[n_forget:]), counts["retain_tokens"])
        loss = forget + p.gamma * retain
        return LossOutput(loss, {"forget_mse": forget.detach(), "retain_mse": retain.detach()})
