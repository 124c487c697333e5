"""What the ``vgid`` command says about itself: its version, the recipes, matrices and override shortcuts in
``--help``, and configuration overrides written as options (``--max_steps=4``) read as what they mean."""

from __future__ import annotations

import argparse
import platform
import sys
import textwrap
from importlib import metadata
from pathlib import Path

from vgid_dist.config import OVERRIDE_SHORTCUTS, RECIPES_DIR, packaged_recipes
from vgid_dist.vocab import DTYPES

VERSIONED = ("torch", "deepspeed", "transformers", "peft", "mlflow")
PROTOCOL_HELP = ("official (default): the official MLLMU-Bench evaluator's solved examples before classification "
                 "and cloze questions, its Test_Set image draws and reply parsing, seeded; zero-shot: no "
                 "examples, one Test_Set image per profile, lenient class_acc")


def add_dtype_option(p: argparse.ArgumentParser) -> None:
    """``--dtype``: the dtype a model folder's weights are loaded in for a command that reads one."""
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="the model's weights in memory (default float32)")


def version_text() -> str:
    """``vgid 0.1.0 (python 3.11.7; torch 2.13.0+cpu, ...) at /path/vgid_dist``: what a bug report needs, read
    from the installed packages' metadata (nothing is imported)."""

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    own = installed("vgid-dist")
    deps = ", ".join(f"{name} {installed(name)}" for name in VERSIONED)
    return f"vgid {own} (python {platform.python_version()}; {deps}) at {Path(__file__).resolve().parent}"


def _wrapped(label: str, names: list[str]) -> str:
    return textwrap.fill(", ".join(names), width=100, initial_indent=f"  {label}: ",
                         subsequent_indent=" " * (len(label) + 4), break_on_hyphens=False)


def overrides_epilog(command: str) -> str:
    """The help's closing text of a command that takes a recipe and ``key=value`` overrides."""
    shortcuts = [f"{short} ({path})" for short, path in OVERRIDE_SHORTCUTS.items()]
    return "\n".join([
        "recipes: a YAML path or a packaged name (`vgid config NAME` prints one, every default filled in):",
        _wrapped("packaged", packaged_recipes()),
        "overrides: dotted key=value after the options, any field of the configuration:",
        "  method.alpha=2  optim.lr=1e-5  model.lora=null  eval.at_end=true  output_dir=runs/x",
        _wrapped("shortcuts", shortcuts),
        "  --max_steps=4 or --max-steps 4 is read as max_steps=4.",
        "examples:",
        f"  vgid {command} --config tiny max_steps=12 output_dir=runs/tiny",
        f"  vgid {command} --config npo model.lora=null lr=2e-5",
    ])


def matrices_epilog() -> str:
    names = sorted(p.stem for p in (RECIPES_DIR / "matrices").glob("*.yaml"))
    return "\n".join(["matrices: a YAML path or a packaged name:", _wrapped("packaged", names),
                      "overrides: dotted key=value after the options apply to every cell (eval.batch_size=32)."])


def command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)command's parser that ``argv`` selects (``vgid attack relearn ...`` -> relearn's)."""
    tokens = iter(argv)
    current = parser
    while True:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return current
        chosen = next((t for t in tokens if t in subs[0].choices), None)
        if chosen is None:
            return current
        current = subs[0].choices[chosen]


def _is_option(p: argparse.ArgumentParser, token: str) -> bool:
    """Whether argparse reads ``token`` as one of ``p``'s options (abbreviations included)."""
    name = token.split("=", 1)[0]
    return any(s == name or (s.startswith("--") and s.startswith(name)) for s in p._option_string_actions)


def options_as_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with ``--key=value`` and ``--key value`` read as the override ``key=value`` (dashes in the key
    as underscores), for a command that takes overrides and has no option of that name; each rewrite is said
    on stderr, so that the user learns the plain form."""
    target = command_parser(parser, argv)
    if not any(a.dest == "overrides" for a in target._actions):
        return argv
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not token.startswith("--") or token == "--" or _is_option(target, token):
            out.append(token)
            continue
        key, sep, value = token[2:].partition("=")
        if not sep:
            if i >= len(argv) or (argv[i].startswith("-") and not _is_number(argv[i])):
                out.append(token)  # no value: argparse refuses it with the command's usage
                continue
            value = argv[i]
            i += 1
        override = f"{key.replace('-', '_')}={value}"
        print(f"[vgid] reading {token}{'' if sep else ' ' + value} as the override {override}", file=sys.stderr)
        out.append(override)
    return out


def unrecognized_message(command: argparse.ArgumentParser, extra: list[str]) -> str:
    """argparse's message for arguments a command does not take, and, when they look like configuration
    overrides, which commands take those."""
    message = f"unrecognized arguments: {' '.join(extra)}"
    keys = [t.lstrip("-").split("=", 1)[0].replace("-", "_") for t in extra]
    if any(k in OVERRIDE_SHORTCUTS or "." in k for k in keys):
        message += (f" ({command.prog} takes no configuration overrides; `vgid train --config RECIPE key=value`, "
                    "`vgid config` and `vgid sweep` do)")
    return message


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
