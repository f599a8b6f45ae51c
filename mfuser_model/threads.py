"""The CPU thread policy of every command and the node, in one place.

torch's own default is one intra-op thread per core. That is the fastest choice on a machine nobody else uses, and
the slowest as soon as anything else does: a parallel region ends only when its last thread does, so one thread
descheduled by another process stalls every small operator for a scheduler time slice. On a 2-core machine with
one other busy process, a tiny-model forward went from 0.07 s (1 thread) to 0.3-3 s (2 threads), the training step
from 0.17 s to 8.5 s (``benchmarks/threads.py`` measures it).

The policy:

- ``threads = N`` (N >= 1): exactly N threads for torch's intra-op pool, OpenCV and onnxruntime; torch's inter-op
  pool gets one thread (nothing here runs inter-op parallel work).
- ``threads = 0``: every CPU this process may run on (``os.sched_getaffinity``): for a dedicated machine.
- not given (``None``): ``$OMP_NUM_THREADS`` when set (the knob torch, torchrun and OpenMP users already know),
  otherwise :data:`DEFAULT_THREADS` = 1, safe on shared machines (vehicle computers running many nodes, CI, the
  fleet replay's several workers per machine). On a GPU the CPU threads barely matter; on a dedicated CPU machine
  pass ``0``.
- With more than one thread, OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``, onnxruntime without
  spinning) unless the user chose a wait policy: waiting threads then sleep instead of spinning against other
  processes. The OpenMP setting only takes effect when :func:`apply_threads` runs before torch is imported (every
  command here does); later, only the thread counts change.

Apply it once, in the process's main thread, before worker threads start (threads made later inherit the count).
This module imports nothing heavy at import time, so a command can call it before loading torch.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass

from mfuser_model.errors import ConfigError

__all__ = [
    "DEFAULT_THREADS",
    "ThreadSettings",
    "add_threads_argument",
    "applied_threads",
    "apply_threads",
    "available_cpus",
    "resolve_threads",
]

DEFAULT_THREADS = 1


@dataclass(frozen=True)
class ThreadSettings:
    """What :func:`apply_threads` set, for start-up logs and onnxruntime sessions.

    Attributes:
        threads: intra-op threads of torch, OpenCV and onnxruntime.
        source: where the number came from: ``"option"``, ``"all CPUs"``, ``"OMP_NUM_THREADS"`` or ``"default"``.
        cpus: CPUs this process may run on.
        passive_wait: OpenMP and onnxruntime threads sleep while waiting (set before torch was imported).
    """

    threads: int
    source: str
    cpus: int
    passive_wait: bool

    def describe(self) -> str:
        """One start-up line, e.g. ``threads 1 of 2 CPUs (default; --threads 0 uses all)``."""
        hint = "; threads 0 uses all" if self.threads < self.cpus else ""
        wait = ", passive wait" if self.passive_wait else ""
        return f"threads {self.threads} of {self.cpus} CPUs ({self.source}{wait}{hint})"


_applied: ThreadSettings | None = None


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def resolve_threads(threads: int | None) -> tuple[int, str]:
    """The thread count the policy gives ``threads`` (see the module docstring) and where it came from.

    Raises:
        ConfigError: a negative count, or an ``OMP_NUM_THREADS`` that is not a positive integer.
    """
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            msg = f"threads: {threads!r} must be an integer >= 0 (0 = every CPU of this process)"
            raise ConfigError(msg)
        return (available_cpus(), "all CPUs") if threads == 0 else (threads, "option")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        # OpenMP also accepts a nested list ("4,2"); its first entry is the outer pool.
        first = env.split(",")[0].strip()
        if not first.isdigit() or int(first) < 1:
            msg = f"OMP_NUM_THREADS={env!r} is not a positive integer; unset it or pass threads explicitly"
            raise ConfigError(msg)
        return int(first), "OMP_NUM_THREADS"
    return DEFAULT_THREADS, "default"


def apply_threads(threads: int | None = None) -> ThreadSettings:
    """Apply the policy to this process: torch intra-op and inter-op pools, OpenCV, later onnxruntime sessions.

    Args:
        threads: N >= 1 threads, 0 for every CPU, None for ``$OMP_NUM_THREADS`` or :data:`DEFAULT_THREADS`.

    Raises:
        ConfigError: an invalid count (see :func:`resolve_threads`).
    """
    global _applied  # noqa: PLW0603 - the process-wide setting, read by onnxruntime sessions
    count, source = resolve_threads(threads)
    passive = False
    if "torch" not in sys.modules:
        # libgomp reads these once, when torch loads it; child processes (DataLoader workers) inherit them too.
        os.environ["OMP_NUM_THREADS"] = str(count)
        if count > 1 and "OMP_WAIT_POLICY" not in os.environ:
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        passive = os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    import torch  # noqa: PLC0415 - after the environment above

    torch.set_num_threads(count)
    with contextlib.suppress(RuntimeError):  # settable once, before any inter-op work; a second apply keeps it
        torch.set_num_interop_threads(1)
    try:
        import cv2  # noqa: PLC0415 - optional for the library
    except ImportError:
        pass
    else:
        cv2.setNumThreads(count)
    _applied = ThreadSettings(count, source, available_cpus(), passive)
    return _applied


def applied_threads() -> ThreadSettings | None:
    """The settings of the last :func:`apply_threads` in this process (None: the policy was never applied)."""
    return _applied


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--threads`` option every command shares (default None: ``$OMP_NUM_THREADS`` or 1)."""
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=f"CPU threads for torch, OpenCV and onnxruntime: N, or 0 for every CPU (a dedicated "
                             f"machine); default $OMP_NUM_THREADS or {DEFAULT_THREADS} (safe on shared machines)")
