"""VKD trains the visual pathway only: after a ZeRO-3 run, every language-model weight (decoder layers,
embeddings, final norm, output head) is bit-identical to the base model's and the visual weights moved."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import PYTHON, run_launcher
from vgid_dist.models import load_adapter

pytestmark = pytest.mark.integration

VISUAL = ("vision_tower", "multi_modal_projector")


@pytest.mark.quick
def test_vkd_leaves_the_language_model_bit_identical(tiny_llava, bench_dir, tmp_path):
    out = tmp_path / "vkd"
    result = run_launcher([PYTHON, "launch/train.py", "--config", "tiny-vkd", f"model.path={tiny_llava}",
                           f"data.root={bench_dir}", f"output_dir={out}", "optim.max_steps=2", "optim.lr=1e-2"],
                          timeout=600, env={"VGID_TRACKING": "off"})
    assert result.returncode == 0, result.stdout[-4000:]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2] and all(e["forget_repr"] > 0 for e in log)
    # Compared through the model class: the saved folder and the base may name the tensors differently.
    before = dict(load_adapter(tiny_llava).load_model(torch.float32).named_parameters())
    after = dict(load_adapter(out / "model").load_model(torch.float32).named_parameters())
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    language = [k for k in before if not any(v in k for v in VISUAL)]
    assert language and not changed & set(language), sorted(changed & set(language))
    assert changed, "2 steps changed no visual weight"
    summary = json.loads((out / "metrics.json").read_text())
    visual_params = sum(before[k].numel() for k in before if any(v in k for v in VISUAL))
    assert summary["trainable_params"] == visual_params
