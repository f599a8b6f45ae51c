"""Shared helpers for the mfuser_ros tests: real ROS 2 messages from rosbags' typestore and the real tiny model."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mfuser_ros.node.config import NodeConfig

rosbags_typesys = pytest.importorskip("rosbags.typesys", reason="rosbags is part of the [ros] extra")


@pytest.fixture(scope="session")
def typestore():
    """ROS 2 Humble message classes (sensor_msgs/Image etc.) with their CDR serializers."""
    return rosbags_typesys.get_typestore(rosbags_typesys.Stores.ROS2_HUMBLE)


class Messages:
    """Builds real sensor_msgs messages (rosbags dataclasses, the same fields as rclpy's)."""

    def __init__(self, typestore) -> None:
        self.ts = typestore
        self.Image = typestore.types["sensor_msgs/msg/Image"]
        self.CompressedImage = typestore.types["sensor_msgs/msg/CompressedImage"]
        self.Header = typestore.types["std_msgs/msg/Header"]
        self.Time = typestore.types["builtin_interfaces/msg/Time"]

    def header(self, sec: int = 12, nanosec: int = 345, frame_id: str = "camera_optical") -> object:
        return self.Header(stamp=self.Time(sec=sec, nanosec=nanosec), frame_id=frame_id)

    def image(self, pixels: np.ndarray, encoding: str, header=None, step: int | None = None,
              data: np.ndarray | None = None) -> object:
        height, width = pixels.shape[:2]
        row = pixels[0].size
        step = row if step is None else step
        if data is None:
            padded = np.zeros((height, step), dtype=np.uint8)
            padded[:, :row] = pixels.reshape(height, row)
            data = padded.reshape(-1)
        return self.Image(header=header or self.header(), height=height, width=width, encoding=encoding,
                          is_bigendian=0, step=step, data=data)

    def compressed(self, rgb: np.ndarray, fmt: str = "jpeg", header=None) -> object:
        ext = ".jpg" if fmt == "jpeg" else ".png"
        ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        return self.CompressedImage(header=header or self.header(), format=fmt, data=buf.reshape(-1))


@pytest.fixture(scope="session")
def msgs(typestore) -> Messages:
    return Messages(typestore)


def make_scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth synthetic RGB image (compresses like a photo, unlike noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), (x + y) / max(height + width - 2, 1)], -1)
    noise = rng.normal(0, 0.03, size=base.shape)
    return np.clip((base + noise) * 255, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def scene():
    """``scene(height, width, seed=0)`` -> a smooth synthetic (H, W, 3) uint8 RGB image."""
    return make_scene


@pytest.fixture(scope="session")
def tiny_model():
    """The real tiny-eva02 model behind a pipeline (random weights, seeded), loaded once per session."""
    torch = pytest.importorskip("torch")
    from mfuser_ros.node.model_loader import load_model

    torch.manual_seed(0)
    return load_model(NodeConfig(preset="tiny-eva02", warmup=False))
