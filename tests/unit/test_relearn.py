"""Relearning attack: the fitted profiles and the scored profiles never overlap (asserted on the benchmark's real
splits), the split is seeded, and recovery is after minus before per metric."""

from __future__ import annotations

import pytest

from vgid_dist.data.mllmu import MLLMUBench
from vgid_dist.errors import RelearnError
from vgid_dist.eval.relearn import (
    check_disjoint,
    format_recovery,
    plan_attack,
    recovery,
    split_forget_profiles,
)


def test_split_is_seeded_disjoint_and_covers_every_profile():
    ids = [f"p{i}" for i in range(10)]
    plan = split_forget_profiles(ids, 0.3, seed=1)
    assert len(plan.attacked) == 3 and len(plan.held_out) == 7
    assert not set(plan.attacked) & set(plan.held_out)
    assert set(plan.attacked) | set(plan.held_out) == set(ids)
    assert plan == split_forget_profiles(list(reversed(ids)), 0.3, seed=1)
    assert any(split_forget_profiles(ids, 0.3, seed=s) != plan for s in range(2, 6))
    assert len(split_forget_profiles(ids[:2], 0.9, seed=0).held_out) == 1  # always something to score
    with pytest.raises(RelearnError, match="at least 2"):
        split_forget_profiles(ids[:1], 0.5, seed=0)
    with pytest.raises(RelearnError, match="strictly between 0 and 1"):
        split_forget_profiles(ids, 1.0, seed=0)


def test_attack_never_fits_the_profiles_it_scores(bench_dir):
    bench = MLLMUBench(bench_dir)
    ratio = 15
    plan, train, items = plan_attack(str(bench_dir), ratio, 0.5, seed=0)
    fitted_ids = {s.profile_id for s in train}
    scored_ids = {it.profile_id for it in items}
    assert fitted_ids and scored_ids
    assert fitted_ids.isdisjoint(scored_ids)
    assert fitted_ids == set(plan.attacked) and scored_ids == set(plan.held_out)
    assert set(plan.attacked) | set(plan.held_out) == set(bench.split_ids("forget", ratio))
    # every training pair of an attacked profile is fitted, and every question of a held-out one is scored
    assert len(train) == sum(s.profile_id in fitted_ids for s in bench.train_samples("forget", ratio))
    assert {it.split for it in items} == {"forget"}


def test_overlap_is_refused():
    class P:
        def __init__(self, pid):
            self.profile_id = pid

    check_disjoint([P("a")], [P("b")])
    with pytest.raises(RelearnError, match=r"\['a'\] are both fitted and scored"):
        check_disjoint([P("a"), P("c")], [P("a"), P("b")])


def test_recovery_is_after_minus_before():
    before = {"forget": {"gen_rougeL": 0.2, "class_acc": 0.5}}
    after = {"forget": {"gen_rougeL": 0.5, "class_acc": 0.25}}
    assert recovery(before, after) == pytest.approx({"gen_rougeL": 0.3, "class_acc": -0.25})
    table = format_recovery({"vgid": {"before": before, "after": after, "recovery": recovery(before, after)}})
    assert table.splitlines()[0] == "| model | gen_rougeL | class_acc |"
    assert table.splitlines()[2] == "| vgid | 0.200 -> 0.500 (+0.300) | 0.500 -> 0.250 (-0.250) |"
