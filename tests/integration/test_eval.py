"""``vgid eval`` end to end: a benchmark folder in the official MLLMU-Bench layout written by hand
(``tests.official_layout``), metrics recomputed independently from the predictions file, robustness
(unreadable images, an empty split, a missing split folder, unusual unicode), the log-probability multiple
choice against a one-question-at-a-time reference, batched = unbatched replies, 2 ZeRO-3 ranks = 1 rank, and
evaluation every N steps inside a 2-rank training run."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import PYTHON, run_launcher
from tests.official_layout import write_official_layout

pytestmark = pytest.mark.integration

SPLITS = ("forget", "test", "retain", "celebrity")
METRICS = ("class_acc", "class_acc_lenient", "cloze_acc", "gen_rougeL", "gen_bleu")


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    return write_official_layout(tmp_path_factory.mktemp("official") / "MLLMU-Bench")


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    return write_official_layout(tmp_path_factory.mktemp("broken") / "MLLMU-Bench", broken=True)


def vgid_eval(model: Path, data: Path, out: Path, *extra: str, ranks: int = 1, timeout: int = 300):
    args = ["--model", str(model), "--data", str(data), "--forget-ratio", "5", "--out", str(out), *extra]
    if ranks == 1:
        cmd = [PYTHON, "-m", "vgid_dist.cli", "eval", *args]
    else:
        cmd = ["deepspeed", "--num_gpus", str(ranks), "--master_port", "29631", "--no_local_rank", "--module",
               "vgid_dist.cli", "eval",
               *args]
    return run_launcher(cmd, timeout=timeout)


def read_predictions(out: Path) -> list[dict]:
    path = out.with_name(out.name.removesuffix(".json") + ".predictions.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- the official metric definitions, written independently of vgid_dist.eval.metrics ----------------------

def reference_metrics(records: list[dict]) -> dict:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    values: dict[tuple[str, str], list[float]] = {}
    for r in records:
        if r["reply"] is None:
            continue
        reply, truth = r["reply"], r["ground_truth"]
        if r["task"] == "classification":  # official: the first character; lenient: the first alphanumeric
            letters = re.sub(r"[^A-Za-z0-9]", "", reply)
            got = {"class_acc": float(reply[:1].upper() == truth),
                   "class_acc_lenient": float(letters[:1].upper() == truth)}
        elif r["task"] == "cloze":
            got = {"cloze_acc": float(truth.lower() in reply.lower())}
        else:
            hyp = reply.split()
            bleu = sentence_bleu([truth.split()], hyp, smoothing_function=SmoothingFunction().method1) if hyp else 0.0
            got = {"gen_rougeL": scorer.score(truth, reply)["rougeL"].fmeasure, "gen_bleu": bleu}
        for metric, v in got.items():
            values.setdefault((r["split"], metric), []).append(v)
    return {key: sum(v) / len(v) for key, v in values.items()}


def aggregates(results: dict) -> dict:
    return {s: results[s] for s in SPLITS if s in results}


# ---- tests --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def official_run(tiny_llava, official, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "official.json"
    result = vgid_eval(tiny_llava, official, out, "--batch-size", "8", "--max-new-tokens", "12")
    assert result.returncode == 0, result.stdout[-6000:]
    return out, result


@pytest.mark.quick
def test_official_layout_reports_every_split_and_metric(official_run):
    out, result = official_run
    results = json.loads(out.read_text())
    for split in SPLITS:
        assert set(METRICS) <= set(results[split]), (split, results[split])
        assert set(results["by_type"][split]) == {"Image_Textual", "Pure_Text"}
    # 4 classification, 2 cloze, 2 generation questions per profile; forget, test and retain have 3 profiles
    # each, one drawn as the classification example and two as the cloze examples (not scored); celebrity 2
    for split in ("forget", "test", "retain"):
        assert results["counts"][split] == {"class_acc": 8, "class_acc_lenient": 8, "cloze_acc": 2,
                                            "gen_rougeL": 6, "gen_bleu": 6}, split
    assert results["counts"]["celebrity"] == {"class_acc": 8, "class_acc_lenient": 8, "cloze_acc": 4,
                                              "gen_rougeL": 4, "gen_bleu": 4}
    assert results["skipped"] == {s: 0 for s in SPLITS}
    meta = results["meta"]
    assert meta["protocol"] == "official" and meta["seed"] == 0
    assert {s: {t: len(ids) for t, ids in tasks.items()} for s, tasks in meta["examples"].items()} == {
        s: {"classification": 1, "cloze": 2} for s in ("forget", "test", "retain")}
    assert "forget ↓" in result.stdout and "Gen RL" in result.stdout  # the console table
    assert "Image_Textual" in result.stdout and "class lenient %" in result.stdout  # the per-type table


@pytest.mark.quick
def test_reported_aggregates_match_the_official_definitions(official_run):
    from vgid_dist.eval.evaluator import Prediction, score
    from vgid_dist.eval.items import EvalItem

    out, _ = official_run
    results, records = json.loads(out.read_text()), read_predictions(out)
    assert len(records) == 3 * 16 + 16  # forget, test, retain: 8 + 2 + 6 each; celebrity 8 + 4 + 4
    for r in records:
        assert {"split", "task", "type", "question", "ground_truth", "reply"} <= set(r)
        if r["task"] == "classification":
            assert r["ground_truth"] in "ABCD" and len(r["ground_truth"]) == 1
    reference = reference_metrics(records)
    for (split, metric), value in reference.items():
        assert results[split][metric] == pytest.approx(value, abs=1e-12), (split, metric)
    # A random tiny model's replies rarely score: re-score the same questions with half of them answered
    # right, so the comparison runs on non-trivial values too.
    for i, r in enumerate(records):
        r["reply"] = (f"{r['ground_truth']}." if i % 2 == 0 else "I do not know")
    items = [Prediction(EvalItem(r["uid"], r["split"], r["profile_id"], r["task"], r["type"], r["question"],
                                 r["ground_truth"], None, r.get("options")), r["reply"]) for r in records]
    rescored = score(items, SPLITS)
    reference = reference_metrics(records)
    assert 0 < reference[("forget", "class_acc")] < 1 and 0 < reference[("retain", "gen_rougeL")] < 1
    for (split, metric), value in reference.items():
        assert rescored[split][metric] == pytest.approx(value, abs=1e-12), (split, metric)


BROKEN_ARGS = ("--batch-size", "4", "--max-new-tokens", "8", "--mc-mode", "logits")


@pytest.fixture(scope="module")
def broken_one_rank(tiny_llava, broken, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "one.json"
    result = vgid_eval(tiny_llava, broken, out, *BROKEN_ARGS)
    assert result.returncode == 0, result.stdout[-6000:]
    return out


def test_unreadable_images_are_skipped_and_an_empty_split_reported(broken_one_rank):
    results, records = json.loads(broken_one_rank.read_text()), read_predictions(broken_one_rank)
    # two retain profiles lost their image: each of their Image_Textual questions is skipped, nothing else
    # (4 each, less those shown as examples: their Full_Set images are readable)
    lost = [r for r in records if r["split"] == "retain" and r["profile_id"] in ("hb004", "hb005")
            and r["type"] == "Image_Textual"]
    skipped = [r for r in records if r["reply"] is None]
    assert len(lost) >= 4 and skipped == lost
    assert all("unreadable image" in r["error"] for r in skipped)
    assert any("missing.jpg" in r["error"] for r in skipped)
    assert results["skipped"] == {"forget": 0, "test": 0, "retain": len(lost), "celebrity": 0}
    scored = [r for r in records if r["split"] == "retain" and r["task"] == "classification" and r["reply"]]
    assert results["counts"]["retain"]["class_acc"] == len(scored)
    assert results["test"] == {} and results["counts"]["test"] == {}  # no Test_Set row of a forget id
    assert set(METRICS) | {"class_acc_logits"} <= set(results["celebrity"])


@pytest.mark.quick
def test_missing_split_folder_fails_at_start_naming_it(tiny_llava, official, tmp_path):
    data = tmp_path / "bench"
    shutil.copytree(official, data)
    shutil.rmtree(data / "Test_Set")
    result = vgid_eval(tiny_llava, data, tmp_path / "x.json", timeout=120)
    assert result.returncode == 2 and "Test_Set: folder not found" in result.stdout
    assert "Loading weights" not in result.stdout  # failed before the model was loaded
    shutil.rmtree(data / "Full_Set")
    result = vgid_eval(tiny_llava, data, tmp_path / "x.json", "--splits", "forget", timeout=120)
    assert result.returncode == 2 and "Full_Set: folder not found" in result.stdout


def _direct(model_dir: Path):
    """Plain model + the evaluator's generation and scoring functions, without a process group."""
    from vgid_dist.data.collate import Collator
    from vgid_dist.engine.runner import make_generate_fn
    from vgid_dist.eval.run import make_logprobs_fn
    from vgid_dist.models import load_adapter

    adapter = load_adapter(model_dir)
    model = adapter.load_model(torch.float32, "sdpa").eval()
    cpu = torch.device("cpu")
    return (adapter, model, Collator(adapter, 10**6), make_generate_fn(model, adapter, cpu, torch.float32, synced=False),
            make_logprobs_fn(model, adapter, cpu, torch.float32))


@pytest.mark.quick
@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_logits_choice_matches_one_question_at_a_time_reference(family, tiny_llava, tiny_qwen, official):
    from vgid_dist.config import EvalOptions
    from vgid_dist.data import MLLMUBench
    from vgid_dist.eval.evaluator import (
        PromptEncoder,
        generate_predictions,
        option_continuations,
    )
    from vgid_dist.eval.run import build_items

    adapter, model, collator, generate, logprobs = _direct(tiny_llava if family == "llava" else tiny_qwen)
    items = [it for it in build_items(MLLMUBench(official), 5, ["forget", "retain"])
             if it.task == "classification"][:12]
    opts = EvalOptions(batch_size=5, max_new_tokens=2, mc_mode="logits")
    preds = generate_predictions(items, collator, generate, opts, progress=False, logprobs=logprobs)
    encoder = PromptEncoder(adapter, opts)
    for p in preds:
        sample, prompt = encoder.encode(p.item)
        shared, own = option_continuations(adapter, prompt, p.item.options)
        scores = {}
        for letter, tokens in own.items():  # the full option sequence, scored alone
            ids = torch.tensor([sample.prompt_ids + shared + tokens])
            kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **(
                sample.image.tensors if sample.image is not None else {})}
            with torch.no_grad():
                lp = model(**kwargs).logits[0].float().log_softmax(-1)
            n = len(tokens)
            scores[letter] = float(sum(lp[-n - 1 + j, t] for j, t in enumerate(tokens)))
        assert p.choice_logits == max(scores, key=scores.__getitem__), (p.item.uid, scores)


def test_batched_replies_equal_one_at_a_time_replies(tiny_llava, official):
    from vgid_dist.config import EvalOptions
    from vgid_dist.data import MLLMUBench
    from vgid_dist.eval.evaluator import generate_predictions
    from vgid_dist.eval.run import build_items

    _, _, collator, generate, _ = _direct(tiny_llava)
    items = build_items(MLLMUBench(official), 5, ["forget", "test"])
    one = generate_predictions(items, collator, generate, EvalOptions(batch_size=1, max_new_tokens=10),
                               progress=False)
    many = generate_predictions(items, collator, generate, EvalOptions(batch_size=16, max_new_tokens=10),
                                progress=False)
    assert {p.item.uid: p.reply for p in one} == {p.item.uid: p.reply for p in many}


def test_two_zero3_ranks_give_the_same_results_as_one(tiny_llava, broken, broken_one_rank, tmp_path):
    """On the benchmark with unreadable images and an empty split, with the official examples and the logits
    pass: rank symmetry holds (no hang) and the results are those of one rank."""
    two = vgid_eval(tiny_llava, broken, tmp_path / "two.json", *BROKEN_ARGS, ranks=2, timeout=420)
    assert two.returncode == 0, two.stdout[-6000:]
    r1, r2 = json.loads(broken_one_rank.read_text()), json.loads((tmp_path / "two.json").read_text())
    assert r2["meta"]["world_size"] == 2 and r1["meta"]["world_size"] == 1
    assert "class_acc_logits" in r1["forget"]
    for key in ("counts", "skipped"):
        assert r2[key] == r1[key], key
    for split in SPLITS:
        assert r2[split] == pytest.approx(r1[split], abs=1e-12), split
        for qtype, values in r1["by_type"].get(split, {}).items():
            assert r2["by_type"][split][qtype] == pytest.approx(values, abs=1e-12), (split, qtype)
    # the same replies and logits choices, question by question (error texts hold object addresses)
    p1, p2 = read_predictions(broken_one_rank), read_predictions(tmp_path / "two.json")
    assert [{**r, "error": "error" in r} for r in p1] == [{**r, "error": "error" in r} for r in p2]


def test_training_evaluates_every_n_steps_on_every_rank(tiny_llava, bench_dir, tmp_path):
    recipe = tmp_path / "it.yaml"
    recipe.write_text(yaml.safe_dump({
        "extends": "tiny", "model": {"path": str(tiny_llava)}, "data": {"root": str(bench_dir)},
        "optim": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "schedule": "constant"},
        "eval": {"every_steps": 1, "limit": 1, "max_new_tokens": 3, "splits": ["forget", "retain"]}}))
    out = tmp_path / "run"
    result = run_launcher(["deepspeed", "--num_gpus", "2", "--master_port", "29632", "launch/train.py", "--ds_config",
                           "zero3", "--config", str(recipe), f"output_dir={out}"], timeout=420)
    assert result.returncode == 0, result.stdout[-6000:]
    for step in (1, 2):
        results = json.loads((out / f"eval_step{step}.json").read_text())
        assert results["meta"]["step"] == step and results["meta"]["world_size"] == 2
        assert results["meta"]["protocol"] == "official"
        # the one forget profile is the official classification and cloze example: only generation is scored
        assert set(results["forget"]) == {"gen_rougeL", "gen_bleu"}
        assert set(results["retain"]) >= {"class_acc", "class_acc_lenient", "cloze_acc", "gen_rougeL"}
        assert (out / f"eval_step{step}.predictions.jsonl").is_file()
    assert (out / "DONE").is_file()
