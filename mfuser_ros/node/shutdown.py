"""SIGINT and SIGTERM over the whole life of a node process (rclpy or bare DDS), without importing either.

Ctrl-C under ``ros2 launch`` reaches the node twice: from the terminal (the whole process group) and from launch,
which forwards it; ``systemctl stop`` and ``docker stop`` send SIGTERM. Python's default turns SIGINT into a
KeyboardInterrupt wherever the main thread is (inside an import, inside ``destroy_node``), which prints a traceback
and can leave a half-destroyed node. :class:`ShutdownSignals` instead:

- while the process is starting (imports, before the node exists), the first signal exits at once with status 0:
  nothing has been published and nothing needs cleaning up;
- once the node runs (:meth:`running`), a signal is recorded; the node's loop sees :attr:`requested` and shuts
  down in order (the frame in the model finishes, within ``shutdown_timeout_s``);
- during that shutdown, a signal within ``repeat_after_s`` of the first is the same Ctrl-C arriving twice (terminal
  and launch) and is ignored; a later one (a second Ctrl-C, launch escalating to SIGTERM) leaves at once, exit 0.

Those two immediate exits use ``exit_code`` (0 for the node; mfuser-replay uses 130, the shell's code for Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Any, NoReturn

__all__ = ["ShutdownSignals", "leave_process"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def leave_process(code: int) -> NoReturn:
    """End the process now, without interpreter teardown: the way out once the node has shut down, and while a
    worker is still inside the model.

    A normal exit would destroy the native thread pools under a running forward and abort the process
    ("terminate called without an active exception", exit -6); after a clean shutdown it would still spend seconds
    tearing down torch's and timm's modules (7-9 s measured on a busy 2-core machine, longer than the 5 s
    ``ros2 launch`` waits after SIGINT before escalating). Standard streams are flushed first.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe must not keep the process alive
            stream.flush()
    os._exit(code)


class ShutdownSignals:
    """Install with :meth:`install` as the first thing a node process does."""

    def __init__(self, repeat_after_s: float = 1.0, exit_code: int = 0) -> None:
        self.received: list[str] = []
        self.repeat_after_s = repeat_after_s
        self.exit_code = exit_code  # of the two immediate exits (while starting; the later repeat)
        self._event = threading.Event()
        self._running = False
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def install(self) -> ShutdownSignals:
        """Take over SIGINT and SIGTERM (main thread only, as Python requires)."""
        self._previous = {sig: signal.signal(sig, self._handle) for sig in _SIGNALS}
        return self

    def restore(self) -> None:
        """Give SIGINT and SIGTERM back to the handlers they had before :meth:`install`."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def running(self) -> None:
        """The node exists: from now on signals request an orderly shutdown instead of exiting."""
        self._running = True

    @property
    def requested(self) -> bool:
        """A shutdown signal arrived."""
        return self._event.is_set()

    @property
    def reason(self) -> str:
        """Name of the first signal received (``SIGINT``), or an empty string."""
        return self.received[0] if self.received else ""

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking early on a signal; True when shutdown was requested."""
        return self._event.wait(timeout)

    def request(self, reason: str) -> None:
        """Ask for the orderly shutdown without a signal (e.g. the worker died); ``reason`` becomes :attr:`reason`."""
        self.received.append(reason)
        self._first = self._first or time.monotonic()
        self._event.set()

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if not self._running:
            self.received.append(name)
            print(f"{name} while starting: exiting", file=sys.stderr, flush=True)
            raise SystemExit(self.exit_code)
        if self._event.is_set() and time.monotonic() - self._first >= self.repeat_after_s:
            print(f"{name} again: leaving now, without waiting for the shutdown to finish", file=sys.stderr,
                  flush=True)
            leave_process(self.exit_code)
        self.received.append(name)
        self._first = self._first or time.monotonic()
        self._event.set()
