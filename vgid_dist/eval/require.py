"""A privacy team's bar for a deletion: ``--require "forget.fact_recall<=0.1,retain.gen_rougeL>=0.9"``.

Each condition is ``[stage.]split.metric OP number`` with OP one of ``<=``, ``>=``, ``<``, ``>``:

- stage ``after`` (the default): the unlearned model; ``before``: the model given; ``reverse``: the unlearned
  model under the reverse-prompt attack (forget splits only); ``relearn``: the held-out forgotten people after
  the relearning attack (forget splits only);
- split: ``forget``, ``retain``, ``forget_probes``, ``retain_probes``;
- metric: ``fact_recall``, ``gen_rougeL``, ``gen_bleu``, ``class_acc``, ``class_acc_lenient``.

Conditions are parsed and checked against the data's splits before anything runs; a value the audit did not
measure (a split without such questions) fails its condition.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from vgid_dist.errors import ConfigError

OPERATORS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
STAGES = ("after", "before", "reverse", "relearn")
ATTACK_STAGES = ("reverse", "relearn")
BAR_METRICS = ("fact_recall", "gen_rougeL", "gen_bleu", "class_acc", "class_acc_lenient")
_CONDITION = re.compile(r"^\s*([A-Za-z_.]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Condition:
    text: str
    stage: str
    split: str
    metric: str
    op: str
    bound: float

    def check(self, value: float | None) -> bool:
        return value is not None and OPERATORS[self.op](value, self.bound)


def parse_require(text: str | None, splits: tuple[str, ...]) -> list[Condition]:
    """The conditions of ``--require`` (comma-separated); ``splits``: those the data has."""
    conditions: list[Condition] = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        m = _CONDITION.match(part)
        if not m:
            raise ConfigError(f"--require {part.strip()!r}: expected [stage.]split.metric OP number, OP one of "
                              f"{list(OPERATORS)} (e.g. forget.fact_recall<=0.1)")
        key, op, number = m.groups()
        names = key.split(".")
        stage = names.pop(0) if len(names) == 3 else "after"
        if len(names) != 2 or stage not in STAGES:
            raise ConfigError(f"--require {part.strip()!r}: expected [stage.]split.metric with stage one of "
                              f"{list(STAGES)}")
        split, metric = names
        if split not in splits:
            raise ConfigError(f"--require {part.strip()!r}: split {split!r}; this data has {list(splits)}")
        if stage in ATTACK_STAGES and not split.startswith("forget"):
            raise ConfigError(f"--require {part.strip()!r}: the {stage} attack scores the forgotten people only "
                              "(forget, forget_probes)")
        if metric not in BAR_METRICS:
            raise ConfigError(f"--require {part.strip()!r}: metric {metric!r}; expected one of {list(BAR_METRICS)}")
        try:
            bound = float(number)
        except ValueError:
            raise ConfigError(f"--require {part.strip()!r}: {number!r} is not a number") from None
        conditions.append(Condition(part.strip(), stage, split, metric, op, bound))
    return conditions


def check_require(conditions: list[Condition], stages: dict[str, dict]) -> list[dict]:
    """Each condition with the value measured (``stages``: ``{stage: {split: {metric: value}}}``) and whether
    it is met."""
    out = []
    for c in conditions:
        value = ((stages.get(c.stage) or {}).get(c.split) or {}).get(c.metric)
        out.append({"condition": c.text, "stage": c.stage, "split": c.split, "metric": c.metric, "op": c.op,
                    "bound": c.bound, "value": value, "met": c.check(value)})
    return out
