"""Writing files and folders so that a reader (another rank, a resumed run, a user) sees the old content or the
new one, never a part: write beside the target under a dot-name, then rename over it; appending whole lines or
nothing; reading text that must be UTF-8, with the place of the first bad byte named."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def file_written_atomically(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` to write; when the block ends without an error it is renamed over
    ``path``, else removed. ``path`` holds the old content or the new, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The process id keeps two writers of one file (ranks, concurrent jobs) off each other's temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> Path:
    with file_written_atomically(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: Path, data: Any, *, sort_keys: bool = True) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=str))


def append_line(path: Path, line: str) -> None:
    """Append ``line`` (ending in a newline) to ``path`` as a whole or not at all: a write cut short (a full disk,
    a file-size limit) is undone by truncating the file back to its size before, and the OSError goes on to the
    caller. One writer per file (the run's lock makes the train log's writer unique)."""
    data = memoryview(line.encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def read_utf8(path: Path, error: type[Exception]) -> str:
    """The text of ``path``; bytes that are not UTF-8 raise ``error`` naming the file, the line and the byte
    offset of the first bad byte."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise error(f"{path}: not UTF-8 text (line {line}, byte offset {exc.start}: "
                    f"{raw[exc.start:exc.start + 1]!r})") from None


def make_readable(folder: Path) -> None:
    """Temporary folders and some writers create owner-only files; give a finished folder the usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def folder_written_atomically(out: Path) -> Iterator[Path]:
    """Yields an empty temporary folder beside ``out`` (``.<name>.<random>``) to fill; when the block ends
    without an error it replaces ``out`` (an existing ``out`` is moved aside to ``.<name>.old`` first and then
    removed), else it is removed. ``out`` is therefore complete or absent, never half-written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        make_readable(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
