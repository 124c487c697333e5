"""What a phase prints while it works: a bar on a terminal, a few plain lines anywhere else, nothing on ranks
other than 0."""

from __future__ import annotations

import io

from vgid_dist.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_line_per_tenth_of_the_phase():
    log = io.StringIO()
    with Progress(210, "train vgid", unit="step", stream=log) as progress:
        for step in range(210):
            progress.update(1, postfix=f"loss {1 / (step + 1):.4f}")
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in log.getvalue()
    assert lines[0].startswith("train vgid: 21/210 step (10%) | loss 0.0476 | ")
    assert lines[-1].startswith("train vgid: 210/210 step (100%) | loss 0.0048 | ") and "eta 0:00:00" in lines[-1]


def test_off_a_terminal_a_short_phase_and_a_resumed_one():
    log = io.StringIO()
    with Progress(3, "eval", unit="q", stream=log) as progress:
        for _ in range(3):
            progress.update(1)
    assert [line.split(" | ")[0] for line in log.getvalue().splitlines()] == [
        "eval: 1/3 q (33%)", "eval: 2/3 q (66%)", "eval: 3/3 q (100%)"]
    log = io.StringIO()
    with Progress(100, "train", initial=95, stream=log) as progress:
        for _ in range(5):
            progress.update(1)
    assert log.getvalue().splitlines()[0].startswith("train: 100/100 it (100%)")


def test_off_a_terminal_a_line_at_least_every_interval():
    log = io.StringIO()
    with Progress(1000, "train", stream=log, line_every_s=0.0) as progress:
        progress.update(1)
        progress.update(1)
    assert len(log.getvalue().splitlines()) == 2


def test_on_a_terminal_one_bar_with_the_postfix_and_messages_above_it(capsys):
    screen = Terminal()
    with Progress(50, "train vgid", unit="step", stream=screen) as progress:
        for _ in range(50):
            progress.update(1, postfix="loss 0.1234")
        progress.write("[vgid] checkpoint at step 50")
    out = screen.getvalue()
    assert out.count("\n") == 1  # the finished bar stays, as one line
    assert "train vgid: 100%" in out and "50/50" in out and "loss 0.1234" in out
    assert "[vgid] checkpoint at step 50" in capsys.readouterr().out


def test_disabled_prints_nothing(capsys):
    screen = Terminal()
    with Progress(10, "eval", stream=screen, enabled=False) as progress:
        progress.update(10)
    assert screen.getvalue() == "" and capsys.readouterr().out == ""
