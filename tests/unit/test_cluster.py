"""Sweep matrices and what each job asks of Slurm: expansion, per-cell overrides, sbatch parameters, the
packaged matrices, the job callables' requeue contract. No scheduler is contacted."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from vgid_dist.cluster.executor import sbatch_script, slurm_parameters
from vgid_dist.cluster.matrix import (
    Resources,
    expand,
    load_matrix,
    merge_resources,
    packaged_matrices,
    reference_jobs,
    validate,
)
from vgid_dist.cluster.tasks import CellTask, ReferenceTask
from vgid_dist.config import load_run_config
from vgid_dist.errors import ConfigError


def _matrix(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return path


def test_tiny_matrix_is_four_short_cpu_cells(tmp_path):
    matrix, path = load_matrix("tiny-matrix")
    cells = expand(matrix, path, tmp_path)
    assert [c.name for c in cells] == ["tiny-fr5-vgid", "tiny-fr5-ga", "tiny-fr10-vgid", "tiny-fr10-ga"]
    assert len({c.output_dir for c in cells}) == 4
    for cell in cells:
        assert cell.output_dir == tmp_path / "tiny" / f"fr{cell.forget_ratio}" / cell.method
        cfg = load_run_config(cell.recipe, list(cell.overrides))
        assert cfg.method.name == cell.method
        assert cfg.data.forget_ratio == cell.forget_ratio
        assert cfg.resolved_output_dir() == cell.output_dir
        assert cfg.eval.at_end and cfg.optim.max_steps and cfg.optim.max_steps <= 5
        assert cell.resources["tasks_per_node"] == 1 and cell.resources["gpus_per_node"] == 0
    # vgid keeps the recipe's own method section; ga replaces it.
    vgid = load_run_config(cells[0].recipe, list(cells[0].overrides))
    assert vgid.method.model_dump() == load_run_config("tiny").method.model_dump()
    refs = reference_jobs(matrix, path, tmp_path)
    assert [(r.model, r.forget_ratio, r.evaluations) for r in refs] == [("tiny", 5, (("base", None),)),
                                                                         ("tiny", 10, (("base", None),))]


def test_paper_matrix_covers_table3(tmp_path):
    matrix, path = load_matrix("paper-table3")
    cells = expand(matrix, path, tmp_path)
    assert len(cells) == 3 * 3 * 10
    assert {c.model for c in cells} == {"llava-1.5-7b", "llava-1.5-13b", "qwen2.5-vl-3b"}
    assert {c.method for c in cells} == {"ga", "ga_diff", "kl_min", "po", "npo", "rmu", "icu_t", "noise_t", "vgid",
                                         "vkd"}
    for cell in cells:
        r = cell.resources
        assert r["tasks_per_node"] == r["gpus_per_node"] == 4  # one task per GPU
        assert cell.attacks == (("reverse", "relearn") if (cell.method, cell.forget_ratio) == ("vgid", 5)
                                else ("relearn",))
    by_model = {c.model: c.resources["time_min"] for c in cells}
    assert by_model["llava-1.5-13b"] > by_model["llava-1.5-7b"] > by_model["qwen2.5-vl-3b"]
    cfg = load_run_config(cells[0].recipe, list(cells[0].overrides))
    # The paper's hyper-parameters (appendix A.3.4).
    assert (cfg.optim.lr, cfg.optim.batch_size, cfg.optim.epochs, cfg.data.max_length) == (2e-5, 4, 1.0, 384)
    refs = reference_jobs(matrix, path, tmp_path)
    assert len(refs) == 9
    assert set(refs[0].evaluations) == {(name, attack) for name in ("base", "icu", "mllmeraser")
                                        for attack in (None, "reverse")}


@pytest.mark.parametrize("name", packaged_matrices())
def test_every_packaged_matrix_validates(name, tmp_path):
    matrix, path = load_matrix(name)
    assert validate(expand(matrix, path, tmp_path), reference_jobs(matrix, path, tmp_path)) == {}


def test_cell_rules_seeds_and_local_recipes(tmp_path):
    (tmp_path / "mine.yaml").write_text("extends: tiny\noptim: {lr: 0.5}\n")
    path = _matrix(tmp_path, """
name: custom
models:
  small: {recipe: mine.yaml, overrides: [optim.max_steps=2], resources: {gpus_per_node: 2, time_min: 90}}
forget_ratios: [5, 15]
methods:
  vgid: {params: {alpha: 3}}
  npo: {params: {beta: 0.2}, resources: {sbatch: {constraint: big}}}
seeds: [1, 2]
overrides: [eval.limit=1]
resources: {partition: gpu, sbatch: {exclusive: true}}
cells:
  - match: {method: npo, forget_ratio: 15}
    overrides: [optim.lr=0.25]
    resources: {time_min: 30, sbatch: {constraint: small}}
""")
    matrix, path = load_matrix(str(path))
    cells = expand(matrix, path, tmp_path / "root")
    assert len(cells) == 2 * 2 * 2
    by_name = {c.name: c for c in cells}
    cell = by_name["small-fr15-npo-s2"]
    assert cell.output_dir == tmp_path / "root" / "small" / "fr15" / "npo" / "seed2"
    cfg = load_run_config(cell.recipe, list(cell.overrides))
    assert (cfg.method.name, cfg.method.model_dump()["beta"], cfg.optim.lr, cfg.optim.seed) == ("npo", 0.2, 0.25, 2)
    assert (cfg.optim.max_steps, cfg.eval.limit, cfg.data.forget_ratio) == (2, 1, 15)
    assert cell.resources["time_min"] == 30 and cell.resources["partition"] == "gpu"
    assert cell.resources["tasks_per_node"] == 2  # one per GPU of the model
    assert cell.resources["sbatch"] == {"exclusive": True, "constraint": "small"}
    other = by_name["small-fr5-npo-s1"]
    assert other.resources["time_min"] == 90 and other.resources["sbatch"]["constraint"] == "big"
    assert load_run_config(other.recipe, list(other.overrides)).optim.lr == 0.5
    vgid = load_run_config(by_name["small-fr5-vgid-s1"].recipe, list(by_name["small-fr5-vgid-s1"].overrides))
    assert vgid.method.model_dump()["alpha"] == 3 and vgid.method.model_dump()["instruction_style"] == "strict"


def test_sbatch_parameters_of_a_gpu_job(tmp_path):
    res = merge_resources(Resources(nodes=2, gpus_per_node=8, cpus_per_task=12, mem_gb=480, time_min=240,
                                    partition="gpu", account="proj", qos="high", signal_delay_s=300,
                                    sbatch={"constraint": "h100"}, setup=["module load cuda/12.4"]))
    params = slurm_parameters(res, "llava-fr5-vgid")
    assert params["ntasks_per_node"] == 8 and params["gpus_per_node"] == 8 and params["nodes"] == 2
    script = sbatch_script(res, "llava-fr5-vgid", tmp_path)
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --cpus-per-task=12", "#SBATCH --mem=480GB", "#SBATCH --time=240",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --qos=high",
                 "#SBATCH --constraint=h100", "#SBATCH --requeue", "#SBATCH --signal=USR2@300",
                 "#SBATCH --job-name=llava-fr5-vgid", "module load cuda/12.4"):
        assert line in script.splitlines(), (line, script)
    assert "srun" in script


def test_cpu_job_asks_for_no_gpu(tmp_path):
    res = merge_resources(Resources(gpus_per_node=0))
    script = sbatch_script(res, "cpu", tmp_path)
    assert "#SBATCH --ntasks-per-node=1" in script and "gpus" not in script


def test_matrix_errors_name_file_and_field(tmp_path):
    bad = _matrix(tmp_path, "name: x\nmodels: {tiny: tiny}\nforget_ratios: [7]\nmethods: {vgid: {}}\nqueue: a\n")
    with pytest.raises(ConfigError) as err:
        load_matrix(str(bad))
    text = str(err.value)
    assert str(bad) in text and "forget_ratios.0" in text and "queue: unknown key" in text
    with pytest.raises(ConfigError, match="known: .*tiny-matrix"):
        load_matrix("no-such-matrix")
    unknown = _matrix(tmp_path, "name: x\nmodels: {tiny: tiny}\nforget_ratios: [5]\nmethods: {nope: {}}\n")
    matrix, path = load_matrix(str(unknown))
    errors = validate(expand(matrix, path, tmp_path), [])
    assert list(errors) == ["tiny-fr5-nope"] and "unknown method 'nope'" in errors["tiny-fr5-nope"]


def test_job_callables_requeue_themselves():
    """submitit's checkpoint hook: a preempted or timed-out job is requeued with the same callable, so the
    same output_dir (and the MLflow run id kept there) is used again."""
    task = CellTask(name="c", recipe="tiny", overrides=["output_dir=/x"], output_dir="/x", env={"A": "1"})
    delayed = task.checkpoint()
    assert delayed.function is task and delayed.args == () and delayed.kwargs == {}
    assert pickle.loads(pickle.dumps(task)) == task
    ref = ReferenceTask(name="r", model="tiny", forget_ratio=5, recipe="tiny", overrides=[], folder="/y",
                        evaluations=[("base", None)], icu_style="strict", parent_run_id="p")
    assert ref.checkpoint().function is ref


def test_relearn_attack_runs_on_every_paper_cell_and_never_on_the_references(tmp_path):
    matrix, path = load_matrix("paper-table3")
    cells = expand(matrix, path, tmp_path)
    assert all("relearn" in cell.attacks for cell in cells)
    assert matrix.relearn.steps >= 1 and 0 < matrix.relearn.subset < 1
    assert all(attack != "relearn" for ref in reference_jobs(matrix, path, tmp_path) for _, attack in ref.evaluations)


def test_attack_relearn_and_reference_evaluations_use_the_recipes_eval_settings(tmp_path, monkeypatch):
    """Every evaluation a sweep job runs besides the cell's own (attacks, relearning, Base/ICU rows) takes the
    recipe's eval settings, so all rows of a table are scored the same way."""
    import vgid_dist.assets
    import vgid_dist.cluster.tasks as tasks
    import vgid_dist.eval.relearn
    import vgid_dist.eval.run

    seen = []
    monkeypatch.setattr(vgid_dist.assets, "resolve_assets", lambda cfg: cfg)
    monkeypatch.setattr(vgid_dist.eval.run, "evaluate_model", lambda *a, opts, **k: seen.append(opts))
    monkeypatch.setattr(vgid_dist.eval.relearn, "run_relearn", lambda *a, opts, **k: seen.append(opts) or {})
    monkeypatch.setattr(tasks, "export_distributed_env", lambda: (1, 2))
    monkeypatch.setattr(tasks, "log_reference", lambda *a: None)
    overrides = [f"output_dir={tmp_path / 'cell'}", "eval.protocol=zero-shot", "eval.mc_mode=logits",
                 "eval.batch_size=3"]

    cell = CellTask(name="c", recipe="tiny", overrides=overrides, output_dir=str(tmp_path / "cell"),
                    relearn={"seed": 9})
    cell._evaluate_attack("reverse", rank=1)
    cell._relearn(rank=1)
    ReferenceTask(name="r", model="tiny", forget_ratio=5, recipe="tiny", overrides=overrides[1:],
                  folder=str(tmp_path / "ref"), evaluations=[("base", None), ("icu", "reverse")],
                  icu_style="strict", parent_run_id=None)()

    assert [(o.attack, o.icu, o.seed) for o in seen] == [
        ("reverse", None, 42), (None, None, 9), (None, None, 42), ("reverse", "strict", 42)]
    assert all((o.protocol, o.mc_mode, o.batch_size) == ("zero-shot", "logits", 3) for o in seen)
