"""``mfuser-replay``: the command line over :func:`mfuser_ros.replay.runner.run_replay`.

The runner (torch, OpenCV, rosbags: seconds to import on a busy machine) is imported only after the arguments and
the input paths passed their checks, so ``--help`` and a mistyped path answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfuser_model.errors import MFuserError
from mfuser_model.threads import add_threads_argument
from mfuser_ros.node.config import load_node_config, node_config_from_params
from mfuser_ros.node.shutdown import ShutdownSignals, leave_process
from mfuser_ros.replay.options import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    GT_SUFFIX,
    OPTIONAL_OUTPUTS,
    ReplayError,
    ReplayOptions,
    check_inputs,
)

if TYPE_CHECKING:
    from mfuser_ros.replay.runner import ReplayResult

__all__ = ["add_replay_arguments", "build_parser", "main", "options_from_args"]


def _parse_gt_topics(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for v in values:
        camera, sep, gt = v.partition("=")
        if not sep or not camera or not gt:
            msg = f"--gt-topic {v!r}: expected CAMERA_TOPIC=LABEL_TOPIC"
            raise ReplayError(msg)
        out[camera] = gt
    return out


def build_parser() -> argparse.ArgumentParser:
    """The ``mfuser-replay`` command line."""
    description = "Replay a recorded drive through the node's own frame pipeline, write an output bag, evaluate."
    p = argparse.ArgumentParser(prog="mfuser-replay", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", type=Path, help="rosbag2 directory, .mcap, .db3 or ROS 1 .bag")
    p.add_argument("--out", type=Path, required=True, help="report folder: output bag, metrics.json, report.md")
    add_replay_arguments(p)
    add_threads_argument(p)  # overrides the node config's 'threads' parameter (fleet workers follow their CPUs)
    return p


def add_replay_arguments(p: argparse.ArgumentParser) -> None:
    """The options of one bag's replay (model, topics, ground truth, outputs); mfuser-replay-fleet shares them."""
    p.add_argument("--checkpoint", help="whole-model .safetensors file (mfuser-train output)")
    p.add_argument("--preset", help="model preset (with --checkpoint: must match; alone: random weights)")
    p.add_argument("--config", type=Path, help="node parameter file (ROS 2 YAML, e.g. config/mfuser_node.yaml)")
    p.add_argument("--device", help="cpu or cuda[:N] (default: the node config's)")
    p.add_argument("--max-batch", type=int, help="frames per model call (default: the node config's)")
    p.add_argument("--topics", nargs="+", default=(), help="camera topics (default: every image topic)")
    p.add_argument("--gt-topic", action="append", default=[], metavar="CAMERA_TOPIC=LABEL_TOPIC",
                   help=f"ground-truth label topic of a camera (default: <camera>/{GT_SUFFIX})")
    p.add_argument("--gt-dir", type=Path, help="folder of label PNGs: <camera>/<stamp_ns or index>.png")
    p.add_argument("--gt-key", choices=("stamp", "index"), default="stamp", help="how --gt-dir files are named")
    p.add_argument("--gt-format", choices=("labelids", "trainids"), default="trainids",
                   help="ground truth holds Cityscapes labelIds or train ids (default)")
    p.add_argument("--miou-rule", choices=("mmseg", "bdd100k"), default="mmseg",
                   help="classes the mIoU averages over: mmseg (default, the paper's: present in ground truth or "
                        "prediction) or bdd100k (present in the ground truth, as BDD100K's toolkit)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="output bag storage")
    p.add_argument("--realtime", action="store_true", help="play at the recorded rate and drop frames as the node")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor for --realtime")
    p.add_argument("--outputs", nargs="*", default=["color"], choices=OPTIONAL_OUTPUTS,
                   help="outputs besides labels and camera_info (default: color)")
    p.add_argument("--montage-rows", type=int, default=8, help="sampled frames in montage.png (0: none)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after this many camera frames (0: all)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress (default: a bar on a terminal, else a log line on stderr every 10 s)")


def options_from_args(args: argparse.Namespace) -> ReplayOptions:
    """ReplayOptions from parsed arguments (loads the node config file, applies overrides)."""
    overrides: dict[str, Any] = {"warmup": True}
    if args.checkpoint:
        overrides["checkpoint"] = args.checkpoint
        overrides["preset"] = args.preset or ""
    elif args.preset:  # alone: an untrained model, asked for explicitly (not the parameter file's checkpoint)
        overrides.update(preset=args.preset, checkpoint="", allow_random_weights=True)
    if args.device:
        overrides["device"] = args.device
    if args.max_batch:
        overrides["max_batch"] = args.max_batch
    if getattr(args, "threads", None) is not None:
        overrides["threads"] = args.threads
    node = load_node_config(args.config, overrides) if args.config else node_config_from_params(overrides)
    if not node.checkpoint and not args.preset:
        msg = "give --checkpoint MODEL.safetensors (or --preset NAME for an untrained model, smoke tests only)"
        raise ReplayError(msg)
    return ReplayOptions(bag=args.bag, out=args.out, node=node, topics=tuple(args.topics),
                         gt_topics=_parse_gt_topics(args.gt_topic), gt_dir=args.gt_dir, gt_key=args.gt_key,
                         gt_format=args.gt_format, miou_rule=args.miou_rule, storage=args.storage,
                         realtime=args.realtime, rate=args.rate,
                         outputs=tuple(args.outputs), montage_rows=args.montage_rows, max_frames=args.max_frames,
                         progress=not args.no_progress)


def _print_result(result: ReplayResult) -> None:
    # numpy comes with mfuser_model.report: imported here, after the replay, so that --help stays fast.
    from mfuser_model.report import percent  # noqa: PLC0415

    s = result.summary
    overall = s["overall"]["metrics"]
    lat = s["overall"]["latency_ms"]
    print(f"frames: {s['frames']['processed']} segmented, {s['frames']['dropped']} dropped, "
          f"{s['frames']['failed']} failed, {s['frames']['evaluated']} evaluated")
    for name, cam in s["cameras"].items():
        m = cam["metrics"]
        print(f"  {name or '/'}: {cam['frames_out']} frames, mIoU {percent(m['mIoU'] if m else None)}")
    if s["frames"]["gt_failed"] or s["frames"]["undecodable"]:
        print(f"skipped: {s['frames']['undecodable']} camera and {s['frames']['gt_failed']} ground-truth messages "
              "that could not be used (first error of each topic: metrics.json unusable_messages)", file=sys.stderr)
    if overall and overall["mIoU"] is not None:
        print(f"overall mIoU {percent(overall['mIoU'])} ({overall['miou_rule']} rule), mean class accuracy "
              f"{percent(overall['mAcc'])}, pixel accuracy {percent(overall['aAcc'])}")
    if lat["p50"] is not None:
        print(f"latency ms p50 {lat['p50']:.1f} p95 {lat['p95']:.1f} p99 {lat['p99']:.1f}; "
              f"throughput {s['throughput_fps']:.2f} frames/s")
    print(f"output bag: {result.output_bag}")
    print(f"report: {result.report_md}" + (f", montage: {result.montage_png}" if result.montage_png else ""))
    if s["partial"]:
        print(f"PARTIAL: {s['partial_reason']}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mfuser-replay`` (and ``ros2 run mfuser_ros mfuser_replay``).

    SIGINT and SIGTERM (``docker stop``, a scheduler's kill) are handled alike: while the model loads, the process
    exits at once with 130 (no traceback, nothing written yet); once the replay runs, it stops after the frame in
    progress and finishes the output bag and a report marked partial, exit 130; a second signal a second or more
    later leaves at once, also 130.
    """
    signals = ShutdownSignals(exit_code=EXIT_INTERRUPTED).install()
    try:
        args = build_parser().parse_args(argv)
        options = options_from_args(args)
        check_inputs(options)  # before torch and rosbags load: a mistyped path fails at once
        from mfuser_model.threads import apply_threads  # noqa: PLC0415
        from mfuser_ros.replay.runner import run_replay  # noqa: PLC0415 - torch, OpenCV, rosbags

        apply_threads(options.node.thread_option)  # before torch loads (see mfuser_model.threads)
        result = run_replay(options, signals=signals)
    except MFuserError as err:
        print(f"mfuser-replay: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("mfuser-replay: interrupted before any frame was replayed", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if not signals.requested:  # after a signal the process is on its way out: a repeat must not traceback
            signals.restore()
    _print_result(result)
    if signals.requested:
        # Bag and report are finished. Leave without the interpreter's teardown (seconds for torch): Python gives
        # SIGINT back to the system default there, so the second Ctrl-C of a double press would end it with -2.
        leave_process(result.exit_code)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
