"""The node process's plumbing, without ROS: signals over its whole life, runtime parameters, ROS 2 type hashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mfuser_model.errors import ConfigError
from mfuser_ros.node.config import RUNTIME_PARAMETERS, NodeConfig, parameter_defaults, with_runtime_changes
from mfuser_ros.node.type_hash import MESSAGE_DEFINITIONS, type_hash, user_data

REPO = Path(__file__).resolve().parents[2]

# ---- signals -------------------------------------------------------------------------------------------------------
SCRIPT = """
import sys, time
from mfuser_ros.node.shutdown import ShutdownSignals
signals = ShutdownSignals().install()
print("starting", flush=True)
if sys.argv[1] == "running":
    signals.running()
    print("running", flush=True)
    while not signals.wait(0.05):
        pass
    print(f"shutting down on {signals.reason}", flush=True)
    time.sleep(float(sys.argv[2]))  # the shutdown; signals arrive during it
    print(f"done after {signals.received}", flush=True)
else:
    time.sleep(60)  # stands for imports and model loading
"""


def run_until(line: str, phase: str, shutdown_s: float = 0.5) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, phase, str(shutdown_s)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(5):
        if proc.stdout.readline().strip() == line:
            return proc
    proc.kill()
    pytest.fail(f"never printed {line!r}: {proc.communicate()}")
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_starting_exits_0_at_once(sig):
    proc = run_until("starting", "starting")
    t0 = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert time.monotonic() - t0 < 10
    assert f"{sig.name} while starting: exiting" in err
    assert "Traceback" not in err


def test_signals_while_running_request_one_orderly_shutdown():
    proc = run_until("running", "running")
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "shutting down on SIGINT"
    proc.send_signal(signal.SIGTERM)  # at once: the same stop arriving twice (terminal and ros2 launch)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.strip() == "done after ['SIGINT', 'SIGTERM']"
    assert err == ""


def test_a_later_signal_during_the_shutdown_leaves_at_once():
    proc = run_until("running", "running", shutdown_s=60.0)
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "shutting down on SIGINT"
    time.sleep(1.5)  # past repeat_after_s: a second Ctrl-C, or launch escalating to SIGTERM
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert time.monotonic() - t0 < 10
    assert "SIGTERM again: leaving now" in err and "Traceback" not in err
    assert "done" not in out


# ---- runtime parameters --------------------------------------------------------------------------------------------
def test_runtime_parameters_change_and_are_validated():
    config = NodeConfig(image_topics=("cam/image_raw",))
    changed = with_runtime_changes(config, {"overlay_alpha": 0.2, "latency_warn_ms": 100})
    assert (changed.overlay_alpha, changed.latency_warn_ms, changed.image_topics) == (0.2, 100.0, ("cam/image_raw",))
    with pytest.raises(ConfigError, match="overlay_alpha: value 1.5 must be in"):
        with_runtime_changes(config, {"overlay_alpha": 1.5})
    with pytest.raises(ConfigError, match="latency_error_ms"):
        with_runtime_changes(config, {"latency_warn_ms": 5000.0})  # above latency_error_ms (2000)


def test_configure_time_parameters_are_rejected_with_the_reason():
    with pytest.raises(ConfigError, match=r"'preset' is read at configure: deactivate and clean up"):
        with_runtime_changes(NodeConfig(), {"preset": "tiny-clip", "overlay_alpha": 0.1})
    assert set(parameter_defaults()) > RUNTIME_PARAMETERS


# ---- type hashes ---------------------------------------------------------------------------------------------------
def test_type_hashes_equal_rosbags():
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    checked = [t for t in MESSAGE_DEFINITIONS if t.split("/")[0] in ("builtin_interfaces", "std_msgs", "sensor_msgs",
                                                                     "diagnostic_msgs")]
    assert len(checked) == 9
    for name in checked:
        assert type_hash(name) == store.hash_rihs01(name), name


def test_type_hashes_equal_the_ones_ros2_generated():
    """rosidl writes share/<pkg>/msg/<Type>.json with the hash of every interface; ours must equal them all."""
    prefixes = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    found = 0
    for name in MESSAGE_DEFINITIONS:
        package, _, short = name.split("/")
        files = [p / "share" / package / "msg" / f"{short}.json" for p in prefixes]
        files = [f for f in files if f.is_file()]
        if not files:
            continue
        hashes = {h["type_name"]: h["hash_string"] for h in json.loads(files[0].read_text())["type_hashes"]}
        assert type_hash(name) == hashes[name], name
        found += 1
    if not found:
        pytest.skip("ROS 2 type description files not found (source a ROS 2 installation)")
    assert found == len(MESSAGE_DEFINITIONS)


def test_user_data_is_what_rmw_cyclonedds_announces():
    data = user_data("sensor_msgs/msg/Image")
    assert data == f"typehash={type_hash('sensor_msgs/msg/Image')};".encode()
    assert data.startswith(b"typehash=RIHS01_") and len(data) == len("typehash=RIHS01_;") + 64
