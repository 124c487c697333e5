"""What a long phase prints while it works (training steps, evaluation questions).

On a terminal: one tqdm bar per phase, with its rate, its ETA and a short postfix (the loss), redrawn in place
and left on screen when the phase ends. Anywhere else (a Slurm log, CI, a pipe into a file), a bar's in-place
redraws would pile up as one unreadable line, so a phase prints a plain line instead at every tenth of its work
and at least every ``line_every_s`` seconds, then a last line when it ends: a handful of lines per phase.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

# Plain-line mode: a line at every 1/LINE_FRACTIONS of the phase, and at least this often.
LINE_FRACTIONS = 10
LINE_EVERY_S = 300.0


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or stream-like object without a terminal behind it
        return False


def terminal_width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def library_bars_only_on_a_terminal() -> None:
    """Off a terminal, the Hugging Face libraries' own bars (loading and writing weights) would add their
    in-place redraws to the log: turn them off there, before those libraries are imported."""
    if not is_terminal(sys.stderr):
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class Progress:
    """The progress of one phase of ``total`` units (``initial`` already done, e.g. on resume).

    ``stream``: where the bar goes (default stderr, tqdm's choice); when it is not a terminal, plain lines go
    to ``stream``, or to stdout by default (where the rest of a job's log goes). ``enabled=False`` prints
    nothing (other ranks than 0)."""

    def __init__(self, total: int, desc: str, *, unit: str = "it", initial: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, line_every_s: float = LINE_EVERY_S):
        self.total, self.desc, self.unit = total, desc, unit
        self.done = self.initial = initial
        self.enabled = enabled and total > 0
        self.line_every_s = line_every_s
        self.postfix = ""
        self.start = self.last_line = time.perf_counter()
        self.last_fraction = initial * LINE_FRACTIONS // max(total, 1)
        bar_stream = stream or sys.stderr
        self.bar = None
        self.lines = stream or sys.stdout
        if self.enabled and is_terminal(bar_stream):
            from tqdm import tqdm

            # A terminal that reports no width (a pseudo-terminal made without a size) would get an empty bar.
            sized = terminal_width(bar_stream) > 0
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=bar_stream,
                            dynamic_ncols=sized, ncols=None if sized else 100, nrows=None if sized else 40,
                            mininterval=0.5, smoothing=0.1)

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        """``n`` more units done; ``postfix`` (e.g. ``loss 0.0312``) replaces the shown one."""
        if not self.enabled:
            return
        self.done += n
        if postfix is not None:
            self.postfix = postfix
        if self.bar is not None:
            if postfix is not None:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(n)
            return
        fraction = self.done * LINE_FRACTIONS // self.total
        now = time.perf_counter()
        if fraction > self.last_fraction or now - self.last_line >= self.line_every_s or self.done >= self.total:
            self.last_fraction, self.last_line = fraction, now
            self.lines.write(self.line() + "\n")
            self.lines.flush()

    def line(self) -> str:
        """``train vgid: 21/210 step (10%) | loss 0.0312 | 0.512 step/s, 0:00:41 elapsed, eta 0:06:09``."""
        elapsed = time.perf_counter() - self.start
        rate_done = self.done - self.initial
        eta = elapsed / rate_done * (self.total - self.done) if rate_done > 0 else 0.0
        parts = [f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done // self.total}%)"]
        if self.postfix:
            parts.append(self.postfix)
        parts.append(f"{rate_done / max(elapsed, 1e-9):.3g} {self.unit}/s, {format_duration(elapsed)} elapsed, "
                     f"eta {format_duration(eta)}")
        return " | ".join(parts)

    def write(self, message: str) -> None:
        """A message that must not break the bar (printed above it on a terminal)."""
        if self.bar is not None:
            self.bar.write(message, file=sys.stdout)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
