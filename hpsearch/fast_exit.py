"""Ending a process whose work is done without the interpreter's teardown.

With torch loaded, the teardown (every module collected object by object, torch's own
destructors) takes a noticeable fraction of a second, and nothing a finished command or worker
needs happens in it: what it wrote is committed, its storages are closed here, its logs and
stdio are flushed here, and the handlers registered with `atexit` still run."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading


def exit_without_teardown(code: int) -> None:
    """End the process now with exit status `code`, after closing the storages it opened,
    running its `atexit` handlers (logging's flush among them) and flushing stdout and
    stderr. Where a thread other than the main one still runs (and is not a daemon), the
    usual exit instead: the interpreter waits for it."""
    if any(thread is not threading.main_thread() and not thread.daemon and thread.is_alive()
           for thread in threading.enumerate()):
        sys.exit(code)
    # Looked up, not imported: a command that opened no storage (`--help`) must not import
    # Optuna to close none.
    storage_urls = sys.modules.get("hpsearch.storage.urls")
    if storage_urls is not None:
        storage_urls.close_open_storages()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe or stream: nothing more can be said.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
