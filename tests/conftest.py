"""Suite-wide rules.

Where ROS 2 is meant to be there (CI sources the shared ROS 2 and sets ``MFUSER_REQUIRE_ROS2=1``, see ``.ci/run``),
a test that skips for want of rclpy, launch, the ros2 CLI or colcon fails the run instead of passing quietly.
"""

from __future__ import annotations

import os

import pytest

# Words of the skip reasons the ROS 2 tests give when their tools are missing.
_ROS2_SKIP_WORDS = ("rclpy", "ROS 2", "ros2 CLI", "launch", "colcon", "vision_msgs")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when ROS 2 is required and some test skipped for lack of it."""
    if os.environ.get("MFUSER_REQUIRE_ROS2") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    missing = [r for r in skipped if any(word in str(r.longrepr) for word in _ROS2_SKIP_WORDS)]
    if missing:
        for report in missing:
            reporter.write_line(f"MFUSER_REQUIRE_ROS2: {report.nodeid} skipped: {report.longrepr}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
