"""Every error a user can act on, under one base that carries the command's exit status.

The command line catches ``VgidError`` alone: it prints the message (which names the file, the field and what was
expected) and exits with ``exit_code``. Anything else is a bug and keeps its traceback.

    2    the input was refused before compute was spent (configuration, data, model folder, output folder, a
         checkpoint that a safe load refuses)
    1    the run stopped on its own terms (non-finite losses, a collective that failed, a full disk)
    3    the run finished but its tracking did not
    4    a deletion audit finished (and was written) but did not meet the bar ``--require`` set
    143  a stop signal arrived; the run checkpointed and the same command resumes it (128 + SIGTERM)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_names(name: str, known: Iterable[str], *, cutoff: float = 0.6) -> list[str]:
    """The known names closest to a mistyped one: up to three, the closest first."""
    return difflib.get_close_matches(str(name), list(known), n=3, cutoff=cutoff)


def did_you_mean(name: str, known: Iterable[str], *, cutoff: float = 0.6, prefix: str = "") -> str:
    """``"; did you mean vgid?"`` (each suggestion after ``prefix``), or ``""`` when no known name is close."""
    close = close_names(name, known, cutoff=cutoff)
    return f"; did you mean {' or '.join(prefix + c for c in close)}?" if close else ""


class VgidError(Exception):
    """Base of the errors above; ``exit_code`` is what ``vgid`` returns for it."""

    exit_code = 2
    prefix = "error: "
    """How the command line introduces the message."""

    def __init__(self, message: str = "", *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(VgidError, ValueError):
    """A run configuration or option that cannot work; the message names the file, the field and what was
    expected."""


class DataError(VgidError, ValueError):
    """Bad input data; the message names the file, the row id and the field."""


class ModelFolderError(VgidError, ValueError):
    """A model path that is not a usable local Hugging Face folder."""


class PlanError(VgidError, ValueError):
    """A model or an option the memory planner cannot size; the message says what was expected."""


class RelearnError(VgidError, ValueError):
    """A relearning attack that cannot be run as asked (too few profiles, overlapping sets)."""


class RunExistsError(VgidError, RuntimeError):
    """The output folder cannot take this run: it holds a finished run, another configuration's, files no run
    wrote, or a run that is still going. Nothing in it is overwritten silently."""


class CheckpointError(VgidError, RuntimeError):
    """A checkpoint file that a safe load refuses (it holds more than tensors and plain data)."""


class OutputWriteError(VgidError, RuntimeError):
    """The run's output could not be written (a full disk); what is on disk still resumes."""

    exit_code = 1


class TrackingError(VgidError, RuntimeError):
    """The tracking store cannot be used; the message names the URI and how to turn tracking off."""


class BarNotMetError(VgidError):
    """A deletion audit's results fall short of ``--require``; the audit is written all the same."""

    exit_code = 4
    prefix = "audit: "


class NonFiniteLossError(VgidError, RuntimeError):
    """Too many consecutive optimiser steps had a non-finite loss."""

    exit_code = 1


class CollectiveError(VgidError, RuntimeError):
    """A collective failed or timed out; the message names the rank and the operation."""

    exit_code = 1


class RunInterrupted(VgidError, RuntimeError):
    """A stop signal arrived; the run checkpointed at ``step`` and exits so that it can be resumed."""

    exit_code = 143
    prefix = "[vgid] "

    def __init__(self, step: int, signame: str, checkpoint):
        super().__init__(f"stopped by {signame} after step {step}; checkpoint {checkpoint}; run the same command "
                         "again to resume")
        self.step = step
        self.signame = signame
