"""ROS 2 type hashes (REP-2011, ``RIHS01_<sha256>``) of the messages the bare-DDS node speaks, without ROS.

Since Jazzy every rmw endpoint announces its type's hash in the DDS USER_DATA QoS as ``typehash=RIHS01_<hex>;``
(rmw_dds_common ``encode_type_hash_for_user_data_qos``); a peer that finds USER_DATA without it logs
"Failed to parse type hash" and ``ros2 topic info -v`` shows no hash. The hash is computed the way
``rosidl_generator_type_description`` does at build time: the type description (the type's fields and every type
it references, sorted by name, default values left out) as JSON with ``", "`` / ``": "`` separators, then SHA-256.

The message definitions below are the interfaces' ``.msg`` files (fields only: constants are not part of a type
description); tests check every hash against the ones ROS 2 generated and against rosbags.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re

__all__ = ["MESSAGE_DEFINITIONS", "type_description", "type_hash", "user_data"]

MESSAGE_DEFINITIONS: dict[str, str] = {
    "builtin_interfaces/msg/Time": "int32 sec\nuint32 nanosec",
    "std_msgs/msg/Header": "builtin_interfaces/Time stamp\nstring frame_id",
    "sensor_msgs/msg/Image": ("std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\n"
                              "uint8 is_bigendian\nuint32 step\nuint8[] data"),
    "sensor_msgs/msg/CompressedImage": "std_msgs/Header header\nstring format\nuint8[] data",
    "sensor_msgs/msg/RegionOfInterest": ("uint32 x_offset\nuint32 y_offset\nuint32 height\nuint32 width\n"
                                         "bool do_rectify"),
    "sensor_msgs/msg/CameraInfo": ("std_msgs/Header header\nuint32 height\nuint32 width\nstring distortion_model\n"
                                   "float64[] d\nfloat64[9] k\nfloat64[9] r\nfloat64[12] p\nuint32 binning_x\n"
                                   "uint32 binning_y\nRegionOfInterest roi"),
    "diagnostic_msgs/msg/KeyValue": "string key\nstring value",
    "diagnostic_msgs/msg/DiagnosticStatus": ("byte level\nstring name\nstring message\nstring hardware_id\n"
                                             "diagnostic_msgs/KeyValue[] values"),
    "diagnostic_msgs/msg/DiagnosticArray": "std_msgs/Header header\ndiagnostic_msgs/DiagnosticStatus[] status",
    "vision_msgs/msg/VisionClass": "uint16 class_id\nstring class_name",
    "vision_msgs/msg/LabelInfo": "std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold",
    "rmw_dds_common/msg/Gid": "char[16] data",
    "rmw_dds_common/msg/NodeEntitiesInfo": ("string<=256 node_namespace\nstring<=256 node_name\n"
                                            "rmw_dds_common/Gid[] reader_gid_seq\n"
                                            "rmw_dds_common/Gid[] writer_gid_seq"),
    "rmw_dds_common/msg/ParticipantEntitiesInfo": ("rmw_dds_common/Gid gid\n"
                                                   "rmw_dds_common/NodeEntitiesInfo[] node_entities_info_seq"),
}

# type_description_interfaces/msg/FieldType ids. A .msg `char` is uint8 and `byte` is an IDL octet.
_TYPE_IDS = {
    "nested": 1, "int8": 2, "uint8": 3, "char": 3, "int16": 4, "uint16": 5, "int32": 6, "uint32": 7, "int64": 8,
    "uint64": 9, "float32": 10, "float64": 11, "bool": 15, "byte": 16, "string": 17, "wstring": 18,
    "bounded_string": 21, "bounded_wstring": 22,
}
_ARRAY, _BOUNDED_SEQUENCE, _UNBOUNDED_SEQUENCE = 48, 96, 144
_FIELD_RE = re.compile(r"^(?P<base>[\w/]+?)(?:<=(?P<strmax>\d+))?(?:\[(?P<bound><=)?(?P<size>\d*)\])?$")


def _field(type_text: str, name: str, package: str) -> dict:
    match = _FIELD_RE.match(type_text)
    if match is None:
        msg = f"unsupported field type {type_text!r}"
        raise ValueError(msg)
    base, string_capacity = match["base"], int(match["strmax"] or 0)
    nested = ""
    if base in _TYPE_IDS:
        key = f"bounded_{base}" if string_capacity else base
        type_id = _TYPE_IDS[key]
    else:  # a message: `pkg/Name` or, inside the same package, `Name`
        pkg, _, short = base.rpartition("/")
        nested = f"{pkg or package}/msg/{short}"
        type_id = _TYPE_IDS["nested"]
    capacity = 0
    if match.group(0).endswith("]"):
        if match["size"] and not match["bound"]:
            type_id, capacity = type_id + _ARRAY, int(match["size"])
        elif match["bound"]:
            type_id, capacity = type_id + _BOUNDED_SEQUENCE, int(match["size"])
        else:
            type_id += _UNBOUNDED_SEQUENCE
    return {"name": name, "type": {"type_id": type_id, "capacity": capacity, "string_capacity": string_capacity,
                                   "nested_type_name": nested}}


def _individual(type_name: str) -> dict:
    package = type_name.split("/", 1)[0]
    fields = []
    for line in MESSAGE_DEFINITIONS[type_name].splitlines():
        type_text, name = line.split()
        fields.append(_field(type_text, name, package))
    return {"type_name": type_name, "fields": fields}


def type_description(type_name: str) -> dict:
    """The hashable type description (``type_description_interfaces/TypeDescription`` without default values)."""
    if type_name not in MESSAGE_DEFINITIONS:
        msg = f"no message definition for {type_name!r}; known: {', '.join(sorted(MESSAGE_DEFINITIONS))}"
        raise KeyError(msg)
    referenced: set[str] = set()
    queue = [type_name]
    while queue:
        for field in _individual(queue.pop())["fields"]:
            nested = field["type"]["nested_type_name"]
            if nested and nested not in referenced:
                referenced.add(nested)
                queue.append(nested)
    return {"type_description": _individual(type_name),
            "referenced_type_descriptions": [_individual(name) for name in sorted(referenced)]}


@functools.cache
def type_hash(type_name: str) -> str:
    """``RIHS01_<64 hex digits>`` of a message type, e.g. ``type_hash("sensor_msgs/msg/Image")``."""
    text = json.dumps(type_description(type_name), ensure_ascii=True, allow_nan=False, separators=(", ", ": "))
    return "RIHS01_" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def user_data(type_name: str) -> bytes:
    """The USER_DATA rmw_cyclonedds gives every reader and writer of ``type_name``: ``typehash=RIHS01_...;``."""
    return f"typehash={type_hash(type_name)};".encode("ascii")
