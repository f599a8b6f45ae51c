"""CameraInfo beside the labels: intrinsics scaled to the output size, paired with each frame by header stamp.

Lidar-camera fusion (e.g. Autoware's segmentation point-cloud fusion) projects points with the camera's CameraInfo
and looks the label up at the projected pixel, so the CameraInfo published with ``<camera>/mfuser/labels`` must
describe the *label* image. When the output size differs from the input, :func:`scale_camera_info` scales it as
image_proc's ``resize`` node does (ros-perception/image_pipeline ``image_proc/src/resize.cpp``): fx, cx, fy, cy of
K and P, P's Tx, width/height and the ROI, each by the output/input ratio of its axis; D and R unchanged (a resize
changes neither the distortion nor the rectification); binning unchanged. Two deliberate differences, both no-ops for
a plain camera: the ratio is output size / *received image* size (image_proc's fixed-size mode divides by the
CameraInfo's width/height, which is wrong for a binned or ROI camera whose image is smaller than that), and P's Ty is
scaled with fy (image_proc leaves it; it is 0 except for vertical stereo). Like image_proc, cx is scaled as
``cx * s`` (the resized image's pixel centres sit up to ``(1 - s) / 2`` px off that; cv2.resize aligns centres).

:class:`CameraInfoPairer` matches CameraInfo messages to frames by exact ``header.stamp`` (camera drivers stamp the
image and its CameraInfo alike). A CameraInfo that arrives first waits in a bounded buffer; a frame whose outputs
are ready first waits up to ``timeout_s`` for its CameraInfo, which is then published as soon as it arrives. A frame
still unmatched after the timeout gets no CameraInfo (consumers that synchronise by stamp would drop it anyway); it
is counted as ``unmatched`` once the camera has sent any CameraInfo at all (a camera without a CameraInfo publisher
is not an error).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from mfuser_ros.errors import FrameError, clip
from mfuser_ros.node.conversions import stamp_ns

__all__ = [
    "CameraInfoData",
    "CameraInfoPairer",
    "RegionOfInterestData",
    "camera_info_from_message",
    "scale_camera_info",
]


@dataclass(frozen=True)
class RegionOfInterestData:
    """sensor_msgs/RegionOfInterest."""

    x_offset: int = 0
    y_offset: int = 0
    height: int = 0
    width: int = 0
    do_rectify: bool = False


@dataclass(frozen=True)
class CameraInfoData:
    """Transport-free sensor_msgs/CameraInfo (ROS 2 field names); each transport copies it into its message."""

    header: Any
    height: int
    width: int
    distortion_model: str = ""
    d: tuple[float, ...] = ()
    k: tuple[float, ...] = (0.0,) * 9
    r: tuple[float, ...] = (0.0,) * 9
    p: tuple[float, ...] = (0.0,) * 12
    binning_x: int = 0
    binning_y: int = 0
    roi: RegionOfInterestData = field(default_factory=RegionOfInterestData)


def _floats(msg: Any, name: str, size: int | None) -> tuple[float, ...]:
    # ROS 2 messages name the matrices d, k, r, p; ROS 1 (rosbags' ROS 1 types) D, K, R, P.
    value = getattr(msg, name, None)
    if value is None:
        value = getattr(msg, name.upper(), None)
    if value is None:
        msg_ = f"camera_info: no field {name!r}"
        raise FrameError(msg_)
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError) as err:
        msg_ = f"camera_info: field {name!r} is not a list of numbers ({clip(str(err))})"
        raise FrameError(msg_) from None
    if size is not None and len(values) != size:
        msg_ = f"camera_info: {name!r} has {len(values)} values, expected {size}"
        raise FrameError(msg_)
    if not all(math.isfinite(v) for v in values):
        msg_ = f"camera_info: {name!r} holds a non-finite value"
        raise FrameError(msg_)
    return values


def camera_info_from_message(msg: Any) -> CameraInfoData:
    """Read any object with sensor_msgs/CameraInfo's fields (rclpy, DDS, rosbags ROS 1 or ROS 2).

    Raises:
        FrameError: a field is missing or K/R/P do not have 9/9/12 finite values.
    """
    roi = getattr(msg, "roi", None)
    try:
        return CameraInfoData(
            header=msg.header, height=int(msg.height), width=int(msg.width),
            distortion_model=str(msg.distortion_model), d=_floats(msg, "d", None), k=_floats(msg, "k", 9),
            r=_floats(msg, "r", 9), p=_floats(msg, "p", 12), binning_x=int(msg.binning_x),
            binning_y=int(msg.binning_y),
            roi=RegionOfInterestData(int(roi.x_offset), int(roi.y_offset), int(roi.height), int(roi.width),
                                     bool(roi.do_rectify)) if roi is not None else RegionOfInterestData())
    except (AttributeError, TypeError, ValueError) as err:
        msg_ = f"camera_info: not a sensor_msgs/CameraInfo ({clip(str(err))})"
        raise FrameError(msg_) from None


def _truncate(value: float, scale: float) -> int:
    """image_proc's ``static_cast<int>(value * scale)``, guarded against binary rounding (639.9999... -> 640)."""
    return math.floor(value * scale + 1e-6)


def scale_camera_info(info: CameraInfoData, image_size: tuple[int, int], output_size: tuple[int, int],
                      header: Any) -> CameraInfoData:
    """``info`` for an output image of ``output_size`` (h, w) made from a received image of ``image_size`` (h, w).

    Carries ``header`` (the labels' header). Equal sizes return ``info`` unchanged apart from the header.
    """
    (in_h, in_w), (out_h, out_w) = image_size, output_size
    if (in_h, in_w) == (out_h, out_w):
        return replace(info, header=header)
    sx, sy = out_w / in_w, out_h / in_h
    k = list(info.k)
    k[0] *= sx  # fx
    k[2] *= sx  # cx
    k[4] *= sy  # fy
    k[5] *= sy  # cy
    p = list(info.p)
    p[0] *= sx  # fx'
    p[2] *= sx  # cx'
    p[3] *= sx  # Tx = -fx' * baseline
    p[5] *= sy  # fy'
    p[6] *= sy  # cy'
    p[7] *= sy  # Ty = -fy' * baseline (vertical stereo); image_proc leaves it
    roi = info.roi
    return replace(
        info, header=header, height=_truncate(info.height, sy), width=_truncate(info.width, sx), k=tuple(k),
        p=tuple(p), roi=replace(roi, x_offset=_truncate(roi.x_offset, sx), y_offset=_truncate(roi.y_offset, sy),
                                width=_truncate(roi.width, sx), height=_truncate(roi.height, sy)))


@dataclass
class _Waiting:
    header: Any
    image_size: tuple[int, int]
    output_size: tuple[int, int]
    deadline: float


class CameraInfoPairer:
    """Pairs CameraInfo messages with processed frames by stamp; thread-safe (callbacks and the worker).

    Args:
        cameras: number of cameras.
        timeout_s: how long a frame waits for its CameraInfo (None: no time limit, e.g. a bag read in order;
            :meth:`finish` then settles the rest).
        keep: CameraInfos buffered and frames waiting, per camera (the oldest go first).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, cameras: int, timeout_s: float | None = 1.0, keep: int = 128,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.keep = keep
        self._clock = clock
        self._lock = threading.Lock()
        self._infos: list[OrderedDict[int, CameraInfoData]] = [OrderedDict() for _ in range(cameras)]
        self._waiting: list[OrderedDict[int, _Waiting]] = [OrderedDict() for _ in range(cameras)]
        self.received = [0] * cameras
        self.paired = [0] * cameras
        self.unmatched = [0] * cameras
        self.malformed = [0] * cameras

    def add_info(self, camera: int, msg: Any) -> list[CameraInfoData]:
        """A CameraInfo arrived; returns the scaled CameraInfo of the frame it completes (0 or 1 of them).

        Raises:
            FrameError: the message is not a valid CameraInfo (counted as ``malformed``).
        """
        try:
            info = camera_info_from_message(msg)
        except FrameError:
            with self._lock:
                self.malformed[camera] += 1
            raise
        stamp = stamp_ns(info.header)
        with self._lock:
            self.received[camera] += 1
            self._expire(camera)
            waiting = self._waiting[camera].pop(stamp, None)
            if waiting is None:
                infos = self._infos[camera]
                infos[stamp] = info
                infos.move_to_end(stamp)
                while len(infos) > self.keep:
                    infos.popitem(last=False)
                return []
            self.paired[camera] += 1
        return [scale_camera_info(info, waiting.image_size, waiting.output_size, waiting.header)]

    def add_frame(self, camera: int, header: Any, image_size: tuple[int, int],
                  output_size: tuple[int, int]) -> list[CameraInfoData]:
        """A frame's outputs were published; returns its scaled CameraInfo if it is here already (else it waits)."""
        stamp = stamp_ns(header)
        with self._lock:
            self._expire(camera)
            info = self._infos[camera].pop(stamp, None)
            if info is None:
                deadline = self._clock() + self.timeout_s if self.timeout_s is not None else math.inf
                waiting = self._waiting[camera]
                waiting[stamp] = _Waiting(header, image_size, output_size, deadline)
                while len(waiting) > self.keep:
                    waiting.popitem(last=False)
                    self._count_unmatched(camera)
                return []
            self.paired[camera] += 1
        return [scale_camera_info(info, image_size, output_size, header)]

    def expire(self) -> None:
        """Give up on frames whose CameraInfo is overdue (the worker calls this on every batch)."""
        with self._lock:
            for camera in range(len(self._waiting)):
                self._expire(camera)

    def finish(self) -> None:
        """No more CameraInfo will come (end of a bag): every waiting frame is unmatched."""
        with self._lock:
            for camera, waiting in enumerate(self._waiting):
                for _ in range(len(waiting)):
                    self._count_unmatched(camera)
                waiting.clear()

    def _expire(self, camera: int) -> None:
        waiting = self._waiting[camera]
        now = self._clock()
        while waiting and next(iter(waiting.values())).deadline < now:
            waiting.popitem(last=False)
            self._count_unmatched(camera)

    def _count_unmatched(self, camera: int) -> None:
        # A camera that never sent a CameraInfo has none to pair: not an error, and visible as received = 0.
        if self.received[camera]:
            self.unmatched[camera] += 1

    def values(self, camera: int) -> dict[str, str]:
        """Diagnostic key/values of one camera."""
        with self._lock:
            return {"camera_info_received": str(self.received[camera]), "camera_info_paired": str(self.paired[camera]),
                    "camera_info_unmatched": str(self.unmatched[camera]),
                    "camera_info_malformed": str(self.malformed[camera])}
