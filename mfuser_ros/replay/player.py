"""Feeding a bag's camera frames to the node's worker, as :func:`mfuser_ros.replay.runner.run_replay` replays it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mfuser_model.errors import MFuserError
from mfuser_ros.node.config import NodeConfig
from mfuser_ros.node.conversions import message_to_rgb
from mfuser_ros.node.model_loader import LoadedModel
from mfuser_ros.node.pipeline import FrameWorker
from mfuser_ros.node.shutdown import ShutdownSignals

if TYPE_CHECKING:
    from mfuser_ros.replay.runner import _Run as Run

__all__ = ["Player", "drain"]


class Player:
    """Feeds the bag's camera frames to the node's worker: back to back (evaluation) or at the recorded rate."""

    def __init__(self, run: Run, worker: FrameWorker, loaded: LoadedModel, config: NodeConfig,
                 signals: ShutdownSignals | None = None) -> None:
        self.run = run
        self.signals = signals
        if signals is not None:
            signals.running()  # before this, a signal ends the process at once (nothing is written yet)
        self.worker = worker
        self.loaded = loaded
        self.max_batch = config.max_batch
        self.warmed = not config.warmup
        self.warmup_s = 0.0
        self.batch: list[tuple[int, Any]] = []
        self.bag_t0: int | None = None
        self.wall_t0 = 0
        self.rate = run.options.rate
        self.recorded_ns = 0  # log time of the newest frame handed to the model (evaluation mode)
        if run.options.realtime:
            run.clock_ns = self.bag_clock
            worker.clock_ns = self.bag_clock
            worker.start()
        else:
            # The node's clock-skew check (stamp far from "now") against the time the frame was recorded: a bag
            # replayed days later is not skewed, a camera that stamped sec=0 on the vehicle still is.
            worker.clock_ns = self.recorded_clock

    def stopping(self) -> bool:
        """A shutdown signal (SIGINT, SIGTERM) asked the replay to stop."""
        return self.signals is not None and self.signals.requested

    def wait(self, seconds: float) -> bool:
        """Sleep (real-time pacing), waking early on a shutdown signal; True when one came."""
        if self.signals is None:
            time.sleep(seconds)
            return False
        return self.signals.wait(seconds)

    def recorded_clock(self) -> int:
        """The bag's time at the newest frame of the batch in the model (evaluation mode's "now")."""
        return self.recorded_ns

    def bag_clock(self) -> int:
        """The bag's time as it plays (``use_sim_time`` for the node)."""
        return (self.bag_t0 or 0) + int((time.monotonic_ns() - self.wall_t0) * self.rate)

    def warmup(self, msg: Any) -> None:
        """The node warms up at activation; here on the first frame's size, before any timing."""
        self.warmed = True
        t0 = time.perf_counter()
        with contextlib.suppress(MFuserError):  # a malformed first frame is counted by the pipeline itself
            self.loaded.pipeline.warmup(*message_to_rgb(msg, self.loaded.pipeline.limits).shape[:2])
        self.warmup_s = time.perf_counter() - t0

    def frame(self, camera: int, timestamp: int, msg: Any) -> None:
        """Hand one camera frame to the worker."""
        if not self.warmed:
            self.warmup(msg)
        if self.run.options.realtime:
            if self.bag_t0 is None:
                self.bag_t0, self.wall_t0 = timestamp, time.monotonic_ns()
            delay = (timestamp - self.bag_t0) / self.rate - (time.monotonic_ns() - self.wall_t0)
            if delay > 0 and self.wait(delay / 1e9):
                return  # a shutdown signal: this frame stays unfinished
            if self.run.fatal is not None:
                raise self.run.fatal
            self.worker.submit(camera, msg)
            return
        # The node's batching: the newest frame of each camera, at most max_batch frames per model call.
        if any(c == camera for c, _ in self.batch) or len(self.batch) >= self.max_batch:
            self.flush()
        self.batch.append((camera, msg))
        self.recorded_ns = max(self.recorded_ns, timestamp)

    def flush(self) -> None:
        """Process the frames waiting for a batch."""
        if self.batch:
            batch, self.batch = self.batch, []
            self.worker.process(batch)

    def finish(self) -> None:
        """Process what is left (evaluation) or wait for the worker to take every frame (real time)."""
        self.flush()
        if self.run.options.realtime:
            drain(self.worker, self.run, self.stopping)
            if self.run.fatal is not None:
                raise self.run.fatal


def drain(worker: FrameWorker, run: Run, stopping: Callable[[], bool], timeout_s: float = 120.0) -> None:
    """Wait until the worker has taken (processed, failed or dropped) every submitted frame, or a signal came."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = all(s.frames_out + s.errors + s.dropped >= s.frames_in for s in worker.stats)
        if done or run.fatal is not None or stopping():
            return
        time.sleep(0.005)
    run.progress.write("mfuser-replay: warning: the worker did not finish the last frames in time")
