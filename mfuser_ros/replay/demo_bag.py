"""``mfuser-make-demo-bag``: a short synthetic drive as a rosbag2, with ground-truth label topics.

Each camera gets procedural street scenes from ``mfuser_model.synthetic.scenes.render_scene`` (the generator the
bundled tiny model was trained on, through ``training.synthetic``) in its own rendering style, e.g. the ``game``
source style and a shifted ``fog`` or ``night`` style, so one replay shows in-domain and domain-shifted accuracy
side by side. Frames are independent scenes, not a continuous drive. Per camera ``c`` the bag holds:

- ``/<c>/image_raw`` (sensor_msgs/Image rgb8) or, for a ``NAME:STYLE:compressed`` camera,
  ``/<c>/image_raw/compressed`` (JPEG sensor_msgs/CompressedImage);
- ``/<c>/ground_truth/labels`` (sensor_msgs/Image mono8, train ids or Cityscapes labelIds, same header stamp).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mfuser_model.classes import CITYSCAPES_LABEL_TO_TRAIN, IGNORE_INDEX
from mfuser_model.errors import MFuserError
from mfuser_model.synthetic.scenes import render_scene
from mfuser_ros.replay.bagio import COMPRESSED_TYPE, IMAGE_TYPE, BagOutput, ros2_qos

__all__ = ["DemoCamera", "main", "make_demo_bag"]

START_NS = 1_700_000_000_000_000_000  # a fixed wall-clock start, so bags are reproducible


@dataclass(frozen=True)
class DemoCamera:
    """One synthetic camera: namespace, rendering style, and whether it publishes JPEG CompressedImage."""

    name: str
    style: str
    compressed: bool = False


def _render(style: str, seed: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return render_scene(np.random.default_rng(seed), height, width, style=style)


def make_demo_bag(out: str | Path, cameras: Sequence[DemoCamera], frames: int = 20, size: tuple[int, int] = (256, 128),
                  rate_hz: float = 10.0, seed: int = 0, storage: str = "mcap",
                  gt_format: str = "trainids", jpeg_quality: int = 90) -> Path:
    """Write the demo bag to ``out`` (a new rosbag2 directory); returns its path.

    Args:
        out: bag directory to create.
        cameras: the cameras; each renders ``frames`` scenes in its style.
        frames: frames per camera. size: (width, height). rate_hz: frame rate per camera.
        seed: scene seed (frame ``i`` of camera ``k`` uses ``seed + 1000 * k + i``).
        storage: ``mcap`` or ``sqlite3``. gt_format: ``trainids`` or ``labelids`` for the label topics.
        jpeg_quality: quality of compressed cameras.
    """
    width, height = size
    if frames < 1 or width < 16 or height < 16 or rate_hz <= 0:
        msg = f"need frames >= 1, size >= 16x16, rate > 0; got frames={frames}, size={width}x{height}, rate={rate_hz}"
        raise MFuserError(msg)
    if gt_format not in ("trainids", "labelids"):
        msg = f"--gt-format: {gt_format!r} is not 'trainids' or 'labelids'"
        raise MFuserError(msg)
    to_label = np.zeros(256, dtype=np.uint8)  # ignore -> labelId 0 "unlabeled"
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        to_label[train_id] = label_id
    period = int(1e9 / rate_hz)
    bag = BagOutput(Path(out), storage=storage)
    types = bag.typestore.types
    with bag:
        # Recorded as a camera driver publishes (sensor-data QoS) and a labelling tool (reliable).
        for cam in cameras:
            topic = f"/{cam.name}/image_raw" + ("/compressed" if cam.compressed else "")
            bag.set_qos(topic, [ros2_qos("sensor_data", 5)])
            bag.set_qos(f"/{cam.name}/ground_truth/labels", [ros2_qos("reliable", 10)])
        for i in range(frames):
            for k, cam in enumerate(cameras):
                rgb, labels = _render(cam.style, seed + 1000 * k + i, height, width)
                # Cameras are not synchronised: each fires a few ms after the previous one.
                t = START_NS + i * period + k * 5_000_000
                header = types["std_msgs/msg/Header"](
                    stamp=types["builtin_interfaces/msg/Time"](sec=t // 1_000_000_000, nanosec=t % 1_000_000_000),
                    frame_id=f"{cam.name}_optical")
                ns = f"/{cam.name}"
                if cam.compressed:
                    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                            [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
                    if not ok:
                        msg = "OpenCV could not encode a JPEG frame"
                        raise MFuserError(msg)
                    image = types[COMPRESSED_TYPE](header=header, format="rgb8; jpeg compressed bgr8",
                                                   data=jpeg.reshape(-1))
                    bag.write(f"{ns}/image_raw/compressed", COMPRESSED_TYPE, t, image)
                else:
                    bag.write(f"{ns}/image_raw", IMAGE_TYPE, t, bag.image(header, "rgb8", rgb))
                gt = labels if gt_format == "trainids" else np.where(labels == IGNORE_INDEX, 0, to_label[labels])
                bag.write(f"{ns}/ground_truth/labels", IMAGE_TYPE, t + 1000,
                          bag.image(header, "mono8", np.ascontiguousarray(gt, dtype=np.uint8)))
    return bag.path


def _camera(spec: str) -> DemoCamera:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1] or (len(parts) == 3 and parts[2] != "compressed"):
        msg = f"--camera {spec!r}: expected NAME:STYLE or NAME:STYLE:compressed"
        raise MFuserError(msg)
    return DemoCamera(parts[0], parts[1], len(parts) == 3)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mfuser-make-demo-bag``."""
    p = argparse.ArgumentParser(prog="mfuser-make-demo-bag", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="bag directory to create")
    p.add_argument("--camera", action="append", default=[], metavar="NAME:STYLE[:compressed]",
                   help="camera and style (game, day, night, fog, rain, texture); default: "
                        "cam_game:game and cam_fog:fog:compressed")
    p.add_argument("--frames", type=int, default=20, help="frames per camera")
    p.add_argument("--size", default="256x128", help="WIDTHxHEIGHT")
    p.add_argument("--rate", type=float, default=10.0, help="frames per second per camera")
    p.add_argument("--seed", type=int, default=1234, help="scene seed (training uses other seeds)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--gt-format", choices=("trainids", "labelids"), default="trainids")
    args = p.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"mfuser-make-demo-bag: error: --size {args.size!r}: expected WIDTHxHEIGHT", file=sys.stderr)
        return 1
    try:
        cameras = [_camera(c) for c in args.camera] or [DemoCamera("cam_game", "game"),
                                                        DemoCamera("cam_fog", "fog", compressed=True)]
        path = make_demo_bag(args.out, cameras, frames=args.frames, size=(width, height), rate_hz=args.rate,
                             seed=args.seed, storage=args.storage, gt_format=args.gt_format)
    except (MFuserError, ValueError) as err:
        print(f"mfuser-make-demo-bag: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}: {len(cameras)} cameras x {args.frames} frames "
          f"({', '.join(f'{c.name}={c.style}' for c in cameras)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
