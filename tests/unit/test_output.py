"""The run's output folder (foreign files refused, one run at a time, leftovers of a killed run), whole-line
appends, UTF-8 reading with the bad byte's place, and override values that open a list without closing it."""

from __future__ import annotations

import errno
import os

import pytest

from vgid_dist.config.recipes import parse_override_value
from vgid_dist.engine.output import LOCK, MARKER, RunFolder
from vgid_dist.errors import ConfigError, DataError, RunExistsError
from vgid_dist.io import append_line, read_utf8


def test_a_folder_of_the_users_files_is_refused_naming_them(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "train_log.jsonl").write_text("mine\n")
    with pytest.raises(RunExistsError, match=r"holds files no run wrote \(model/, train_log.jsonl\)"):
        RunFolder(tmp_path).check_writable()
    RunFolder(tmp_path / "new").check_writable()  # a new folder: fine, and nothing is created by the check
    assert not (tmp_path / "new").exists()


def test_a_folder_rank_0_is_claiming_is_not_foreign_to_the_other_ranks(tmp_path):
    (tmp_path / LOCK).write_text("")
    (tmp_path / f".{MARKER}.123.tmp").write_text("{")  # the marker being written
    RunFolder(tmp_path).check_writable()


def test_a_claimed_folder_is_locked_until_released(tmp_path):
    out = tmp_path / "run"
    first = RunFolder(out)
    first.check_writable()
    first.claim()
    assert (out / MARKER).is_file() and f"pid {os.getpid()}" in (out / LOCK).read_text()
    RunFolder(out).check_writable()  # the marker makes it a run's folder
    with pytest.raises(RunExistsError, match="another run is using this output_dir"):
        RunFolder(out).claim()
    first.release()
    second = RunFolder(out)
    second.claim()  # a released (or killed) holder leaves nothing stuck
    second.release()


def test_leftovers_of_a_killed_run_are_removed_and_nothing_else(tmp_path):
    folder = RunFolder(tmp_path)
    for name in (".model.abc123", ".model.old", ".adapter.xyz", "model"):
        (tmp_path / name).mkdir()
    dead_pid = 2**22 + 17  # above the default pid_max: no such process
    (tmp_path / f".metrics.json.{dead_pid}.tmp").write_text("{")
    (tmp_path / f".config.yaml.{os.getpid()}.tmp").write_text("a")  # a live writer's
    removed = folder.remove_leftovers()
    assert removed == [".adapter.xyz", f".metrics.json.{dead_pid}.tmp", ".model.abc123", ".model.old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".config.yaml.{os.getpid()}.tmp", "model"]


def test_an_append_cut_short_is_undone(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    append_line(path, '{"step": 1}\n')
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data)[:5])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError):
        append_line(path, '{"step": 2, "loss": 0.5}\n')
    monkeypatch.setattr(os, "write", real_write)
    assert path.read_text() == '{"step": 1}\n'


def test_bytes_that_are_not_utf8_are_named_by_line_and_offset(tmp_path):
    path = tmp_path / "forget.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "ren\xe9"}\n')
    with pytest.raises(DataError, match=r"forget.jsonl: not UTF-8 text \(line 2, byte offset 19"):
        read_utf8(path, DataError)


def test_an_override_that_opens_a_list_without_closing_it_is_refused():
    assert parse_override_value("scale=[1, 2]", "[1, 2]") == [1, 2]
    assert parse_override_value("model.path=@tiny/x", "@tiny/x") == "@tiny/x"  # not YAML: the plain string
    with pytest.raises(ConfigError, match=r"override 'scale=\[1'"):
        parse_override_value("scale=[1", "[1")
