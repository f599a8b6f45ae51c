"""Replay a recorded drive through the node's own frame pipeline, write an output bag, evaluate.

Every camera frame goes through :class:`mfuser_ros.node.pipeline.FrameWorker` / :class:`SegmentationPipeline` — the
objects the rclpy node runs — so labels in the output bag are what the node would have published. Two modes:

- evaluation (default): frames are processed back to back and none is dropped; consecutive frames are batched the
  way the node batches them (at most one frame per camera, at most ``max_batch``).
- ``--realtime``: messages are fed at their recorded rate (times ``--rate``) into the node's latest-frame slots,
  with the worker on its own thread, so frames are dropped exactly when the node would drop them and latency is
  ``now - header.stamp`` on the bag's clock: what the vehicle would get from this machine.

Outputs in ``--out``: a rosbag2 (mcap by default, ``--storage sqlite3``) with the topics read plus
``<camera>/mfuser/labels`` (mono8) and ``<camera>/mfuser/color`` (bgr8), input headers copied (``--outputs`` adds
overlay, confidence and the ``<kind>/compressed`` topics), and ``<camera>/mfuser/camera_info`` (scaled to the output
size, paired by stamp) when the bag has the camera's CameraInfo topic; ``metrics.json`` (with the legend);
``report.md``; ``montage.png``; ``frames.csv`` (one row per frame: latency, and the frame's mIoU and pixel accuracy
where it met ground truth). Ground truth comes from label topics (``<camera>/ground_truth/labels``, mono8,
matched by header stamp) or a folder of PNGs (``--gt-dir``). Ctrl-C, SIGTERM, or a bag that breaks off, still
leaves a valid bag and a report marked partial.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mfuser_model.classes import palette_to_hex
from mfuser_model.errors import MFuserError
from mfuser_model.inference import InferenceProtocol
from mfuser_model.report import decoder_backend_name, model_file_record
from mfuser_ros.node.camera_info import CameraInfoData
from mfuser_ros.node.config import NodeConfig, output_topic
from mfuser_ros.node.conversions import message_to_rgb
from mfuser_ros.node.model_loader import LoadedModel, load_model
from mfuser_ros.node.pipeline import CameraOutputs, FrameWorker, Wanted, stamp_ns
from mfuser_ros.node.shutdown import ShutdownSignals
from mfuser_ros.replay.bagio import (
    CAMERA_INFO_TYPE,
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    IMAGE_TYPES,
    BagInput,
    BagMessage,
    BagOutput,
    BagReadError,
    ros2_qos,
)
from mfuser_ros.replay.evaluation import (
    Evaluator,
    GroundTruthDir,
    Montage,
    StampMatcher,
    gt_lut,
    label_message_to_array,
    latency_summary,
    to_train_ids,
    write_report,
)
from mfuser_ros.replay.frame_log import FrameLog
from mfuser_ros.replay.options import (  # the options live apart so that the CLI checks them without torch
    EXIT_BAG_DAMAGED,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    GT_SUFFIX,
    OPTIONAL_OUTPUTS,
    ReplayError,
    ReplayOptions,
)
from mfuser_ros.replay.player import Player
from mfuser_ros.replay.progress import ReplayProgress

__all__ = [
    "EXIT_BAG_DAMAGED",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "GT_SUFFIX",
    "OPTIONAL_OUTPUTS",
    "ReplayError",
    "ReplayOptions",
    "ReplayResult",
    "find_camera_topics",
    "run_replay",
]

@dataclass
class ReplayResult:
    """What a run produced: the summary written to metrics.json, file paths and the CLI exit code."""

    summary: dict[str, Any]
    output_bag: Path
    metrics_json: Path
    report_md: Path
    montage_png: Path | None
    exit_code: int
    frames_csv: Path | None = None
    frame_log: FrameLog | None = None  # in-process only: per-frame latency and scores (fleet jobs merge them)
    evaluator: Evaluator | None = None  # in-process only: the per-camera confusion matrices


def _is_output_or_gt(topic: str) -> bool:
    parts = topic.strip("/").split("/")
    return "mfuser" in parts or topic.rstrip("/").endswith("/" + GT_SUFFIX) or topic.strip("/") == GT_SUFFIX


def find_camera_topics(topics: dict[str, Any], gt_topics: Sequence[str] = ()) -> list[str]:
    """Image and CompressedImage topics that are camera inputs (not mfuser outputs, not ground truth)."""
    return sorted(t for t, info in topics.items()
                  if info.msgtype in IMAGE_TYPES and not _is_output_or_gt(t) and t not in set(gt_topics))


def _gt_topic_for(namespace: str) -> str:
    return f"{namespace}/{GT_SUFFIX}" if namespace else f"/{GT_SUFFIX}"


class _ReplaySink:
    """The node's OutputSink for a bag: writes outputs, evaluates, records latency. Thread-safe."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        outputs = run.options.outputs
        self._wanted = Wanted(*(kind in outputs for kind in OPTIONAL_OUTPUTS))

    def wanted(self, camera: int) -> Wanted:
        return self._wanted

    def publish(self, outputs: CameraOutputs) -> None:
        if not self.run.options.realtime:
            self.run.on_output(outputs)
            return
        try:
            self.run.on_output(outputs)
        except MFuserError as err:  # on the worker thread: hand it to the main thread, which stops the replay
            self.run.fatal = self.run.fatal or err

    def publish_camera_info(self, camera: int, info: CameraInfoData) -> None:
        run = self.run
        # Beside its labels in the bag: at their log time (known once the labels are written).
        with run.lock:
            out_ts = run.label_times[camera].get(stamp_ns(info.header))
        out_ts = run.clock_ns() if out_ts is None or run.options.realtime else out_ts
        run.out_bag.write(output_topic(run.namespaces[camera], "camera_info"), CAMERA_INFO_TYPE, out_ts,
                          run.out_bag.camera_info(info))


class _Run:
    """State of one replay: the pending input frames, evaluation, latency and the output bag."""

    def __init__(self, options: ReplayOptions, cameras: list[str], topics: list[str], namespaces: list[str],
                 gt_topics: dict[str, int], out_bag: BagOutput, progress: ReplayProgress, expected: int,
                 loaded: LoadedModel, gt_dir: GroundTruthDir | None) -> None:
        import threading  # noqa: PLC0415

        self.options = options
        self.cameras = cameras
        self.topics = topics
        self.namespaces = namespaces
        self.gt_topics = gt_topics
        self.out_bag = out_bag
        self.progress = progress
        self.lock = threading.Lock()
        self.pending: list[OrderedDict[int, tuple[int, BagMessage, int]]] = [OrderedDict() for _ in cameras]
        self.read = [0] * len(cameras)
        self.latency: list[list[float]] = [[] for _ in cameras]
        self.input_sizes: list[Counter[tuple[int, int]]] = [Counter() for _ in cameras]  # decoded (h, w) -> frames
        self.evaluator = Evaluator(namespaces, loaded.class_names)
        self.matchers = [StampMatcher() for _ in cameras]
        self.lut = gt_lut(options.gt_format)
        self.gt_dir = gt_dir
        self.gt_missing = [0] * len(cameras)
        self.gt_failed = [0] * len(cameras)  # ground-truth messages that could not be used (corrupt, bad values)
        self.undecodable = [0] * len(cameras)  # camera messages whose bytes do not deserialize
        self.first_errors: dict[str, str] = {}  # topic -> its first unusable message's error
        self.frame_log = FrameLog(options.miou_rule)
        per_camera = max(1, expected // max(1, len(cameras)))
        rows_per_camera = max(1, options.montage_rows // max(1, len(cameras)))
        self.montage = Montage(every=max(1, per_camera // rows_per_camera), max_rows=options.montage_rows,
                               palette=loaded.palette, class_names=loaded.class_names)
        self.label_times: list[OrderedDict[int, int]] = [OrderedDict() for _ in cameras]  # stamp -> labels' log time
        self.info_topics: dict[str, int] = {}  # CameraInfo topic in the bag -> camera
        self.clock_ns: Callable[[], int] = time.time_ns
        self.fatal: MFuserError | None = None  # an error raised on the worker thread (real-time mode)
        self.worker: FrameWorker | None = None
        self.model_s = 0.0  # sum of the model calls' times (each batch once)
        self._batch_seen = -1
        self.out_topics = {kind: [output_topic(ns, kind) for ns in namespaces]
                           for kind in ("labels", "color", "overlay", "confidence")}

    # -- inputs -----------------------------------------------------------------------------------------------------
    def remember(self, camera: int, timestamp: int, message: BagMessage) -> None:
        """Keep an input frame until its outputs come back (keyed by its header object, which the pipeline keeps)."""
        with self.lock:
            self.pending[camera][id(message.msg.header)] = (timestamp, message, self.read[camera])
            self.read[camera] += 1

    def unusable(self, topic: str, error: str) -> None:
        """A message of the bag that cannot be used (does not deserialize, or ground truth with bad values): counted
        and skipped; the first of each topic is shown (with the count at the end, in the summary)."""
        if topic in self.gt_topics:
            self.gt_failed[self.gt_topics[topic]] += 1
        elif topic in self.cameras:
            self.undecodable[self.cameras.index(topic)] += 1
        if topic not in self.first_errors:
            self.first_errors[topic] = error
            self.progress.write(f"mfuser-replay: warning: {error}; skipped (further ones on {topic} are counted)")

    def on_gt(self, camera: int, message: BagMessage) -> None:
        """A ground-truth label message from the bag (one that is unusable is counted, see :meth:`unusable`)."""
        where = f"{self.options.bag} topic {message.topic}"
        try:
            gt = to_train_ids(label_message_to_array(message.msg, where), self.options.gt_format, self.lut, where)
        except MFuserError as err:
            self.unusable(message.topic, str(err))
            return
        stamp = stamp_ns(message.msg.header)
        with self.lock:
            pred = self.matchers[camera].add_gt(stamp, gt)
            if pred is not None:
                self._evaluate(camera, stamp, pred, gt)

    # -- outputs (worker thread in real-time mode) ----------------------------------------------------------------
    def on_output(self, outputs: CameraOutputs) -> None:
        t0 = time.perf_counter()
        camera = outputs.camera
        with self.lock:
            pending = self.pending[camera]
            key = id(outputs.header)
            # Frames older than this one never came back: the latest-frame policy dropped them (real-time mode).
            while pending and next(iter(pending)) != key:
                pending.popitem(last=False)
            timestamp, message, index = pending.pop(key)
        out_ts = self.clock_ns() if self.options.realtime else timestamp
        self._write_outputs(outputs, out_ts)
        write_ms = (time.perf_counter() - t0) * 1e3
        stamp = stamp_ns(outputs.header)
        labels = outputs.labels.data
        with self.lock:
            self.input_sizes[camera][tuple(outputs.input_size)] += 1
            times = self.label_times[camera]
            times[stamp] = out_ts
            while len(times) > 256:
                times.popitem(last=False)
            if self.worker is not None and self.worker.batches != self._batch_seen:
                self._batch_seen = self.worker.batches  # frames of one batch share its model time
                self.model_s += outputs.timing.model_ms / 1e3
            if self.options.realtime:
                latency_ms = (self.clock_ns() - stamp) / 1e6
            else:
                t = outputs.timing
                latency_ms = t.decode_ms + t.model_ms + t.encode_ms + write_ms
            self.latency[camera].append(latency_ms)
            self.frame_log.add(self.namespaces[camera], index, stamp, latency_ms)
            if self.montage.wants(index):
                self.montage.add(self.namespaces[camera], stamp, message_to_rgb(message.msg), labels)
            if self.gt_dir is not None:
                path = self.gt_dir.find(self.namespaces[camera], stamp, index)
                if path is None:
                    self.gt_missing[camera] += 1
                else:
                    where = str(path)
                    gt = to_train_ids(self.gt_dir.read(path), self.options.gt_format, self.lut, where)
                    self._evaluate(camera, stamp, labels, gt)
            elif camera in self.gt_topics.values():
                gt = self.matchers[camera].add_pred(stamp, labels)
                if gt is not None:
                    self._evaluate(camera, stamp, labels, gt)

    def _write_outputs(self, outputs: CameraOutputs, out_ts: int) -> None:
        bag, camera, header = self.out_bag, outputs.camera, outputs.header
        for kind in ("labels", "color", "overlay", "confidence"):
            image = getattr(outputs, kind)
            if image is not None:
                bag.write(self.out_topics[kind][camera], IMAGE_TYPE, out_ts,
                          bag.image(header, image.encoding, image.data))
        for kind, image in outputs.compressed.items():
            bag.write(output_topic(self.namespaces[camera], f"{kind}/compressed"), COMPRESSED_TYPE, out_ts,
                      bag.compressed(header, image.format, image.data))

    def _evaluate(self, camera: int, stamp: int, pred: np.ndarray, gt: np.ndarray) -> None:
        frame = self.evaluator.add(self.namespaces[camera], pred, gt)
        self.frame_log.score(self.namespaces[camera], stamp, frame)
        self.montage.set_gt(self.namespaces[camera], stamp, gt)


def _copy_input(out_bag: BagOutput, bag: BagInput, timestamp: int, message: BagMessage) -> None:
    raw = message.raw if bag.is_ros2 else out_bag.to_ros2(message)
    out_bag.write_raw(message.topic, message.msgtype, timestamp, raw)


def _resolve_topics(options: ReplayOptions, bag: BagInput) -> tuple[list[str], dict[str, str]]:
    topics = bag.topics
    explicit_gt = dict(options.gt_topics)
    for camera, gt in explicit_gt.items():
        for t in (camera, gt):
            if t not in topics:
                msg = f"{options.bag}: --gt-topic names {t!r}, which is not in the bag (topics: {sorted(topics)})"
                raise ReplayError(msg)
    if options.topics:
        cameras = list(options.topics)
        for t in cameras:
            if t not in topics:
                msg = f"{options.bag}: topic {t!r} is not in the bag (topics: {sorted(topics)})"
                raise ReplayError(msg)
            if topics[t].msgtype not in IMAGE_TYPES:
                msg = f"{options.bag}: topic {t!r} is {topics[t].msgtype}, not sensor_msgs/Image or CompressedImage"
                raise ReplayError(msg)
    else:
        cameras = find_camera_topics(topics, list(explicit_gt.values()))
        empty = [t for t in cameras if topics[t].count == 0]
        if empty and len(empty) < len(cameras):  # a camera that recorded nothing is left out, and said so
            print(f"mfuser-replay: warning: {options.bag}: {', '.join(empty)} recorded no messages; not replayed",
                  file=sys.stderr)
            cameras = [t for t in cameras if t not in empty]
    if empty := [t for t in cameras if topics[t].count == 0]:
        msg = f"{options.bag}: camera topic(s) with 0 messages: {', '.join(empty)}; nothing to replay"
        raise ReplayError(msg)
    if not cameras:
        listing = ", ".join(f"{t} ({i.msgtype})" for t, i in sorted(topics.items())) or "none"
        damage = f"; the bag is damaged: {bag.salvage_error or bag.damaged}" if bag.damaged else ""
        msg = (f"{options.bag}: no camera topics (sensor_msgs/msg/Image or CompressedImage) found; "
               f"topics: {listing}{damage}")
        raise ReplayError(msg)
    return cameras, explicit_gt


def _frames_short(run: _Run, counts: Sequence[int | None], max_frames: int) -> str | None:
    """Why a run that read its bag to the end is still incomplete: no camera frame at all, or fewer frames of a
    camera than the bag's metadata announces (the storage lacks them, or they could not be paired with it)."""
    if not sum(run.read):
        return f"no camera frame was read from the bag (camera topics: {', '.join(run.cameras)})"
    short = [f"{topic}: {read} of the {count} frames the bag's metadata announces were read"
             for topic, read, bad, count in zip(run.cameras, run.read, run.undecodable, counts, strict=True)
             if count is not None and read + bad < count and not max_frames]
    return "; ".join(short) or None


def _camera_info_summary(run: _Run, worker: FrameWorker, camera: int) -> dict[str, Any] | None:
    """Where the camera's CameraInfo came from and how many frames it was paired with (None: not in the bag)."""
    topics = [t for t, c in run.info_topics.items() if c == camera]
    if not topics:
        return None
    counts = worker.camera_infos.values(camera)
    return {"topic": topics[0], **{k.removeprefix("camera_info_"): int(v) for k, v in counts.items()}}


def _inference_summary(worker: FrameWorker, sizes: Counter[tuple[int, int]]) -> dict[str, Any] | None:
    """Mode, window, network input size and windows per frame (None: the segmenter states no protocol)."""
    protocol = getattr(worker.pipeline.segmenter, "protocol", None)
    if not isinstance(protocol, InferenceProtocol):
        return None
    return {**protocol.record(sizes), "summary": protocol.describe(sizes)}


def _backend(worker: FrameWorker, config: NodeConfig) -> str:
    """The decode head's backend as attached to the model (the configured one for a segmenter without a model)."""
    model = getattr(worker.pipeline.segmenter, "model", None)
    return decoder_backend_name(model) if model is not None else config.decoder_backend


def _gt_summary(options: ReplayOptions, run: _Run) -> dict[str, Any]:
    """Where each camera's ground truth came from, and how its values became train ids."""
    table = ("Cityscapes labelIds -> train ids (cityscapesscripts helpers/labels.py)" if options.gt_format == "labelids"
             else "train ids as stored")
    if run.gt_dir is not None:
        per_camera = {ns: f"{d}/<{options.gt_key}>.png" if d else None for ns, d in run.gt_dir.describe().items()}
    else:
        per_camera = {run.namespaces[c]: f"topic {t}" for t, c in run.gt_topics.items()}
    text = "; ".join(f"{ns or '/'}: {where or 'none'}" for ns, where in per_camera.items()) or "none in the bag"
    return {"source": str(options.gt_dir) if options.gt_dir else "topics", "format": options.gt_format,
            "topics": {run.cameras[c]: t for t, c in run.gt_topics.items()} if options.gt_dir is None else {},
            "cameras": per_camera, "label_map": table, "summary": f"{text} ({table})"}


def _summary(options: ReplayOptions, run: _Run, worker: FrameWorker, config: NodeConfig, out_bag: Path,
             wall_s: float, partial_reason: str | None, damaged: str | None) -> dict[str, Any]:
    names = run.evaluator.class_names
    cams: dict[str, Any] = {}
    processed = 0
    for i, (topic, ns) in enumerate(zip(run.cameras, run.namespaces, strict=True)):
        stats = worker.stats[i]
        processed += stats.frames_out
        evaluated = run.evaluator.frames[ns]
        cams[ns] = {
            "topic": topic,
            "frames_in": run.read[i],
            "frames_out": stats.frames_out,
            "dropped": stats.dropped,
            "failed": stats.errors,
            # read, but neither processed, failed nor dropped: the run stopped (Ctrl-C, SIGTERM) before them
            "unfinished": max(0, run.read[i] - stats.frames_out - stats.errors - stats.dropped),
            "last_error": stats.last_error or None,
            "evaluated": evaluated,
            "gt_unmatched": (run.matchers[i].unmatched_preds if run.gt_dir is None else run.gt_missing[i]),
            "gt_failed": run.gt_failed[i],
            "undecodable": run.undecodable[i],
            "metrics": run.evaluator.matrices[ns].to_dict(names, options.miou_rule) if evaluated else None,
            "latency_ms": latency_summary(run.latency[i]),
            "camera_info": _camera_info_summary(run, worker, i),
            "inference": _inference_summary(worker, run.input_sizes[i]),
        }
    evaluated_total = sum(run.evaluator.frames.values())
    all_latency = [v for lat in run.latency for v in lat]
    return {
        "partial": partial_reason is not None,
        "partial_reason": partial_reason,
        "bag": str(options.bag),
        "bag_damaged": damaged,
        "output_bag": str(out_bag),
        "storage": options.storage,
        "mode": f"realtime (rate {options.rate:g})" if options.realtime else "evaluation (no frame dropped)",
        "model": {"checkpoint": config.checkpoint or None, "preset": config.preset or None, "device": config.device,
                  "precision": config.precision, "inference_mode": config.inference_mode,
                  "max_batch": config.max_batch, "decoder_backend": _backend(worker, config),
                  "tensors_sha256": model_file_record(config.checkpoint)["tensors_sha256"],
                  "inference": _inference_summary(worker, sum(run.input_sizes, Counter()))},
        "gt": _gt_summary(options, run),
        "miou_rule": options.miou_rule,
        "frames": {"read": sum(run.read), "processed": processed,
                   "dropped": sum(s.dropped for s in worker.stats), "failed": sum(s.errors for s in worker.stats),
                   "unfinished": sum(c["unfinished"] for c in cams.values()), "evaluated": evaluated_total,
                   "undecodable": sum(run.undecodable), "gt_failed": sum(run.gt_failed)},
        "unusable_messages": dict(run.first_errors),  # topic -> the first error
        "wall_s": wall_s,
        "throughput_fps": processed / wall_s if wall_s > 0 else 0.0,
        "model_s": run.model_s,
        "latency_definition": ("now - header.stamp on the bag clock when the outputs are written"
                               if options.realtime else
                               "per frame: decode + model call of its batch + encode + bag write (no queueing)"),
        "cameras": cams,
        "overall": {"metrics": run.evaluator.overall().to_dict(names, options.miou_rule) if evaluated_total else None,
                    "latency_ms": latency_summary(all_latency)},
        "class_names": list(names),
        "palette": list(palette_to_hex(run.montage.palette)),  # the colour outputs' and montage's legend
    }


def run_replay(options: ReplayOptions, *, loaded: LoadedModel | None = None,
               on_frame: Callable[[int], None] | None = None, signals: ShutdownSignals | None = None) -> ReplayResult:
    """Replay a bag through the node's frame pipeline and write the output bag and report.

    Args:
        options: what to replay and where to write.
        loaded: an already loaded model (else built from ``options.node``).
        on_frame: called with the number of camera frames read so far, after each one is handed to the
            pipeline (tests interrupt here).
        signals: SIGINT/SIGTERM handling (the CLI's), told when the replay runs; from then on a signal stops the
            replay after the frame in progress, and the bag and report are finished, marked partial.

    Raises:
        ReplayError: no camera topics, unknown topics, or the output bag already exists.
        BagReadError: the bag cannot be opened at all.
        ConfigError / CheckpointError: bad node configuration or model file.
    """
    options.out.mkdir(parents=True, exist_ok=True)
    out_bag_path = options.out / f"{options.bag.stem or 'replay'}_mfuser"
    if out_bag_path.exists():
        msg = f"{out_bag_path}: output bag exists already; choose another --out or remove it"
        raise ReplayError(msg)
    with BagInput(options.bag) as bag:
        if bag.damaged:
            print(f"mfuser-replay: warning: {options.bag}: rosbags cannot open it ({bag.damaged}); "
                  "reading it front to back to keep every frame before the damage", file=sys.stderr)
        cameras, explicit_gt = _resolve_topics(options, bag)
        config = replace(options.node, image_topics=tuple(cameras), camera_names=())
        namespaces = config.camera_namespaces()
        topics = bag.topics
        gt_topics: dict[str, int] = {}
        if options.gt_dir is None:
            for i, (topic, ns) in enumerate(zip(cameras, namespaces, strict=True)):
                gt = explicit_gt.get(topic) or _gt_topic_for(ns)
                if gt in topics:
                    gt_topics[gt] = i
        # Matched per camera before the model loads: an ambiguous folder is refused at once.
        gt_dir = GroundTruthDir(options.gt_dir, options.gt_key, namespaces) if options.gt_dir else None
        if loaded is None:
            loaded = load_model(config)
        expected_counts = [topics[t].count for t in cameras]
        expected = sum(expected_counts) if all(c is not None for c in expected_counts) else None
        if options.max_frames and expected is not None:
            expected = min(expected, options.max_frames)
        progress = ReplayProgress(expected, options.progress)
        progress.watch(loaded.pipeline.segmenter)
        # Outputs are recorded with the QoS the node offers; inputs get theirs below.
        out_bag = BagOutput(out_bag_path, storage=options.storage,
                            default_qos=(ros2_qos(config.output_qos, config.output_qos_depth),))
        run = _Run(options, cameras, list(topics), namespaces, gt_topics, out_bag, progress, expected or 0,
                   loaded, gt_dir)
        run.info_topics = {t: i for i, t in enumerate(config.camera_info_topic_names())
                           if t in topics and topics[t].msgtype == CAMERA_INFO_TYPE}
        # Bag order, not wall time, decides whether a CameraInfo came: frames wait until the end of the bag.
        worker = FrameWorker(loaded.pipeline, namespaces, _ReplaySink(run), warn=progress.write,
                             log_throttle_s=config.log_throttle_s, stats_window_s=config.stats_window_s,
                             camera_info_timeout_s=None)
        run.worker = worker
        t_start = time.perf_counter()
        out_bag.open()
        for topic in [*cameras, *gt_topics, *run.info_topics]:  # copied inputs keep the QoS they were recorded with
            out_bag.set_qos(topic, topics[topic].qos)
        player = Player(run, worker, loaded, config, signals)  # from now on a signal stops the replay in order
        try:
            partial, exit_code = _play(bag, run, player, gt_topics, on_frame)
            if partial is None and (short := _frames_short(run, expected_counts, options.max_frames)):
                partial, exit_code = short, EXIT_BAG_DAMAGED
        finally:
            worker.stop()
            progress.close()
            out_bag.close()
        # The node warms up at activation, before its first frame: not part of the replay's frame time.
        wall_s = time.perf_counter() - t_start - player.warmup_s
        summary = _summary(options, run, worker, config, out_bag_path, wall_s, partial, bag.damaged)
    montage_path = options.out / "montage.png"
    has_montage = options.montage_rows > 0 and run.montage.save(montage_path)
    json_path, md_path = write_report(options.out, summary, run.evaluator, montage_path.name if has_montage else None)
    frames_csv = run.frame_log.write_csv(options.out / "frames.csv")
    return ReplayResult(summary, out_bag_path, json_path, md_path, montage_path if has_montage else None, exit_code,
                        frames_csv=frames_csv, frame_log=run.frame_log, evaluator=run.evaluator)


def _play(bag: BagInput, run: _Run, player: Player, gt_topics: dict[str, int],
          on_frame: Callable[[int], None] | None) -> tuple[str | None, int]:
    """Read the bag and feed the player; returns (partial reason or None, exit code)."""
    camera_index = {t: i for i, t in enumerate(run.cameras)}
    frames_read = 0
    try:
        topics = run.cameras + list(gt_topics) + list(run.info_topics)
        for timestamp, message in bag.messages(topics, on_undecodable=lambda t, _, e: run.unusable(t, e)):
            if player.stopping():
                break
            _copy_input(run.out_bag, bag, timestamp, message)
            if message.topic in gt_topics:
                run.on_gt(gt_topics[message.topic], message)
                continue
            if message.topic in run.info_topics:
                player.worker.submit_camera_info(run.info_topics[message.topic], message.msg)
                continue
            camera = camera_index[message.topic]
            run.remember(camera, timestamp, message)
            player.frame(camera, timestamp, message.msg)
            frames_read += 1
            run.progress.update()
            if on_frame is not None:
                on_frame(frames_read)
            if run.options.max_frames and frames_read >= run.options.max_frames:
                break
        if not player.stopping():
            player.finish()
            player.worker.camera_infos.finish()
    except KeyboardInterrupt:
        return _interrupted("Ctrl-C", frames_read)
    except BagReadError as err:
        if player.stopping():
            return _interrupted(player.signals.reason, frames_read)
        player.finish()  # the frames read before the damage are whole: the last batch is processed too
        player.worker.camera_infos.finish()
        return f"the input bag breaks off: {err}", EXIT_BAG_DAMAGED
    if player.stopping():
        return _interrupted(player.signals.reason, frames_read)
    return None, EXIT_OK


def _interrupted(why: str, frames_read: int) -> tuple[str, int]:
    return (f"interrupted ({why}) after {frames_read} camera frames; the rest of the bag was not replayed "
            "(frames read but not finished: frames.unfinished)", EXIT_INTERRUPTED)
