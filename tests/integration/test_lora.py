"""LoRA mode on 2 ZeRO-3 CPU ranks: the teacher is the student's own engine with its adapters disabled and gives
the base model's logits exactly; training leaves the base weights untouched; the exports (adapter, and the merged
model) load with peft / from_pretrained and agree with each other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import run_launcher

pytestmark = pytest.mark.integration

PROBE = """
import sys, torch
from vgid_dist.config import load_run_config
from vgid_dist.engine.runner import AdapterDisabledRunner
from vgid_dist.engine.trainer import Trainer
recipe, out = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # deepspeed adds it
cfg = load_run_config(recipe, [f"output_dir={out}/run"])
trainer = Trainer(cfg, force=True)
trainer.run()
frozen, engine = trainer.frozen, trainer.engine
assert isinstance(frozen, AdapterDisabledRunner) and frozen.engine is engine, "a second engine was built"
trainable = sorted(n for n, p in engine.module.named_parameters() if p.requires_grad)
# The same probe batch on every rank (module calls stay symmetric); rank 0 writes what the test checks.
batch = trainer.method.build_batch(trainer.primary[:2], trainer.retain[:2], 0).to(trainer.strategy.device)
inputs = batch.inputs["student"]
teacher = frozen.target_logits(inputs)
with torch.no_grad():
    student = trainer.student.target_logits(inputs)
params = dict(engine.module.named_parameters())
base = {}
with trainer.strategy.gathered(params.values()):
    for name, p in params.items():
        if ".lora_" not in name:
            base[name.removeprefix("base_model.model.").replace(".base_layer.", ".")] = p.detach().clone()
if trainer.strategy.is_main:
    torch.save({"inputs": inputs, "teacher": teacher, "student": student.detach(), "base": base,
                "trainable": trainable}, f"{out}/probe.pt")
trainer.strategy.barrier()
print("LORA-PROBE-DONE", flush=True)
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory, tiny_llava, bench_dir) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("lora")
    recipe = root / "lora.yaml"
    recipe.write_text(yaml.safe_dump({
        "extends": "tiny", "model": {"path": str(tiny_llava), "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"root": str(bench_dir)},
        "optim": {"max_steps": 3, "batch_size": 4, "lr": 2e-2, "schedule": "constant"}}))
    script = root / "probe.py"
    script.write_text(PROBE)
    result = run_launcher(["deepspeed", "--num_gpus", "2", "--master_port", "29633", str(script), str(recipe),
                           str(root)], timeout=600, env={"VGID_TRACKING": "off"})
    assert result.returncode == 0 and "LORA-PROBE-DONE" in result.stdout, result.stdout[-6000:]
    assert "world 2 | ZeRO-3" in result.stdout
    return root, torch.load(root / "probe.pt", weights_only=False)


@pytest.fixture(scope="module")
def base_model(tiny_llava):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(tiny_llava).eval()


def test_only_language_model_adapters_train(probe):
    _, data = probe
    assert data["trainable"] and all(".lora_" in n for n in data["trainable"])
    assert all(".language_model.layers." in n for n in data["trainable"]), data["trainable"]
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in data["trainable"]}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_teacher_with_adapters_disabled_gives_the_base_models_logits(probe, base_model, tiny_llava):
    from vgid_dist.engine.runner import EngineRunner
    from vgid_dist.models import load_adapter

    _, data = probe
    runner = EngineRunner(base_model, load_adapter(tiny_llava), torch.device("cpu"), torch.float32, frozen=True)
    reference = runner.target_logits(data["inputs"])
    assert torch.allclose(data["teacher"], reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(data["student"], reference, atol=1e-3), "the adapters did not change the student"


def test_training_leaves_the_base_weights_unchanged(probe, base_model):
    _, data = probe
    original = dict(base_model.named_parameters())
    assert data["base"].keys() == original.keys()
    for name, value in original.items():
        assert torch.equal(data["base"][name], value.detach()), name


def test_exports_adapter_and_merged_model_that_agree(probe, tiny_llava):
    from peft import PeftModel
    from transformers import LlavaForConditionalGeneration

    root, _ = probe
    run = root / "run"
    assert (run / "DONE").is_file()
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert all("language_model.layers." in t for t in config["target_modules"])
    merged = LlavaForConditionalGeneration.from_pretrained(run / "model").state_dict()
    base = LlavaForConditionalGeneration.from_pretrained(tiny_llava)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    reference = PeftModel.from_pretrained(base, run / "adapter").merge_and_unload().state_dict()
    assert merged.keys() == reference.keys()
    for name in merged:
        assert torch.allclose(merged[name], reference[name], atol=1e-6), name
    changed = {k for k in merged if not torch.equal(merged[k], original[k])}
    assert changed and all(k.endswith("proj.weight") and ".language_model.layers." in k for k in changed)
