"""The segmentation node over bare DDS (cyclonedds), for machines without ROS 2.

Speaks the ROS 2 wire conventions of rmw_cyclonedds, so ROS 2 nodes see it as one of their own:

- topic ``/ns/name`` is DDS topic ``rt/ns/name``;
- type ``sensor_msgs/msg/Image`` is ``sensor_msgs::msg::dds_::Image_``; structs are *final* (plain CDR, XCDR1) -
  an appendable type would switch to XCDR2 and silently never match ROS 2;
- QoS as ROS 2 profiles: sensor-data = best effort, keep last N, volatile;
- every reader and writer carries its type's REP-2011 hash in USER_DATA (``typehash=RIHS01_...;``, see
  :mod:`mfuser_ros.node.type_hash`) and the participant ``enclave=/;``, as rmw_cyclonedds sets them;
- the node announces itself and its endpoints on ``ros_discovery_info`` (rmw_dds_common/ParticipantEntitiesInfo),
  so ``ros2 node list`` shows it and ``ros2 topic info -v`` names it like any ROS 2 node.

The stock ``sequence[uint8]`` serializer packs one Python int per byte (~110 ms for a 640x480 rgb8 frame);
:class:`_ByteSequenceMachine` writes the same bytes in one block (wire format unchanged, tested against rosbags'
CDR). cyclonedds is an optional dependency (``pip install '.[ros]'``); it is imported when this module is.

Keep this transport in its own process: loading a second Cyclone library into an rclpy process can abort.
"""

# No ``from __future__ import annotations`` here: cyclonedds evaluates the IdlStruct field annotations at runtime
# and cannot resolve ``types.uint32`` from a string.

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

try:
    from cyclonedds.core import DDSException, Listener, Policy, Qos
    from cyclonedds.domain import DomainParticipant
    from cyclonedds.idl import IdlStruct, types
    from cyclonedds.idl._machinery import PlainCdrV2SequenceOfPrimitiveMachine
    from cyclonedds.internal import InvalidSample
    from cyclonedds.pub import DataWriter
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic
    from cyclonedds.util import duration
except ImportError as err:  # pragma: no cover - exercised only without the [ros] extra
    msg = "mfuser_ros.node.dds needs cyclonedds: pip install 'cyclonedds==11.0.1' (or the project's [ros] extra)"
    raise ImportError(msg) from err

import numpy as np

from mfuser_model.classes import CITYSCAPES_CLASSES
from mfuser_ros.errors import TransportError, clip
from mfuser_ros.node.camera_info import CameraInfoData
from mfuser_ros.node.config import NodeConfig, is_compressed_topic, output_topic
from mfuser_ros.node.conversions import CompressedOutput, OutputImage
from mfuser_ros.node.pipeline import CameraOutputs, FrameWorker, SegmentationPipeline, Wanted
from mfuser_ros.node.stats import DiagnosticStatusData, DiagnosticThresholds
from mfuser_ros.node.type_hash import user_data

__all__ = [
    "ROS_TYPE_NAMES",
    "CameraInfo_",
    "CompressedImage_",
    "DdsSegmentationNode",
    "DiagnosticArray_",
    "Gid_",
    "Header_",
    "Image_",
    "LabelInfo_",
    "NodeEntitiesInfo_",
    "ParticipantEntitiesInfo_",
    "RegionOfInterest_",
    "Time_",
    "announce_node",
    "create_reader",
    "create_writer",
    "dds_qos",
    "dds_topic_name",
    "endpoint_qos",
    "loopback_uri",
    "ros_participant",
    "take_samples",
]


# ---- ROS 2 message types as DDS IDL (field order = .msg order; that order is the wire format) ----------------

@dataclass
class Time_(IdlStruct, typename="builtin_interfaces.msg.dds_.Time_"):  # noqa: N801 - DDS type names
    """builtin_interfaces/Time."""

    sec: types.int32 = 0
    nanosec: types.uint32 = 0


@dataclass
class Header_(IdlStruct, typename="std_msgs.msg.dds_.Header_"):  # noqa: N801
    """std_msgs/Header."""

    stamp: Time_ = field(default_factory=Time_)
    frame_id: str = ""


@dataclass
class Image_(IdlStruct, typename="sensor_msgs.msg.dds_.Image_"):  # noqa: N801
    """sensor_msgs/Image; ``data`` is bytes (or any uint8 buffer when writing)."""

    header: Header_ = field(default_factory=Header_)
    height: types.uint32 = 0
    width: types.uint32 = 0
    encoding: str = ""
    is_bigendian: types.uint8 = 0
    step: types.uint32 = 0
    data: types.sequence[types.uint8] = b""


@dataclass
class CompressedImage_(IdlStruct, typename="sensor_msgs.msg.dds_.CompressedImage_"):  # noqa: N801
    """sensor_msgs/CompressedImage."""

    header: Header_ = field(default_factory=Header_)
    format: str = ""
    data: types.sequence[types.uint8] = b""


@dataclass
class RegionOfInterest_(IdlStruct, typename="sensor_msgs.msg.dds_.RegionOfInterest_"):  # noqa: N801
    """sensor_msgs/RegionOfInterest."""

    x_offset: types.uint32 = 0
    y_offset: types.uint32 = 0
    height: types.uint32 = 0
    width: types.uint32 = 0
    do_rectify: bool = False


@dataclass
class CameraInfo_(IdlStruct, typename="sensor_msgs.msg.dds_.CameraInfo_"):  # noqa: N801
    """sensor_msgs/CameraInfo (``float64[9]`` is a fixed IDL array: no length on the wire)."""

    header: Header_ = field(default_factory=Header_)
    height: types.uint32 = 0
    width: types.uint32 = 0
    distortion_model: str = ""
    d: types.sequence[types.float64] = field(default_factory=list)
    k: types.array[types.float64, 9] = field(default_factory=lambda: [0.0] * 9)
    r: types.array[types.float64, 9] = field(default_factory=lambda: [0.0] * 9)
    p: types.array[types.float64, 12] = field(default_factory=lambda: [0.0] * 12)
    binning_x: types.uint32 = 0
    binning_y: types.uint32 = 0
    roi: RegionOfInterest_ = field(default_factory=RegionOfInterest_)


@dataclass
class KeyValue_(IdlStruct, typename="diagnostic_msgs.msg.dds_.KeyValue_"):  # noqa: N801
    """diagnostic_msgs/KeyValue."""

    key: str = ""
    value: str = ""


@dataclass
class DiagnosticStatus_(IdlStruct, typename="diagnostic_msgs.msg.dds_.DiagnosticStatus_"):  # noqa: N801
    """diagnostic_msgs/DiagnosticStatus (``byte level`` is an IDL octet)."""

    level: types.uint8 = 0
    name: str = ""
    message: str = ""
    hardware_id: str = ""
    values: types.sequence[KeyValue_] = field(default_factory=list)


@dataclass
class DiagnosticArray_(IdlStruct, typename="diagnostic_msgs.msg.dds_.DiagnosticArray_"):  # noqa: N801
    """diagnostic_msgs/DiagnosticArray."""

    header: Header_ = field(default_factory=Header_)
    status: types.sequence[DiagnosticStatus_] = field(default_factory=list)


@dataclass
class VisionClass_(IdlStruct, typename="vision_msgs.msg.dds_.VisionClass_"):  # noqa: N801
    """vision_msgs/VisionClass."""

    class_id: types.uint16 = 0
    class_name: str = ""


@dataclass
class LabelInfo_(IdlStruct, typename="vision_msgs.msg.dds_.LabelInfo_"):  # noqa: N801
    """vision_msgs/LabelInfo."""

    header: Header_ = field(default_factory=Header_)
    class_map: types.sequence[VisionClass_] = field(default_factory=list)
    threshold: types.float32 = 0.0


@dataclass
class Gid_(IdlStruct, typename="rmw_dds_common.msg.dds_.Gid_"):  # noqa: N801
    """rmw_dds_common/Gid: a DDS entity's 16-byte GUID."""

    data: types.array[types.uint8, 16] = field(default_factory=lambda: [0] * 16)


@dataclass
class NodeEntitiesInfo_(IdlStruct, typename="rmw_dds_common.msg.dds_.NodeEntitiesInfo_"):  # noqa: N801
    """rmw_dds_common/NodeEntitiesInfo: one node and the GUIDs of its readers and writers."""

    node_namespace: types.bounded_str[256] = "/"
    node_name: types.bounded_str[256] = ""
    reader_gid_seq: types.sequence[Gid_] = field(default_factory=list)
    writer_gid_seq: types.sequence[Gid_] = field(default_factory=list)


@dataclass
class ParticipantEntitiesInfo_(IdlStruct, typename="rmw_dds_common.msg.dds_.ParticipantEntitiesInfo_"):  # noqa: N801
    """rmw_dds_common/ParticipantEntitiesInfo: what ROS 2's graph cache learns about a participant's nodes."""

    gid: Gid_ = field(default_factory=Gid_)
    node_entities_info_seq: types.sequence[NodeEntitiesInfo_] = field(default_factory=list)


ROS_TYPE_NAMES: dict[type, str] = {
    Image_: "sensor_msgs/msg/Image",
    CompressedImage_: "sensor_msgs/msg/CompressedImage",
    CameraInfo_: "sensor_msgs/msg/CameraInfo",
    DiagnosticArray_: "diagnostic_msgs/msg/DiagnosticArray",
    LabelInfo_: "vision_msgs/msg/LabelInfo",
    ParticipantEntitiesInfo_: "rmw_dds_common/msg/ParticipantEntitiesInfo",
}


class _ByteSequenceMachine(PlainCdrV2SequenceOfPrimitiveMachine):
    """``sequence<uint8>`` written and read as one block: uint32 length (4-aligned) then the raw bytes.

    Same bytes on the wire as the stock machine; subclassing keeps cyclonedds' XCDR2 length-code logic intact.
    """

    def __init__(self) -> None:
        super().__init__(types.uint8)

    def serialize(self, buffer: Any, value: Any, serialize_kind: Any = None, key_enabled: Any = None) -> None:
        """Write the length then the payload in one copy."""
        view = memoryview(value).cast("B") if not isinstance(value, np.ndarray) else memoryview(
            np.ascontiguousarray(value, dtype=np.uint8).reshape(-1))
        buffer.align(4)
        buffer.write("I", 4, view.nbytes)
        if view.nbytes:
            buffer.write_bytes(view)

    def deserialize(self, buffer: Any, deserialize_kind: Any = None, key_enabled: Any = None) -> bytes:
        """Read the length then the payload as bytes."""
        buffer.align(4)
        length = buffer.read("I", 4)
        return buffer.read_bytes(length) if length else b""


def _install_byte_machines(cls: type, field_name: str = "data") -> None:
    idl = cls.__idl__
    idl.populate()
    for machine in (idl.v1_machine, idl.v2_machine):
        members = machine.members_machines
        if not isinstance(members[field_name], PlainCdrV2SequenceOfPrimitiveMachine):
            msg = f"{cls.__name__}.{field_name}: unexpected cyclonedds machine {type(members[field_name]).__name__}"
            raise TransportError(msg)
        members[field_name] = _ByteSequenceMachine()


_install_byte_machines(Image_)
_install_byte_machines(CompressedImage_)


# ---- naming, QoS, network ------------------------------------------------------------------------------------

def dds_topic_name(name: str, namespace: str = "/", node_name: str = "mfuser_node") -> str:
    """Resolve a ROS 2 topic name (relative, absolute or ``~/``) and map it to its DDS topic ``rt/...``."""
    namespace = "/" + namespace.strip("/") if namespace.strip("/") else ""
    if name.startswith("/"):
        full = name
    elif name.startswith("~/"):
        full = f"{namespace}/{node_name}/{name[2:]}"
    else:
        full = f"{namespace}/{name}"
    return "rt" + full


def dds_qos(profile: str, depth: int, transient_local: bool = False) -> Qos:
    """QoS matching a ROS 2 profile name (see NodeConfig.input_qos)."""
    policies = [Policy.History.KeepLast(depth),
                Policy.Durability.TransientLocal if transient_local else Policy.Durability.Volatile]
    if profile in ("sensor_data", "best_effort"):
        policies.append(Policy.Reliability.BestEffort)
    else:  # reliable, system_default (the ROS 2 default is reliable)
        policies.append(Policy.Reliability.Reliable(duration(milliseconds=100)))
    return Qos(*policies)


def endpoint_qos(qos: Qos, msg_type: type) -> Qos:
    """``qos`` plus what rmw_cyclonedds gives every reader and writer: the type hash in USER_DATA
    (``typehash=RIHS01_...;``, without which Jazzy peers log "Failed to parse type hash") and no autodispose."""
    return Qos(*qos, Policy.Userdata(user_data(ROS_TYPE_NAMES[msg_type])),
               Policy.WriterDataLifecycle(autodispose=False))


def create_writer(participant: DomainParticipant, topic: str, msg_type: type, qos: Qos) -> DataWriter:
    """A writer on DDS topic ``topic`` as a ROS 2 publisher of ``msg_type`` would create it."""
    return DataWriter(participant, Topic(participant, topic, msg_type), qos=endpoint_qos(qos, msg_type))


def create_reader(participant: DomainParticipant, topic: str, msg_type: type, qos: Qos,
                  listener: Listener | None = None) -> DataReader:
    """A reader on DDS topic ``topic`` as a ROS 2 subscription of ``msg_type`` would create it."""
    return DataReader(participant, Topic(participant, topic, msg_type), qos=endpoint_qos(qos, msg_type),
                      listener=listener)


def ros_participant(domain_id: int) -> DomainParticipant:
    """A participant with the USER_DATA rmw_cyclonedds gives its own (``enclave=/;``)."""
    return DomainParticipant(domain_id, qos=Qos(Policy.Userdata(b"enclave=/;")))


def to_gid(entity: Any) -> Gid_:
    """The rmw GID of a DDS entity: its GUID's 16 bytes (rmw_cyclonedds ``convert_guid_to_gid``)."""
    return Gid_(list(entity.guid.bytes))


def announce_node(participant: DomainParticipant, node_namespace: str, node_name: str,
                  readers: list[DataReader], writers: list[DataWriter]) -> DataWriter:
    """Publish the node on ``ros_discovery_info`` (transient local, so ROS 2 peers that start later learn it too).

    rmw's graph cache maps endpoint GUIDs to nodes through this topic; without it ROS 2 tools name the endpoints
    ``_CREATED_BY_BARE_DDS_APP_`` and ``ros2 node list`` does not show the node. Keep the returned writer alive.
    """
    qos = dds_qos("reliable", 1, transient_local=True)
    writer = create_writer(participant, "ros_discovery_info", ParticipantEntitiesInfo_, qos)
    node = NodeEntitiesInfo_(node_namespace="/" + node_namespace.strip("/"), node_name=node_name,
                             reader_gid_seq=[to_gid(r) for r in readers],
                             writer_gid_seq=[to_gid(w) for w in writers])
    writer.write(ParticipantEntitiesInfo_(gid=to_gid(participant), node_entities_info_seq=[node]))
    return writer


def loopback_uri() -> str:
    """CYCLONEDDS_URI keeping all traffic on loopback: interface ``lo``, no multicast, unicast peer 127.0.0.1.

    ParticipantIndex auto gives each participant its own unicast port, so several processes on one host
    discover each other through the peer list.
    """
    return (
        "<CycloneDDS><Domain Id='any'><General><Interfaces><NetworkInterface name='lo'/></Interfaces>"
        "<AllowMulticast>false</AllowMulticast></General>"
        "<Discovery><ParticipantIndex>auto</ParticipantIndex><MaxAutoParticipantIndex>60</MaxAutoParticipantIndex>"
        "<Peers><Peer address='127.0.0.1'/></Peers></Discovery></Domain></CycloneDDS>"
    )


def to_dds_time(ns: int) -> Time_:
    """Integer nanoseconds -> builtin_interfaces/Time."""
    return Time_(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def to_dds_image(header: Any, image: OutputImage) -> Image_:
    """An output image as a DDS Image_ carrying ``header`` (the input's) unchanged."""
    return Image_(header=header, height=image.height, width=image.width, encoding=image.encoding,
                  is_bigendian=0, step=image.step, data=image.data)


def to_dds_compressed(header: Any, image: CompressedOutput) -> CompressedImage_:
    """A compressed output as a DDS CompressedImage_ carrying ``header`` unchanged."""
    return CompressedImage_(header=header, format=image.format, data=image.data)


def to_dds_camera_info(info: CameraInfoData) -> CameraInfo_:
    """CameraInfoData -> CameraInfo_ (header = the labels' header, a Header_ from the DDS input)."""
    roi = info.roi
    return CameraInfo_(header=info.header, height=info.height, width=info.width,
                       distortion_model=info.distortion_model, d=list(info.d), k=list(info.k), r=list(info.r),
                       p=list(info.p), binning_x=info.binning_x, binning_y=info.binning_y,
                       roi=RegionOfInterest_(roi.x_offset, roi.y_offset, roi.height, roi.width, roi.do_rectify))


def to_dds_diagnostics(statuses: list[DiagnosticStatusData], now_ns: int) -> DiagnosticArray_:
    """Transport-free statuses -> DiagnosticArray_ stamped ``now_ns``."""
    return DiagnosticArray_(
        header=Header_(stamp=to_dds_time(now_ns), frame_id=""),
        status=[DiagnosticStatus_(level=s.level, name=s.name, message=s.message, hardware_id=s.hardware_id,
                                  values=[KeyValue_(k, v) for k, v in s.values.items()]) for s in statuses])


# ---- the node ------------------------------------------------------------------------------------------------

# Most samples one data-available callback takes (a keep-last reader holds a few; the bound keeps a flood from
# pinning Cyclone's listener thread).
_MAX_TAKES = 256


def take_samples(reader: DataReader, deliver: Callable[[Any], None], reject: Callable[[str], None],
                 warn: Callable[[str], None] = print) -> int:
    """Hand every sample queued on ``reader`` to ``deliver``; returns how many were delivered.

    One sample per take: cyclonedds deserializes all samples of a take before returning, so one that cannot be
    deserialized (a string that is not UTF-8, a cut buffer) raises out of ``take`` and would lose its neighbours.
    Taken alone, only it is lost, and ``reject`` gets the reason. Invalid samples (no data: a publisher went away,
    or disposed or unregistered its instance) are state changes, not messages, and are skipped.
    """
    delivered = 0
    for _ in range(_MAX_TAKES):
        try:
            samples = reader.take(N=1)
        except DDSException as err:
            warn(f"reader of {reader.topic.name}: take failed: {clip(str(err), 200)}")
            break
        except Exception as err:  # the sample's own bytes: whatever they break, only this sample is lost
            reject(f"cannot deserialize the sample: {type(err).__name__}: {clip(str(err), 200)}")
            continue
        if not samples:
            break
        if not isinstance(samples[0], InvalidSample):
            deliver(samples[0])
            delivered += 1
    return delivered


_KINDS = ("labels", "color", "overlay", "confidence")
_COMPRESSED_KINDS = ("labels", "color", "overlay")  # <kind>/compressed (image_transport naming)


class _DdsSink:
    """Output writers of every camera; optional outputs only while a reader is matched."""

    def __init__(self, participant: DomainParticipant, config: NodeConfig, namespace: str, node_name: str) -> None:
        qos = dds_qos(config.output_qos, config.output_qos_depth)
        self.writers: list[dict[str, DataWriter]] = []
        outputs = ([(kind, Image_) for kind in _KINDS]
                   + [(f"{kind}/compressed", CompressedImage_) for kind in _COMPRESSED_KINDS]
                   + [("camera_info", CameraInfo_)])
        for camera in config.camera_namespaces():
            writers = {}
            for kind, msg_type in outputs:
                writers[kind] = create_writer(
                    participant, dds_topic_name(output_topic(camera, kind), namespace, node_name), msg_type, qos)
            self.writers.append(writers)

    def wanted(self, camera: int) -> Wanted:
        writers = self.writers[camera]
        return Wanted(*(writers[k].get_publication_matched_status().current_count > 0 for k in (
            "color", "overlay", "confidence", "labels/compressed", "color/compressed", "overlay/compressed")))

    def publish(self, outputs: CameraOutputs) -> None:
        writers = self.writers[outputs.camera]
        for kind in _KINDS:
            image = getattr(outputs, kind)
            if image is not None:
                writers[kind].write(to_dds_image(outputs.header, image))
        for kind, image in outputs.compressed.items():
            writers[f"{kind}/compressed"].write(to_dds_compressed(outputs.header, image))

    def publish_camera_info(self, camera: int, info: CameraInfoData) -> None:
        self.writers[camera]["camera_info"].write(to_dds_camera_info(info))


class DdsSegmentationNode:
    """The segmentation node on bare DDS: readers -> FrameWorker -> writers, plus /diagnostics and LabelInfo.

    Args:
        config: node configuration (topics, QoS, thresholds).
        pipeline: a ready pipeline (model loaded).
        domain_id: DDS domain (= ROS_DOMAIN_ID).
        namespace / node_name: resolve relative topic names as a ROS 2 node with this name would.
        class_names: published in vision_msgs/LabelInfo.
        clock_ns: clock for latency and diagnostics stamps.
        on_fatal: called with the reason after the worker thread died and an ERROR status went out; the caller
            ends the process non-zero (``mfuser-node`` does), so a supervisor restarts it.
    """

    def __init__(self, config: NodeConfig, pipeline: SegmentationPipeline, *, domain_id: int = 0,
                 namespace: str = "/", node_name: str = "mfuser_node",
                 class_names: tuple[str, ...] = CITYSCAPES_CLASSES,
                 clock_ns: Callable[[], int] = time.time_ns, warn: Callable[[str], None] = print,
                 on_fatal: Callable[[str], None] | None = None) -> None:
        self.config = config
        self._on_fatal = on_fatal
        self._warn = warn
        self.node_name = node_name
        self.clock_ns = clock_ns
        self.participant = ros_participant(domain_id)
        self.cameras = config.camera_namespaces()
        self.sink = _DdsSink(self.participant, config, namespace, node_name)
        self.worker = FrameWorker(pipeline, self.cameras, self.sink, clock_ns=clock_ns, warn=warn,
                                  log_throttle_s=config.log_throttle_s, stats_window_s=config.stats_window_s,
                                  clock_skew_limit_s=config.clock_skew_limit_s,
                                  camera_info_timeout_s=config.camera_info_timeout_s,
                                  on_failure=self._worker_failed)
        self._limits = DiagnosticThresholds(config.latency_warn_ms, config.latency_error_ms,
                                            config.min_output_fps_warn)
        in_qos = dds_qos(config.input_qos, config.input_qos_depth)
        self.readers = []
        for index, topic_name in enumerate(config.image_topics):
            msg_type = CompressedImage_ if is_compressed_topic(topic_name) else Image_
            listener = Listener(on_data_available=self._on_data(index))
            self.readers.append(create_reader(self.participant, dds_topic_name(topic_name, namespace, node_name),
                                              msg_type, in_qos, listener))
        for index, topic_name in enumerate(config.camera_info_topic_names()):
            listener = Listener(on_data_available=self._on_camera_info(index))
            self.readers.append(create_reader(self.participant, dds_topic_name(topic_name, namespace, node_name),
                                              CameraInfo_, in_qos, listener))
        self.diagnostics_writer = create_writer(self.participant, dds_topic_name("/diagnostics"), DiagnosticArray_,
                                                dds_qos("reliable", 10))
        latched = dds_qos("reliable", 1, transient_local=True)
        self.label_info = LabelInfo_(class_map=[VisionClass_(i, n) for i, n in enumerate(class_names)])
        self.label_writers = []
        for camera in self.cameras:
            self.label_writers.append(create_writer(
                self.participant, dds_topic_name(output_topic(camera, "label_info"), namespace, node_name),
                LabelInfo_, latched))
        writers = [w for camera in self.sink.writers for w in camera.values()]
        self._discovery_writer = announce_node(self.participant, namespace, node_name, self.readers,
                                               [*writers, self.diagnostics_writer, *self.label_writers])
        self._stop = threading.Event()
        self._diag_thread: threading.Thread | None = None

    def _on_data(self, camera: int) -> "Callable[[DataReader], None]":
        # Each newer frame replaces the older one in the camera's latest slot (a counted drop).
        def callback(reader: DataReader) -> None:
            take_samples(reader, lambda sample: self.worker.submit(camera, sample),
                         lambda reason: self.worker.reject(camera, "malformed", reason), self._warn)
        return callback

    def _on_camera_info(self, camera: int) -> "Callable[[DataReader], None]":
        def callback(reader: DataReader) -> None:
            take_samples(reader, lambda sample: self.worker.submit_camera_info(camera, sample),
                         lambda reason: self.worker.reject_camera_info(camera, reason), self._warn)
        return callback

    def start(self) -> None:
        """Publish LabelInfo, start the worker and the diagnostics thread."""
        stamp = to_dds_time(self.clock_ns())
        for writer in self.label_writers:
            self.label_info.header = Header_(stamp=stamp, frame_id="")
            writer.write(self.label_info)
        self._stop.clear()
        self.worker.start()
        self._diag_thread = threading.Thread(target=self._diagnostics_loop, name="mfuser-diagnostics", daemon=True)
        self._diag_thread.start()

    def publish_diagnostics(self) -> None:
        """Publish one DiagnosticArray with a status per camera."""
        statuses = self.worker.statuses(self.node_name, self._limits, active=self.worker.running)
        self.diagnostics_writer.write(to_dds_diagnostics(statuses, self.clock_ns()))

    def _diagnostics_loop(self) -> None:
        while not self._stop.wait(self.config.diagnostics_period_s):
            self.publish_diagnostics()

    def _worker_failed(self, reason: str) -> None:
        """The worker thread died (called on it): publish the ERROR status now, then tell the owner."""
        try:
            self.publish_diagnostics()
        except Exception as err:  # the transport may be what broke; the owner must still hear of the failure
            self._warn(f"cannot publish the ERROR status: {clip(str(err), 200)}")
        if self._on_fatal is not None:
            self._on_fatal(reason)

    def close(self) -> None:
        """Delete the participant and every reader and writer in it, now (after :meth:`stop`).

        Until then Cyclone's listener threads may call into Python; one doing so while the interpreter shuts down
        crashes the process (SIGSEGV), so the node closes before it returns. ``dds_delete`` waits for callbacks
        still running. cyclonedds deletes an entity in ``__del__`` (its registry only holds weak references).
        """
        participant, self.participant = self.participant, None
        if participant is not None:
            participant.__del__()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop threads (the participant is released when the object is garbage-collected).

        Waits up to ``timeout`` s (default: the ``shutdown_timeout_s`` parameter) for the frame in the model;
        returns False when it is still running then (see :meth:`FrameWorker.stop`).
        """
        self._stop.set()
        stopped = self.worker.stop(self.config.shutdown_timeout_s if timeout is None else timeout)
        if self._diag_thread is not None:
            self._diag_thread.join(5.0)
            self._diag_thread = None
        return stopped
