"""Ending the ``vgid`` process without Python's module teardown.

At exit CPython tears down every loaded module and frees its objects one by one. With torch, transformers and what
they import loaded (about 5,000 modules), that alone takes 1-1.5 s of CPU on a 2-core machine, after the command
has finished and printed its results: `vgid eval` of the demo's questions took 8.3 s until its results were
written and 9.8 s until the process ended. ``end_process`` does what a normal exit does for the program (waits
for its non-daemon threads, runs the ``atexit`` callbacks: logging's flush, multiprocessing's joins, weakref
finalizers such as temporary folders' removal, flushes the standard streams) and then ends the process at once.
Every file this package writes is closed by the code that wrote it, so nothing is left to the teardown.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

__all__ = ["end_process"]


def end_process(status: int) -> NoReturn:
    """Exit with ``status`` after the program's own exit work (see the module docstring), skipping the
    interpreter's teardown of modules."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # the callbacks a normal exit runs, in the same (last registered first) order
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`vgid ... | head`) or a closed stream: nothing to save
            pass
    os._exit(status)
