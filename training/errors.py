"""The errors the training package raises on purpose. Messages name the file, folder or value at fault."""

from __future__ import annotations

from mfuser_model.errors import MFuserError

__all__ = ["DatasetError"]


class DatasetError(MFuserError):
    """A dataset folder is missing, empty or malformed (names the path and what is wrong)."""
