"""Ending the vgid process without module teardown keeps what a normal exit does for the program."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from vgid_dist.shutdown import end_process

out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
def late_writer():
    time.sleep(0.3)
    (out / "thread").write_text("joined")
threading.Thread(target=late_writer).start()
print("results table", end="")  # buffered: no newline, stdout a pipe
sys.stderr.write("a warning")
end_process(3)
print("never")
"""


def test_end_process_keeps_exit_status_atexit_threads_and_buffered_output(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert done.returncode == 3
    assert done.stdout == "results table" and done.stderr == "a warning"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "joined"


def test_a_command_run_as_the_script_prints_everything_into_a_pipe(capsys):
    # `python -m vgid_dist.cli` runs entry(), as the installed vgid script does; the YAML ends with a print(...,
    # end="") that only a flush before the process ends delivers
    from vgid_dist.cli import main

    assert main(["config", "tiny"]) == 0
    expected = capsys.readouterr().out
    done = subprocess.run([sys.executable, "-m", "vgid_dist.cli", "config", "tiny"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected and "max_consecutive_nonfinite" in expected
