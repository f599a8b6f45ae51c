"""Rosbag I/O for replay, on ``rosbags`` (no ROS install): a reader that keeps what a damaged bag still holds,
and a writer that always leaves a valid rosbag2.

:class:`BagInput` opens a rosbag2 directory, a bare ``.mcap`` / ``.db3`` file or a ROS 1 ``.bag`` with rosbags'
``AnyReader`` and yields plain ``(timestamp_ns, BagMessage)`` tuples in time order. rosbags refuses a truncated
file outright (an MCAP without its footer, an SQLite file shorter than its header says), which would throw away
every frame before the damage; for those two storages the reader falls back to reading the file front to back
(:mod:`mfuser_ros.replay.salvage`) and raises :class:`BagReadError` naming the file and the byte or row
where the data ends, after yielding everything before it.

:class:`BagOutput` writes a rosbag2 (mcap or sqlite3, with ``metadata.yaml``) through rosbags' ``Writer``;
closing it — also after Ctrl-C or an error — finishes the file, so partial runs still leave a readable bag.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mfuser_model.errors import MFuserError
from mfuser_ros.node.camera_info import CameraInfoData, camera_info_from_message
from mfuser_ros.replay.salvage import BagReadError, mcap_salvage, salvage, sqlite_salvage

__all__ = [
    "CAMERA_INFO_TYPE",
    "COMPRESSED_TYPE",
    "IMAGE_TYPES",
    "BagInput",
    "BagMessage",
    "BagOutput",
    "BagReadError",
    "TopicInfo",
    "mcap_salvage",
    "ros1_qos",
    "ros2_qos",
    "sqlite_salvage",
]

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES: frozenset[str] = frozenset({IMAGE_TYPE, COMPRESSED_TYPE})
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"


class TopicInfo(NamedTuple):
    """One topic of the input bag; ``count`` is None when the bag's index is unreadable.

    ``qos`` holds the offered QoS profiles recorded for the topic (rosbags ``Qos``, one per publisher); for a ROS 1
    bag, what ROS 1 offered (:func:`ros1_qos`); empty when the bag does not say.
    """

    name: str
    msgtype: str
    count: int | None
    qos: tuple = ()


class BagMessage(NamedTuple):
    """One message: its topic and type, the serialized bytes (CDR for ROS 2, ROS 1 wire format otherwise) and
    the deserialized message object."""

    topic: str
    msgtype: str
    raw: bytes
    msg: Any


def _rosbags() -> Any:
    try:
        import rosbags  # noqa: F401, PLC0415
    except ImportError as err:
        msg = "bag replay needs the 'rosbags' package: pip install -e '.[ros]'"
        raise MFuserError(msg) from err
    from rosbags.typesys import Stores, get_typestore  # noqa: PLC0415

    return get_typestore(Stores.ROS2_HUMBLE)


# ---- QoS as rosbag2 records it ---------------------------------------------------------------------------------------
# rosbag2 stores, per topic, the QoS every publisher offered, as read from discovery: durations the rmw reports as
# infinite are RMW_DURATION_INFINITE {9223372036 s, 854775807 ns}; liveliness automatic. `ros2 bag play` offers
# the recorded reliability and durability again, so a best-effort camera stays best effort and a latched topic
# latched. Metadata version 9 (Jazzy) writes the policies by name, version 8 as integers (rosbags does both).
_INFINITE = (9223372036, 854775807)


def ros2_qos(profile: str, depth: int, transient_local: bool = False) -> Any:
    """The rosbags ``Qos`` a publisher with a NodeConfig QoS profile offers (see ``NodeConfig.output_qos``)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime  # noqa: PLC0415

    # As on the wire: sensor_data and best_effort are best effort; reliable and system_default (the DDS default)
    # are reliable.
    best_effort = profile in ("sensor_data", "best_effort")
    infinite = QosTime(*_INFINITE)
    return Qos(history=QosHistory.KEEP_LAST, depth=depth,
               reliability=QosReliability.BEST_EFFORT if best_effort else QosReliability.RELIABLE,
               durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               deadline=infinite, lifespan=infinite, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=infinite, avoid_ros_namespace_conventions=False)


def ros1_qos(latching: bool) -> Any:
    """What a ROS 1 publisher offered, in ROS 2 terms: TCPROS is reliable; a latched topic is transient local.
    The depth is rosbag2's own default (10), which ``ros2 bag play`` uses when a bag names none."""
    return ros2_qos("reliable", 10, transient_local=latching)


def _connection_qos(connections: Sequence[Any]) -> tuple:
    from rosbags.interfaces import ConnectionExtRosbag1, ConnectionExtRosbag2  # noqa: PLC0415

    profiles: list[Any] = []
    for connection in connections:
        if isinstance(connection.ext, ConnectionExtRosbag2):
            profiles.extend(connection.ext.offered_qos_profiles)
        elif isinstance(connection.ext, ConnectionExtRosbag1):
            profiles.append(ros1_qos(bool(connection.ext.latching)))
    return tuple(dict.fromkeys(profiles))  # one entry per distinct profile, in recording order


def _storage_pairs(reader: Any) -> dict[tuple[int, int], list[Any]]:
    """Connections to read a rosbag2 directory's topics by, where metadata.yaml and the storage disagree on QoS.

    rosbags pairs a metadata.yaml topic with the storage's (mcap channel, sqlite3 ``topics`` row) only when the
    offered QoS profiles are equal too. ROS 2's own recordings break that: the rosbag2_py talker bags list every QoS
    duration as 0 in metadata.yaml while the storage holds the rmw's "infinite" {2147483647 s, 4294967295 ns}, and
    rosbags then reads no message from the directory. rosbag2 reads messages by the storage's topic and type, so
    do the same: such a topic is read through its storage connections' QoS. Keyed by (id(owner), connection id).
    """
    from rosbags.rosbag2.reader import DirectoryReader  # noqa: PLC0415

    pairs: dict[tuple[int, int], list[Any]] = {}
    for sub in getattr(reader, "readers", ()):
        directory = getattr(sub, "storage", None)
        if not isinstance(directory, DirectoryReader):  # a bare .mcap/.db3: its connections are the storage's
            continue
        stored = [c for storage in directory.storages for c in storage.connections]  # rosbags 0.11 (pinned)
        for conn in directory.connections:
            same = [c for c in stored if c.topic == conn.topic and c.msgtype == conn.msgtype]
            if same and all(c.ext != conn.ext for c in same):
                exts = [c.ext for c in same]
                distinct = [e for i, e in enumerate(exts) if e not in exts[:i]]  # unhashable (lists of Qos)
                pairs[(id(conn.owner), conn.id)] = [conn._replace(ext=e) for e in distinct]
    return pairs


def _storage_files(path: Path) -> list[Path]:
    """The storage files of a bag path: the file itself, or the .mcap/.db3 files of a rosbag2 directory."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
    return [path]


# ---- reader ---------------------------------------------------------------------------------------------------------
class BagInput:
    """A bag opened for replay: topics, and messages of chosen topics as ``(timestamp_ns, BagMessage)``.

    Args:
        path: rosbag2 directory, ``.mcap`` or ``.db3`` file, or ROS 1 ``.bag``.

    Attributes:
        damaged: why rosbags refused the bag, when it is read in salvage mode (None otherwise).
        is_ros2: messages are CDR (ROS 2); False for a ROS 1 bag.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            msg = f"{self.path}: bag not found"
            raise BagReadError(msg)
        self.typestore = _rosbags()
        self.damaged: str | None = None
        self.is_ros2 = self.path.suffix != ".bag"
        self._reader: Any = None
        self._salvage_topics: dict[str, TopicInfo] | None = None
        self._pairs: dict[tuple[int, int], list[Any]] = {}
        self.salvage_error: str | None = None

    def open(self) -> None:
        """Open the bag; a truncated mcap/db3 switches to salvage mode instead of failing."""
        from rosbags.highlevel import AnyReader  # noqa: PLC0415

        try:
            reader = AnyReader([self.path], default_typestore=self.typestore)
            reader.open()
        except Exception as err:  # AnyReaderError, but also TypeError/struct.error on some damage
            files = _storage_files(self.path)
            if not files or not all(p.suffix in (".mcap", ".db3") for p in files):
                msg = f"{self.path}: cannot open bag: {err}"
                raise BagReadError(msg) from err
            self.damaged = f"{err}".strip() or type(err).__name__
            self._salvage_topics = self._scansalvage(files)
            return
        self._reader = reader
        self._pairs = _storage_pairs(reader)
        self.is_ros2 = reader.is2

    def _scansalvage(self, files: Sequence[Path]) -> dict[str, TopicInfo]:
        counts: dict[str, list[Any]] = {}
        try:
            for topic, msgtype, _, _ in salvage(files):
                counts.setdefault(topic, [msgtype, 0])[1] += 1
        except BagReadError as err:
            # Raised again, after the messages before it, when they are read for real; kept for "nothing readable".
            self.salvage_error = str(err)
        return {t: TopicInfo(t, m, n) for t, (m, n) in sorted(counts.items())}

    def close(self) -> None:
        """Close the bag."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> BagInput:
        self.open()
        return self

    def __exit__(self, *exc: object) -> bool:
        self.close()
        return False

    @property
    def topics(self) -> dict[str, TopicInfo]:
        """Every topic with its message type and count."""
        if self._salvage_topics is not None:
            return dict(self._salvage_topics)
        if self._reader is None:
            msg = f"{self.path}: bag is not open"
            raise BagReadError(msg)
        out = {}
        for name, info in self._reader.topics.items():
            out[name] = TopicInfo(name, info.msgtype or "", info.msgcount, _connection_qos(info.connections))
        return out

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        """Message object of serialized bytes (the bag's own definitions when it embeds them)."""
        if self._reader is not None:
            return self._reader.deserialize(raw, msgtype)
        return self.typestore.deserialize_cdr(raw, msgtype)

    def messages(self, topics: Sequence[str], on_undecodable: Callable[[str, int, str], None] | None = None,
                 ) -> Iterator[tuple[int, BagMessage]]:
        """Messages of ``topics`` in bag order, deserialized.

        Args:
            topics: the topics to read.
            on_undecodable: called with (topic, timestamp, error) for a message whose bytes do not deserialize
                (e.g. a bit flip in its chunk), which is then skipped; without it, such a message ends the read.

        Raises:
            BagReadError: the bag breaks off; every message before the break has been yielded.
        """
        wanted = set(topics)
        count, last = 0, None
        if self._salvage_topics is not None:
            items: Iterator[tuple[str, str, int, bytes]] = (
                m for m in salvage(_storage_files(self.path)) if m[0] in wanted)
        else:
            connections = [paired for c in self._reader.connections if c.topic in wanted
                           for paired in self._pairs.get((id(c.owner), c.id), [c])]
            if not connections:  # rosbags reads every topic when given none
                return
            items = ((c.topic, c.msgtype, ts, raw) for c, ts, raw in self._reader.messages(connections=connections))
        while True:
            where = f"after message {count}" + (f" (log time {last} ns)" if last is not None else "")
            try:
                item = next(items, None)
            except BagReadError:
                raise
            except Exception as err:  # rosbags, apsw, zstd and struct errors alike: re-raised with the position
                msg_ = f"{self.path}: cannot read {where}: {type(err).__name__}: {err}"
                raise BagReadError(msg_) from err
            if item is None:
                return
            topic, msgtype, timestamp, raw = item
            count, last = count + 1, timestamp
            try:
                msg = self.deserialize(raw, msgtype)
            except Exception as err:  # rosbags serde errors; the next message is read as usual
                error = f"{self.path}: message {count} on {topic} (log time {timestamp} ns) does not deserialize " \
                        f"as {msgtype}: {type(err).__name__}: {err}"
                if on_undecodable is None:
                    raise BagReadError(error) from err
                on_undecodable(topic, timestamp, error)
                continue
            yield timestamp, BagMessage(topic, msgtype, bytes(raw), msg)


# ---- writer ---------------------------------------------------------------------------------------------------------
@dataclass
class BagOutput:
    """A rosbag2 being written; thread-safe (the real-time replay writes from two threads).

    Args:
        path: output directory (must not exist; rosbags never overwrites).
        storage: ``"mcap"`` or ``"sqlite3"``.
        version: rosbag2 metadata version: 9 is what Jazzy's rosbag2 writes (QoS policies by name), 8 the one
            before (QoS policies as integers); rosbags writes either.

        default_qos: offered QoS profiles of topics not given to :meth:`set_qos`. Where neither names any:
            rosbag2's default profile (keep last 10, reliable, volatile), which ``ros2 bag play`` would use anyway.

    Every topic gets offered QoS profiles, in metadata.yaml and in the storage (mcap channel metadata, the sqlite3
    topics table), as rosbag2 records them.
    """

    path: Path
    storage: str = "mcap"
    version: int = 9
    default_qos: tuple = ()
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.storage not in ("mcap", "sqlite3"):
            msg = f"--storage: {self.storage!r} is not 'mcap' or 'sqlite3'"
            raise MFuserError(msg)
        self.typestore = _rosbags()
        self._writer: Any = None
        self._connections: dict[str, Any] = {}
        self._qos: dict[str, tuple] = {}
        self._lock = threading.Lock()

    def open(self) -> None:
        """Create the bag directory and its storage file."""
        from rosbags.rosbag2 import StoragePlugin, Writer, WriterError  # noqa: PLC0415

        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        try:
            writer = Writer(self.path, version=self.version, storage_plugin=plugin)
            writer.open()
        except WriterError as err:
            msg = f"{self.path}: cannot create output bag: {err}"
            raise MFuserError(msg) from err
        storage = writer.storage
        if isinstance(getattr(storage, "conn", None), sqlite3.Connection):
            # rosbags (0.11, pinned) connects with Python's default check_same_thread=True, but the real-time replay
            # writes labels from the worker thread, and every label was lost. Every use of the writer is under
            # self._lock, so one connection shared by the two threads is safe; its schema is committed already.
            storage.conn.close()
            storage.conn = sqlite3.connect(f"file:{storage.path}", uri=True, check_same_thread=False)
            storage.cursor = storage.conn.cursor()
        self._writer = writer

    def set_qos(self, topic: str, profiles: Sequence[Any]) -> None:
        """The offered QoS profiles (rosbags ``Qos``) to record for ``topic``; call before its first message."""
        with self._lock:
            if topic in self._connections:
                msg = f"{self.path}: QoS of {topic!r} set after its first message"
                raise MFuserError(msg)
            self._qos[topic] = tuple(profiles)

    def write_raw(self, topic: str, msgtype: str, timestamp_ns: int, raw: bytes) -> None:
        """Write already-serialized ROS 2 CDR bytes."""
        with self._lock:
            connection = self._connections.get(topic)
            if connection is None:
                qos = self._qos.get(topic, self.default_qos)
                qos = qos or (ros2_qos("reliable", 10),)  # what `ros2 bag play` assumes for a bag that names none
                connection = self._writer.add_connection(topic, msgtype, typestore=self.typestore,
                                                         offered_qos_profiles=qos)
                self._connections[topic] = connection
            self._writer.write(connection, timestamp_ns, raw)
            self.counts[topic] = self.counts.get(topic, 0) + 1

    def write(self, topic: str, msgtype: str, timestamp_ns: int, msg: Any) -> None:
        """Serialize a message object (any object with the type's fields) to CDR and write it."""
        self.write_raw(topic, msgtype, timestamp_ns, self.typestore.serialize_cdr(msg, msgtype))

    def image(self, header: Any, encoding: str, data: Any) -> Any:
        """A sensor_msgs/Image with ``header`` and an unpadded (H, W[, C]) uint8 array."""
        height, width = data.shape[:2]
        return self.typestore.types[IMAGE_TYPE](header=header, height=height, width=width, encoding=encoding,
                                                is_bigendian=0, step=int(data.strides[0]), data=data.reshape(-1))

    def compressed(self, header: Any, fmt: str, data: Any) -> Any:
        """A sensor_msgs/CompressedImage with ``header``, ``format`` and the encoded bytes."""
        return self.typestore.types[COMPRESSED_TYPE](header=header, format=fmt, data=data)

    def camera_info(self, info: CameraInfoData, header: Any | None = None) -> Any:
        """A sensor_msgs/CameraInfo of ``info`` (with ``header`` in place of its own, e.g. a ROS 2 copy of it)."""
        types = self.typestore.types
        roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=info.roi.x_offset, y_offset=info.roi.y_offset,
                                                         height=info.roi.height, width=info.roi.width,
                                                         do_rectify=info.roi.do_rectify)
        return types[CAMERA_INFO_TYPE](
            header=info.header if header is None else header, height=info.height, width=info.width,
            distortion_model=info.distortion_model, d=np.array(info.d, dtype=np.float64),
            k=np.array(info.k, dtype=np.float64), r=np.array(info.r, dtype=np.float64),
            p=np.array(info.p, dtype=np.float64), binning_x=info.binning_x, binning_y=info.binning_y, roi=roi)

    def to_ros2(self, message: BagMessage) -> bytes:
        """CDR bytes of an input image or CameraInfo message: the bytes themselves for ROS 2, rebuilt for ROS 1."""
        msg = message.msg
        types = self.typestore.types
        stamp = msg.header.stamp
        header = types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=int(stamp.sec), nanosec=int(stamp.nanosec)),
            frame_id=str(msg.header.frame_id))
        if message.msgtype == CAMERA_INFO_TYPE:
            out = self.camera_info(camera_info_from_message(msg), header)
        elif message.msgtype == COMPRESSED_TYPE:
            out = types[COMPRESSED_TYPE](header=header, format=msg.format, data=msg.data)
        else:
            out = types[IMAGE_TYPE](header=header, height=msg.height, width=msg.width, encoding=msg.encoding,
                                    is_bigendian=msg.is_bigendian, step=msg.step, data=msg.data)
        return self.typestore.serialize_cdr(out, message.msgtype)

    def close(self) -> None:
        """Finish the storage file and write metadata.yaml (also after an interruption)."""
        with self._lock:
            if self._writer is not None:
                writer, self._writer = self._writer, None
                writer.close()

    def __enter__(self) -> BagOutput:
        self.open()
        return self

    def __exit__(self, *exc: object) -> bool:
        # Close, not abort, on errors too: the frames written so far stay a valid bag.
        self.close()
        return False
