"""The rclpy lifecycle node: a thin adapter between ROS 2 topics and :class:`~mfuser_ros.node.pipeline.FrameWorker`.

Lifecycle:
- configure: read parameters into a :class:`NodeConfig` (an invalid one fails the transition, naming it), create
  publishers and the /diagnostics timer; load the model here if ``load_model_on: configure``.
- activate: load the model (default), warm it up, subscribe to the cameras, start the worker.
- deactivate: unsubscribe, stop the worker, release the model (GPU memory back).
- cleanup / shutdown: also destroy publishers and the timer.

Topics (relative, so launch files can namespace and remap them), per camera ``<camera>``:
``<camera>/mfuser/labels`` (mono8 class ids, 255 = ignore), ``<camera>/mfuser/color`` (bgr8),
``<camera>/mfuser/overlay`` (bgr8), ``<camera>/mfuser/confidence`` (mono8, 255 = certain),
``<camera>/mfuser/label_info`` (vision_msgs/LabelInfo, transient local); image_transport's
``<camera>/mfuser/labels/compressed`` (sensor_msgs/CompressedImage, lossless PNG), ``color/compressed`` and
``overlay/compressed`` (JPEG); ``<camera>/mfuser/camera_info`` (the camera's CameraInfo scaled to the output size,
paired by stamp, see :mod:`mfuser_ros.node.camera_info`); ``/diagnostics``. Every output carries the input header
unchanged. Colour, overlay, confidence and the compressed outputs are computed only while they have subscribers.
The parameter ``color_palette`` holds the colours in use after configure (the legend, with LabelInfo's names).

Parameters: those in :data:`~mfuser_ros.node.config.RUNTIME_PARAMETERS` change at once with ``ros2 param set``;
every other one is read at configure, so setting it while the node is configured is rejected with the reason
(an unconfigured node accepts anything: it is checked at the next configure).

Process (``main``): SIGINT and SIGTERM shut the node down in order (the frame in the model finishes within
``shutdown_timeout_s``, the shutdown transition releases the model), then the process exits 0 (see
:mod:`mfuser_ros.node.shutdown` for repeated signals). It also exits 0 once ``ros2 lifecycle set <node> shutdown``
has finalized it, and 1 when the worker thread died.

rclpy is imported only in this module; everything else in mfuser_ros runs without ROS 2.
"""

from __future__ import annotations

import array
import contextlib
import time
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSHistoryPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
)
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from vision_msgs.msg import LabelInfo, VisionClass

from mfuser_model.classes import palette_to_hex
from mfuser_model.errors import CheckpointError, ConfigError
from mfuser_model.threads import apply_threads
from mfuser_ros.node.camera_info import CameraInfoData
from mfuser_ros.node.config import (
    RUNTIME_PARAMETERS,
    NodeConfig,
    is_compressed_topic,
    node_config_from_params,
    output_topic,
    parameter_defaults,
    with_runtime_changes,
)
from mfuser_ros.node.conversions import CompressedOutput, OutputImage
from mfuser_ros.node.model_loader import LoadedModel, load_model, model_legend, release_model, startup_summary
from mfuser_ros.node.pipeline import CameraOutputs, FrameWorker, Wanted
from mfuser_ros.node.shutdown import ShutdownSignals
from mfuser_ros.node.stats import DiagnosticThresholds

__all__ = ["MFuserNode", "main", "ros_qos"]

_KINDS = ("labels", "color", "overlay", "confidence")
_COMPRESSED_KINDS = ("labels", "color", "overlay")  # <kind>/compressed (image_transport naming)


def ros_qos(profile: str, depth: int, transient_local: bool = False) -> QoSProfile:
    """QoSProfile for a NodeConfig profile name (sensor_data = best effort, volatile, keep last ``depth``)."""
    if profile in ("sensor_data", "best_effort"):
        reliability = QoSReliabilityPolicy.BEST_EFFORT
    elif profile == "reliable":
        reliability = QoSReliabilityPolicy.RELIABLE
    else:
        reliability = QoSReliabilityPolicy.SYSTEM_DEFAULT
    durability = QoSDurabilityPolicy.TRANSIENT_LOCAL if transient_local else QoSDurabilityPolicy.VOLATILE
    return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability,
                      durability=durability)


def to_ros_image(header: Any, image: OutputImage) -> Image:
    """OutputImage -> sensor_msgs/Image with ``header`` (the input's) unchanged."""
    msg = Image()
    msg.header = header
    msg.height = image.height
    msg.width = image.width
    msg.encoding = image.encoding
    msg.is_bigendian = 0
    msg.step = image.step
    # array('B', bytes) goes through frombytes (one memcpy); a bytes value would be checked element by element.
    msg.data = array.array("B", image.data.tobytes())
    return msg


def to_ros_compressed(header: Any, image: CompressedOutput) -> CompressedImage:
    """CompressedOutput -> sensor_msgs/CompressedImage with ``header`` unchanged."""
    msg = CompressedImage()
    msg.header = header
    msg.format = image.format
    msg.data = array.array("B", image.data.tobytes())
    return msg


def to_ros_camera_info(info: CameraInfoData) -> CameraInfo:
    """CameraInfoData -> sensor_msgs/CameraInfo (header = the labels' header)."""
    roi = info.roi
    return CameraInfo(header=info.header, height=info.height, width=info.width,
                      distortion_model=info.distortion_model, d=list(info.d), k=list(info.k), r=list(info.r),
                      p=list(info.p), binning_x=info.binning_x, binning_y=info.binning_y,
                      roi=RegionOfInterest(x_offset=roi.x_offset, y_offset=roi.y_offset, height=roi.height,
                                           width=roi.width, do_rectify=roi.do_rectify))


class _RosSink:
    """Lifecycle publishers of every camera; optional outputs only while subscribed."""

    def __init__(self, node: LifecycleNode, config: NodeConfig) -> None:
        qos = ros_qos(config.output_qos, config.output_qos_depth)
        self.publishers = []
        for camera in config.camera_namespaces():
            pubs = {kind: node.create_lifecycle_publisher(Image, output_topic(camera, kind), qos) for kind in _KINDS}
            for kind in _COMPRESSED_KINDS:
                pubs[f"{kind}/compressed"] = node.create_lifecycle_publisher(
                    CompressedImage, output_topic(camera, f"{kind}/compressed"), qos)
            pubs["camera_info"] = node.create_lifecycle_publisher(CameraInfo, output_topic(camera, "camera_info"), qos)
            self.publishers.append(pubs)

    def wanted(self, camera: int) -> Wanted:
        pubs = self.publishers[camera]
        return Wanted(*(pubs[k].get_subscription_count() > 0 for k in (
            "color", "overlay", "confidence", "labels/compressed", "color/compressed", "overlay/compressed")))

    def publish(self, outputs: CameraOutputs) -> None:
        pubs = self.publishers[outputs.camera]
        for kind in _KINDS:
            image = getattr(outputs, kind)
            if image is not None:
                pubs[kind].publish(to_ros_image(outputs.header, image))
        for kind, image in outputs.compressed.items():
            pubs[f"{kind}/compressed"].publish(to_ros_compressed(outputs.header, image))

    def publish_camera_info(self, camera: int, info: CameraInfoData) -> None:
        self.publishers[camera]["camera_info"].publish(to_ros_camera_info(info))

    def destroy(self, node: LifecycleNode) -> None:
        for pubs in self.publishers:
            for pub in pubs.values():
                node.destroy_lifecycle_publisher(pub)
        self.publishers = []


class MFuserNode(LifecycleNode):
    """Semantic segmentation lifecycle node (parameters: see ``config/mfuser_node.yaml``)."""

    def __init__(self, node_name: str = "mfuser_node", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for name, default in parameter_defaults().items():
            # Dynamic typing: NodeConfig checks every type itself (so `latency_warn_ms: 500` is accepted as a
            # float) and names the parameter when a value is wrong. An empty list is declared unset.
            when = "runtime" if name in RUNTIME_PARAMETERS else "read at configure"
            descriptor = ParameterDescriptor(dynamic_typing=True,
                                             description=f"{when}; see config/mfuser_node.yaml")
            value = None if isinstance(default, list) and not default else default
            self.declare_parameter(name, value, descriptor)
        self.config: NodeConfig | None = None
        self.model: LoadedModel | None = None
        self.worker: FrameWorker | None = None
        self.finalized = False
        self._sink: _RosSink | None = None
        # Not `_subscriptions`: rclpy.Node keeps its own list under that name.
        self._camera_subs: list[Any] = []
        self._label_pubs: list[Any] = []
        self._auto_palette: list[str] | None = None  # color_palette as this node set it (the model's palette)
        self._diag_pub = None
        self._diag_timer = None
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # A dying worker thread only triggers this guard; the executor thread then publishes the ERROR status and
        # shuts the context down, so main() returns exit_code 1 and a supervisor (launch respawn) restarts us.
        self.exit_code = 0
        self._worker_failure = ""
        self._worker_failed_guard = self.create_guard_condition(self._on_worker_failed)

    # ---- helpers -------------------------------------------------------------------------------------------
    def _read_config(self) -> NodeConfig:
        params = {}
        for name in parameter_defaults():
            value = self.get_parameter(name).value
            if value is not None:
                params[name] = _plain(value)
        if self._auto_palette is not None and params.get("color_palette") == self._auto_palette:
            # The value this node filled in at the last configure, not the user's: follow the (maybe new) model.
            del params["color_palette"]
        return node_config_from_params(params, where=f"node '{self.get_fully_qualified_name()}' parameters")

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _load(self) -> bool:
        if self.model is not None:
            return True
        try:
            self.config.check_weights()  # no checkpoint: refused unless allow_random_weights
            apply_threads(self.config.thread_option)
            self.model = load_model(self.config)
        except (ConfigError, CheckpointError, OSError) as err:
            self.get_logger().error(f"cannot load the model: {err}")
            return False
        for line in startup_summary(self.config):
            self.get_logger().info(line)
        if self.model.random_weights:
            self.get_logger().warning("no 'checkpoint' given: the model has random weights (tests and demos only)")
        return True

    def _worker_failed(self, reason: str) -> None:
        self._worker_failure = reason
        self._worker_failed_guard.trigger()

    def _on_worker_failed(self) -> None:
        self._publish_diagnostics()
        self.get_logger().fatal(f"worker stopped: {self._worker_failure}; shutting down with exit code 1 so a "
                                "supervisor restarts the node")
        self.exit_code = 1
        rclpy.try_shutdown(context=self.context)

    def stop_worker(self) -> bool:
        """Stop the worker, waiting up to ``shutdown_timeout_s`` for the frame in the model; False if it still runs."""
        if self.worker is None:
            return True
        timeout = self.config.shutdown_timeout_s if self.config is not None else 5.0
        if self.worker.busy:
            self.get_logger().info(f"waiting for the frame in the model (at most {timeout} s)")
        stopped = self.worker.stop(timeout)
        if not stopped:
            self.get_logger().warning(f"the frame in the model did not finish within {timeout} s")
        return stopped

    def _release(self) -> None:
        release_model(self.model)
        self.model = None

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Accept runtime parameters (validated, applied at once) and, while unconfigured, any parameter."""
        declared = parameter_defaults()
        changes = {p.name: _plain(p.value) for p in params if p.name in declared}
        if self._auto_palette is not None and changes.get("color_palette") == self._auto_palette:
            del changes["color_palette"]  # the node showing the model's palette during configure, not a user
        if not changes or self.config is None:
            return SetParametersResult(successful=True)
        try:
            config = with_runtime_changes(self.config, changes, where=f"node '{self.get_fully_qualified_name()}'")
        except ConfigError as err:
            return SetParametersResult(successful=False, reason=str(err))
        previous, self.config = self.config, config
        if self.model is not None:
            self.model.pipeline.overlay_alpha = config.overlay_alpha
        if config.diagnostics_period_s != previous.diagnostics_period_s and self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(config.diagnostics_period_s, self._publish_diagnostics)
        self.get_logger().info("parameters changed: " + ", ".join(f"{k}={v!r}" for k, v in changes.items()))
        return SetParametersResult(successful=True)

    def _destroy_camera_subscriptions(self) -> None:
        for sub in self._camera_subs:
            self.destroy_subscription(sub)
        self._camera_subs = []

    def _show_palette(self) -> bool:
        """Fill ``color_palette`` with the model's palette when it is empty, so viewers can read the legend."""
        try:
            legend = model_legend(self.config)
        except (ConfigError, CheckpointError) as err:
            self.get_logger().error(f"cannot read the model's classes: {err}")
            return False
        if not self.config.color_palette:
            self._auto_palette = list(palette_to_hex(legend.palette))
            self.set_parameters([Parameter("color_palette", Parameter.Type.STRING_ARRAY, self._auto_palette)])
        return True

    def _publish_label_info(self) -> None:
        info = LabelInfo()
        info.header.stamp = self.get_clock().now().to_msg()
        for class_id, name in enumerate(self.model.class_names):
            entry = VisionClass()
            entry.class_id = class_id
            entry.class_name = name
            info.class_map.append(entry)
        for pub in self._label_pubs:
            pub.publish(info)

    def _publish_diagnostics(self) -> None:
        if self.worker is None or self.config is None:
            return
        limits = DiagnosticThresholds(self.config.latency_warn_ms, self.config.latency_error_ms,
                                      self.config.min_output_fps_warn)
        array_msg = DiagnosticArray()
        array_msg.header.stamp = self.get_clock().now().to_msg()
        for status in self.worker.statuses(self.get_fully_qualified_name(), limits, active=self.worker.running):
            msg = DiagnosticStatus()
            msg.level = bytes([status.level])
            msg.name = status.name
            msg.message = status.message
            msg.hardware_id = status.hardware_id
            msg.values = [KeyValue(key=k, value=v) for k, v in status.values.items()]
            array_msg.status.append(msg)
        self._diag_pub.publish(array_msg)

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate parameters, create publishers and the diagnostics timer (and maybe load the model)."""
        try:
            self.config = self._read_config()
        except ConfigError as err:
            self.get_logger().error(f"invalid parameters: {err}")
            return TransitionCallbackReturn.FAILURE
        config = self.config
        if not self._show_palette():
            return TransitionCallbackReturn.FAILURE
        self._sink = _RosSink(self, config)
        latched = ros_qos("reliable", 1, transient_local=True)
        self._label_pubs = [self.create_lifecycle_publisher(LabelInfo, output_topic(c, "label_info"), latched)
                            for c in config.camera_namespaces()]
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        if config.load_model_on == "configure" and not self._load():
            return TransitionCallbackReturn.FAILURE
        self.worker = FrameWorker(
            self.model.pipeline if self.model else None, config.camera_namespaces(), self._sink,
            clock_ns=self._now_ns, warn=self.get_logger().warning, log_throttle_s=config.log_throttle_s,
            stats_window_s=config.stats_window_s, clock_skew_limit_s=config.clock_skew_limit_s,
            camera_info_timeout_s=config.camera_info_timeout_s,
            on_failure=self._worker_failed)
        self._diag_timer = self.create_timer(config.diagnostics_period_s, self._publish_diagnostics)
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load (if not yet) and warm up the model, subscribe, start the worker."""
        config = self.config
        if not self._load():
            return TransitionCallbackReturn.FAILURE
        self.worker.pipeline = self.model.pipeline
        if config.warmup:
            size = config.output_size or (config.crop_size, config.crop_size)
            self.model.pipeline.warmup(*size)
        result = super().on_activate(state)  # activates the lifecycle publishers
        self._publish_label_info()
        qos = ros_qos(config.input_qos, config.input_qos_depth)
        for index, topic in enumerate(config.image_topics):
            msg_type = CompressedImage if is_compressed_topic(topic) else Image
            self._camera_subs.append(self.create_subscription(
                msg_type, topic, lambda msg, i=index: self.worker.submit(i, msg), qos))
        for index, topic in enumerate(config.camera_info_topic_names()):
            self._camera_subs.append(self.create_subscription(
                CameraInfo, topic, lambda msg, i=index: self.worker.submit_camera_info(i, msg), qos))
        self.worker.start()
        self.get_logger().info(f"segmenting {', '.join(config.image_topics)}")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe, stop the worker and release the model."""
        self._destroy_camera_subscriptions()
        self.stop_worker()
        self._release()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy publishers and the timer; release the model if still loaded."""
        self._teardown()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Same as cleanup, from any state; the process exits afterwards (see ``main``)."""
        self._destroy_camera_subscriptions()
        self._teardown()
        self.finalized = True
        return super().on_shutdown(state)

    def _teardown(self) -> None:
        if self.worker is not None:
            self.stop_worker()
            self.worker = None
        self._release()
        self.config = None  # unconfigured again: every parameter may change until the next configure
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        if self._sink is not None:
            self._sink.destroy(self)
            self._sink = None
        for pub in self._label_pubs:
            self.destroy_lifecycle_publisher(pub)
        if self._diag_pub is not None:
            self.destroy_publisher(self._diag_pub)
        self._label_pubs = []
        self._diag_pub = None


def _plain(value: Any) -> Any:
    """A parameter value as NodeConfig takes it (rclpy gives arrays for integer and float lists)."""
    return list(value) if isinstance(value, (list, tuple, array.array)) else value


def _finish(node: MFuserNode, reason: str) -> None:
    """Orderly end: wait (``shutdown_timeout_s``) for the frame in the model, run the shutdown transition (model
    released, publishers destroyed), destroy the node. If the frame did not finish, its worker still holds the
    model: no transition then, and the caller's ``leave_process`` ends the process around it."""
    node.get_logger().info(f"{reason}: shutting down")
    t0 = time.monotonic()
    stopped = node.stop_worker()
    if stopped and not node.finalized and node.context.ok():
        with contextlib.suppress(_rclpy.RCLError):  # in the middle of another transition: nothing more to do
            node.trigger_shutdown()
    node.destroy_node()
    node.get_logger().info(f"shut down in {time.monotonic() - t0:.2f} s")


def main(args: list[str] | None = None, signals: ShutdownSignals | None = None) -> int:
    """Run the node until SIGINT/SIGTERM, its shutdown transition or a worker failure; configure and activate it
    when ``autostart``. Returns the exit status: 0 after a shutdown, 1 when the worker thread died
    (``MFuserNode.exit_code``).

    rclpy's default signal handlers raise KeyboardInterrupt wherever the main thread happens to be (inside
    ``destroy_node`` under ``ros2 launch``, which forwards the terminal's Ctrl-C as a second SIGINT), so rclpy's
    are off and :class:`ShutdownSignals` (installed by the console script before the heavy imports) decides.
    The caller leaves the process with ``leave_process`` (``mfuser_ros.node.cli``).
    """
    signals = signals or ShutdownSignals().install()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    code = 0
    executor = SingleThreadedExecutor()
    try:
        node = MFuserNode()
        signals.running()
        executor.add_node(node)
        if node.get_parameter("autostart").value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().error("configure failed; the node stays unconfigured")
            elif not signals.requested:
                node.trigger_activate()
        while not signals.requested and not node.finalized and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    finally:
        if node is not None:
            code = node.exit_code
            _finish(node, signals.reason or ("finalized" if node.finalized else "context shut down"))
        executor.shutdown()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    from mfuser_ros.node.cli import ros_node_main

    ros_node_main()
