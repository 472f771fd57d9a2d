"""Child interpreters that work for this process over a pipe.

A child is a plain ``python -m <module>`` joined to its parent by a socket pair and
:class:`multiprocessing.connection.Connection` (pickled requests and replies), not
multiprocessing's spawn or forkserver: those import the caller's ``__main__`` again in the
child, which re-runs scripts that lack an ``if __name__ == "__main__"`` guard; a fork would
copy the parent's thread pools (polars, librdkafka) in whatever state they are.

The child dies with the thread that started it (Linux ``PR_SET_PDEATHSIG``), so a parent
killed with SIGKILL leaves nothing running behind it. It starts with the parent's
``sys.path``, so what the parent pickles (a sink factory, a function) unpickles the same.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class ChildError(RuntimeError):
    """A child failed or died; the message says which and how (with its traceback when it
    reported one)."""


class Child:
    """One child interpreter running ``python -m module *args``; see the module doc.

    ``name`` is how errors refer to it ("the apply process"). The module's main calls
    :func:`connect_to_parent`, then answers requests; a reply ``("error", text)`` is raised
    here as ``error(f"{name} failed:\\n{text}")``.
    """

    def __init__(self, module: str, args: list[str], name: str,
                 error: type[ChildError] = ChildError) -> None:
        self.name, self._error = name, error
        ours, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", module, str(theirs.fileno()), str(os.getpid()), *args],
                pass_fds=[theirs.fileno()])
        self._conn = Connection(ours.detach())
        self._asked = False
        self.send(sys.path)

    @property
    def pid(self) -> int:
        return self._process.pid

    def send(self, request: Any) -> None:
        try:
            self._conn.send(request)
        except OSError:  # a broken pipe: the child is gone. A failure it reported first
            while self._conn.poll(0):  # is raised from here, else its exit code.
                self.receive(timeout_s=None)
            raise self._gone() from None

    def ready(self) -> bool:
        """Whether a reply can be received without waiting."""
        return self._conn.poll()

    def receive(self, timeout_s: float | None) -> Any:
        """The next reply; waits at most ``timeout_s`` (None: as long as the child lives)."""
        waited = 0.0
        while not self._conn.poll(1.0):  # wake up now and then to notice a dead child
            waited += 1.0
            if self._process.poll() is not None:
                raise self._gone()
            if timeout_s is not None and waited >= timeout_s:
                raise self._error(f"no reply from {self.name} within {timeout_s:.0f} s")
        try:
            reply = self._conn.recv()
        except (EOFError, OSError):
            raise self._gone() from None
        if isinstance(reply, tuple) and reply and reply[0] == "error":
            raise self._error(f"{self.name} failed:\n{reply[1]}")
        return reply

    def _gone(self) -> ChildError:
        try:
            self._process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            return self._error(f"{self.name} stopped answering")
        return self._error(f"{self.name} exited with code {self._process.returncode}")

    @property
    def exit_code(self) -> int | None:
        """The child's exit status (negative: the signal that ended it); None while alive."""
        return self._process.poll()

    def alive(self) -> bool:
        return self.exit_code is None

    def ask_to_close(self, request: Any) -> None:
        """Send ``request`` (the child's way to stop) once, if the child is alive, without
        waiting for it to exit: see :func:`close_all`."""
        if self._asked or not self.alive():
            return
        self._asked = True
        try:
            self.send(request)
        except ChildError as exc:
            log.warning("%s did not close cleanly: %s", self.name, exc)

    def close(self, request: Any = None, timeout_s: float = 30.0) -> None:
        """Ask the child to stop with ``request`` (if given and it is alive), then make
        sure it has: a child that does not exit in time is killed."""
        try:
            if request is not None:
                self.ask_to_close(request)
                try:
                    self._process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not close cleanly: timeout", self.name)
            if self.alive():
                self._process.kill()
            self._process.wait()
        finally:
            self._conn.close()


def close_all(children: Sequence[Child], request: Any = None) -> None:
    """:meth:`Child.close` for several children, which then exit side by side (an
    interpreter takes a while to exit): all are asked before any is waited for."""
    if request is not None:
        for child in children:
            child.ask_to_close(request)
    for child in children:
        child.close(request)


def connect_to_parent() -> tuple[Connection, list[str]]:
    """In the child's main: die with the parent, take its ``sys.path``; returns the
    connection and the extra arguments the parent gave."""
    conn, parent_pid = Connection(int(sys.argv[1])), int(sys.argv[2])
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above ran
        os._exit(1)
    sys.path[:] = conn.recv()
    return conn, sys.argv[3:]


Handler = Callable[[tuple[Any, ...]], tuple[Any, ...] | None]


def serve(start: Callable[[Connection, list[str]], Handler]) -> None:
    """The child's main loop. ``start(connection, args)`` sets the child up (it may receive
    its own set-up message first) and returns the handler of each request, whose reply (if
    not None) is sent back. Requests are handled one at a time, in order, until
    ``("close",)`` or the parent's end of the pipe closes. A failure anywhere is sent to the
    parent as ``("error", traceback)`` and ends the child with code 1."""
    conn, args = connect_to_parent()
    try:
        handle = start(conn, args)
        while (request := conn.recv())[0] != "close":
            if (reply := handle(request)) is not None:
                conn.send(reply)
    except EOFError:  # the parent is gone
        return
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
        sys.exit(1)
