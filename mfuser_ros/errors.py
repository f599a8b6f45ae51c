"""The errors mfuser_ros raises. Configuration errors reuse :class:`mfuser_model.errors.ConfigError`."""

from __future__ import annotations

from typing import Any

from mfuser_model.errors import ConfigError, MFuserError

__all__ = ["ConfigError", "FrameError", "TransportError", "clip"]

# Longest text a message-controlled field may put into a log line or an error (an encoding name, a format string,
# a frame id, an exception text quoting the payload).
FIELD_LIMIT = 64


class FrameError(MFuserError):
    """One input message cannot become an image (bad encoding, step, size or payload).

    The node logs it (throttled), counts it in diagnostics and skips the frame; it never stops the node.
    """


class TransportError(MFuserError):
    """A transport (DDS or rclpy) cannot be set up: missing package, bad topic name or domain."""


def clip(value: Any, limit: int = FIELD_LIMIT) -> str:
    """``value`` as one line of at most ``limit`` characters (plus a note of its length), for log lines and errors
    about untrusted input.

    A sender controls the strings of its messages: echoing a 10,000-character encoding field in full would flood the
    log, and a newline inside one could forge log lines, so control characters are escaped (``repr`` style, without
    the quotes) and the text is cut.
    """
    text = repr(value)[1:-1] if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
