"""Does a local worker die with the qbench process that started it? From its first line.

A spawned worker's target is :func:`worker_entry`, in this module, which
imports nothing heavy: the worker ties its life to its parent's before it
imports torch, CompressAI and the plugins (seconds on a busy machine), so a
qbench process killed while its workers are still starting leaves none behind.
Only then is the worker loop (:mod:`qbench.run.executors.local`) imported.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import threading
import time
from typing import Any


def die_with_parent(parent: int) -> None:
    """End this process when the process ``parent`` ends, however it ends.

    On Linux the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``);
    elsewhere, and as a second line, a thread watches the parent's pid.
    """
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="qbench-parent-watch").start()


def worker_entry(parent: int, loop: str, *args: Any) -> None:
    """The target of a spawned worker: tied to ``parent``, then ``loop`` (``"module:function"``,
    imported only now) called with ``args``."""
    die_with_parent(parent)
    module, _, name = loop.partition(":")
    getattr(importlib.import_module(module), name)(*args)
