"""``mfuser-node``: run the segmentation node over bare DDS (no ROS 2 install needed) or through rclpy.

Examples::

    mfuser-node --transport dds --config config/mfuser_node.yaml -p image_topics='[front/image_raw]'
    mfuser-node --transport ros --config config/mfuser_node.yaml   # same as ros2 run mfuser_ros mfuser_node

The DDS transport uses the ROS 2 wire conventions, so ROS 2 nodes on the same ``--domain-id`` (ROS_DOMAIN_ID) see
its topics. Cyclone's network settings come from ``CYCLONEDDS_URI``; ``--loopback`` pins them to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from mfuser_model.config_io import parse_override
from mfuser_model.errors import MFuserError
from mfuser_model.threads import add_threads_argument, apply_threads
from mfuser_ros.node.config import NodeConfig, load_node_config, node_config_from_params
from mfuser_ros.node.shutdown import ShutdownSignals, leave_process

__all__ = ["build_parser", "main", "ros_node_main"]

READY_LINE = "mfuser-node: ready"
# Exit status when the worker thread died of an unexpected error (2 is a configuration error).
EXIT_WORKER_FAILED = 1
EXIT_CONFIG = 2


def _import_lifecycle_node() -> Any:
    """The rclpy node module, or None after one line saying what to source or install (no traceback)."""
    # torch loads with this module, before the 'threads' parameter is read: sleeping OpenMP waits, as the thread
    # policy sets them when it runs first (mfuser_model.threads), unless the user chose a wait policy.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from mfuser_ros.node import lifecycle_node  # noqa: PLC0415 - rclpy only for this transport
    except ModuleNotFoundError as err:
        if (err.name or "").startswith("mfuser"):
            raise  # our own module missing is a broken install: the traceback helps
        print(f"mfuser-node: {err.name} not found (--transport ros needs ROS 2): source /opt/ros/jazzy/setup.bash "
              "(or your ROS 2 install's setup.bash), or use --transport dds (no ROS 2 needed)",
              file=sys.stderr, flush=True)
        return None
    return lifecycle_node


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="mfuser-node", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=("dds", "ros"), default="dds",
                        help="dds: cyclonedds, no ROS 2 needed; ros: the rclpy lifecycle node")
    parser.add_argument("--config", type=Path, help="ROS 2 parameter file (default: built-in defaults)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help="override one parameter (NAME:=VALUE also taken); VALUE is YAML (repeatable)")
    parser.add_argument("--namespace", default="/", help="node namespace for relative topic names")
    parser.add_argument("--node-name", default="mfuser_node")
    parser.add_argument("--domain-id", type=int, default=int(os.environ.get("ROS_DOMAIN_ID", "0")),
                        help="DDS domain (default: $ROS_DOMAIN_ID or 0)")
    parser.add_argument("--loopback", action="store_true", help="keep DDS traffic on 127.0.0.1 (sets CYCLONEDDS_URI)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: run until ^C)")
    add_threads_argument(parser)  # the same as -p threads=N (both transports); default: the 'threads' parameter
    return parser


def _plain_override(item: str) -> str:
    """``NAME:=VALUE`` -> ``NAME=VALUE``; ``NAME=VALUE`` unchanged (a ``:=`` inside a value stays)."""
    name, sep, value = item.partition(":=")
    return f"{name}={value}" if sep and "=" not in name else item


def _config(args: argparse.Namespace) -> NodeConfig:
    overrides = dict(parse_override(p) for p in args.param)
    if args.config is not None:
        return load_node_config(args.config, overrides, node_name=args.node_name)
    return node_config_from_params(overrides, where="command line")


def _run_dds(args: argparse.Namespace, config: NodeConfig) -> int:
    signals = ShutdownSignals().install()  # before the heavy imports: a Ctrl-C while loading exits cleanly
    if args.loopback:
        from mfuser_ros.node.dds import loopback_uri  # noqa: PLC0415 - cyclonedds is optional

        os.environ["CYCLONEDDS_URI"] = loopback_uri()
    config.check_weights()  # no checkpoint: refused unless allow_random_weights, before anything loads
    apply_threads(config.thread_option)  # before torch loads (see mfuser_model.threads)
    from mfuser_ros.node.dds import DdsSegmentationNode  # noqa: PLC0415 - cyclonedds is optional
    from mfuser_ros.node.model_loader import load_model, startup_summary  # noqa: PLC0415 - torch only when running

    loaded = load_model(config)
    for line in startup_summary(config):
        print(f"mfuser-node: {line}", file=sys.stderr, flush=True)  # a log, as rclpy's: stdout ends with READY_LINE
    if loaded.random_weights:
        print("mfuser-node: warning: no 'checkpoint' given, the model has random weights (tests and demos only)",
              file=sys.stderr, flush=True)
    if config.warmup:
        loaded.pipeline.warmup(*(config.output_size or (config.crop_size, config.crop_size)))

    def warn(message: str) -> None:
        print(f"[WARN] {message}", file=sys.stderr, flush=True)

    node = DdsSegmentationNode(config, loaded.pipeline, domain_id=args.domain_id, namespace=args.namespace,
                               node_name=args.node_name, class_names=loaded.class_names, warn=warn,
                               on_fatal=lambda reason: signals.request(f"worker stopped: {reason}"))
    try:
        node.start()
        signals.running()
        print(READY_LINE, flush=True)
        deadline = time.monotonic() + args.duration if args.duration > 0 else None
        while not signals.wait(0.2):
            if deadline is not None and time.monotonic() >= deadline:
                break
        if signals.requested:
            print(f"mfuser-node: {signals.reason}: shutting down", flush=True)
        stopped = node.stop()
        if stopped:
            node.close()
        for camera, stats in zip(node.cameras, node.worker.stats, strict=True):
            snap = stats.snapshot()
            print(f"mfuser-node: camera '{camera}': in {snap.frames_in}, out {snap.frames_out}, "
                  f"dropped {snap.dropped}, errors {snap.errors}", flush=True)
        code = 0
        if signals.reason.startswith("worker stopped"):
            print(f"mfuser-node: error: {signals.reason}; exiting with code {EXIT_WORKER_FAILED} so a "
                  "supervisor restarts the node", file=sys.stderr, flush=True)
            code = EXIT_WORKER_FAILED
        if not stopped:
            print(f"mfuser-node: the frame in the model did not finish within shutdown_timeout_s "
                  f"({config.shutdown_timeout_s} s); leaving without it", file=sys.stderr)
            leave_process(code)
        return code
    finally:
        signals.restore()


def ros_node_main() -> None:
    """``ros2 run mfuser_ros mfuser_node`` (console script ``mfuser_node``): the rclpy lifecycle node.

    Signals are taken over before rclpy and torch are imported (seconds on a busy machine), so a Ctrl-C at any
    moment ends the process cleanly (see :mod:`mfuser_ros.node.shutdown`).
    """
    signals = ShutdownSignals().install()
    lifecycle_node = _import_lifecycle_node()
    # after the shutdown: skip the interpreter's teardown (see leave_process)
    leave_process(EXIT_CONFIG if lifecycle_node is None else lifecycle_node.main(None, signals))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mfuser-node``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    # ROS's spelling NAME:=VALUE (what ros2 run takes, and what the node's own messages show) is taken as NAME=VALUE.
    args.param = [_plain_override(item) for item in args.param]
    if args.threads is not None:
        args.param.append(f"threads={args.threads}")
    if args.transport == "ros":
        signals = ShutdownSignals().install()
        node = _import_lifecycle_node()
        if node is None:
            signals.restore()
            return EXIT_CONFIG
        ros_args = ["--ros-args", "-r", f"__ns:={args.namespace}", "-r", f"__node:={args.node_name}"]
        if args.config is not None:
            ros_args += ["--params-file", str(args.config)]
        for item in args.param:
            ros_args += ["-p", item.replace("=", ":=", 1)]
        code = node.main(ros_args, signals)
        leave_process(code)  # after the shutdown: skip the interpreter's teardown (see leave_process)
    try:
        config = _config(args)
        return _run_dds(args, config)
    except MFuserError as err:
        print(f"mfuser-node: error: {err}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
