"""What one replay run is asked to do, and the checks of its inputs: importable without torch, OpenCV or rosbags.

``mfuser-replay --help`` and a mistyped bag path answer from here in a fraction of a second; the runner
(:mod:`mfuser_ros.replay.runner`), which loads the model and the bag libraries, is imported only after
:func:`check_inputs` passed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mfuser_model.config_io import NonNegInt, PosFloat, check_fields
from mfuser_model.errors import MFuserError
from mfuser_model.resources import require_file
from mfuser_ros.node.config import NodeConfig

__all__ = [
    "EXIT_BAG_DAMAGED",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "GT_SUFFIX",
    "OPTIONAL_OUTPUTS",
    "GtFormat",
    "ReplayError",
    "ReplayOptions",
    "check_inputs",
]

# ReplayOptions.outputs, in the order of Wanted's fields.
OPTIONAL_OUTPUTS = ("color", "overlay", "confidence", "labels/compressed", "color/compressed", "overlay/compressed")
# Ground-truth topic of a camera namespace when none is given: ``<camera>/ground_truth/labels``.
GT_SUFFIX = "ground_truth/labels"
EXIT_OK, EXIT_ERROR, EXIT_BAG_DAMAGED, EXIT_INTERRUPTED = 0, 1, 2, 130
# What ground-truth values are: Cityscapes labelIds, or the 19 train ids (255 = ignore).
GtFormat = Literal["labelids", "trainids"]


class ReplayError(MFuserError):
    """Replay cannot start: no image topics, unknown topic, output exists. Names the file or topic."""


@dataclass(frozen=True)
class ReplayOptions:
    """Everything one replay run needs (the CLI builds it; tests build it directly).

    Attributes:
        bag: input bag (rosbag2 directory, .mcap, .db3, or ROS 1 .bag). out: report folder (created).
        node: the node configuration; ``image_topics`` is replaced by the topics replayed.
        topics: camera topics; empty = every Image/CompressedImage topic except outputs and ground truth.
        gt_topics: ``camera_topic -> label_topic``; cameras not listed use ``<camera>/ground_truth/labels``.
        gt_dir / gt_key: folder of label PNGs keyed by header stamp (ns) or frame index.
        gt_format: ground-truth values are Cityscapes ``labelids`` or ``trainids``.
        miou_rule: which classes the mIoU averages over (``mmseg``, or ``bdd100k`` as BDD100K's toolkit).
        storage: output bag storage, ``mcap`` or ``sqlite3``.
        realtime / rate: play at the recorded rate (scaled) with the node's frame dropping.
        outputs: optional outputs to write besides labels (``color``, ``overlay``, ``confidence``,
            ``labels/compressed``, ``color/compressed``, ``overlay/compressed``).
        montage_rows: most sampled frames in the montage (0 = no montage).
        max_frames: stop after this many camera frames (0 = all).
        progress: show progress on stderr (a bar on a terminal, else a log line every 10 s).
    """

    bag: Path
    out: Path
    node: NodeConfig = field(default_factory=NodeConfig)
    topics: tuple[str, ...] = ()
    gt_topics: dict[str, str] = field(default_factory=dict)
    gt_dir: Path | None = None
    gt_key: Literal["stamp", "index"] = "stamp"
    gt_format: GtFormat = "trainids"
    miou_rule: Literal["mmseg", "bdd100k"] = "mmseg"  # mfuser_model.metrics.MIOU_RULES
    storage: Literal["mcap", "sqlite3"] = "mcap"
    realtime: bool = False
    rate: PosFloat = 1.0
    outputs: tuple[str, ...] = ("color",)
    montage_rows: NonNegInt = 8
    max_frames: NonNegInt = 0
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self)


def check_inputs(options: ReplayOptions) -> None:
    """The checks that need no bag library and no model: the bag, the model file and the ground-truth folder exist,
    and the report folder can be written. The CLI runs them before it imports the runner (torch, rosbags).

    Raises:
        ReplayError / ConfigError: naming the path and the problem.
    """
    if not options.bag.exists():
        msg = f"{options.bag}: no such bag (a rosbag2 directory, .mcap, .db3 or ROS 1 .bag)"
        raise ReplayError(msg)
    if options.node.checkpoint:
        require_file(options.node.checkpoint, "checkpoint")
    if options.gt_dir is not None and not options.gt_dir.is_dir():
        msg = f"--gt-dir {options.gt_dir}: no such folder"
        raise ReplayError(msg)
    existing = options.out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        msg = f"--out {options.out}: {existing} is not a writable folder"
        raise ReplayError(msg)
