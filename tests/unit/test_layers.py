"""The package's shape: every import (at module level or inside a function) goes to the same or a lower layer,
and no two modules import each other, directly or through others. Data flows one way:
errors/vocab/io/prompts/threads/progress/shutdown -> config -> data/models/losses/perturb/plan -> methods -> engine
-> assets -> eval -> tracking/jobs/cluster -> demo/cli/usage."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "vgid_dist"

LAYERS = [
    {"errors", "vocab", "io", "prompts", "threads", "progress", "shutdown"},
    {"config"},
    {"data", "models", "losses", "perturb", "plan"},
    {"methods"},
    {"engine", "teacher_view"},
    {"assets"},
    {"eval"},
    {"tracking", "jobs", "cluster"},
    {"demo", "cli", "usage"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        resolved = set()
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("vgid_dist.") and target != name:
                resolved.add(target)
        graph[name] = resolved
    return graph


def _layer(module: str) -> int:
    top = module.split(".")[1]
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def test_every_top_level_module_has_a_layer():
    tops = {p.stem if p.suffix == ".py" else p.name for p in PACKAGE.iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert tops == set().union(*LAYERS)


def test_no_import_reaches_a_higher_layer():
    upward = [f"{m} -> {t}" for m, targets in _imports().items() for t in targets
              if t != "vgid_dist" and _layer(t) > _layer(m)]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycle():
    graph = _imports()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, cycles
