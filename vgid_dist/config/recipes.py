"""Reading a run configuration: YAML recipes, dotted ``key=value`` overrides, environment expansion.

Recipes are YAML files, given as a path or as the name of a packaged recipe (``vgid_dist/recipes/*.yaml``).
A recipe may name a parent with ``extends: <name or path>``; its keys are merged over the parent's (a
``method`` with another name replaces the parent's method section).
``${VAR}`` and ``${VAR:-default}`` in string values are expanded from the environment.
A run is read once (``load_run_config``), then passed down.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vgid_dist.config.run import RunConfig, format_validation_error
from vgid_dist.errors import ConfigError, did_you_mean
from vgid_dist.io import read_utf8

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"

# Short override keys users type on the command line; each maps to exactly one dotted path.
OVERRIDE_SHORTCUTS = {
    "seed": "optim.seed",
    "max_steps": "optim.max_steps",
    "epochs": "optim.epochs",
    "lr": "optim.lr",
    "batch_size": "optim.batch_size",
    "grad_accum": "optim.grad_accum",
    "forget_ratio": "data.forget_ratio",
}



_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: Any) -> Any:
    if isinstance(value, str):
        return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) if m.group(2) is not None else m.group(0)),
                        value)
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v) for v in value]
    return value


def packaged_file(name_or_path: str, folder: Path, suffixes: tuple[str, ...], what: str) -> Path:
    """A file path as given (it must exist), or the packaged file of that name in ``folder`` (``tiny`` ->
    ``folder/tiny.yaml``). An unknown name fails listing the packaged ones, the closest first."""
    p = Path(name_or_path).expanduser()
    if p.suffix in suffixes or p.is_file():
        if not p.is_file():
            raise ConfigError(f"{p}: {what} file not found")
        return p
    packaged = folder / f"{name_or_path}{suffixes[0]}"
    if packaged.is_file():
        return packaged
    known = sorted(q.stem for q in folder.glob(f"*{suffixes[0]}"))
    hint = did_you_mean(name_or_path, known, cutoff=0.5)
    raise ConfigError(f"{what} {name_or_path!r}: neither a {suffixes[0]} file nor a packaged {what}{hint} "
                      f"(known: {', '.join(known)})")


def recipe_path(name_or_path: str) -> Path:
    """A recipe path as given, or the packaged recipe of that name."""
    return packaged_file(name_or_path, RECIPES_DIR, (".yaml", ".yml"), "recipe")


def packaged_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def read_mapping(path: Path) -> dict:
    """A YAML file (JSON for ``.json``) whose top level is a mapping; every error names the file (an empty
    YAML file is an empty mapping)."""
    kind = "JSON" if path.suffix == ".json" else "YAML"
    text = read_utf8(path, ConfigError)
    try:
        data = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {kind}: {exc}") from None
    if data is None and kind == "YAML":
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def read_extending(name_or_path: str, find: Callable[[str], Path],
                   combine: Callable[[dict, dict, Path], dict] | None = None,
                   _seen: tuple[Path, ...] = ()) -> tuple[dict, Path]:
    """(data, path) of the file ``find`` resolves ``name_or_path`` to, with an ``extends: <name or path>``
    parent read the same way and merged under it by ``combine(parent, child, path)`` (default: ``deep_merge``,
    the child's keys win). A parent path is tried next to the child first."""
    path = find(name_or_path)
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    data = read_mapping(path)
    parent = data.pop("extends", None)
    if parent is not None:
        local = path.parent / str(parent)
        ref = str(local) if local.suffix in (".yaml", ".yml") and local.is_file() else str(parent)
        base, _ = read_extending(ref, find, combine, _seen + (path.resolve(),))
        data = combine(base, data, path) if combine else deep_merge(base, data)
    return data, path


def deep_merge(base: Mapping, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _merge_recipe(base: dict, child: dict, path: Path) -> dict:
    """A child recipe over its parent; a different method replaces the parent's whole method section (its
    parameters mean nothing for another method)."""
    for name, section in (("method", child.get("method")), ("method", base.get("method"))):
        if section is not None and not isinstance(section, Mapping):
            raise ConfigError(f"{path}: {name}: expected a mapping with a name (e.g. {{name: vgid, alpha: 2}}), got "
                              f"{section!r}")
    if "method" in child and child["method"].get("name", (base.get("method") or {}).get("name")) != \
            (base.get("method") or {}).get("name"):
        base = {k: v for k, v in base.items() if k != "method"}
    return deep_merge(base, child)


def load_recipe_dict(name_or_path: str) -> dict:
    """The recipe as a plain dict, with ``extends`` chains merged (parent first)."""
    return read_extending(name_or_path, recipe_path, _merge_recipe)[0]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], value), the value parsed as YAML (numbers, booleans, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value with a dotted key, e.g. method.alpha=2")
    key, raw = text.split("=", 1)
    key = OVERRIDE_SHORTCUTS.get(key.strip(), key.strip())
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key segment")
    return key.split("."), parse_override_value(text, raw)


def parse_override_value(text: str, raw: str) -> Any:
    """The value of override ``text`` parsed as YAML (numbers, booleans, lists, mappings, null). A value YAML
    cannot read is taken as the plain string (``@tiny/model``), unless it opens a list or a mapping
    (``scale=[1``): that is a typo, refused naming the override."""
    if not raw.strip():
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        if raw.lstrip()[:1] in "[{":
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"override {text!r}: the value is not a valid YAML list or mapping ({problem}); "
                              "close its brackets and quote it for the shell, e.g. 'key=[1, 2]'") from None
        return raw


def _set_dotted(data: dict, keys: list[str], value: Any, what: str) -> None:
    node = data
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{what}: {k!r} is a value, not a section")
        node = nxt
    node[keys[-1]] = value


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        keys, value = parse_override(text)
        _set_dotted(data, keys, value, f"override {text!r}")
    return data


def updated_config(cfg: RunConfig, values: Mapping[str, Any], source: str) -> RunConfig:
    """``cfg`` with dotted keys set to plain values (``{"optim.max_steps": 20, "method": {...}}``), validated
    again; ``source`` names the run in errors."""
    data = cfg.model_dump(mode="json")
    for key, value in values.items():
        _set_dotted(data, key.split("."), value, f"{source}: {key}")
    return build_run_config(data, source)


def build_run_config(data: dict, source: str) -> RunConfig:
    try:
        return RunConfig.model_validate(_expand_env(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, RunConfig)) from None


def load_run_config(config: str, overrides: Iterable[str] = ()) -> RunConfig:
    """Read a recipe (path or packaged name), apply ``key=value`` overrides, validate everything."""
    overrides = list(overrides)
    data = apply_overrides(load_recipe_dict(config), overrides)
    source = str(recipe_path(config)) + (f" (with overrides {' '.join(overrides)})" if overrides else "")
    return build_run_config(data, source)


def resolved_config(cfg: RunConfig) -> dict[str, Any]:
    """What a run of ``cfg`` uses, as plain data: every field with its given or default value, the method's
    parameters filled from the method's own defaults, ``output_dir`` resolved (``vgid config``)."""
    data = cfg.model_dump(mode="json")
    data["method"] = {"name": cfg.method.name, **cfg.method.params().model_dump(mode="json", by_alias=True)}
    data["output_dir"] = str(cfg.resolved_output_dir())
    return data


def flatten(data: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are kept as values."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


