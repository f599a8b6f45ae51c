"""SIGINT and SIGTERM over the whole life of a node process (rclpy or bare DDS), without importing either.

Ctrl-C under ``ros2 launch`` reaches the node twice: from the terminal (the whole process group) and from launch,
which forwards it; ``systemctl stop`` and ``docker stop`` send SIGTERM. Python's default turns SIGINT into a
KeyboardInterrupt wherever the main thread is (inside an import, inside ``destroy_node``), which prints a traceback
and can leave a half-destroyed node. :class:`ShutdownSignals` instead:

- while the process is starting (imports, before the node exists), the first signal exits at once with status 0:
  nothing has been published and nothing needs cleaning up;
- once the node runs (:meth:`running`), signals are recorded; the node's loop sees :attr:`requested` and shuts
  down in order, and further signals during that shutdown are ignored.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

__all__ = ["ShutdownSignals"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ShutdownSignals:
    """Install with :meth:`install` as the first thing a node process does."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self._event = threading.Event()
        self._running = False

    def install(self) -> ShutdownSignals:
        """Take over SIGINT and SIGTERM (main thread only, as Python requires)."""
        for sig in _SIGNALS:
            signal.signal(sig, self._handle)
        return self

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

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received.append(signal.Signals(signum).name)
        if not self._running:
            print(f"{signal.Signals(signum).name} while starting: exiting", file=sys.stderr, flush=True)
            raise SystemExit(0)
        self._event.set()
