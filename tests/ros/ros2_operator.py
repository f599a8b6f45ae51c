"""What an operator has on a ROS 2 machine, for the tests: a colcon workspace holding this package, the
environment ``source install/setup.bash`` gives, ``ros2 launch`` as a process, and the ros2 CLI verbs.

Every wait is bounded; workspaces are built once per test session into a temporary folder removed at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COLCON = Path(sys.executable).with_name("colcon")
BUNDLED_MODEL = "package://mfuser_ros/models/tiny-eva02-synthetic.safetensors"


def ros2_available() -> str:
    """Why the operator tools are missing ('' when ``ros2``, rclpy, launch and colcon are all there)."""
    if shutil.which("ros2") is None:
        return "the ros2 CLI is not on PATH (source a ROS 2 installation, e.g. ../shared/ros2/activate.sh)"
    for module in ("rclpy", "launch", "launch_ros", "launch_testing"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not importable (it comes with ROS 2)"
    if not COLCON.is_file():
        return f"colcon is not installed beside {sys.executable} (it is part of the dev extra)"
    return ""


def domain_id(offset: int) -> int:
    """A ROS_DOMAIN_ID for one test, away from other test processes' ids (0..232 are valid on Linux)."""
    return 1 + (os.getpid() + 37 * offset) % 200


def _checkout_files() -> list[str]:
    """The files a clean checkout holds (tracked plus untracked, not ignored)."""
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                             check=True, timeout=60).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return []
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def _without_checkout(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this checkout off PYTHONPATH, so Python code comes from the install under test."""
    keep = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO]
    return {**env, "PYTHONPATH": os.pathsep.join(keep)}


@functools.cache
def colcon_workspace(symlink_install: bool = False) -> Path:
    """A workspace ``<tmp>/src/mfuser_ros`` (a copy of this checkout), built by ``colcon build``; cached."""
    ws = Path(tempfile.mkdtemp(prefix="mfuser-colcon-"))
    atexit.register(shutil.rmtree, ws, ignore_errors=True)
    src = ws / "src" / "mfuser_ros"
    files = _checkout_files()
    if files:
        for name in files:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    else:  # not a git checkout: copy the tree without build outputs
        shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "install", "log", "__pycache__", "*.egg-info", "out", "runs", "work_dirs"))
    cmd = [str(COLCON), "build", "--event-handlers", "console_direct-"]
    if symlink_install:
        cmd.append("--symlink-install")
    result = subprocess.run(cmd, cwd=ws, env=_without_checkout(dict(os.environ)), capture_output=True, text=True,
                            timeout=600, check=False)
    if result.returncode != 0:
        msg = f"colcon build failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        raise RuntimeError(msg)
    return ws


def sourced_env(ws: Path, ros_domain_id: int) -> dict[str, str]:
    """The environment after ``source install/setup.bash`` in ``ws`` (checkout off PYTHONPATH), on one domain."""
    base = _without_checkout(dict(os.environ))
    out = subprocess.run(["bash", "-c", "source install/setup.bash && env -0"], cwd=ws, env=base,
                         capture_output=True, check=True, timeout=60).stdout.decode()
    env = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    env["ROS_DOMAIN_ID"] = str(ros_domain_id)
    env["PYTHONUNBUFFERED"] = "1"
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    return env


def ros2(env: dict[str, str], *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """One ros2 CLI call (output as text, never raises on a non-zero exit)."""
    return subprocess.run(["ros2", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


class Process:
    """A long-running command (``ros2 launch``, ``ros2 topic hz``) in its own process group, output collected."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        """Everything printed so far."""
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match | None:
        """The first output line matching ``pattern`` within ``timeout`` s (None if the process ends first)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            lines = self.lines[seen:]
            seen += len(lines)
            for line in lines:
                if m := regex.search(line):
                    return m
            if self.proc.poll() is not None and not self._reader.is_alive() and seen == len(self.lines):
                return None
            time.sleep(0.05)
        return None

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the whole process group, as a terminal's Ctrl-C does."""
        os.killpg(self.proc.pid, sig)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the command's own process only (``kill``, ``docker stop``)."""
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        """Exit status, or None if still running after ``timeout`` s."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(5.0)
        return code

    def close(self) -> None:
        """End what is left of the process group: SIGINT, then SIGKILL after 10 s."""
        for sig in (signal.SIGINT, signal.SIGKILL):
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
                self.wait(10.0)
        with contextlib.suppress(ProcessLookupError):  # children the command left behind
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._reader.join(5.0)

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def launch(env: dict[str, str], *arguments: str) -> Process:
    """``ros2 launch mfuser_ros mfuser.launch.py <arguments>`` from the sourced workspace."""
    return Process(["ros2", "launch", "mfuser_ros", "mfuser.launch.py", *arguments], env)


class Peer:
    """A real rclpy node in the test process (its own context, on one domain): publishers, subscriptions, spin."""

    def __init__(self, ros_domain_id: int, name: str = "test_peer") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=ros_domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def subscribe(self, msg_type: type, topic: str, qos: object) -> list:
        """Messages received on ``topic`` (appended while spinning)."""
        received: list = []
        self.node.create_subscription(msg_type, topic, received.append, qos)
        return received

    def spin_until(self, done: object, timeout: float, tick: object = None, period: float = 0.5) -> bool:
        """Spin until ``done()`` (calling ``tick()`` every ``period`` s, e.g. to publish); False on timeout."""
        deadline = time.monotonic() + timeout
        next_tick = 0.0
        while time.monotonic() < deadline:
            if done():
                return True
            if tick is not None and time.monotonic() >= next_tick:
                tick()
                next_tick = time.monotonic() + period
            self.executor.spin_once(timeout_sec=0.05)
        return bool(done())

    def close(self) -> None:
        """Destroy the node and shut its context down."""
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def rgb_image(height: int = 48, width: int = 64, frame_id: str = "cam_optical", sec: int = 42) -> object:
    """A sensor_msgs/Image (rclpy) with a gradient, so the model sees something."""
    import numpy as np
    from sensor_msgs.msg import Image

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3, is_bigendian=0)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec = sec
    msg.data = pixels.astype(np.uint8).tobytes()
    return msg
