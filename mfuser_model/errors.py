"""The errors mfuser_model raises. Each message names the file, key or value at fault."""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "MFuserError"]


class MFuserError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(MFuserError, ValueError):
    """A config file or value is malformed: unknown key, wrong type, missing file, bad class count."""


class CheckpointError(MFuserError):
    """A weight file cannot be read or does not fit the model (names the file, key and shapes)."""
