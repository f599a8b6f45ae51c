"""The errors mfuser_ros raises. Configuration errors reuse :class:`mfuser_model.errors.ConfigError`."""

from __future__ import annotations

from mfuser_model.errors import ConfigError, MFuserError

__all__ = ["ConfigError", "FrameError", "TransportError"]


class FrameError(MFuserError):
    """One input message cannot become an image (bad encoding, step, size or payload).

    The node logs it (throttled), counts it in diagnostics and skips the frame; it never stops the node.
    """


class TransportError(MFuserError):
    """A transport (DDS or rclpy) cannot be set up: missing package, bad topic name or domain."""
