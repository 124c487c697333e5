"""MLLMEraser: training-free, input-aware activation steering (Ding et al., 2025, "MLLMEraser: Achieving
Test-Time Unlearning in MLLMs through Activation Steering"; only the abstract is public, the readings are ours).

Build (once, from a model folder and the forget/retain training pairs; ``build_steering``):
- Knowledge-recall inputs: each forget pair's question with its original image. Knowledge-erasure inputs: the
  same question with the perturbed image (VGID's perturbations) AND the unlearning instruction before it
  (``erasure_text: instruction``), or with a refusal as the answer (``refusal``): both modalities change.
- Activations: the residual stream leaving decoder layer l at the input's last token (the position that
  produces the answer). Per steering layer l, the erasure direction is

      d_l = mean(erasure activations at l) - mean(recall activations at l)          [H]

  so ADDING d_l moves a recall input toward the erasure inputs (the brief's recall - erasure, with the sign
  turned so that the hooks add it).
- Gate (input-aware): at ``gate_layer``, the cosine similarity between the input's last-token activation and
  the forget centroid (mean recall activation of the forget pairs), both taken relative to the retain centroid
  (``center: retain``; ``none``: raw cosine, dominated by the component every input shares). The threshold is
  the ``retain_quantile`` quantile of the same score over the retain pairs, so that share of retain inputs is
  never steered. ``gate: hard`` steers with strength 1 above the threshold, ``soft`` with
  (score - threshold) / (1 - threshold), clipped to [0, 1].

Apply (``SteeringHooks``, ``vgid eval --steer FILE``): forward hooks on the chosen decoder layers add
``scale * strength * d_l`` to every position of the layer's output, during prefill and every decode step. The
strength of each row is decided at prefill (a forward over more than one position) from the unsteered gate-layer
activation; decode steps reuse it. ``gate_layer`` is at or before the first steering layer, so the gate never
sees a steered state. A row whose gate is closed is left untouched: its outputs equal the unsteered model's.

The file is a small safetensors: ``directions`` [n_layers, H], ``layers`` [n_layers], ``forget_centroid`` and
``retain_centroid`` [H] (fp32), the scalar settings in its metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from pydantic import ValidationError

from vgid_dist.config import format_validation_error, load_run_config, parse_override
from vgid_dist.config.method_params import MllmEraserParams
from vgid_dist.data.schema import Sample
from vgid_dist.errors import ConfigError, DataError
from vgid_dist.io import file_written_atomically

FORMAT = "vgid-mllmeraser-v1"


@dataclass
class Steering:
    """Erasure directions and the gate; see the module docstring."""

    layers: list[int]
    directions: torch.Tensor  # [n_layers, H] fp32, one row per entry of ``layers``
    gate_layer: int
    forget_centroid: torch.Tensor  # [H] fp32, recall activations of the forget pairs at gate_layer
    retain_centroid: torch.Tensor  # [H] fp32, recall activations of the retain pairs at gate_layer
    threshold: float
    scale: float = 1.0
    gate: Literal["hard", "soft"] = "hard"
    center: Literal["retain", "none"] = "retain"
    info: dict = field(default_factory=dict)
    """Build facts kept in the file (model, data, counts, gate pass rates)."""

    def __post_init__(self) -> None:
        if self.directions.dim() != 2 or self.directions.shape[0] != len(self.layers):
            raise ValueError(f"steering: directions {tuple(self.directions.shape)} do not match layers {self.layers}")
        if self.layers and self.gate_layer > min(self.layers):
            raise ValueError(f"steering: gate_layer {self.gate_layer} comes after steering layer {min(self.layers)}; "
                             "the gate must read an unsteered state")

    def score(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """Gate score per row: [B, H] gate-layer activations at the last token -> [B] fp32 cosines."""
        h = last_hidden.float()
        anchor = self.forget_centroid.to(h.device)
        if self.center == "retain":
            origin = self.retain_centroid.to(h.device)
            h, anchor = h - origin, anchor - origin
        return torch.nn.functional.cosine_similarity(h, anchor.expand_as(h), dim=-1, eps=1e-8)

    def strength(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """[B, H] -> [B] fp32 in [0, 1]: how strongly each row is steered (0: gate closed)."""
        s = self.score(last_hidden)
        if self.gate == "hard":
            return (s >= self.threshold).float()
        return ((s - self.threshold) / max(1.0 - self.threshold, 1e-6)).clamp(0.0, 1.0)

    # -- file ------------------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Written to a temporary file and renamed."""
        from safetensors.torch import save_file

        tensors = {"directions": self.directions.float().contiguous(),
                   "layers": torch.tensor(self.layers, dtype=torch.long),
                   "forget_centroid": self.forget_centroid.float().contiguous(),
                   "retain_centroid": self.retain_centroid.float().contiguous()}
        meta = {"format": FORMAT, "gate_layer": str(self.gate_layer), "threshold": repr(float(self.threshold)),
                "scale": repr(float(self.scale)), "gate": self.gate, "center": self.center,
                "info": json.dumps(self.info, sort_keys=True, default=str)}
        with file_written_atomically(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Steering:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: steering file not found (build one with `vgid steer build`)")
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != FORMAT:
                raise DataError(f"{path}: not a steering file (metadata 'format' is {meta.get('format')!r}, "
                                 f"expected {FORMAT!r})")
            t = {k: fh.get_tensor(k) for k in fh.keys()}
        return cls(layers=[int(x) for x in t["layers"].tolist()], directions=t["directions"],
                   gate_layer=int(meta["gate_layer"]), forget_centroid=t["forget_centroid"],
                   retain_centroid=t["retain_centroid"], threshold=float(meta["threshold"]),
                   scale=float(meta["scale"]), gate=meta["gate"], center=meta["center"],
                   info=json.loads(meta.get("info", "{}")))


class SteeringHooks:
    """Context manager: hooks ``steering`` into ``model`` (a loaded model of ``adapter``'s family) and removes
    every hook on exit, even after an error.

    ``strengths`` holds the [B] strengths decided at the latest prefill (for inspection and tests)."""

    def __init__(self, model: torch.nn.Module, adapter, steering: Steering, *, scale: float | None = None):
        self.model = model
        self.steering = steering
        self.scale = steering.scale if scale is None else scale
        self.layers = adapter.language_layers(model)
        if max(steering.layers + [steering.gate_layer]) >= len(self.layers):
            raise ConfigError(f"steering layers {steering.layers} / gate layer {steering.gate_layer}: this model has "
                             f"{len(self.layers)} decoder layers")
        self.handles: list = []
        self.strengths: torch.Tensor | None = None
        self._attention_mask: torch.Tensor | None = None

    def __enter__(self) -> SteeringHooks:
        self.handles.append(self.model.register_forward_pre_hook(self._remember_mask, with_kwargs=True))
        rows = dict(zip(self.steering.layers, self.steering.directions))
        for index in sorted(set(self.steering.layers) | {self.steering.gate_layer}):
            hook = self._make_hook(index, rows.get(index), gate=index == self.steering.gate_layer)
            self.handles.append(self.layers[index].register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self._attention_mask = None

    def _remember_mask(self, module, args, kwargs):
        self._attention_mask = kwargs.get("attention_mask")
        return None

    def _last_positions(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B] index of each row's last real token (left or right padding), from the model call's mask."""
        batch, length = hidden.shape[:2]
        mask = self._attention_mask
        if mask is None or mask.dim() != 2 or mask.shape != (batch, length):
            return torch.full((batch,), length - 1, dtype=torch.long, device=hidden.device)
        flipped_first = mask.to(hidden.device).flip(1).long().argmax(dim=1)
        return length - 1 - flipped_first

    def _make_hook(self, index: int, direction: torch.Tensor | None, *, gate: bool):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if gate and hidden.shape[1] > 1:  # prefill: decide each row's strength from the unsteered state
                last = hidden[torch.arange(hidden.shape[0], device=hidden.device), self._last_positions(hidden)]
                self.strengths = self.steering.strength(last.detach())
            if direction is None or self.strengths is None or not bool(self.strengths.any()):
                return None  # nothing steered: the layer's output is returned as it was
            if self.strengths.shape[0] != hidden.shape[0]:
                raise RuntimeError(f"steering: a prefill of {self.strengths.shape[0]} rows was followed by a step "
                                   f"of {hidden.shape[0]} rows")
            shift = (self.scale * self.strengths.to(hidden.device)[:, None, None]
                     * direction.to(hidden.device)[None, None, :]).to(hidden.dtype)
            # Closed rows get +0.0 exactly, which leaves every value (and so the outputs) unchanged.
            steered = hidden + shift
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return hook


# -- building ---------------------------------------------------------------------------------------------------

def _last_token_states(model, adapter, collator, rows, layers: list[int], batch_size: int,
                       device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[n_layers, N, H] fp32 activations leaving each layer of ``layers`` at each row's last token.

    Rows are left-padded, so the last position is every row's last token; image and text-only rows go in
    separate batches (every batch of a family's forward has one modality)."""
    chunks: list[tuple[list[int], torch.Tensor]] = []
    for has_image in (True, False):
        group = [i for i in range(len(rows)) if (rows[i].image is not None) == has_image]
        for start in range(0, len(group), batch_size):
            idx = group[start:start + batch_size]
            inputs = collator.pad([rows[i] for i in idx], side="left").to(device, dtype)
            with torch.no_grad():
                result = model(**adapter.model_kwargs(inputs), use_cache=False, output_hidden_states=True,
                               logits_to_keep=1)
            chunks.append((idx, torch.stack([result.hidden_states[layer + 1][:, -1].float().cpu()
                                             for layer in layers])))
    hidden = chunks[0][1].shape[-1]
    out = torch.zeros(len(layers), len(rows), hidden)
    for idx, states in chunks:
        out[:, idx] = states
    return out


def erasure_rows(collator, samples: list[Sample], params, seed: int):
    """(recall rows, erasure rows) for the forget pairs: prompts only (activations at their last token)."""
    from vgid_dist.perturb import noise_rng, perturb_image
    from vgid_dist.prompts import DEFAULT_REFUSALS, with_instruction

    recall, erasure = [], []
    for sample in samples:
        recall.append(collator.encode(sample, answer_ids=[]))
        image = None
        if sample.image is not None:
            image = perturb_image(sample.image.load(), params.perturbation, sigma=params.sigma,
                                  rng=noise_rng(seed, "mllmeraser", sample.sample_id),
                                  view=collator.adapter.processor_input)
        if params.erasure_text == "instruction":
            erasure.append(collator.encode(sample, question=with_instruction(sample.question,
                                                                             params.instruction_style),
                                           image=image, answer_ids=[]))
        else:  # the refusal as the answer: its last token closes the refusal
            refused = collator.encode(replace(sample, answer=DEFAULT_REFUSALS[0]), image=image)
            erasure.append(replace(refused, prompt_ids=refused.prompt_ids + refused.answer_ids[:-1], answer_ids=[]))
    return recall, erasure


def build_steering(model, adapter, forget: list[Sample], retain: list[Sample], params, *, seed: int = 0,
                   batch_size: int = 8, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> Steering:
    """Directions from ``forget`` pairs, gate threshold calibrated on ``retain`` pairs (``params``: the
    ``mllmeraser`` method's parameters)."""
    from vgid_dist.data.collate import Collator

    if not forget or not retain:
        raise DataError(f"steering: needs forget and retain pairs (got {len(forget)} forget, {len(retain)} retain)")
    device = torch.device(device)
    num_layers = len(adapter.language_layers(model))
    layers = sorted(set(params.layers)) if params.layers else [num_layers // 2]
    gate_layer = params.gate_layer if params.gate_layer is not None else min(layers)
    if max(layers + [gate_layer]) >= num_layers:
        raise ConfigError(f"method.layers {layers} / gate_layer {gate_layer}: the model has {num_layers} decoder "
                         f"layers (0..{num_layers - 1})")
    forget = forget[:params.max_samples] if params.max_samples else forget
    retain = retain[:params.max_samples] if params.max_samples else retain
    collator = Collator(adapter, 10**6)
    recall_rows, erasure_rows_ = erasure_rows(collator, forget, params, seed)
    retain_rows = [collator.encode(s, answer_ids=[]) for s in retain]
    read = sorted(set(layers) | {gate_layer})
    model.eval()
    recall = _last_token_states(model, adapter, collator, recall_rows, read, batch_size, device, dtype)
    erased = _last_token_states(model, adapter, collator, erasure_rows_, read, batch_size, device, dtype)
    kept = _last_token_states(model, adapter, collator, retain_rows, [gate_layer], batch_size, device, dtype)[0]
    at = {layer: i for i, layer in enumerate(read)}
    directions = torch.stack([erased[at[layer]].mean(0) - recall[at[layer]].mean(0) for layer in layers])
    steering = Steering(layers=layers, directions=directions, gate_layer=gate_layer,
                        forget_centroid=recall[at[gate_layer]].mean(0), retain_centroid=kept.mean(0),
                        threshold=0.0, scale=params.scale, gate=params.gate, center=params.center)
    retain_scores = steering.score(kept)
    steering.threshold = float(torch.quantile(retain_scores, params.retain_quantile))
    forget_scores = steering.score(recall[at[gate_layer]])
    steering.info = {"forget_pairs": len(forget), "retain_pairs": len(retain),
                     "forget_gate_open": float((forget_scores >= steering.threshold).float().mean()),
                     "retain_gate_open": float((retain_scores >= steering.threshold).float().mean()),
                     "direction_norms": [round(float(n), 4) for n in directions.norm(dim=-1)],
                     "erasure_text": params.erasure_text, "perturbation": params.perturbation, "seed": seed}
    return steering


def steering_params(config: str | None = None, overrides: list[str] = ()) -> MllmEraserParams:
    """MLLMEraser's parameters: the ``mllmeraser`` method section of recipe ``config`` (its defaults without
    one), with ``key=value`` overrides (``scale=2``, ``method.layers=[15,16]``) parsed as in training recipes.
    Raises ConfigError naming the recipe or the override."""
    given: dict = {}
    if config:
        params = load_run_config(config).method.params()
        if not isinstance(params, MllmEraserParams):
            raise ConfigError(f"--config {config}: its method is not mllmeraser")
        given = params.model_dump()
    for text in overrides:
        keys, value = parse_override(text)
        key = ".".join(keys).removeprefix("method.")
        if "." in key:
            raise ConfigError(f"override {text!r}: expected a parameter of method mllmeraser (e.g. scale=2)")
        given[key] = value
    try:
        return MllmEraserParams(**given)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "mllmeraser parameters"
                                                  + (f" (overrides {' '.join(overrides)})" if overrides else ""))) \
            from None


def build_steering_file(model_path: str, data_root: str, forget_ratio: int, out: str | Path,
                        params: MllmEraserParams, *, seed: int = 0, batch_size: int = 8,
                        dtype: str = "float32") -> Steering:
    """``vgid steer build``: load the model folder (one process), build from the benchmark's training pairs
    at ``forget_ratio``, save to ``out`` (written to a temporary file and renamed: a reader never sees a
    partial one)."""
    from vgid_dist.data.mllmu import MLLMUBench
    from vgid_dist.models import load_adapter

    adapter = load_adapter(model_path)
    torch_dtype = getattr(torch, dtype)
    model = adapter.load_model(torch_dtype).eval()
    bench = MLLMUBench(data_root)
    steering = build_steering(model, adapter, bench.train_samples("forget", forget_ratio),
                              bench.train_samples("retain", forget_ratio), params, seed=seed,
                              batch_size=batch_size, dtype=torch_dtype)
    steering.info.update(model=str(model_path), data=str(data_root), forget_ratio=forget_ratio)
    steering.save(out)
    return steering
