"""The method interface: a method turns samples into model inputs and inputs into a loss. Nothing else.

The engine owns the models, the data order, the optimiser and the normalisation counts; a method sees:
- ``build_batch(primary, retain, epoch)``: the samples of one micro-batch -> a ``StepBatch`` (model inputs and
  local counts of scored tokens/sequences);
- ``compute_loss(batch, student, frozen, counts)``: the loss, where ``student``/``frozen`` are ``ModelRunner``s
  and ``counts`` are global (all ranks, all micro-batches of the optimiser step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch

from vgid_dist.config.method_params import MethodParams
from vgid_dist.data.collate import Collator, EncodedSample, ModelInputs
from vgid_dist.data.schema import Sample
from vgid_dist.losses import nll_sum, sequence_logprobs, token_logprobs, token_mean


class ModelRunner(Protocol):
    """A model as methods see it (implemented by the engine; frozen runners run under no_grad)."""

    def target_logits(self, inputs: ModelInputs) -> torch.Tensor:
        """Logits at the scored positions, [T, V], row-major over the batch."""

    def target_hidden(self, inputs: ModelInputs) -> torch.Tensor:
        """Final (normed) hidden states at the scored positions, [T, H]."""

    def layer_hidden(self, inputs: ModelInputs, layer: int) -> torch.Tensor:
        """Hidden states leaving decoder layer ``layer`` (0-based), [B, L, H]."""

    def layers_hidden(self, inputs: ModelInputs, layers: list[int]) -> list[torch.Tensor]:
        """Hidden states leaving each decoder layer of ``layers`` (0-based), [B, L, H] each, one forward."""

    def fused_kl_sum(self, student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                     teacher: ModelRunner) -> torch.Tensor:
        """Sum over rows of KL(teacher || student) through the output heads, without [T, V] logits."""


@dataclass
class StepBatch:
    """One micro-batch of a method: named model inputs plus local counts (e.g. ``forget_tokens``)."""

    inputs: dict[str, ModelInputs]
    counts: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)

    def to(self, device, pixel_dtype=None) -> StepBatch:
        return StepBatch({k: v.to(device, pixel_dtype) for k, v in self.inputs.items()}, self.counts, self.meta)


@dataclass
class LossOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    """Detached components of the loss, each already normalised (they sum over micro-batches and ranks)."""


class Method:
    """Base class. A method declares itself in its class line and implements ``build_batch`` / ``compute_loss``::

        class Npo(Method, name="npo", params=NpoParams, uses_retain=False): ...

    ``name`` is ``method.name`` in recipes, ``params`` its parameter model (``config.method_params``); any other
    keyword sets a class flag below (or one a parent method defines), so a method states only how it differs."""

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]]
    needs_frozen: ClassVar[bool] = True
    """Whether the frozen base model (teacher/reference) is loaded."""
    uses_retain: ClassVar[bool] = True
    trains: ClassVar[bool] = True

    def __init_subclass__(cls, *, name: str | None = None, params: type[MethodParams] | None = None,
                          **flags: Any) -> None:
        super().__init_subclass__()
        if name is not None:
            cls.name = name
        if params is not None:
            cls.Params = params
        for flag, value in flags.items():
            if not hasattr(cls, flag):
                raise TypeError(f"{cls.__name__}: unknown method flag {flag!r}")
            setattr(cls, flag, value)

    def __init__(self, params: MethodParams, collator: Collator, seed: int):
        self.params = params
        self.collator = collator
        self.seed = seed

    def training_samples(self, data_cfg) -> tuple[list[Sample], list[Sample]]:
        """(primary, retain) samples; the primary stream defines epochs. Default: forget and retain pairs."""
        from vgid_dist.data import load_unlearning_data

        forget, retain = load_unlearning_data(data_cfg)
        return forget, (retain if self.uses_retain else [])

    def configure_trainable(self, model: torch.nn.Module, layers: torch.nn.ModuleList) -> None:
        """Called once before the student engine is built: a method may switch ``requires_grad`` off for
        parameters it must not train (only ever off: LoRA mode has already frozen the base weights).
        ``layers`` are the language model's decoder layers. Default: train what the run trains."""

    # A method may measure something on the frozen model once before training (RMU's steering coefficient):
    # ``calibrates`` says whether; ``calibration_sums`` returns local sums over the first step's micro-batches
    # (every rank calls it with as many batches); ``calibrate`` receives those sums added over all ranks and
    # returns what to log. The first step's batches are a function of the seed, so a resumed run measures the
    # same values.
    @property
    def calibrates(self) -> bool:
        return False

    def calibration_sums(self, batches: list[StepBatch], frozen: ModelRunner | None) -> dict[str, float]:
        raise NotImplementedError

    def calibrate(self, totals: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def build_batch(self, primary: list[Sample], retain: list[Sample], epoch: int) -> StepBatch:
        raise NotImplementedError

    def compute_loss(self, batch: StepBatch, student: ModelRunner, frozen: ModelRunner | None,
                     counts: dict[str, int]) -> LossOutput:
        raise NotImplementedError

    # helpers shared by methods ----------------------------------------------------------------------------------
    def encode_plain(self, samples: list[Sample]) -> list[EncodedSample]:
        return [self.collator.encode(s) for s in samples]

    @staticmethod
    def count_tokens(encoded: list[EncodedSample]) -> int:
        return sum(len(e.answer_ids) for e in encoded)

    def forget_retain_batch(self, forget: list[EncodedSample], retain: list[EncodedSample]) -> StepBatch:
        """One student forward per micro-batch over the forget rows, then the retain rows (none for methods
        without a retain term): the first ``forget_tokens`` scored positions are the forget answer tokens."""
        return StepBatch(inputs={"student": self.collator.pad(forget + retain)},
                         counts={"forget_tokens": self.count_tokens(forget), "retain_tokens": self.count_tokens(retain)},
                         meta={"truncated": sum(e.truncated for e in forget + retain)})

    @staticmethod
    def answer_logprobs(runner: ModelRunner, inputs: ModelInputs) -> torch.Tensor:
        """[B] log p(answer | prompt) per row of ``inputs``: token log-probs of the answer, summed per row."""
        logits = runner.target_logits(inputs)
        return sequence_logprobs(token_logprobs(logits, inputs.target_ids), inputs.targets_per_row)

    @staticmethod
    def forget_retain_nll(batch: StepBatch, logits: torch.Tensor,
                          counts: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-mean NLL of the forget answers and of the retain answers of a ``forget_retain_batch``, from its
        [T, V] student logits; each divided by the global count of its tokens."""
        n_forget = batch.counts["forget_tokens"]
        targets = batch.inputs["student"].target_ids
        forget = token_mean(nll_sum(logits[:n_forget], targets[:n_forget]), counts["forget_tokens"])
        retain = token_mean(nll_sum(logits[n_forget:], targets[n_forget:]), counts.get("retain_tokens", 0))
        return forget, retain


class InferenceOnlyMethod(Method):
    """A method that changes how the base model is asked, not its weights (ICU, MLLMEraser): a row like any
    other in the demo and the matrix, its parameters validated like any other's, but the trainer refuses it.
    Subclasses set ``how_to_use``: what to run instead, for that refusal."""

    needs_frozen = False
    trains = False
    how_to_use: ClassVar[str]

    def _refuse(self):
        raise TypeError(f"method {self.name} does not train: {self.how_to_use}")

    def build_batch(self, primary, retain, epoch):
        self._refuse()

    def compute_loss(self, batch, student, frozen, counts):
        self._refuse()
