"""Worker processes on one machine: `hpsearch optimize --workers N`.

Each worker is a fresh `spawn`ed Python process (torch and fork don't mix: a forked child
inherits the parent's torch thread pools and locks), single-threaded in torch so that N
workers share N cores without fighting, with its own storage connection. The parent only
watches: it polls (its progress display reads the database) and waits for the workers.

- A worker that stops with an error stops the others; the parent raises the error's line.
- A worker killed by a signal (`kill -9`, the OOM killer) is reported; the others go on, and
  its trial is failed and retried by the heartbeat check (see `hpsearch.storage`).
- The parent killed (`kill -9` included): on Linux each worker gets SIGTERM from the kernel and
  stops as on Ctrl-C, its running trials marked failed; no worker goes on unsupervised.
- Ctrl-C (SIGINT, also SIGTERM) stops every worker the way Ctrl-C stops a single search: the
  running trials are marked failed, finished ones are stored, the study can be resumed.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from typing import Any, Protocol

from hpsearch.errors import HPSearchError, StorageError
from hpsearch.fast_exit import exit_without_teardown

log = logging.getLogger(__name__)

# Seconds the workers get to mark their running trials failed after Ctrl-C before they are
# killed (their trials are then failed by the heartbeat check of the next run).
STOP_TIMEOUT_S = 20
EXIT_INTERRUPTED = 130


# How often a worker with nothing to start re-checks the study, and the parent its progress.
POLL_S = 0.5


class SlotLock(Protocol):
    """A lock shared by the workers of one machine (a `FileLock`, or a threading lock for
    one process)."""

    def acquire(self) -> bool: ...

    def release(self) -> None: ...


class FileLock:
    """A lock among processes that the kernel releases when its holder dies: `flock` on a
    file. A worker killed while holding it (counting trials, creating them, a whole refill)
    never stalls the others, as a `multiprocessing.Lock` it held would, forever. Each process
    opens the file itself (pickling carries only the path); one thread per process uses it."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fd: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    def acquire(self, blocking: bool = True) -> bool:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# work(worker index, slot lock, interruptions, *args): a module-level function (it is pickled)
Work = Callable[..., None]


def run_workers(work: Work, count: int, args: tuple[Any, ...],
                on_poll: Callable[[], None], poll_s: float = 0.5,
                imports: tuple[str, ...] = ()) -> list[int]:
    """Run `work(index, lock, interruptions, *args)` in `count` spawned processes until all
    have returned, calling `on_poll()` every `poll_s` seconds meanwhile; returns their PIDs.
    Each worker first imports optuna, torch and the modules `imports` names, while a stop
    signal still ends it at once. Raises HPSearchError if a worker failed, KeyboardInterrupt
    (after stopping every worker) on Ctrl-C."""
    context = multiprocessing.get_context("spawn")
    handle, path = tempfile.mkstemp(prefix="hpsearch-slots-", suffix=".lock")
    os.close(handle)
    lock = FileLock(path)
    # One pipe per worker for its error line: a pipe holds no semaphore, so a parent killed
    # with kill -9 leaves nothing for multiprocessing's resource tracker to warn about.
    pipes = [context.Pipe(duplex=False) for _ in range(count)]
    levels = (logging.getLogger().getEffectiveLevel(),
              logging.getLogger("optuna").getEffectiveLevel())
    processes = [
        context.Process(target=_worker_main, name=f"hpsearch-worker-{index}",
                        args=(work, index, lock, pipes[index][1], levels, args, os.getpid(),
                              imports))
        for index in range(count)
    ]
    interrupted = threading.Event()
    with _stop_signals(interrupted) as arm:
        for process in processes:
            process.start()
        arm()
        try:
            _supervise(processes, [reader for reader, _ in pipes], on_poll, poll_s,
                       interrupted)
        except BaseException:
            _stop(processes)
            raise
        finally:
            for connection in itertools.chain.from_iterable(pipes):
                connection.close()
            lock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return [process.pid for process in processes]


def _supervise(processes: list[multiprocessing.process.BaseProcess], errors: list[Any],
               on_poll: Callable[[], None], poll_s: float, interrupted: threading.Event) -> None:
    running = {process.sentinel: index for index, process in enumerate(processes)}
    while running:
        for sentinel in wait(list(running), timeout=poll_s):
            index = running.pop(sentinel)
            process = processes[index]
            process.join()
            code = process.exitcode
            if code == 0:
                continue
            if code is not None and code < 0:
                log.warning("worker %d (pid %d) was killed by signal %d; the other workers go "
                            "on, and its trial is retried once its heartbeat is stale",
                            index, process.pid, -code)
            elif code == EXIT_INTERRUPTED:
                # Ctrl-C reaches the parent too, which then stops them all; otherwise only
                # this worker was signalled.
                if not interrupted.is_set():
                    log.warning("worker %d (pid %d) was interrupted; the other workers go on",
                                index, process.pid)
            else:
                said = _error_line(errors[index])
                if said is None:
                    raise HPSearchError(f"worker {index} stopped: exit code {code}")
                storage, message = said
                # The storage lost is every worker's problem, and said as it is.
                raise StorageError(message) if storage else \
                    HPSearchError(f"worker {index} stopped: {message}")
        if interrupted.is_set():
            raise KeyboardInterrupt
        on_poll()


def _error_line(reader: Any) -> tuple[bool, str] | None:
    """What a worker that failed said before it exited ((is it the storage's, the line)), or
    None where it said nothing (killed before, or mid-way through saying it)."""
    try:
        return reader.recv() if reader.poll() else None
    except (EOFError, OSError, pickle.UnpicklingError):
        return None


def _stop(processes: list[multiprocessing.process.BaseProcess]) -> None:
    """Ask every live worker to stop as Ctrl-C would, then kill the ones that don't."""
    for process in processes:
        if process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT)
    for process in processes:
        process.join(STOP_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()


@contextlib.contextmanager
def _stop_signals(interrupted: threading.Event) -> Iterator[Callable[[], None]]:
    """In the parent, once armed, Ctrl-C and SIGTERM only set `interrupted`: the poll loop then
    stops the workers, and no database read of the progress display is cut off half-way.

    Until then SIGINT is ignored, because spawned workers inherit that (not Python handlers):
    a Ctrl-C while they import torch would print a traceback from each. Each worker then
    installs its own handler (`_interrupt_once`). Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def arm() -> None:
        for number in previous:
            signal.signal(number, lambda *_: interrupted.set())

    try:
        yield arm
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _worker_main(work: Work, index: int, lock: SlotLock, errors: Any,
                 levels: tuple[int, int], args: tuple[Any, ...], parent: int,
                 imports: tuple[str, ...]) -> None:
    """A worker's process: the parent's log levels, one torch thread, then `work`."""
    interruptions = Interruptions()
    interruptions.install()
    code = 0
    try:
        # Nothing to fail yet: a stop signal (or the parent's death) during the imports ends
        # the worker at once, and an import that fails is the parent's one line.
        with interruptions.interruptible():
            stop_with_parent(parent)
            import optuna
            import torch

            for module in imports:
                importlib.import_module(module)
        torch.set_num_threads(1)
        logging.basicConfig(level=levels[0], format="%(levelname)s %(name)s: %(message)s")
        optuna.logging.set_verbosity(levels[1])
        work(index, lock, interruptions, *args)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except HPSearchError as exc:
        errors.send((isinstance(exc, StorageError), str(exc)))
        code = 1
    except Exception as exc:  # a bug: the line for the parent, the traceback for --debug
        log.debug("worker %d failed:\n%s", index, traceback.format_exc())
        where = traceback.extract_tb(exc.__traceback__)[-1]
        first_line = f"{type(exc).__name__}: {exc}".splitlines()[0]
        errors.send((False, f"{first_line} (in {where.filename.rsplit('/', 1)[-1]}:"
                           f"{where.lineno}, {where.name})"))
        code = 1
    exit_without_teardown(code)


def stop_with_parent(parent: int) -> None:
    """Have this process get SIGTERM when its parent (PID `parent`) dies, however it dies
    (`kill -9` included): on Linux the kernel sends it (prctl's parent-death signal). A
    worker stops then as Ctrl-C stops it (its running trials marked failed); a process that
    does not handle SIGTERM ends. A parent already gone by now: SIGTERM at once."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


# prctl(2): ask for a signal when the parent dies.
PR_SET_PDEATHSIG = 1


class Interruptions:
    """Ctrl-C (SIGINT) and SIGTERM for a process that runs trials, delivered as
    KeyboardInterrupt only where that is safe: while a trial trains (Optuna then marks it
    failed), never while a trial is created or its end is written (it would stay RUNNING)
    nor in the middle of another database call (see `shielded`). Elsewhere the request waits
    for `check()`. A second signal is ignored: the terminal's Ctrl-C and the parent's both
    reach a worker."""

    def __init__(self) -> None:
        self.requested = False
        self._interruptible = False

    def install(self) -> None:
        """Handle the signals in this process (a no-op outside the main thread)."""
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                signal.signal(number, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.requested:
            return
        self.requested = True
        if self._interruptible:
            raise KeyboardInterrupt

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A section (a trial's training) that a signal interrupts at once."""
        self.check()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """A part of an interruptible section that a signal must not cut: a database call.
        Cut just after a write-behind flush committed, before the storage noted its records
        written, the trial's FAILED end wrote them again, the database refused the
        duplicates, and the trial stayed RUNNING (tests/test_workers.py). A signal that came
        meanwhile interrupts as the part ends."""
        interruptible, self._interruptible = self._interruptible, False
        try:
            yield
        finally:
            self._interruptible = interruptible
        if interruptible:
            self.check()
