"""Representation misdirection (RMU; Li et al., 2024, WMDP; with the adaptive coefficient of Dang et al., 2025;
VGID paper eqs. 11-15): at decoder layer ``layer``, push the student's hidden states on forget samples toward a
fixed random direction and hold its hidden states on retain samples at the frozen model's.

Two settings (``variant``):

- ``reference`` (default): the setting of the WMDP and Adaptive RMU code. ``u`` is drawn uniform in [0, 1)^H
  and normalised; the target is ``c * u`` with one coefficient ``c`` for the run: ``steering_coeff`` when given
  (WMDP), else ``lambda`` x the frozen model's mean activation norm at ``layer`` over the forget positions of the
  first optimiser step (Adaptive RMU's scale, measured once before training, summed over every rank). Both terms
  are the squared error averaged over the hidden size (``torch``'s ``mse_loss`` in the reference code)::

      L = mean_f mean_h (h_theta(x_f) - c u)^2 + gamma * mean_r mean_h (h_theta(x_r) - h_ref(x_r))^2

- ``per_position``: ``u`` gaussian then normalised, target ``lambda * ||h_ref(x_f)||`` at each position, squared
  L2 distances summed over the hidden size (eq. 12-13 read per position).

What trains (``trainable``): ``down_proj`` (default, WMDP's ``layer_ids`` l-2..l with ``param_ids`` naming the
MLP down-projection): only ``mlp.down_proj`` of decoder layers ``layer``-2..``layer``; ``up_to_layer``: every
parameter of decoder layers 0..``layer``; ``all``: what the run trains otherwise. Under LoRA the adapters of
those modules train instead of their weights.

Scored positions: the answer-target positions of each sample (``target_mask``: the last prompt position and the
answer positions that predict the next answer token), the positions every other method scores (the reference
code, written for plain text corpora, scores every token). The prompt template and image tokens, shared by forget
and retain samples alike, are left out so the two terms do not pull the same positions in opposite directions.
Each term is a sum over its positions divided by the global count of those positions (``forget_tokens``,
``retain_tokens``). ``u`` is a function of the run seed: the same on every rank.
"""

from __future__ import annotations

import torch

from vgid_dist.config.method_params import RmuParams
from vgid_dist.errors import ConfigError
from vgid_dist.losses import token_mean
from vgid_dist.losses.preference import rmu_sum
from vgid_dist.losses.representation import representation_sum
from vgid_dist.methods.base import LossOutput, Method, StepBatch


class Rmu(Method, name="rmu", params=RmuParams):
    """Forget rows then retain rows, one student and one frozen forward per micro-batch."""

    def __init__(self, params, collator, seed):
        super().__init__(params, collator, seed)
        self._direction: torch.Tensor | None = None
        self.coefficient: float | None = params.steering_coeff

    def build_batch(self, primary, retain, epoch) -> StepBatch:
        return self.forget_retain_batch(self.encode_plain(primary), self.encode_plain(retain))

    # -- what trains ----------------------------------------------------------------------------------------------
    def configure_trainable(self, model: torch.nn.Module, layers: torch.nn.ModuleList) -> None:
        p = self.params
        if p.layer >= len(layers):
            raise ConfigError(f"method.layer: {p.layer} is not a decoder layer of this model (it has {len(layers)}: "
                              f"0..{len(layers) - 1})")
        if p.trainable == "all":
            return
        if p.trainable == "up_to_layer":
            keep = {id(q) for layer in layers[: p.layer + 1] for q in layer.parameters()}
        else:
            keep = {id(q) for layer in layers[max(0, p.layer - 2): p.layer + 1]
                    for name, q in layer.named_parameters() if name.startswith("mlp.down_proj.")}
            if not keep:
                raise ConfigError("method.trainable: down_proj: the decoder layers have no mlp.down_proj (expected "
                                  "a LLaMA/Qwen-style MLP); use up_to_layer or all")
        for q in model.parameters():
            if id(q) not in keep:
                q.requires_grad_(False)
        if not any(q.requires_grad for q in model.parameters()):
            raise ConfigError(f"method.trainable: {p.trainable}: nothing left to train (model.lora.targets must "
                              "include the modules RMU trains, e.g. down_proj, or set model.lora: null)")

    # -- the target ------------------------------------------------------------------------------------------------
    def direction(self, hidden_size: int, device: torch.device) -> torch.Tensor:
        """u: [H] fp32 unit vector, a function of the run seed only (same on every rank and every step):
        uniform in [0, 1)^H then normalised (reference), or gaussian then normalised (per_position)."""
        if self._direction is None or self._direction.shape[0] != hidden_size:
            g = torch.Generator().manual_seed(self.seed)
            draw = torch.rand if self.params.variant == "reference" else torch.randn
            u = draw(hidden_size, generator=g, dtype=torch.float32)
            self._direction = u / u.norm()
        return self._direction.to(device)

    @property
    def calibrates(self) -> bool:
        return self.params.variant == "reference" and self.params.steering_coeff is None

    def calibration_sums(self, batches, frozen) -> dict[str, float]:
        """Sum of the frozen model's activation norms at ``layer`` over the forget positions, and their count."""
        total, count = 0.0, 0
        for batch in batches:
            inputs = batch.inputs["student"]
            states = frozen.layer_hidden(inputs, self.params.layer)[inputs.target_mask].float()
            forget = states[: batch.counts["forget_tokens"]]
            total += float(forget.norm(dim=-1).sum())
            count += forget.shape[0]
        return {"forget_norm_sum": total, "forget_positions": float(count)}

    def calibrate(self, totals: dict[str, float]) -> dict[str, float]:
        if totals["forget_positions"] <= 0:
            raise ValueError("rmu: the first step has no forget position to measure the activation norm on")
        mean_norm = totals["forget_norm_sum"] / totals["forget_positions"]
        self.coefficient = self.params.lambda_ * mean_norm
        return {"rmu_mean_forget_norm": mean_norm, "rmu_steering_coeff": self.coefficient}

    # -- loss -------------------------------------------------------------------------------------------------------
    def compute_loss(self, batch, student, frozen, counts) -> LossOutput:
        p = self.params
        inputs = batch.inputs["student"]
        n_forget = batch.counts["forget_tokens"]
        # [B, L, H] -> [T, H] at the scored positions (row-major: the forget positions come first).
        hidden = student.layer_hidden(inputs, p.layer)[inputs.target_mask]
        ref = frozen.layer_hidden(inputs, p.layer)[inputs.target_mask].float()
        u = self.direction(ref.shape[-1], ref.device)
        if p.variant == "reference":
            if self.coefficient is None:
                raise RuntimeError("rmu: the steering coefficient is measured before training (calibrate)")
            target = (self.coefficient * u).expand(n_forget, -1)
            forget_sum = representation_sum(hidden[:n_forget], target, "mse")
            retain_sum = representation_sum(hidden[n_forget:], ref[n_forget:], "mse")
        else:
            target = p.lambda_ * ref[:n_forget].norm(dim=-1, keepdim=True) * u
            forget_sum = rmu_sum(hidden[:n_forget], target)
            retain_sum = rmu_sum(hidden[n_forget:], ref[n_forget:])
        forget = token_mean(forget_sum, counts["forget_tokens"])
        retain = token_mean(retain_sum, counts["retain_tokens"])
        loss = forget + p.gamma * retain
        return LossOutput(loss, {"forget_mse": forget.detach(), "retain_mse": retain.detach()})
