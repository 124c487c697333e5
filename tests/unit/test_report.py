"""Results that cannot be misread: every score printed with the questions it averages, the celebrity split in
Table 3, the trade-off figure on the metric's whole range with every method named, and the question counts of a
tracked evaluation carried into ``vgid report``'s tables."""

from __future__ import annotations

import pytest

from vgid_dist.cluster.report import collect, write_report_files
from vgid_dist.eval.report import fmt, format_split_table, table3_markdown, tradeoff_figure
from vgid_dist.tracking import KIND_TAG, RunRecord, eval_metrics

COUNTS = {"forget": {"cloze_acc": 4, "class_acc": 8, "gen_rougeL": 12},
          "retain": {"cloze_acc": 220, "class_acc": 224, "gen_rougeL": 228},
          "celebrity": {"cloze_acc": 48, "class_acc": 48, "gen_rougeL": 48}}
BASE = {"forget": {"cloze_acc": 0.25, "class_acc": 0.875, "gen_rougeL": 0.903},
        "retain": {"cloze_acc": 15 / 220, "class_acc": 122 / 224, "gen_rougeL": 0.899},
        "celebrity": {"cloze_acc": 33 / 48, "class_acc": 1.0, "gen_rougeL": 0.925}, "counts": COUNTS}
VGID = {"forget": {"cloze_acc": 0.25, "class_acc": 0.5, "gen_rougeL": 0.390},
        "retain": {"cloze_acc": 19 / 220, "class_acc": 92 / 224, "gen_rougeL": 0.875},
        "celebrity": {"cloze_acc": 29 / 48, "class_acc": 40 / 48, "gen_rougeL": 0.844}, "counts": COUNTS}


def test_a_score_carries_its_count():
    assert fmt("class_acc", 0.875, 8) == "87.50% (7/8)"
    assert fmt("gen_rougeL", 0.903, 12) == "0.903 (n=12)"
    assert fmt("cloze_acc", 0.25) == "25.00%" and fmt("gen_rougeL", None, 12) == "-"


def test_table3_counts_every_score_and_has_the_celebrity_split():
    lines = table3_markdown({"base": BASE, "vgid": VGID}).splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[-3:] == ["Celebrity Cloze ↑", "Celebrity Class ↑", "Celebrity Gen RL ↑"]
    assert lines[2].startswith("| base | 25.00% (1/4) | 87.50% (7/8) | 0.903 (n=12) |")
    assert lines[3].endswith("| 8.64% (19/220) | 41.07% (92/224) | 0.875 (n=228) "
                             "| 60.42% (29/48) | 83.33% (40/48) | 0.844 (n=48) |")
    assert "Celebrity" not in table3_markdown({"base": BASE}, celebrity=False)


def test_console_table_puts_the_models_of_a_split_together():
    lines = format_split_table({"base": BASE, "vgid": VGID}, ("cloze_acc", "class_acc", "gen_rougeL")).splitlines()
    assert lines[0].split() == ["split", "model", "Cloze", "Class", "Gen", "RL"]
    rows = [line.split()[:3] for line in lines[1:]]
    assert rows == [["forget", "↓", "base"], ["forget", "↓", "vgid"], ["retain", "↑", "base"],
                    ["retain", "↑", "vgid"], ["celebrity", "↑", "base"], ["celebrity", "↑", "vgid"]]
    assert lines[2].split()[3:] == ["25.00%", "(1/4)", "50.00%", "(4/8)", "0.390", "(n=12)"]


def test_tradeoff_figure_spans_the_whole_range_and_names_every_method(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    saved = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: saved.append(fig))
    worse = {"forget": {"gen_rougeL": 0.95}, "retain": {"gen_rougeL": 0.2}}  # raised the forget score
    no_retain = {"forget": {"gen_rougeL": 0.1}}
    tradeoff_figure({"base": BASE, "vgid": VGID, "ga": worse, "po": no_retain}, tmp_path / "t.png")
    ax = saved[0].axes[0]
    assert ax.get_ylim() == (0.0, 1.0)
    left, right = ax.get_xlim()
    assert left <= 0.903 - 0.95 and right >= 1.0
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["base (0.000, 0.899)", "vgid (0.513, 0.875)", "ga (-0.047, 0.200)"]
    assert any("not plotted" in t.get_text() and "po" in t.get_text() for t in saved[0].texts)


def _run(run_id: str, method: str, metrics: dict, seed: str = "1") -> RunRecord:
    return RunRecord(run_id=run_id, name=run_id, status="FINISHED", params={}, metrics=metrics, start_time=1,
                     tags={"model": "tiny", "forget_ratio": "5", "method": method, "seed": seed, KIND_TAG: "train"})


def test_tracked_counts_reach_vgid_reports_tables(tmp_path):
    parent = RunRecord(run_id="p", name="sweep", status="FINISHED", params={}, tags={KIND_TAG: "sweep"},
                       metrics=eval_metrics(BASE, prefix="ref/tiny/fr5/base/"))
    runs = [_run("a", "vgid", eval_metrics(VGID)), _run("b", "vgid", eval_metrics(VGID), seed="2"),
            _run("c", "vgid", eval_metrics(VGID, attack="reverse") | eval_metrics(VGID), seed="3"), parent]
    data = collect(runs)
    plain = data[("tiny", 5)][""]
    assert plain["base"]["counts"]["forget"]["gen_rougeL"] == 12
    assert plain["vgid"]["counts"]["forget"]["gen_rougeL"] == 36  # three seeds: the mean is over 36 answers
    assert plain["vgid"]["forget"]["gen_rougeL"] == pytest.approx(0.390)
    assert data[("tiny", 5)]["reverse"]["vgid"]["counts"]["retain"]["class_acc"] == 224
    write_report_files(data, "exp", tmp_path)
    table3 = (tmp_path / "table3.md").read_text()
    assert "| base | 25.00% (1/4) | 87.50% (7/8) | 0.903 (n=12) |" in table3
    assert "0.390 (n=36)" in table3 and "Celebrity Gen RL" in table3
