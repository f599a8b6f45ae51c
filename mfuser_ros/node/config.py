"""The node's configuration: one frozen dataclass, loaded strictly from a ROS 2 parameter file.

Every transport (rclpy, bare DDS, replay) builds the same :class:`NodeConfig`; defaults live here and the shipped
values in ``config/mfuser_node.yaml``. Ranges are part of the field types (``mfuser_model.config_io.Range``), other
checks live in ``__post_init__``, so an invalid value fails at configure with a :class:`ConfigError` naming the
parameter.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from mfuser_model.config_io import (
    NonEmpty,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Range,
    UnitFloat,
    check_fields,
    dataclass_from_dict,
    load_yaml,
)
from mfuser_model.errors import ConfigError

__all__ = [
    "BUNDLED_MODEL",
    "RUNTIME_PARAMETERS",
    "NodeConfig",
    "QosName",
    "camera_info_topic",
    "camera_namespace",
    "is_compressed_topic",
    "load_node_config",
    "node_config_from_params",
    "output_topic",
    "parameter_defaults",
    "with_runtime_changes",
]

QosName = Literal["sensor_data", "reliable", "best_effort", "system_default"]

# ROS 2 name rules (rcl_validate_topic_name), simplified: tokens of [A-Za-z0-9_], separated by single '/',
# optionally starting with '/' or '~/', not starting a token with a digit.
_TOPIC_RE = re.compile(r"^(~/|/)?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_COLOR_RE = re.compile(r"^#[0-9A-Fa-f]{6}$")

# The toy model shipped with the package (config/mfuser_node.yaml's checkpoint): checks an install, not accuracy.
BUNDLED_MODEL = "package://mfuser_ros/models/tiny-eva02-synthetic.safetensors"

# Parameters that take effect at once while the node runs (`ros2 param set`): how outputs look and when
# diagnostics warn. Every other parameter shapes what configure builds (topics, QoS, the model and its device,
# buffers) and changes only while the node is unconfigured: deactivate, cleanup, set, configure, activate.
RUNTIME_PARAMETERS: frozenset[str] = frozenset({
    "overlay_alpha", "latency_warn_ms", "latency_error_ms", "min_output_fps_warn", "diagnostics_period_s",
})


@dataclass(frozen=True)
class NodeConfig:
    """Everything the segmentation node reads at configure time. A change means a reconfigure.

    Attributes:
        image_topics: input camera topics; a name ending in ``/compressed`` is a sensor_msgs/CompressedImage,
            any other a sensor_msgs/Image. Outputs go to ``<camera>/mfuser/...`` where ``<camera>`` is the topic's
            namespace (``front/image_raw`` -> ``front``) unless ``camera_names`` says otherwise.
        camera_names: optional output namespace per topic (same length as ``image_topics``).
        camera_info_topics: sensor_msgs/CameraInfo topic per image topic; empty: the ``camera_info`` sibling of
            each image topic (image_transport's rule: ``front/image_raw[/compressed]`` -> ``front/camera_info``).
            Each one is republished, scaled to the output size, on ``<camera>/mfuser/camera_info`` with the labels'
            header, paired by header stamp.
        camera_info_timeout_s: how long a frame's outputs wait for the CameraInfo with their stamp; after that the
            frame gets no CameraInfo (counted as ``camera_info_unmatched`` in /diagnostics).
        input_qos / input_qos_depth: reliability profile and history depth of the image subscriptions.
        output_qos / output_qos_depth: the same for the label, colour, overlay and confidence publishers.
        preset / checkpoint: model preset name and weight file (a path or ``package://`` URI). Empty checkpoint:
            random weights, which the node refuses unless ``allow_random_weights`` is set.
        allow_random_weights: let the node run without a checkpoint (random weights: tests and demos only).
        device: ``cpu`` or ``cuda[:N]``. precision: ``fp32``, ``fp16`` or ``bf16``.
        decoder_backend: ``torch``, ``onnxruntime`` or ``tensorrt`` (passed to the model factory).
        decoder_onnx: a fixed decoder export for onnxruntime/tensorrt (one input size); empty: export per input
            size into ``decoder_cache_dir`` (empty: the model library's default cache folder).
        threads: CPU threads of torch, OpenCV and onnxruntime (:mod:`mfuser_model.threads`): N, 0 for every
            CPU (a dedicated machine), -1 for ``$OMP_NUM_THREADS`` or 1 (the default: safe beside other nodes).
        inference_mode / crop_size / stride: whole-image or sliding-window inference.
        network_image_width / network_image_height: the box every camera image is resized into (keeping its
            aspect ratio; the box turns with the image's orientation) before the model sees it, so the work per
            frame is bounded whatever the camera's resolution (as Isaac ROS's encoder parameters of the same names).
            Labels still come out at the output size. Default 2048x1024: the paper's test protocol for Cityscapes
            and Mapillary (BDD100K: 1280x720), used with ``inference_mode: slide``, 512/341 for the full models.
        network_image_upscale: also enlarge smaller images to fill the box, as the paper's protocol does; off by
            default (smaller cameras run at their own size: enlarging only adds work).
        output_width / output_height: size of every output image; 0 and 0 = the input's size.
        overlay_alpha: weight of the colour mask in the overlay image.
        color_palette: ``"#RRGGBB"`` per class id for colour and overlay; empty: the model's own palette (its
            checkpoint's; by default ``mfuser_model.classes.CITYSCAPES_PALETTE``). The rclpy node sets this
            parameter to the palette in use at configure, so viewers read the legend with ``ros2 param get``.
        png_level / jpeg_quality: ``<camera>/mfuser/labels/compressed`` PNG level (0-9, lossless at every level) and
            the JPEG quality (1-100) of ``color/compressed`` and ``overlay/compressed`` (image_transport's names).
        max_width / max_height: larger (declared or decoded) images are rejected as malformed.
        max_batch: most frames (one per camera) that go through the model together.
        load_model_on: lifecycle transition that loads the model (``configure`` or ``activate``).
        warmup: run one frame through the model at activation, so the first real frame is not slow.
        autostart: the rclpy node configures and activates itself at start-up.
        diagnostics_period_s / stats_window_s: /diagnostics publishing period and statistics window.
        latency_warn_ms / latency_error_ms: p95 latency (now - header.stamp) giving WARN / ERROR.
        clock_skew_limit_s: a frame whose stamp is further than this from the node's clock (either way) is counted
            as clock skew (WARN) and left out of the latency statistics: a camera stamping sec=0 would otherwise
            put p95 at decades and hold the camera at ERROR.
        min_output_fps_warn: WARN when a camera with input publishes slower than this (0 disables).
        log_throttle_s: at most one log line per camera and error kind in this period.
        shutdown_timeout_s: on shutdown or deactivate, how long to wait for the frame in the model; after that the
            process leaves without it (a second SIGINT/SIGTERM leaves at once).
    """

    image_topics: Annotated[tuple[str, ...], NonEmpty] = ("camera/image_raw",)
    camera_names: tuple[str, ...] = ()
    camera_info_topics: tuple[str, ...] = ()
    camera_info_timeout_s: PosFloat = 1.0
    input_qos: QosName = "sensor_data"
    input_qos_depth: PosInt = 1
    output_qos: QosName = "reliable"
    output_qos_depth: PosInt = 1
    preset: str = "tiny-eva02"
    checkpoint: str = ""
    allow_random_weights: bool = False
    device: str = "cpu"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    decoder_backend: Literal["torch", "onnxruntime", "tensorrt"] = "torch"
    decoder_onnx: str = ""
    decoder_cache_dir: str = ""
    threads: Annotated[int, Range(ge=-1)] = -1  # -1: $OMP_NUM_THREADS or 1; 0: every CPU
    inference_mode: Literal["whole", "slide"] = "whole"
    crop_size: PosInt = 512
    stride: PosInt = 341
    network_image_width: PosInt = 2048
    network_image_height: PosInt = 1024
    network_image_upscale: bool = False
    output_width: NonNegInt = 0
    output_height: NonNegInt = 0
    overlay_alpha: UnitFloat = 0.5
    color_palette: tuple[str, ...] = ()
    png_level: Annotated[int, Range(ge=0, le=9)] = 3
    jpeg_quality: Annotated[int, Range(ge=1, le=100)] = 90
    max_width: PosInt = 4096
    max_height: PosInt = 4096
    max_batch: PosInt = 4
    load_model_on: Literal["configure", "activate"] = "activate"
    warmup: bool = True
    autostart: bool = True
    diagnostics_period_s: PosFloat = 1.0
    stats_window_s: PosFloat = 5.0
    latency_warn_ms: PosFloat = 500.0
    latency_error_ms: PosFloat = 2000.0
    clock_skew_limit_s: PosFloat = 60.0
    min_output_fps_warn: NonNegFloat = 0.0
    log_throttle_s: PosFloat = 5.0
    shutdown_timeout_s: PosFloat = 5.0

    def __post_init__(self) -> None:
        """Check values that types alone cannot; each error names the parameter."""
        check_fields(self)  # the ranges in the field types
        for topic in self.image_topics:
            _check(bool(_TOPIC_RE.match(topic)), "image_topics", topic, "is not a valid ROS 2 topic name")
        if self.camera_names:
            _check(len(self.camera_names) == len(self.image_topics), "camera_names", self.camera_names,
                   f"must have one name per image topic ({len(self.image_topics)})")
            for name in self.camera_names:
                _check(name == "" or bool(_TOPIC_RE.match(name)), "camera_names", name, "is not a valid namespace")
        if self.camera_info_topics:
            _check(len(self.camera_info_topics) == len(self.image_topics), "camera_info_topics",
                   self.camera_info_topics, f"must have one topic per image topic ({len(self.image_topics)})")
            for topic in self.camera_info_topics:
                _check(bool(_TOPIC_RE.match(topic)), "camera_info_topics", topic, "is not a valid ROS 2 topic name")
        namespaces = self.camera_namespaces()
        _check(len(set(namespaces)) == len(namespaces), "camera_names", namespaces,
               "two cameras would publish on the same output topics; set distinct camera_names")
        _check(self.stride <= self.crop_size, "stride", self.stride, f"must be <= crop_size ({self.crop_size})")
        _check(bool(self.preset or self.checkpoint), "preset", self.preset,
               "must name a preset when no checkpoint is given")
        _check(bool(_DEVICE_RE.match(self.device)), "device", self.device, "must be 'cpu' or 'cuda[:N]'")
        _check((self.output_width == 0) == (self.output_height == 0), "output_width/output_height",
               (self.output_width, self.output_height), "set both (fixed output size) or neither (input size)")
        for color in self.color_palette:
            _check(bool(_COLOR_RE.match(color)), "color_palette", color, "is not a colour '#RRGGBB'")
        _check(len(self.color_palette) <= 255, "color_palette", len(self.color_palette),
               "colours: at most 255 classes fit a mono8 label image")
        _check(self.latency_error_ms >= self.latency_warn_ms, "latency_error_ms", self.latency_error_ms,
               f"must be >= latency_warn_ms ({self.latency_warn_ms})")

    @property
    def thread_option(self) -> int | None:
        """``threads`` as :func:`mfuser_model.threads.apply_threads` takes it (-1 -> None: the policy's default)."""
        return None if self.threads < 0 else self.threads

    @property
    def network_input_box(self) -> tuple[int, int]:
        """(width, height) box of the model's input (``network_image_width/height``)."""
        return self.network_image_width, self.network_image_height

    @property
    def output_size(self) -> tuple[int, int] | None:
        """Fixed (height, width) of every output, or None for the input's own size."""
        return (self.output_height, self.output_width) if self.output_width else None

    def camera_info_topic_names(self) -> list[str]:
        """CameraInfo topic of each camera, in ``image_topics`` order."""
        if self.camera_info_topics:
            return list(self.camera_info_topics)
        return [camera_info_topic(t) for t in self.image_topics]

    def check_weights(self) -> None:
        """The node's guard against running untrained: no checkpoint means random weights, refused unless asked for.

        Raises:
            ConfigError: ``checkpoint`` is empty and ``allow_random_weights`` is false; names both overrides.
        """
        if not self.checkpoint and not self.allow_random_weights:
            msg = ("parameter 'checkpoint' is empty: the model would have random weights and segment nothing. Set "
                   f"checkpoint to a model file (the bundled toy model: checkpoint:={BUNDLED_MODEL}), or set "
                   "allow_random_weights:=true for tests and demos")
            raise ConfigError(msg)

    def camera_namespaces(self) -> list[str]:
        """Output namespace of each camera, in ``image_topics`` order."""
        if self.camera_names:
            return list(self.camera_names)
        return [camera_namespace(t) for t in self.image_topics]


def _check(ok: bool, name: str, value: Any, why: str) -> None:
    if not ok:
        msg = f"parameter {name!r}: value {value!r} {why}"
        raise ConfigError(msg)


def is_compressed_topic(topic: str) -> bool:
    """image_transport convention: ``<image>/compressed`` carries sensor_msgs/CompressedImage."""
    return topic.rstrip("/").endswith("/compressed") or topic == "compressed"


def camera_namespace(topic: str) -> str:
    """The camera a topic belongs to: its namespace (``front/image_raw/compressed`` -> ``front``)."""
    topic = topic.rstrip("/")
    if is_compressed_topic(topic):
        topic = topic[: -len("compressed")].rstrip("/")
    return topic.rsplit("/", 1)[0] if "/" in topic else ""


def camera_info_topic(image_topic: str) -> str:
    """image_transport's CameraInfo topic of an image topic: ``camera_info`` beside it.

    ``front/image_raw`` and ``front/image_raw/compressed`` -> ``front/camera_info``; ``image_raw`` ->
    ``camera_info``; absolute and ``~/`` names keep their prefix.
    """
    topic = image_topic.rstrip("/")
    if is_compressed_topic(topic):
        topic = topic[: -len("compressed")].rstrip("/")
    head, sep, _ = topic.rpartition("/")
    return f"{head}{sep}camera_info"


def output_topic(camera: str, kind: str) -> str:
    """Relative output topic ``<camera>/mfuser/<kind>`` (``mfuser/<kind>`` for a camera without namespace)."""
    return f"{camera}/mfuser/{kind}" if camera else f"mfuser/{kind}"


def node_config_from_params(params: dict[str, Any], where: str = "<parameters>") -> NodeConfig:
    """Build a NodeConfig from a flat parameter mapping (rclpy values or a parsed YAML section).

    Raises:
        ConfigError: unknown parameter, wrong type or invalid value; the message names it.
    """
    return dataclass_from_dict(NodeConfig, dict(params), where=where)


def load_node_config(path: str | Path, overrides: dict[str, Any] | None = None, node_name: str = "") -> NodeConfig:
    """Load the ``ros__parameters`` of a ROS 2 parameter file (``/**:`` or the node's own name section).

    Args:
        path: YAML file in ROS 2 parameter-file layout.
        overrides: parameter values that replace the file's (e.g. from the command line).
        node_name: also accept a section keyed by this node name (after ``/**``, so it wins).

    Raises:
        ConfigError: the file is missing or malformed, or a parameter is unknown or invalid.
    """
    data = load_yaml(path)
    if not data:  # an empty file (or a wrong path's placeholder) would silently mean "all defaults"
        msg = f"{path}: the parameter file is empty; expected '/**' (or the node name) -> ros__parameters"
        raise ConfigError(msg)
    params: dict[str, Any] = {}
    sections = [k for k in ("/**", node_name, f"/{node_name}") if k and k in data]
    unknown = sorted(set(data) - {"/**", node_name, f"/{node_name}"})
    if unknown:
        msg = f"{path}: unexpected top-level key {unknown[0]!r}; expected '/**' (or the node name) -> ros__parameters"
        raise ConfigError(msg)
    for key in sections:
        section = data[key]
        if not isinstance(section, dict) or set(section) != {"ros__parameters"}:
            msg = f"{path}: section {key!r} must contain exactly one key 'ros__parameters'"
            raise ConfigError(msg)
        if not isinstance(section["ros__parameters"], dict):
            msg = f"{path}: {key}.ros__parameters must be a mapping"
            raise ConfigError(msg)
        params.update(section["ros__parameters"])
    params.update(overrides or {})
    return node_config_from_params(params, where=str(path))


def parameter_defaults() -> dict[str, Any]:
    """Every parameter with its default, in declaration order (the rclpy node declares these)."""
    defaults = {}
    for field in dataclasses.fields(NodeConfig):
        value = field.default
        defaults[field.name] = list(value) if isinstance(value, tuple) else value
    return defaults


def with_runtime_changes(config: NodeConfig, changes: dict[str, Any], where: str = "<parameters>") -> NodeConfig:
    """``config`` with runtime parameters changed, validated like a fresh configuration.

    Raises:
        ConfigError: a parameter outside :data:`RUNTIME_PARAMETERS` (it is read at configure), or an invalid value;
            the message names the parameter and says why.
    """
    fixed = sorted(set(changes) - RUNTIME_PARAMETERS)
    if fixed:
        msg = (f"parameter {fixed[0]!r} is read at configure: deactivate and clean up the node, set it, then "
               f"configure again (changeable at runtime: {', '.join(sorted(RUNTIME_PARAMETERS))})")
        raise ConfigError(msg)
    current = {f.name: getattr(config, f.name) for f in dataclasses.fields(NodeConfig)}
    current = {k: list(v) if isinstance(v, tuple) else v for k, v in current.items()}
    return node_config_from_params({**current, **changes}, where=where)
