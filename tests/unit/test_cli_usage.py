"""What the command line says when it is used wrongly or asked about itself: the closest names for a typo,
overrides written as options read as meant, the command's own usage in errors, its version, and help for
every option."""

from __future__ import annotations

import argparse

import pytest
import yaml

from vgid_dist.cli import build_parser, main


def test_an_unknown_demo_method_names_the_closest(capsys):
    assert main(["demo", "--methods", "vgidd", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --methods: unknown method 'vgidd'; did you mean vgid?") and "known: all, ga," in err


@pytest.mark.parametrize("override, hint", [("optim.lrr=1", "optim.lrr: unknown key; did you mean optim.lr?"),
                                            ("lrr=1", "lrr: unknown key; did you mean optim.lr?"),
                                            ("method.alphaa=2", "method.alphaa: unknown key; did you mean "
                                                                "method.alpha?"),
                                            ("model.lora.rr=4", "did you mean model.lora.r?")])
def test_an_unknown_config_key_names_the_closest(capsys, override, hint):
    assert main(["config", "tiny", override]) == 2
    assert hint in capsys.readouterr().err


def test_an_unknown_recipe_names_the_closest(capsys):
    assert main(["config", "llava-7b"]) == 2
    assert "did you mean llava-1.5-7b" in capsys.readouterr().err


@pytest.mark.parametrize("written", [["--max_steps=4"], ["--max-steps", "4"], ["--optim.max_steps=4"]])
def test_overrides_written_as_options_are_read_as_meant(capsys, written):
    assert main(["config", "tiny", *written]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out.split("\n", 1)[1])["optim"]["max_steps"] == 4
    assert "as the override" in err and "max_steps=4" in err


def test_an_unknown_option_gets_the_commands_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", "tiny", "--bogus"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("usage: vgid train") and "unrecognized arguments: --bogus" in err
    with pytest.raises(SystemExit):
        main(["demo", "--max_steps=4"])
    assert "vgid demo takes no configuration overrides" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith("vgid ") and "torch " in out and "deepspeed " in out


def test_train_help_lists_recipes_and_shortcuts(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "llava-1.5-7b" in out and "tiny-vkd" in out and "max_steps (optim.max_steps)" in out


def test_every_option_of_every_command_has_help():
    missing = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        parser.format_help()  # a stray % in a help text fails here
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(sub, f"{name} {sub_name}")
            elif not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "vgid")
    assert not missing, missing
