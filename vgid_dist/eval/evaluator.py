"""Batched, distributed MLLMU-Bench evaluation: greedy generation with left padding, scored on rank 0.

Distribution: items are split into an image group and a text-only group; each group is dealt round-robin to
the ranks and padded so every rank runs the same number of batches, image batches first. Batch k therefore has
the same modality on every rank: under ZeRO-3 a vision tower called on one rank and not another would leave
the others waiting in its parameter all-gather. Padding rows are generated and discarded.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vgid_dist.data.collate import Collator, EncodedSample, ModelInputs
from vgid_dist.data.schema import DataError
from vgid_dist.eval.items import EvalItem
from vgid_dist.eval.metrics import bleu, classification_correct, cloze_correct, rouge_l

METRICS = ("class_acc", "cloze_acc", "gen_rougeL", "gen_bleu")
GenerateFn = Callable[[ModelInputs, int], torch.Tensor]
"""(left-padded prompts, max_new_tokens) -> [B, new] generated token ids (new tokens only)."""


@dataclass
class EvalOptions:
    batch_size: int = 16
    max_new_tokens: int = 50
    icu: str | None = None
    attack: str | None = None
    seed: int = 0


@dataclass
class Prediction:
    item: EvalItem
    reply: str | None  # None: the item could not be asked (e.g. unreadable image); counted, not scored
    error: str | None = None


@dataclass
class _Batch:
    items: list[EvalItem | None]  # None = padding row
    has_image: bool = True
    extra: dict = field(default_factory=dict)


TASK_ORDER = {"classification": 0, "cloze": 1, "generation": 2}


def plan_batches(items: list[EvalItem], rank: int, world: int, batch_size: int) -> list[_Batch]:
    """This rank's batches; the same count and modality sequence on every rank. Items of one task share
    batches (short-answer tasks stop generating after a few tokens instead of waiting on long answers)."""
    batches: list[_Batch] = []
    for has_image in (True, False):
        group = sorted((it for it in items if (it.image is not None) == has_image),
                       key=lambda it: (TASK_ORDER.get(it.task, 3), len(it.question)))
        if not group:
            continue
        per_rank = math.ceil(len(group) / world)
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


def generate_predictions(items: list[EvalItem], collator: Collator, generate: GenerateFn, opts: EvalOptions, *,
                         rank: int = 0, world: int = 1, progress: bool = True) -> list[Prediction]:
    """Ask this rank's share of ``items``; returns its predictions (gather them on rank 0)."""
    from tqdm import tqdm

    tokenizer = collator.adapter.tokenizer
    batches = plan_batches(items, rank, world, opts.batch_size)
    out: list[Prediction] = []
    bar = tqdm(total=len(batches), desc="eval", unit="batch", disable=not (progress and rank == 0),
               dynamic_ncols=True)
    for batch in batches:
        encoded: list[EncodedSample] = []
        asked: list[EvalItem | None] = []
        for item in batch.items:
            if item is None:
                continue
            try:
                image = item.image.load() if item.image is not None else None
                encoded.append(collator.encode_prompt(item.text(opts.icu, opts.attack), image, item.task))
                asked.append(item)
            except DataError as exc:
                out.append(Prediction(item, None, str(exc)))
        while len(encoded) < max(1, len(batch.items)):  # padding rows keep every rank's call shapes alike
            pad = _pad_item(batch.has_image)
            encoded.append(collator.encode_prompt(pad.text(), pad.image.load() if pad.image else None, pad.task))
            asked.append(None)
        inputs = collator.pad(encoded, side="left")
        new_tokens = generate(inputs, opts.max_new_tokens)
        replies = tokenizer.batch_decode(new_tokens.tolist(), skip_special_tokens=True)
        for item, reply in zip(asked, replies):
            if item is not None:
                out.append(Prediction(item, reply.strip()))
        bar.update(1)
    bar.close()
    return out


def score(predictions: list[Prediction]) -> dict:
    """``{split: {metric: value}}`` plus ``by_type``, ``counts`` and ``skipped``.

    A split's combined value is the mean over every scored question of that task in the split (not the mean
    of the two question-type means). Metrics of a task with no question are absent.
    """
    per: dict[tuple[str, str, str], list[float]] = defaultdict(list)  # (split, type|"all", metric) -> values
    skipped: dict[str, int] = defaultdict(int)
    for p in predictions:
        it = p.item
        if p.reply is None:
            skipped[it.split] += 1
            continue
        if it.task == "classification":
            values = {"class_acc": float(classification_correct(p.reply, it.ground_truth))}
        elif it.task == "cloze":
            values = {"cloze_acc": float(cloze_correct(p.reply, it.ground_truth))}
        else:
            values = {"gen_rougeL": rouge_l(p.reply, it.ground_truth), "gen_bleu": bleu(p.reply, it.ground_truth)}
        for metric, v in values.items():
            per[(it.split, "all", metric)].append(v)
            per[(it.split, it.qtype, metric)].append(v)
    results: dict = {}
    by_type: dict = defaultdict(lambda: defaultdict(dict))
    counts: dict = defaultdict(dict)
    for (split, qtype, metric), values in sorted(per.items()):
        mean = sum(values) / len(values)
        if qtype == "all":
            results.setdefault(split, {})[metric] = mean
            counts[split][metric] = len(values)
        else:
            by_type[split][qtype][metric] = mean
    results["by_type"] = {s: dict(t) for s, t in by_type.items()}
    results["counts"] = dict(counts)
    results["skipped"] = dict(skipped)
    return results


def prediction_record(p: Prediction) -> dict:
    it = p.item
    return {"uid": it.uid, "split": it.split, "task": it.task, "type": it.qtype, "profile_id": it.profile_id,
            "question": it.question, "ground_truth": it.ground_truth, "reply": p.reply,
            **({"error": p.error} if p.error else {})}
