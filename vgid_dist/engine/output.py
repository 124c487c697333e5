"""The run's output folder: who may write there, one run at a time, what a killed run left behind, the step log.

A run writes only into a folder it creates, an empty one, or one a run created before (it holds ``.vgid-run``);
a folder of other files is refused before anything is written, naming them. Rank 0 holds an exclusive lock on
``.vgid-lock`` for the run's lifetime (``fcntl.flock``: the kernel drops it when the process ends, killed or
not), so a second run on the same folder is refused at once and a killed run never leaves it stuck.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from vgid_dist.config import RunConfig, flatten
from vgid_dist.errors import RunExistsError
from vgid_dist.io import append_line, write_json_atomic, write_text_atomic

MARKER = ".vgid-run"
LOCK = ".vgid-lock"
PRE_RUN_FILES = frozenset({"mlflow_run_id"})
"""What may be in a folder before its first run: a sweep records the cell's MLflow run id when it submits the
job (``tracking.names.RUN_ID_FILE``)."""
CHANGEABLE_ON_RESUME = frozenset({"output_dir", "keep_checkpoints", "save_every", "log_every", "dist_timeout_s"})
"""Fields a resumed run may change: they decide where, what is kept and how long to wait, not what is computed
(a run folder moved elsewhere resumes)."""
# Temporary names of io.folder_written_atomically (".model.<random>", ".model.old") and of
# io.file_written_atomically (".<name>.<pid>.tmp").
_TEMP_FOLDER = re.compile(r"\.(model|adapter)\..+")
_TEMP_FILE = re.compile(r"\..+\.(\d+)\.tmp")
_CLAIMING = re.compile(rf"{re.escape(LOCK)}|\.?{re.escape(MARKER)}(\.\d+\.tmp)?")


def launch_rank() -> int:
    """This process's rank as the launcher set it (before any process group; a plain process is rank 0)."""
    return int(os.environ.get("RANK", "0"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunFolder:
    """``output_dir``: checked (every rank, reading only), then claimed and locked (rank 0)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self._lock_fd: int | None = None

    def check_writable(self) -> None:
        """Refuse a folder this service may not write into, naming what is there. Reads only."""
        out = self.out
        if not out.exists() or (out / MARKER).is_file():
            return
        if not out.is_dir():
            raise RunExistsError(f"{out}: output_dir is a file, not a folder")
        # Rank 0 may be claiming the folder while another rank looks: its marker (or the marker's temporary file)
        # and its lock are not foreign.
        foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir()
                         if p.name not in PRE_RUN_FILES and not _CLAIMING.fullmatch(p.name))
        if foreign:
            shown = ", ".join(foreign[:8]) + (f", ... ({len(foreign)} entries)" if len(foreign) > 8 else "")
            raise RunExistsError(
                f"{out}: output_dir holds files no run wrote ({shown}); a run writes only into a new or empty "
                f"folder, or one a run created (it holds {MARKER}), and --force does not change that. Choose "
                "another output_dir or move these files away")

    def claim(self) -> None:
        """Create the folder (or adopt an empty one) and mark it as a run's; then lock it. Rank 0 only."""
        self.out.mkdir(parents=True, exist_ok=True)
        if not (self.out / MARKER).is_file():
            write_json_atomic(self.out / MARKER, {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                  "by": "vgid_dist"})
        fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode(errors="replace").strip() or "a process"
            os.close(fd)
            raise RunExistsError(f"{self.out}: another run is using this output_dir ({holder}); wait for it to "
                                 "end or choose another output_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}".encode())
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def remove_leftovers(self) -> list[str]:
        """What a killed run left here: half-written model/adapter folders and temporary files of writers that
        are gone (``CheckpointManager`` tidies ``checkpoints/``). Rank 0, holding the lock."""
        removed = []
        for path in sorted(self.out.iterdir()):
            temp_file = _TEMP_FILE.fullmatch(path.name)
            if path.is_dir() and _TEMP_FOLDER.fullmatch(path.name):
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_file() and temp_file and not _pid_alive(int(temp_file.group(1))):
                path.unlink(missing_ok=True)
            else:
                continue
            removed.append(path.name)
        return removed

    def finished_keeps_checkpoints(self) -> bool:
        """Whether the finished run of this folder asked to keep its checkpoints (its config.yaml)."""
        saved = self.out / "config.yaml"
        data = yaml.safe_load(saved.read_text()) if saved.is_file() else {}
        return bool((data or {}).get("keep_checkpoints", False))


def check_same_config(out: Path, cfg: RunConfig, force: bool) -> None:
    """Resuming in an output_dir written by a different configuration would mix two runs: refuse it."""
    saved = out / "config.yaml"
    if force or not saved.is_file():
        return
    old = flatten(yaml.safe_load(saved.read_text()) or {})
    new = flatten(cfg.model_dump(mode="json"))
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in CHANGEABLE_ON_RESUME)
    if differ:
        raise RunExistsError(f"{saved}: this output_dir holds a run with another configuration (differs in "
                             f"{', '.join(differ[:6])}{', ...' if len(differ) > 6 else ''}); use another output_dir "
                             "or --force to start over")


class StepLog:
    """``train_log.jsonl``: one JSON line per logged step, each appended whole or not at all."""

    def __init__(self, path: Path, log: Callable[[str], None] = print):
        self.path = Path(path)
        self.log = log

    def append(self, step: int, metrics: dict) -> None:
        """A line that cannot be written (a full disk) is left out whole and said; training goes on (the
        metrics also go to the callbacks)."""
        try:
            append_line(self.path, json.dumps({"step": step, **metrics}) + "\n")
        except OSError as exc:
            self.log(f"[vgid] {self.path}: step {step} not logged ({exc.strerror or exc}); training goes on")

    def trim(self, step: int) -> None:
        """Keep the lines of the steps a resumed run keeps (later ones are computed again); a line cut short (a
        run killed while writing it) is dropped."""
        if not self.path.is_file():
            return
        kept, torn = [], 0
        for line in self.path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                torn += 1
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        if torn:
            self.log(f"[vgid] {self.path}: dropped {torn} line(s) cut short by an earlier run")
