"""Batched, distributed MLLMU-Bench evaluation: greedy generation with left padding (and, optionally, multiple
choice scored by the option letters' log-probabilities), scored on rank 0.

Distribution: items are split into an image group and a text-only group; each group is dealt round-robin to
the ranks and padded so every rank runs the same number of batches, image batches first. Batch k therefore has
the same modality on every rank: under ZeRO-3 a vision tower called on one rank and not another would leave
the others waiting in its parameter all-gather. Padding rows (and rows whose image cannot be read) are filled
with a placeholder prompt, run and discarded, so a skipped question never changes a rank's call count.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vgid_dist.config import EvalOptions
from vgid_dist.data.collate import Collator, EncodedSample, ModelInputs
from vgid_dist.errors import DataError
from vgid_dist.eval import prompting
from vgid_dist.eval.items import EvalItem
from vgid_dist.eval.metrics import bleu, classification_correct, cloze_correct, official_reply, rouge_l
from vgid_dist.progress import Progress

LENIENT_METRIC = "class_acc_lenient"
LOGITS_METRIC = "class_acc_logits"

GenerateFn = Callable[[ModelInputs, int], torch.Tensor]
"""(left-padded prompts, max_new_tokens) -> [B, new] generated token ids (new tokens only)."""
LogprobsFn = Callable[[ModelInputs], torch.Tensor]
"""(right-padded prompts with answer tokens) -> [T, V] float32 log-probabilities at the T target positions
(row-major; see ``ModelInputs.target_mask``): the distribution each answer token is drawn from."""


@dataclass
class Prediction:
    item: EvalItem
    reply: str | None  # None: the item could not be asked (e.g. unreadable image); counted, not scored
    error: str | None = None
    choice_logits: str | None = None  # mc_mode logits: the option letter with the highest log-probability


@dataclass
class _Batch:
    items: list[EvalItem | None]  # None = padding row
    has_image: bool = True


TASK_ORDER = {"classification": 0, "cloze": 1, "generation": 2}


def _prompt_size(it: EvalItem) -> tuple[int, int]:
    """(example images, characters of the question and its solved examples): the order of prompt lengths
    without tokenizing. The examples are most of an official-protocol prompt and differ between splits, so
    sorting on the question alone mixed 60- and 200-token prompts in one batch."""
    chars = len(it.question) + sum(len(s.question) + len(s.answer) + sum(map(len, (s.options or {}).values()))
                                   for s in it.shots)
    return sum(s.image is not None for s in it.shots), chars


def plan_batches(items: list[EvalItem], rank: int, world: int, batch_size: int) -> list[_Batch]:
    """This rank's batches; the same count and modality sequence on every rank.

    Items of one task share batches and are sorted by prompt length within it (``_prompt_size``): short-answer tasks stop
    generating after a few tokens instead of waiting on long answers, and rows of similar length waste little
    padding. Generation stops when every row of a batch has ended, so one batch = one early-stopping unit."""
    batches: list[_Batch] = []
    for has_image in (True, False):
        group = sorted((it for it in items if (it.image is not None) == has_image),
                       key=lambda it: (TASK_ORDER.get(it.task, 3), *_prompt_size(it), it.uid))
        if not group:
            continue
        per_rank = math.ceil(len(group) / world)
        # Dealt round-robin from the sorted list: every rank's batch k holds questions of the same task and
        # similar length, so ranks finish batch k at about the same step (synced generation waits for the last).
        mine: list[EvalItem | None] = group[rank::world]
        mine += [None] * (per_rank - len(mine))
        for start in range(0, per_rank, batch_size):
            batches.append(_Batch(mine[start:start + batch_size], has_image))
    return batches


def _pad_item(has_image: bool) -> EvalItem:
    from vgid_dist.data.schema import ImageRef
    from vgid_dist.data.synthetic import png_bytes

    image = None
    if has_image:
        from PIL import Image

        image = ImageRef(data=png_bytes(Image.new("RGB", (32, 32))), origin="padding")
    return EvalItem("padding", "padding", "padding", "generation", "Image_Textual" if has_image else "Pure_Text",
                    "Hello.", "", image)


class PromptEncoder:
    """Renders and encodes items for one adapter with the run's options (ICU instruction, attack, examples)."""

    def __init__(self, adapter, opts: EvalOptions):
        self.adapter = adapter
        self.opts = opts
        self.images = prompting.ImageCache(adapter)
        self._pads: dict[bool, EncodedSample] = {}

    def prompt(self, item: EvalItem) -> str:
        return prompting.render(self.adapter, item.text(self.opts.icu, self.opts.attack), item.image is not None,
                                item.task, item.shots)

    def encode(self, item: EvalItem) -> tuple[EncodedSample, str]:
        """(encoded prompt, prompt text); raises DataError when an image cannot be read."""
        refs = [s.image for s in item.shots if s.image is not None] + ([item.image] if item.image else [])
        images = [self.images.get(ref) for ref in refs]
        prompt = self.prompt(item)
        return prompting.encode(self.adapter, prompt, images), prompt

    def padding(self, has_image: bool) -> EncodedSample:
        if has_image not in self._pads:
            pad = _pad_item(has_image)
            images = [self.adapter.encode_image(pad.image.load())] if pad.image is not None else []
            self._pads[has_image] = prompting.encode(
                self.adapter, self.adapter.render(pad.text(), has_image, pad.task), images)
        return self._pads[has_image]

    def encode_batch(self, batch: _Batch, errors: dict[str, str]) -> tuple[list[EncodedSample], list, list[str]]:
        """Rows for one batch, the same count on every rank: items that cannot be asked are recorded in
        ``errors`` (uid -> message) and replaced by a padding row, like the batch's padding slots."""
        encoded: list[EncodedSample] = []
        asked: list[EvalItem | None] = []
        prompts: list[str] = []
        for item in batch.items:
            if item is not None:
                try:
                    sample, prompt = self.encode(item)
                except DataError as exc:
                    errors[item.uid] = str(exc)
                else:
                    encoded.append(sample)
                    asked.append(item)
                    prompts.append(prompt)
                    continue
            encoded.append(self.padding(batch.has_image))
            asked.append(None)
            prompts.append("")
        return encoded, asked, prompts


def option_continuations(adapter, prompt: str, letters) -> tuple[list[int], dict[str, list[int]]]:
    """(tokens every option's answer starts with, {letter: the tokens that are that option's own}).

    Answers are tokenised jointly with the prompt (``adapter.answer_ids``), so the tokens are those the model
    would emit after this prompt (``ĠA`` after ``ASSISTANT:`` for LLaVA, ``A`` after Qwen's ``assistant\n``).
    The end-of-turn tokens all options share are dropped; a shared leading piece (a lone space, when the
    tokenizer lacks the merged letter) is teacher-forced and not scored."""
    seqs = {letter: adapter.answer_ids(prompt, letter) for letter in letters}
    shortest = min(len(s) for s in seqs.values())
    ref = next(iter(seqs.values()))
    prefix = 0
    while prefix < shortest and all(s[prefix] == ref[prefix] for s in seqs.values()):
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix and all(s[len(s) - 1 - suffix] == ref[len(ref) - 1 - suffix]
                                             for s in seqs.values()):
        suffix += 1
    own = {letter: s[prefix:len(s) - suffix] for letter, s in seqs.items()}
    if any(not o for o in own.values()):
        raise DataError(f"options {sorted(own)} are not told apart by their tokens after the prompt's end "
                        f"{prompt[-40:]!r}")
    return ref[:prefix], own


def _option_rows(sample: EncodedSample, shared: list[int], own: dict[str, list[int]]):
    """Rows that score every option of one question, and how to read each option's log-probability.

    One row when every option is a single token (the usual case): the distribution at its last target position
    holds them all. Otherwise one row per option, its tokens teacher-forced and their log-probabilities
    summed. Returns (rows, reader): reader(log-probs at this question's targets, [t, V]) -> {letter: float}."""
    if all(len(o) == 1 for o in own.values()):
        first = next(iter(own.values()))
        rows = [EncodedSample(sample.prompt_ids, shared + first, sample.image)]

        def read_one(lp: torch.Tensor) -> dict[str, float]:
            return {letter: float(lp[-1, o[0]]) for letter, o in own.items()}

        return rows, read_one
    rows = [EncodedSample(sample.prompt_ids, shared + o, sample.image) for o in own.values()]
    sizes = [len(shared) + len(o) for o in own.values()]

    def read_each(lp: torch.Tensor) -> dict[str, float]:
        scores, start = {}, 0
        for (letter, o), size in zip(own.items(), sizes):
            part = lp[start + len(shared):start + size]
            scores[letter] = float(part.gather(1, torch.tensor(o).unsqueeze(1)).sum())
            start += size
        return scores

    return rows, read_each


def generate_predictions(items: list[EvalItem], collator: Collator, generate: GenerateFn, opts: EvalOptions, *,
                         rank: int = 0, world: int = 1, progress: bool = True,
                         logprobs: LogprobsFn | None = None) -> list[Prediction]:
    """Ask this rank's share of ``items``; returns its predictions (gather them on rank 0).

    With ``opts.mc_mode == "logits"`` (``logprobs`` required) the classification items are also scored by
    the option letters' log-probabilities: one forward call per batch, batches planned like generation ones,
    so every rank runs the same number of forward calls of the same modality."""
    adapter = collator.adapter
    tokenizer = adapter.tokenizer
    encoder = PromptEncoder(adapter, opts)
    batches = plan_batches(items, rank, world, opts.batch_size)
    mc_batches: list[_Batch] = []
    if opts.mc_mode == "logits":
        if logprobs is None:
            raise ValueError("mc_mode 'logits' needs a log-probability scoring function")
        mc_batches = plan_batches([it for it in items if it.task == "classification"], rank, world,
                                  opts.batch_size)
    errors: dict[str, str] = {}
    replies: dict[str, str] = {}
    choices: dict[str, str] = {}
    mine: dict[str, EvalItem] = {}
    # rank 0 shows its own share: every rank runs the same number of batches, so its ETA is the job's
    bar = Progress(sum(len(b.items) for b in batches + mc_batches),
                   "eval" if world == 1 else f"eval (rank 0 of {world})", unit="q", enabled=progress and rank == 0)
    for batch in batches:
        encoded, asked, _ = encoder.encode_batch(batch, errors)
        mine.update((it.uid, it) for it in batch.items if it is not None)
        inputs = collator.pad(encoded, side="left")
        new_tokens = generate(inputs, opts.max_new_tokens)
        texts = tokenizer.batch_decode(new_tokens.tolist(), skip_special_tokens=True)
        for item, text in zip(asked, texts):
            if item is not None:
                replies[item.uid] = official_reply(text) if opts.protocol == "official" else text.strip()
        bar.update(len(batch.items))
    for batch in mc_batches:
        encoded, asked, prompts = encoder.encode_batch(batch, {})  # unreadable items were recorded above
        rows: list[EncodedSample] = []
        readers: list[tuple[str, object, int, int]] = []  # (uid, reader, first row, row count)
        for sample, item, prompt in zip(encoded, asked, prompts):
            if item is not None:
                try:
                    shared, own = option_continuations(adapter, prompt, item.options)
                except DataError:  # no logits choice for it; its padding row keeps the call shapes
                    item = None
            if item is None:
                rows.append(EncodedSample(sample.prompt_ids, [], sample.image))
                continue
            option_rows, reader = _option_rows(sample, shared, own)
            readers.append((item.uid, reader, len(rows), len(option_rows)))
            rows += option_rows
        # Right padding: every row keeps positions 0..n-1, as when asked alone.
        inputs = collator.pad(rows, side="right")
        lp = logprobs(inputs)  # [T, V]
        offsets = [0]
        for n in inputs.targets_per_row:
            offsets.append(offsets[-1] + n)
        for uid, reader, first, count in readers:
            scores = reader(lp[offsets[first]:offsets[first + count]])
            choices[uid] = max(scores, key=scores.__getitem__)  # ties: the first option
        bar.update(len(batch.items))
    bar.close()
    return [Prediction(it, replies.get(uid), errors.get(uid), choices.get(uid)) for uid, it in mine.items()]


def item_values(p: Prediction, protocol: str = "official") -> dict[str, float]:
    """The metrics of one answered question (``p.reply`` not None): classification ``class_acc`` (and the
    lenient and logits readings), cloze ``cloze_acc``, every other task ``gen_rougeL`` and ``gen_bleu``."""
    it = p.item
    if it.task == "classification":
        values = {"class_acc": float(classification_correct(p.reply, it.ground_truth,
                                                            lenient=protocol == "zero-shot")),
                  LENIENT_METRIC: float(classification_correct(p.reply, it.ground_truth, lenient=True))}
        if p.choice_logits is not None:
            values[LOGITS_METRIC] = float(p.choice_logits == it.ground_truth)
        return values
    if it.task == "cloze":
        return {"cloze_acc": float(cloze_correct(p.reply, it.ground_truth))}
    return {"gen_rougeL": rouge_l(p.reply, it.ground_truth), "gen_bleu": bleu(p.reply, it.ground_truth)}


def score(predictions: list[Prediction], splits=None, protocol: str = "official", *,
          extra: Callable[[Prediction], dict[str, float]] | None = None) -> dict:
    """``{split: {metric: value}}`` plus ``by_type``, ``counts`` (questions scored per split and metric),
    ``by_type_counts`` and ``skipped``.

    ``class_acc`` reads the reply's first character under the official protocol, its first alphanumeric one
    under ``zero-shot``; ``class_acc_lenient`` always reads the first alphanumeric one. A split's combined value
    is the mean over every scored question of that task in the split (not the mean of the two question-type
    means); ``by_type`` holds the means per question type (the official evaluator's figures, as fractions).
    Metrics of a task with no question are absent; a requested split with no question at all is ``{}``.
    ``extra(prediction)``: more metrics of one answered question (fact recall on a user's own data).
    """
    per: dict[tuple[str, str, str], list[float]] = defaultdict(list)  # (split, type|"all", metric) -> values
    skipped: dict[str, int] = {s: 0 for s in splits or ()}
    for p in predictions:
        it = p.item
        if p.reply is None:
            skipped[it.split] = skipped.get(it.split, 0) + 1
            continue
        values = item_values(p, protocol) | (extra(p) if extra is not None else {})
        for metric, v in values.items():
            per[(it.split, "all", metric)].append(v)
            per[(it.split, it.qtype, metric)].append(v)
    results: dict = {s: {} for s in splits or ()}
    by_type: dict = defaultdict(lambda: defaultdict(dict))
    counts: dict = {s: {} for s in splits or ()}
    type_counts: dict = defaultdict(lambda: defaultdict(dict))
    for (split, qtype, metric), values in sorted(per.items()):
        mean = sum(values) / len(values)
        if qtype == "all":
            results.setdefault(split, {})[metric] = mean
            counts.setdefault(split, {})[metric] = len(values)
        else:
            by_type[split][qtype][metric] = mean
            type_counts[split][qtype][metric] = len(values)
    results["by_type"] = {s: dict(t) for s, t in by_type.items()}
    results["counts"] = counts
    results["by_type_counts"] = {s: dict(t) for s, t in type_counts.items()}
    results["skipped"] = skipped
    return results


RESULT_SECTIONS = ("by_type", "counts", "by_type_counts", "skipped", "meta", "by_person")
"""Keys of a results dict that are not splits: ``score``'s sections, the ``meta`` a results file carries and the
``by_person`` of a people folder's results."""


def split_results(results: dict | None) -> dict[str, dict]:
    """``{split: {metric: value}}``: the splits of a results dict, without its other sections."""
    return {s: v for s, v in (results or {}).items() if s not in RESULT_SECTIONS and isinstance(v, dict)}


def prediction_record(p: Prediction) -> dict:
    """One line of the predictions file."""
    it = p.item
    record = {"uid": it.uid, "split": it.split, "task": it.task, "type": it.qtype, "profile_id": it.profile_id,
              "question": it.question, "ground_truth": it.ground_truth, "reply": p.reply}
    if it.options:
        record["options"] = it.options
    if p.choice_logits is not None:
        record["choice_logits"] = p.choice_logits
    if it.shots:
        record["shots"] = [list(s.key) for s in it.shots]
    if p.error:
        record["error"] = p.error
    return record
