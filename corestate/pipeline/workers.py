"""Worker processes: the parallel half of the embedded runner and of restore.

Terms:

- a *job* is a picklable object with ``start() -> Handler``, sent to the worker first;
- a *handler* lives in the worker: ``process(batch) -> replies`` for each batch of
  records the main process sends, and ``close()`` when told to stop;
- a *worker process* is a plain ``python -c`` child joined to the main process by a
  socket pair (:class:`WorkerProcess`). No :mod:`multiprocessing` start method: those
  re-import the caller's main module, which a program embedding CoreState (or a
  script read from standard input) cannot allow. A reader thread in the main process
  puts each reply on a shared queue as ``(index, replies)``, and a sender thread
  writes the batches it is given, so neither side can block the other on a full pipe
  (a worker reads its next batch only when it is done with the one in hand: the main
  process sending it a second large batch would wait that long, its other workers
  idle);
- an *inline* worker (:class:`InlineWorker`) runs the handler in the main process
  instead, for work too small to be worth a process; the main process cannot tell the
  two apart.

A worker dies with the main process (Linux ``PR_SET_PDEATHSIG``). A handler's error is
sent back as :class:`WorkerFailed`; a worker that dies (killed, out of memory) is
reported the same way, naming the signal.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

from corestate.errors import CoreStateError, PermanentError
from corestate.kernel.memory import tune_gc, tune_malloc

Replies = queue.SimpleQueue[tuple[int, list[Any]]]


class Handler(Protocol):
    def process(self, batch: list[Any]) -> list[Any]:
        ...

    def close(self) -> None:
        ...


class Job(Protocol):
    def start(self) -> Handler:
        ...


@dataclass(frozen=True)
class WorkerFailed:
    """A worker's error (or death), in its replies."""

    index: int
    message: str
    permanent: bool

    def error(self) -> CoreStateError:
        return (PermanentError if self.permanent else CoreStateError)(self.message)


def serve(fd: int) -> None:
    """The worker's main (run by ``python -c``): take the job, then serve batches until
    told to stop (None) or the main process goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides
    _die_with_parent()
    tune_malloc()
    tune_gc()
    _log_like_parent()
    conn = Connection(fd)
    handler: Handler | None = None
    index = -1
    try:
        index, job = conn.recv()
        handler = job.start()
        while True:
            try:
                batch = conn.recv()
            except EOFError:
                break
            if batch is None:
                break
            conn.send(handler.process(batch))
    except BaseException as exc:  # reported to the main process, which fails the work
        permanent = not isinstance(exc, CoreStateError) or isinstance(exc, PermanentError)
        try:
            conn.send([WorkerFailed(index, str(exc) or type(exc).__name__, permanent)])
        except OSError:
            pass
    finally:
        if handler is not None:
            try:
                handler.close()
            except BaseException:
                pass


def _die_with_parent() -> None:
    """Linux: be killed when the main process dies (a killed backup leaves no worker
    writing on)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    parent = int(os.environ.get("CORESTATE_WORKER_PARENT", "0"))
    if parent and os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _parent_logging() -> dict[str, str]:
    """The main process's root logging level and line format, for its workers."""
    root = logging.getLogger()
    formats = [h.formatter._fmt for h in root.handlers if h.formatter and h.formatter._fmt]
    return {"CORESTATE_WORKER_LOG_LEVEL": str(root.level),
            "CORESTATE_WORKER_LOG_FORMAT": formats[0] if formats else logging.BASIC_FORMAT}


def _log_like_parent() -> None:
    """Log to stderr as the main process does (a warning from a worker reads like one
    from the main process)."""
    level = os.environ.get("CORESTATE_WORKER_LOG_LEVEL")
    if level is not None:
        logging.basicConfig(level=int(level), format=os.environ["CORESTATE_WORKER_LOG_FORMAT"])


class WorkerProcess:
    """The main process's side of a worker (see the module docstring)."""

    def __init__(self, index: int, job: Job, replies: Replies, what: str) -> None:
        ours, theirs = socket.socketpair()
        code = f"from corestate.pipeline.workers import serve; serve({theirs.fileno()})"
        env = {**os.environ, "CORESTATE_WORKER_PARENT": str(os.getpid()), **_parent_logging()}
        self.process = subprocess.Popen([sys.executable, "-c", code], pass_fds=[theirs.fileno()],
                                        env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.index = index
        self.what = what
        self._replies = replies
        self._stopping = False
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._outbox.put((index, job))
        self._sender = threading.Thread(target=self._send, name=f"{what}-{index}-sender",
                                        daemon=True)
        self._sender.start()
        self._reader = threading.Thread(target=self._read, name=f"{what}-{index}-reader",
                                        daemon=True)
        self._reader.start()

    def _send(self) -> None:
        while True:
            item = self._outbox.get()
            try:
                self.conn.send(item)
            except OSError:
                return  # the reader reports the death
            if item is None:
                return

    def _read(self) -> None:
        while True:
            try:
                out: list[Any] = self.conn.recv()
            except (EOFError, OSError):
                if not self._stopping:
                    self._replies.put((self.index, [self.died()]))
                return
            self._replies.put((self.index, out))

    def send(self, batch: list[Any]) -> None:
        self._outbox.put(batch)

    def died(self) -> WorkerFailed:
        try:
            code: int | None = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        how = f"was killed by signal {-code}" if code is not None and code < 0 else \
            f"exited with status {code}"
        return WorkerFailed(self.index, f"{self.what} worker process {self.index} {how}", False)

    def stop(self) -> None:
        self._stopping = True
        self._outbox.put(None)
        self._sender.join(timeout=30)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)
        self.conn.close()


class InlineWorker:
    """A handler run in the main process, with a worker's interface."""

    def __init__(self, index: int, job: Job, replies: Replies) -> None:
        self.handler = job.start()
        self.index = index
        self._replies = replies

    def send(self, batch: list[Any]) -> None:
        self._replies.put((self.index, self.handler.process(batch)))

    def stop(self) -> None:
        self.handler.close()


def cores() -> int:
    """How many cores this process may run on: the default number of workers."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
