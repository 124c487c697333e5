"""Evaluation during training, as a trainer callback the entry point attaches when the run asks for it
(``eval.every_steps``, ``eval.at_end``)."""

from __future__ import annotations

from typing import Any

from vgid_dist.eval.run import EngineEvaluation


class EvaluationCallback:
    """Evaluates the student engine every ``eval.every_steps`` steps (``output_dir/eval_step{N}.json``) and,
    with ``eval.at_end``, once the final model is saved (``output_dir/eval.json``; its results also go into
    ``metrics.json``). Each evaluation's results are sent to the other callbacks (``on_eval``).

    Every rank evaluates: under ZeRO-3 each generation step gathers shards from all of them. The benchmark is
    read and the questions built here, when the callback is made: a missing split fails before any model
    loads."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.evaluation = EngineEvaluation(cfg)
        self.trainer = None

    @staticmethod
    def wanted(cfg) -> bool:
        return bool(cfg.eval.at_end or cfg.eval.every_steps)

    def on_start(self, trainer) -> None:
        self.trainer = trainer

    def on_step(self, step: int, metrics: dict[str, Any]) -> None:
        every = self.cfg.eval.every_steps
        # A step skipped for a non-finite loss changed nothing: its metrics have no loss, nothing to evaluate.
        if every and step % every == 0 and "loss" in metrics:
            self._evaluate(f"eval_step{step}.json", step)

    def on_model_saved(self, trainer) -> None:
        if self.cfg.eval.at_end:
            trainer.summary["eval"] = self._evaluate("eval.json", None)

    def _evaluate(self, name: str, step: int | None) -> dict | None:
        t = self.trainer
        results = self.evaluation.run(t.strategy, t.engine, t.adapter, t.out / name, step=step)
        t.log(f"[vgid] evaluated{f' at step {step}' if step else ''} -> {t.out / name}")
        t.notify("on_eval", results)
        return results
