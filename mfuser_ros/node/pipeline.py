"""The ROS-free frame pipeline: decode message -> run model -> encode outputs, with a latest-frame worker.

:class:`SegmentationPipeline` is synchronous and stateless per frame (decode, batch through the segmenter, build
output images). :class:`FrameWorker` adds the real-time policy every transport shares: subscription callbacks call
:meth:`FrameWorker.submit`, which only swaps the camera's *latest* slot (never blocks, counts the frame it replaced
as dropped); one worker thread takes the newest frame of every camera that has one, runs them through the model as
one batch and hands the results to an :class:`OutputSink` (rclpy publishers, DDS writers, a bag writer). CameraInfo
messages go through :meth:`FrameWorker.submit_camera_info` and come out paired with their frame, scaled to its output
size (:mod:`mfuser_ros.node.camera_info`).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mfuser_model.classes import CITYSCAPES_PALETTE
from mfuser_ros.errors import FrameError, clip
from mfuser_ros.node.camera_info import CameraInfoData, CameraInfoPairer
from mfuser_ros.node.config import NodeConfig
from mfuser_ros.node.conversions import (
    CompressedOutput,
    ImageLimits,
    OutputImage,
    check_message,
    confidence_to_mono8,
    encode_jpeg_bgr8,
    encode_png_mono8,
    labels_to_color_bgr,
    message_to_rgb,
    overlay_bgr,
    palette_lut_bgr,
    stamp_ns,
)
from mfuser_ros.node.shutdown import leave_process
from mfuser_ros.node.stats import ERROR, CameraStats, DiagnosticStatusData, DiagnosticThresholds, build_statuses

__all__ = [
    "CameraOutputs",
    "FrameFailure",
    "FrameTiming",
    "FrameWorker",
    "LatestFrameSlots",
    "OutputSink",
    "SegmentationPipeline",
    "SegmenterLike",
    "ThrottledLog",
    "Wanted",
    "leave_process",
    "stamp_ns",
]


class SegmenterLike(Protocol):
    """What the pipeline needs from ``mfuser_model.inference.Segmenter``."""

    def segment_batch(self, images: list[np.ndarray], output_sizes: list[tuple[int, int]] | None = None, *,
                      with_confidence: bool = True) -> list[Any]:
        """RGB uint8 images -> results with ``labels`` (H, W) uint8 and ``confidence`` (H, W) float32."""
        ...


@dataclass(frozen=True)
class Wanted:
    """Optional outputs to compute for one frame (raw labels are always computed).

    The ``*_compressed`` flags are the image_transport ``<kind>/compressed`` topics: labels as lossless PNG, colour
    and overlay as JPEG.
    """

    color: bool = False
    overlay: bool = False
    confidence: bool = False
    labels_compressed: bool = False
    color_compressed: bool = False
    overlay_compressed: bool = False


@dataclass
class FrameTiming:
    """Milliseconds per stage of one frame; ``model_ms`` is the frame's batch's model call."""

    decode_ms: float = 0.0
    model_ms: float = 0.0
    encode_ms: float = 0.0
    publish_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        """Sum of all stages."""
        return self.decode_ms + self.model_ms + self.encode_ms + self.publish_ms


@dataclass
class CameraOutputs:
    """Everything to publish for one input frame; ``header`` is the input message's header object, unchanged.

    ``input_size`` is the decoded input's (height, width) (the CameraInfo is scaled from it to the labels' size);
    ``compressed`` maps ``labels``/``color``/``overlay`` to their CompressedImage payload when wanted.
    """

    camera: int
    header: Any
    labels: OutputImage
    color: OutputImage | None
    overlay: OutputImage | None
    confidence: OutputImage | None
    timing: FrameTiming
    input_size: tuple[int, int] = (0, 0)
    compressed: dict[str, CompressedOutput] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class FrameFailure:
    """A frame that produced no output: the camera, its header (None if unreadable) and why."""

    camera: int
    header: Any
    kind: str
    reason: str


def _check_stamp(msg: Any) -> None:
    try:
        stamp_ns(msg.header)
    except Exception as err:  # any object can arrive here; none may stop the worker
        reason = f"message without a readable header stamp ({type(err).__name__}: {clip(str(err))})"
        raise FrameError(reason) from err


class SegmentationPipeline:
    """Decode, segment and encode frames; no threads, no transport.

    Args:
        segmenter: object with ``segment_batch`` (``mfuser_model.inference.Segmenter``).
        limits: largest accepted input image.
        output_size: (height, width) of every output, or None for each input's own size.
        overlay_alpha: weight of the colour mask in the overlay.
        palette: RGB colour per class id.
        max_batch: most frames per model call.
        png_level / jpeg_quality: compression of the ``labels/compressed`` (PNG) and colour/overlay (JPEG) outputs.
    """

    def __init__(self, segmenter: SegmenterLike, *, limits: ImageLimits | None = None,
                 output_size: tuple[int, int] | None = None, overlay_alpha: float = 0.5,
                 palette: tuple[tuple[int, int, int], ...] = CITYSCAPES_PALETTE, max_batch: int = 4,
                 png_level: int = 3, jpeg_quality: int = 90) -> None:
        self.segmenter = segmenter
        self.limits = limits or ImageLimits()
        self.output_size = output_size
        self.overlay_alpha = overlay_alpha
        self.max_batch = max_batch
        self.palette = tuple(palette)
        self.png_level = png_level
        self.jpeg_quality = jpeg_quality
        self._lut_bgr = palette_lut_bgr(palette)

    @classmethod
    def from_config(cls, config: NodeConfig, segmenter: SegmenterLike,
                    palette: tuple[tuple[int, int, int], ...] = CITYSCAPES_PALETTE) -> SegmentationPipeline:
        """Pipeline with the limits, output size, overlay weight, batch size and compression of ``config``."""
        return cls(segmenter, limits=ImageLimits(config.max_width, config.max_height),
                   output_size=config.output_size, overlay_alpha=config.overlay_alpha, palette=palette,
                   max_batch=config.max_batch, png_level=config.png_level, jpeg_quality=config.jpeg_quality)

    def check(self, msg: Any) -> None:
        """The cheap checks of :meth:`decode` (declared sizes, payload length, compressed header, header stamp),
        without decoding. Raises FrameError on a message that is malformed on its face."""
        check_message(msg, self.limits)
        _check_stamp(msg)

    def decode(self, msg: Any) -> np.ndarray:
        """Image or CompressedImage -> (H, W, 3) uint8 RGB. Raises FrameError on a malformed message.

        The header is checked too: every output carries it and latency reads its stamp.
        """
        rgb = message_to_rgb(msg, self.limits)
        _check_stamp(msg)
        return rgb

    def encode(self, camera: int, header: Any, rgb: np.ndarray, result: Any, wanted: Wanted,
               timing: FrameTiming) -> CameraOutputs:
        """Turn one segmentation result into output images (labels always; the rest when wanted)."""
        t0 = time.perf_counter()
        labels = np.ascontiguousarray(result.labels, dtype=np.uint8)
        color = overlay = confidence = None
        compressed: dict[str, CompressedOutput] = {}
        if wanted.labels_compressed:
            compressed["labels"] = encode_png_mono8(labels, self.png_level)
        if wanted.color or wanted.overlay or wanted.color_compressed or wanted.overlay_compressed:
            color_bgr = labels_to_color_bgr(labels, self._lut_bgr)
            color = OutputImage("bgr8", color_bgr) if wanted.color else None
            if wanted.color_compressed:
                compressed["color"] = encode_jpeg_bgr8(color_bgr, self.jpeg_quality)
            if wanted.overlay or wanted.overlay_compressed:
                overlay_image = overlay_bgr(rgb, color_bgr, labels, self.overlay_alpha)
                overlay = OutputImage("bgr8", overlay_image) if wanted.overlay else None
                if wanted.overlay_compressed:
                    compressed["overlay"] = encode_jpeg_bgr8(overlay_image, self.jpeg_quality)
        if wanted.confidence:
            confidence = OutputImage("mono8", confidence_to_mono8(np.asarray(result.confidence, dtype=np.float32)))
        timing.encode_ms = (time.perf_counter() - t0) * 1e3
        return CameraOutputs(camera, header, OutputImage("mono8", labels), color, overlay, confidence, timing,
                             input_size=(int(rgb.shape[0]), int(rgb.shape[1])), compressed=compressed)

    def run(self, frames: Sequence[tuple[int, Any]],
            wanted: Callable[[int], Wanted] = lambda _camera: Wanted()) -> list[CameraOutputs | FrameFailure]:
        """Process frames (camera index, message) as one batch; results in the same order.

        Malformed messages become :class:`FrameFailure` entries (kind ``"malformed"``) and the rest still run.
        A model failure (``RuntimeError`` such as CUDA out of memory, or ``ValueError`` from an input the network
        cannot take, e.g. an image smaller than its token pyramid) fails that model call's frames (kind ``"model"``)
        instead of stopping the node: a robot is better served by the next frame than by a crash.
        """
        results: list[CameraOutputs | FrameFailure | None] = [None] * len(frames)
        decoded: list[tuple[int, np.ndarray, FrameTiming]] = []
        for i, (camera, msg) in enumerate(frames):
            t0 = time.perf_counter()
            header = getattr(msg, "header", None)
            try:
                rgb = self.decode(msg)
            except FrameError as err:
                results[i] = FrameFailure(camera, header, "malformed", str(err))
                continue
            decoded.append((i, rgb, FrameTiming(decode_ms=(time.perf_counter() - t0) * 1e3)))
        for start in range(0, len(decoded), self.max_batch):
            chunk = decoded[start:start + self.max_batch]
            # Confidence maps cost a second pass over the output; only compute them while someone listens.
            confident = any(wanted(frames[i][0]).confidence for i, _, _ in chunk)
            try:
                done = [(chunk, *self._segment(chunk, confident))]
            except (RuntimeError, ValueError) as err:
                # One frame can sink the whole batch (an odd size, memory): retry one by one so only it fails.
                done = []
                for item in chunk if len(chunk) > 1 else []:
                    try:
                        done.append(([item], *self._segment([item], confident)))
                    except (RuntimeError, ValueError) as one_err:
                        results[item[0]] = self._model_failure(frames, item[0], one_err)
                if len(chunk) == 1:
                    results[chunk[0][0]] = self._model_failure(frames, chunk[0][0], err)
            for part, segmented, model_ms in done:
                for (i, rgb, timing), result in zip(part, segmented, strict=True):
                    camera, msg = frames[i]
                    timing.model_ms = model_ms
                    results[i] = self.encode(camera, msg.header, rgb, result, wanted(camera), timing)
        return results  # type: ignore[return-value]

    def _segment(self, chunk: list[tuple[int, np.ndarray, FrameTiming]],
                 with_confidence: bool) -> tuple[list[Any], float]:
        """One model call for the RGB images of ``chunk``; returns the results and its milliseconds."""
        images = [rgb for _, rgb, _ in chunk]
        sizes = [self.output_size or rgb.shape[:2] for rgb in images]
        t0 = time.perf_counter()
        segmented = self.segmenter.segment_batch(images, output_sizes=sizes, with_confidence=with_confidence)
        return segmented, (time.perf_counter() - t0) * 1e3

    @staticmethod
    def _model_failure(frames: Sequence[tuple[int, Any]], i: int, err: Exception) -> FrameFailure:
        camera, msg = frames[i]
        return FrameFailure(camera, msg.header, "model", f"model failed: {clip(str(err), 200)}")

    def process(self, msg: Any, wanted: Wanted = Wanted(), camera: int = 0) -> CameraOutputs:
        """One frame, synchronously. Raises FrameError (malformed) or RuntimeError (model)."""
        (result,) = self.run([(camera, msg)], lambda _c: wanted)
        if isinstance(result, FrameFailure):
            if result.kind == "malformed":
                raise FrameError(result.reason)
            raise RuntimeError(result.reason)
        return result

    def warmup(self, height: int, width: int) -> None:
        """Run one black frame through the model so allocations and kernel choices happen before real frames."""
        self.segmenter.segment_batch([np.zeros((height, width, 3), dtype=np.uint8)],
                                     output_sizes=[self.output_size or (height, width)])


class LatestFrameSlots:
    """One slot per camera holding only the newest frame; the worker takes every filled slot at once."""

    def __init__(self, cameras: int) -> None:
        self._slots: list[tuple[Any, float] | None] = [None] * cameras
        self._cond = threading.Condition()
        self._closed = False

    def put(self, camera: int, msg: Any) -> bool:
        """Store ``msg`` as the camera's newest frame; True when it replaced one nobody took (a drop)."""
        with self._cond:
            replaced = self._slots[camera] is not None
            self._slots[camera] = (msg, time.monotonic())
            self._cond.notify()
        return replaced

    def take(self, timeout: float) -> list[tuple[int, Any]]:
        """Wait up to ``timeout`` s for frames; return and clear all filled slots as (camera, msg)."""
        with self._cond:
            if not self._closed and not any(s is not None for s in self._slots):
                self._cond.wait(timeout)
            frames = [(i, s[0]) for i, s in enumerate(self._slots) if s is not None]
            self._slots = [None] * len(self._slots)
            return frames

    def close(self) -> None:
        """Wake a waiting ``take``; later takes return at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class OutputSink(Protocol):
    """Where results go: the transport's publishers."""

    def wanted(self, camera: int) -> Wanted:
        """Which optional outputs have subscribers for this camera right now."""
        ...

    def publish(self, outputs: CameraOutputs) -> None:
        """Publish one frame's outputs (header already the input's)."""
        ...

    def publish_camera_info(self, camera: int, info: CameraInfoData) -> None:
        """Publish a frame's CameraInfo (scaled to its labels, with their header); called after :meth:`publish`,
        possibly from a subscription callback when the CameraInfo arrived after the frame's outputs."""
        ...


class ThrottledLog:
    """At most one message per key and period; the next one says how many were suppressed."""

    def __init__(self, log: Callable[[str], None], period_s: float, clock: Callable[[], float] = time.monotonic):
        self._log = log
        self._period = period_s
        self._clock = clock
        self._last: dict[Any, float] = {}
        self._suppressed: dict[Any, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: Any, message: str) -> bool:
        """Log ``message`` unless ``key`` was logged within the period; True if it was logged."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._period:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        self._log(f"{message} ({suppressed} similar suppressed)" if suppressed else message)
        return True


class FrameWorker:
    """Latest-frame policy + batching + statistics around a pipeline, on one background thread.

    Args:
        pipeline: the synchronous pipeline (may be set later, before :meth:`start`: the lifecycle node loads the
            model at activation).
        cameras: output namespace of each camera (for logs and diagnostics).
        sink: receives every frame's outputs.
        clock_ns: the transport's clock (ROS time, honouring use_sim_time) for latency = now - header.stamp.
        warn: logger for bad frames (throttled per camera and kind).
        log_throttle_s: throttle period. stats_window_s: statistics window.
        clock_skew_limit_s: outputs whose stamp is further than this from ``clock_ns`` count as clock skew (a
            warning) instead of latency.
        on_failure: called (on the dying worker thread, with the reason) when the thread ends on an unexpected
            error. Frames cannot cause that (bad frames and model failures are per frame), so it means a bug or a
            broken transport: the transports publish an ERROR status and exit non-zero, for a supervisor to restart.
        camera_info_timeout_s: how long a frame waits for its CameraInfo (None: no limit; see
            :class:`~mfuser_ros.node.camera_info.CameraInfoPairer`).
    """

    def __init__(self, pipeline: SegmentationPipeline | None, cameras: Sequence[str], sink: OutputSink, *,
                 clock_ns: Callable[[], int] = time.time_ns, warn: Callable[[str], None] = print,
                 log_throttle_s: float = 5.0, stats_window_s: float = 5.0, clock_skew_limit_s: float = 60.0,
                 camera_info_timeout_s: float | None = 1.0,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.pipeline = pipeline
        self.cameras = list(cameras)
        self.sink = sink
        self.clock_ns = clock_ns
        self.stats = [CameraStats(stats_window_s, clock_skew_limit_ms=clock_skew_limit_s * 1e3)
                      for _ in self.cameras]
        self.camera_infos = CameraInfoPairer(len(self.cameras), camera_info_timeout_s)
        self._unmatched_logged = [0] * len(self.cameras)
        self._slots = LatestFrameSlots(len(self.cameras))
        self._warn = warn
        self._log = ThrottledLog(warn, log_throttle_s)
        self._on_failure = on_failure
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.max_batch_seen = 0
        self.failure = ""  # set when the thread died of an unexpected error (shown in diagnostics as ERROR)
        self.busy = False  # a batch is in the model right now (shutdown logs that it waits for it)

    def submit(self, camera: int, msg: Any) -> None:
        """Subscription callback body: keep ``msg`` as the camera's newest frame; never blocks on the model.

        A message that is malformed on its face (sizes, payload length, compressed header, stamp: the pipeline's
        cheap :meth:`~SegmentationPipeline.check`, no decoding) is counted and skipped here, so it never takes the
        slot from a good frame still waiting in it: a flood of bad messages cannot starve a camera.
        """
        if self.pipeline is not None:
            try:
                self.pipeline.check(msg)
            except FrameError as err:
                self.reject(camera, "malformed", str(err))
                return
        self.stats[camera].record_input(self._slots.put(camera, msg))

    def reject(self, camera: int, kind: str, reason: str) -> None:
        """A message that never becomes a frame (malformed on its face, undecodable CDR): an input and an error."""
        self.stats[camera].record_input(False)
        self.stats[camera].record_error(kind)
        self._log((camera, kind), f"camera '{self.cameras[camera]}': frame skipped: {reason}")

    def reject_camera_info(self, camera: int, reason: str) -> None:
        """A CameraInfo that cannot be used: logged (throttled); frames go on without it."""
        self._log((camera, "camera_info"), f"camera '{self.cameras[camera]}': CameraInfo skipped: {reason}")

    def submit_camera_info(self, camera: int, msg: Any) -> None:
        """CameraInfo subscription callback body: pair it with its frame (publishing it if that frame is done)."""
        try:
            infos = self.camera_infos.add_info(camera, msg)
        except FrameError as err:
            self.reject_camera_info(camera, str(err))
            return
        for info in infos:
            self.sink.publish_camera_info(camera, info)

    def start(self) -> None:
        """Start the worker thread (after a :meth:`stop` that timed out, once the old thread's batch is done)."""
        if self._thread is not None:
            if not self._stop.is_set():
                return
            self._thread.join()
        self._stop.clear()
        self.failure = ""
        self._slots = LatestFrameSlots(len(self.cameras))
        self._thread = threading.Thread(target=self._loop, name="mfuser-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop after the batch in flight (waiting up to ``timeout`` s); frames still waiting are discarded.

        Returns:
            True when the thread has ended. False when it is still inside the model after ``timeout``: the thread
            keeps running (``running`` stays true), and the process must not run its normal teardown while it
            does, because destroying the native thread pools under a running forward aborts the process
            ("terminate called without an active exception"). Transports then leave with ``os._exit``.
        """
        self._stop.set()
        self._slots.close()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            return False
        self._thread = None
        return True

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                frames = self._slots.take(timeout=0.1)
                if frames and not self._stop.is_set():
                    self.busy = True
                    try:
                        self.process(frames)
                    finally:
                        self.busy = False
        except Exception as err:
            # Bad frames and model failures are handled per frame; anything else (a transport that cannot
            # publish, a bug) ends the thread. Record it so /diagnostics reports ERROR, tell the transport (which
            # exits non-zero), then let the thread's excepthook print the traceback.
            self.failure = f"{type(err).__name__}: {clip(str(err), 200)}"
            self._warn(f"worker stopped: {self.failure}")
            if self._on_failure is not None:
                self._on_failure(self.failure)
            raise

    def run_once(self, timeout: float = 0.0) -> int:
        """Without the thread: process the frames waiting now (after up to ``timeout`` s); returns their count."""
        frames = self._slots.take(timeout)
        if frames:
            self.process(frames)
        return len(frames)

    def process(self, frames: list[tuple[int, Any]]) -> None:
        """Run one batch and publish; also usable without the thread (replay, tests)."""
        self.batches += 1
        self.max_batch_seen = max(self.max_batch_seen, len(frames))
        for result in self.pipeline.run(frames, self.sink.wanted):
            if isinstance(result, FrameFailure):
                self.stats[result.camera].record_error(result.kind)
                self._log((result.camera, result.kind),
                          f"camera '{self.cameras[result.camera]}': frame skipped: {result.reason}")
                continue
            t0 = time.perf_counter()
            self.sink.publish(result)
            result.timing.publish_ms = (time.perf_counter() - t0) * 1e3
            latency_ms = (self.clock_ns() - stamp_ns(result.header)) / 1e6
            if not self.stats[result.camera].record_output(result.timing.total_ms, latency_ms):
                self._log((result.camera, "clock_skew"),
                          f"camera '{self.cameras[result.camera]}': header stamp is {abs(latency_ms) / 1e3:.3g} s "
                          f"{'behind' if latency_ms > 0 else 'ahead of'} the node's clock: counted as clock skew, "
                          "left out of latency (check the camera's clock sync, or use_sim_time)")
            for info in self.camera_infos.add_frame(result.camera, result.header, result.input_size,
                                                    result.labels.data.shape[:2]):
                self.sink.publish_camera_info(result.camera, info)
        self.camera_infos.expire()
        self._log_unmatched_camera_info()

    def _log_unmatched_camera_info(self) -> None:
        for camera, unmatched in enumerate(self.camera_infos.unmatched):
            if unmatched > self._unmatched_logged[camera]:
                new, self._unmatched_logged[camera] = unmatched - self._unmatched_logged[camera], unmatched
                self._log((camera, "camera_info_unmatched"),
                          f"camera '{self.cameras[camera]}': {new} frame(s) got no CameraInfo: none with their stamp "
                          f"arrived within {self.camera_infos.timeout_s} s ({unmatched} in total)")

    def statuses(self, node_name: str, limits: DiagnosticThresholds, active: bool = True) -> list[DiagnosticStatusData]:
        """Diagnostic status per camera from the current statistics (ERROR for all if the thread failed)."""
        self.camera_infos.expire()
        statuses = build_statuses(node_name, self.cameras, [s.snapshot() for s in self.stats], limits, active)
        statuses = [dataclasses.replace(s, values={**s.values, **self.camera_infos.values(i)})
                    for i, s in enumerate(statuses)]
        if self.failure:
            statuses = [dataclasses.replace(s, level=ERROR, message=f"worker stopped: {self.failure}")
                        for s in statuses]
        return statuses
