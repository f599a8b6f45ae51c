"""The ROS-free pipeline and latest-frame worker, driven by real sensor_msgs messages and the real tiny model."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from mfuser_model.classes import CITYSCAPES_PALETTE, colorize
from mfuser_ros.errors import FrameError
from mfuser_ros.node.pipeline import FrameFailure, FrameWorker, SegmentationPipeline, Wanted, stamp_ns
from mfuser_ros.node.stats import ERROR, DiagnosticThresholds

ALL = Wanted(color=True, overlay=True, confidence=True)
NONE = Wanted()


class CollectingSink:
    """An OutputSink that keeps what would be published; ``wanted`` is fixed per test."""

    def __init__(self, wanted: Wanted = NONE) -> None:
        self._wanted = wanted
        self.published = []
        self.event = threading.Event()

    def wanted(self, camera):
        return self._wanted

    def publish(self, outputs):
        self.published.append(outputs)
        self.event.set()


class CountingSegmenter:
    """Delegates to the real segmenter and records each call's batch size (a spy, not a stand-in)."""

    def __init__(self, segmenter, fail_calls=()):
        self.segmenter = segmenter
        self.calls = []
        self.fail_calls = set(fail_calls)

    def segment_batch(self, images, output_sizes=None, *, with_confidence=True):
        self.calls.append(len(images))
        self.confidence_asked = with_confidence
        if len(self.calls) in self.fail_calls:
            msg = "CUDA out of memory (injected)"
            raise RuntimeError(msg)
        return self.segmenter.segment_batch(images, output_sizes, with_confidence=with_confidence)


@pytest.fixture
def pipeline(tiny_model):
    return SegmentationPipeline(tiny_model.pipeline.segmenter, palette=tiny_model.palette, overlay_alpha=0.5)


def test_labels_are_at_input_resolution_and_carry_the_input_header(pipeline, msgs, scene, tiny_model):
    rgb = scene(48, 64)
    header = msgs.header(sec=7, nanosec=11, frame_id="front_optical")
    out = pipeline.process(msgs.image(rgb, "rgb8", header=header))
    assert out.header is header
    assert out.labels.encoding == "mono8"
    assert (out.labels.height, out.labels.width, out.labels.step) == (48, 64, 64)
    assert out.color is None and out.overlay is None and out.confidence is None
    expected = tiny_model.pipeline.segmenter.segment(rgb)
    np.testing.assert_array_equal(out.labels.data, expected.labels)
    assert out.labels.data.max() < len(tiny_model.class_names)


def test_optional_outputs_when_wanted(pipeline, msgs, scene, tiny_model):
    rgb = scene(48, 64)
    out = pipeline.process(msgs.image(rgb, "rgb8"), ALL)
    assert out.color.encoding == "bgr8" and out.color.data.shape == (48, 64, 3)
    np.testing.assert_array_equal(out.color.data, colorize(out.labels.data, CITYSCAPES_PALETTE)[..., ::-1])
    assert out.overlay.encoding == "bgr8" and out.overlay.data.shape == (48, 64, 3)
    expected = tiny_model.pipeline.segmenter.segment(rgb).confidence
    assert out.confidence.encoding == "mono8"
    np.testing.assert_array_equal(out.confidence.data, np.clip(np.rint(expected * 255), 0, 255).astype(np.uint8))


def test_fixed_output_size(tiny_model, msgs, scene):
    pipe = SegmentationPipeline(tiny_model.pipeline.segmenter, output_size=(30, 40))
    out = pipe.process(msgs.image(scene(48, 64), "rgb8"), ALL)
    for image in (out.labels, out.color, out.overlay, out.confidence):
        assert (image.height, image.width) == (30, 40)


@pytest.mark.parametrize("encoding", ["bgr8", "jpeg"])
def test_other_encodings_segment_their_decoded_rgb(pipeline, msgs, scene, encoding):
    rgb = scene(48, 64, seed=3)
    if encoding == "jpeg":
        msg = msgs.compressed(rgb, "jpeg")
    else:
        msg = msgs.image(np.ascontiguousarray(rgb[..., ::-1]), "bgr8")
    out = pipeline.process(msg)
    expected = pipeline.segmenter.segment(pipeline.decode(msg)).labels
    np.testing.assert_array_equal(out.labels.data, expected)


def test_malformed_frame_fails_alone_and_the_batch_goes_on(pipeline, msgs, scene):
    good = msgs.image(scene(48, 64), "rgb8")
    bad = msgs.image(scene(48, 64), "rgb8")
    bad.encoding = "bayer_rggb8"
    results = pipeline.run([(0, good), (1, bad), (2, good)])
    assert isinstance(results[1], FrameFailure)
    assert results[1].kind == "malformed" and "bayer_rggb8" in results[1].reason
    assert [r.camera for r in results] == [0, 1, 2]
    np.testing.assert_array_equal(results[0].labels.data, results[2].labels.data)
    with pytest.raises(FrameError, match="unsupported encoding"):
        pipeline.process(bad)


def test_waiting_frames_of_several_cameras_go_through_the_model_as_one_batch(tiny_model, msgs, scene):
    spy = CountingSegmenter(tiny_model.pipeline.segmenter)
    sink = CollectingSink()
    worker = FrameWorker(SegmentationPipeline(spy), ["front", "left", "right"], sink)
    for camera in range(3):
        worker.submit(camera, msgs.image(scene(48, 64, seed=camera), "rgb8", header=msgs.header(sec=camera)))
    assert worker.run_once() == 3
    assert spy.calls == [3]
    assert sorted(o.header.stamp.sec for o in sink.published) == [0, 1, 2]


def test_only_the_newest_frame_of_a_camera_is_processed_and_older_ones_are_counted_as_dropped(tiny_model, msgs,
                                                                                            scene):
    sink = CollectingSink()
    worker = FrameWorker(SegmentationPipeline(tiny_model.pipeline.segmenter), ["front", "rear"], sink)
    rgb = scene(48, 64)
    for i in range(5):
        worker.submit(0, msgs.image(rgb, "rgb8", header=msgs.header(sec=i)))
    worker.submit(1, msgs.image(rgb, "rgb8", header=msgs.header(sec=100)))
    assert worker.run_once() == 2
    assert {(o.camera, o.header.stamp.sec) for o in sink.published} == {(0, 4), (1, 100)}
    front, rear = (s.snapshot() for s in worker.stats)
    assert (front.frames_in, front.dropped, front.frames_out) == (5, 4, 1)
    assert (rear.frames_in, rear.dropped, rear.frames_out) == (1, 0, 1)


def test_model_failure_skips_that_batch_and_counts_an_error(tiny_model, msgs, scene):
    spy = CountingSegmenter(tiny_model.pipeline.segmenter, fail_calls={1})
    logged = []
    sink = CollectingSink()
    worker = FrameWorker(SegmentationPipeline(spy), ["front"], sink, warn=logged.append,
                         clock_ns=lambda: 13 * 10**9)  # near the messages' stamps (12 s): no clock skew
    msg = msgs.image(scene(48, 64), "rgb8")
    worker.submit(0, msg)
    worker.run_once()
    worker.submit(0, msg)
    worker.run_once()
    snap = worker.stats[0].snapshot()
    assert (snap.errors, snap.frames_out, snap.last_error) == (1, 1, "model")
    assert len(logged) == 1 and "CUDA out of memory" in logged[0]


def test_bad_frames_are_logged_throttled_and_counted(tiny_model, msgs, scene):
    logged = []
    worker = FrameWorker(SegmentationPipeline(tiny_model.pipeline.segmenter), ["front"], CollectingSink(),
                         warn=logged.append, log_throttle_s=60.0)
    bad = msgs.image(scene(48, 64), "rgb8")
    bad.step = 3
    for _ in range(4):
        worker.submit(0, bad)
        worker.run_once()
    assert worker.stats[0].snapshot().errors == 4
    assert len(logged) == 1 and "camera 'front': frame skipped" in logged[0]


def test_worker_thread_publishes_with_bounded_waits(tiny_model, msgs, scene):
    sink = CollectingSink()
    now_ns = 50 * 10**9
    worker = FrameWorker(SegmentationPipeline(tiny_model.pipeline.segmenter), ["front"], sink,
                         clock_ns=lambda: now_ns)
    worker.start()
    try:
        for i in range(3):
            sink.event.clear()
            worker.submit(0, msgs.image(scene(48, 64), "rgb8", header=msgs.header(sec=49, nanosec=i)))
            assert sink.event.wait(30.0), "worker produced no output within 30 s"
    finally:
        worker.stop()
    assert not worker.running
    assert [o.header.stamp.nanosec for o in sink.published] == [0, 1, 2]
    snap = worker.stats[0].snapshot()
    assert snap.frames_out == 3
    assert snap.latency_p50_ms == pytest.approx(1000.0, abs=1e-3)  # now (50 s) - stamp (49 s)
    assert stamp_ns(sink.published[0].header) == 49 * 10**9


def test_warmup_runs_one_frame(tiny_model):
    spy = CountingSegmenter(tiny_model.pipeline.segmenter)
    SegmentationPipeline(spy).warmup(56, 56)
    assert spy.calls == [1]


def test_timings_are_filled_per_stage(pipeline, msgs, scene):
    out = pipeline.process(msgs.image(scene(48, 64), "bgr8"), ALL)
    # Stages are measured, never asserted against a budget (benchmarks/node_overhead.py prints them).
    assert out.timing.decode_ms > 0 and out.timing.model_ms > 0 and out.timing.encode_ms > 0


def test_a_sink_that_cannot_publish_stops_the_worker_and_diagnostics_say_so(tiny_model, msgs, scene, monkeypatch):
    class BrokenSink(CollectingSink):
        def publish(self, outputs):
            self.event.set()
            msg = "DDS write failed"
            raise OSError(msg)

    hook_calls = []
    monkeypatch.setattr(threading, "excepthook", hook_calls.append)
    sink = BrokenSink()
    worker = FrameWorker(SegmentationPipeline(tiny_model.pipeline.segmenter), ["front"], sink, warn=lambda _m: None)
    worker.start()
    try:
        worker.submit(0, msgs.image(scene(48, 64), "rgb8"))
        assert sink.event.wait(30.0)
        deadline = time.monotonic() + 10.0
        while worker.running and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    (status,) = worker.statuses("/seg", DiagnosticThresholds())
    assert status.level == ERROR
    assert status.message == "worker stopped: OSError: DDS write failed"
    assert len(hook_calls) == 1


def test_an_image_too_small_for_the_network_fails_alone(pipeline, msgs, scene):
    tiny = msgs.image(scene(8, 8), "rgb8")
    good = msgs.image(scene(48, 64), "rgb8")
    small, ok = pipeline.run([(0, tiny), (1, good)])
    assert isinstance(small, FrameFailure) and small.kind == "model"
    assert ok.labels.data.shape == (48, 64)


def test_confidence_is_computed_only_when_a_subscriber_wants_it(tiny_model, msgs, scene):
    spy = CountingSegmenter(tiny_model.pipeline.segmenter)
    pipeline = SegmentationPipeline(spy, palette=tiny_model.palette, overlay_alpha=0.5)
    rgb = scene(48, 64)
    labels_only = pipeline.process(msgs.image(rgb, "rgb8"))
    assert spy.confidence_asked is False
    assert labels_only.confidence is None
    with_all = pipeline.process(msgs.image(rgb, "rgb8"), ALL)
    assert spy.confidence_asked is True
    np.testing.assert_array_equal(labels_only.labels.data, with_all.labels.data)


# ---- field robustness (issue 12) ------------------------------------------------------------------------------

class BlockingSegmenter:
    """Delegates to the real segmenter, but holds each call until ``release`` is set (a frame stuck in the model)."""

    def __init__(self, segmenter):
        self.segmenter = segmenter
        self.entered = threading.Event()
        self.release = threading.Event()

    def segment_batch(self, images, output_sizes=None, *, with_confidence=True):
        self.entered.set()
        assert self.release.wait(30.0)
        return self.segmenter.segment_batch(images, output_sizes, with_confidence=with_confidence)


@pytest.mark.parametrize("sample", [
    SimpleNamespace(key_sample=None, sample_info=None),  # what cyclonedds hands over for a disposed instance
    SimpleNamespace(header=None, encoding="rgb8", height=2, width=2, step=6, data=bytes(12)),  # no stamp
    SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec="x", nanosec=0)), format=7, data=None),
])
def test_a_sample_that_is_no_image_is_counted_and_the_worker_thread_goes_on(tiny_model, msgs, scene, sample):
    sink = CollectingSink()
    worker = FrameWorker(SegmentationPipeline(tiny_model.pipeline.segmenter), ["front"], sink, warn=lambda _m: None)
    worker.start()
    try:
        worker.submit(0, sample)
        deadline = time.monotonic() + 10.0
        while worker.stats[0].snapshot().errors == 0 and worker.running and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.submit(0, msgs.image(scene(48, 64), "rgb8"))
        assert sink.event.wait(30.0), "the worker answered no frame after the bad sample"
        assert worker.running
    finally:
        worker.stop()
    snap = worker.stats[0].snapshot()
    assert (snap.frames_in, snap.errors, snap.frames_out, snap.last_error) == (2, 1, 1, "malformed")


def test_stop_says_whether_the_thread_ended(tiny_model, msgs, scene):
    blocking = BlockingSegmenter(tiny_model.pipeline.segmenter)
    sink = CollectingSink()
    worker = FrameWorker(SegmentationPipeline(blocking), ["front"], sink)
    worker.start()
    worker.submit(0, msgs.image(scene(48, 64), "rgb8"))
    assert blocking.entered.wait(30.0)
    assert worker.stop(timeout=0.05) is False, "a frame is still in the model"
    assert worker.running
    blocking.release.set()
    assert worker.stop(timeout=30.0) is True
    assert not worker.running
    assert len(sink.published) == 1, "the frame in flight is finished, not abandoned"


def test_a_dying_worker_reports_once_through_on_failure(tiny_model, msgs, scene, monkeypatch):
    class BuggySegmenter:
        def segment_batch(self, images, output_sizes=None, *, with_confidence=True):
            raise KeyError("injected bug")

    monkeypatch.setattr(threading, "excepthook", lambda _args: None)
    failures = []
    worker = FrameWorker(SegmentationPipeline(BuggySegmenter()), ["front"], CollectingSink(), warn=lambda _m: None,
                         on_failure=failures.append)
    worker.start()
    try:
        worker.submit(0, msgs.image(scene(48, 64), "rgb8"))
        deadline = time.monotonic() + 10.0
        while worker.running and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert failures == ["KeyError: 'injected bug'"]
    (status,) = worker.statuses("/seg", DiagnosticThresholds())
    assert status.level == ERROR


def test_a_rejected_message_counts_as_input_and_error(tiny_model):
    logged = []
    worker = FrameWorker(SegmentationPipeline(tiny_model.pipeline.segmenter), ["front"], CollectingSink(),
                         warn=logged.append)
    worker.reject(0, "malformed", "cannot deserialize")
    snap = worker.stats[0].snapshot()
    assert (snap.frames_in, snap.errors, snap.last_error) == (1, 1, "malformed")
    assert logged == ["camera 'front': frame skipped: cannot deserialize"]


def test_a_frame_stamped_at_the_epoch_is_clock_skew_not_latency(tiny_model, msgs, scene):
    logged = []
    now_ns = 1_700_000_000 * 10**9
    worker = FrameWorker(SegmentationPipeline(tiny_model.pipeline.segmenter), ["front"], CollectingSink(),
                         clock_ns=lambda: now_ns, warn=logged.append)
    worker.submit(0, msgs.image(scene(48, 64), "rgb8", header=msgs.header(sec=1_700_000_000 - 1, nanosec=0)))
    worker.run_once()
    worker.submit(0, msgs.image(scene(48, 64), "rgb8", header=msgs.header(sec=0, nanosec=0)))
    worker.run_once()
    snap = worker.stats[0].snapshot()
    assert (snap.frames_out, snap.clock_skew) == (2, 1)
    assert snap.latency_p95_ms == pytest.approx(1000.0)
    (status,) = worker.statuses("/seg", DiagnosticThresholds())
    assert status.level != ERROR
    assert logged == ["camera 'front': header stamp is 1.7e+09 s behind the node's clock: counted as clock skew, "
                      "left out of latency (check the camera's clock sync, or use_sim_time)"]


def test_a_small_png_of_a_huge_image_runs_at_the_network_size(msgs):
    """Issue 12's starving frame: 4096x4096 pixels in a few KB. The model sees the network size, not 16 Mpx."""
    from mfuser_ros.node.config import NodeConfig
    from mfuser_ros.node.model_loader import load_model

    config = NodeConfig(warmup=False, network_image_width=128, network_image_height=128)
    loaded = load_model(config)
    spy = CountingSegmenter(loaded.pipeline.segmenter)
    seen = []
    model = loaded.pipeline.segmenter.model
    real = model.predict_lowres
    model.predict_lowres = lambda x: seen.append(tuple(x.shape[-2:])) or real(x)
    pipeline = SegmentationPipeline.from_config(config, spy)
    bomb = msgs.compressed(np.full((4096, 4096, 3), 90, np.uint8), "png")
    assert bomb.data.size < 100_000
    out = pipeline.process(bomb)
    assert (out.labels.height, out.labels.width) == (4096, 4096), "labels at the requested (here: input) size"
    assert seen == [(140, 140)], "128x128, padded to a multiple of two patches (28)"


def test_a_malformed_message_does_not_push_a_waiting_good_frame_out_of_its_slot(tiny_model, msgs, scene):
    sink = CollectingSink()
    worker = FrameWorker(SegmentationPipeline(tiny_model.pipeline.segmenter), ["front"], sink, warn=lambda _m: None)
    worker.submit(0, msgs.image(scene(48, 64), "rgb8", header=msgs.header(sec=5)))
    for change in ({"step": 3}, {"encoding": "x" * 10_000}, {"height": 100_000}, {"data": b""}):
        bad = msgs.image(scene(48, 64), "rgb8", header=msgs.header(sec=6))
        for name, value in change.items():
            setattr(bad, name, value)
        worker.submit(0, bad)
    assert worker.run_once() == 1
    assert [o.header.stamp.sec for o in sink.published] == [5]
    snap = worker.stats[0].snapshot()
    assert (snap.frames_in, snap.dropped, snap.errors, snap.frames_out) == (5, 0, 4, 1)
