"""mfuser-replay under SIGINT and SIGTERM, as a process: a valid output bag, a partial report whose counters add up,
exit 130, and no traceback while the model loads. Each process is bounded by timeouts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from test_replay import read_bag, write_bag

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
pytest.importorskip("rosbags.rosbag2", reason="rosbags is part of the [ros] extra")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from mfuser_model.checkpoint import build_model, save_model

    torch.manual_seed(0)
    return save_model(build_model("tiny-eva02"), tmp_path_factory.mktemp("model") / "tiny.safetensors")


def start(bag, out, checkpoint, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mfuser_ros.replay.cli", str(bag), "--checkpoint", str(checkpoint),
                             "--out", str(out), "--no-progress", "--montage-rows", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), proc.communicate(timeout=60)


def check_partial(out, signame: str) -> dict:
    """The report is partial, names the signal, and every frame read is accounted for."""
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["partial"] is True and f"interrupted ({signame})" in summary["partial_reason"]
    f = summary["frames"]
    assert 1 <= f["read"] < 80
    assert f["read"] == f["processed"] + f["failed"] + f["dropped"] + f["unfinished"], f
    for cam in summary["cameras"].values():
        assert cam["frames_in"] == cam["frames_out"] + cam["failed"] + cam["dropped"] + cam["unfinished"], cam
    return summary


def test_sigterm_finishes_the_bag_and_a_partial_report(tmp_path, msgs, typestore, checkpoint):
    # sqlite3: rosbags commits its single transaction only on close, so a kill keeps no message at all.
    bag = write_bag(tmp_path / "drive", msgs, typestore, frames=40)  # 4 s at the recorded rate
    out = tmp_path / "report"
    proc = start(bag, out, checkpoint, "--realtime", "--storage", "sqlite3")
    wait_for(out / "drive_mfuser", proc)
    time.sleep(1.0)  # into the drive, well before its 4 s end
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    summary = check_partial(out, "SIGTERM")
    assert (out / "drive_mfuser" / "metadata.yaml").is_file()  # the writer was closed
    labels = read_bag(out / "drive_mfuser")
    written = len(labels.get("/front/mfuser/labels", [])) + len(labels.get("/side/mfuser/labels", []))
    assert written == summary["frames"]["processed"] >= 1


def test_double_ctrl_c_exits_130_with_a_valid_bag(tmp_path, msgs, typestore, checkpoint):
    bag = write_bag(tmp_path / "drive", msgs, typestore, frames=40)
    out = tmp_path / "report"
    proc = start(bag, out, checkpoint, "--realtime")
    wait_for(out / "drive_mfuser", proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)  # the terminal's Ctrl-C and launch's forwarded one, or a quick double press
    time.sleep(0.1)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    summary = check_partial(out, "SIGINT")
    assert (out / "drive_mfuser" / "metadata.yaml").is_file()
    labels = read_bag(out / "drive_mfuser")  # mcap with its footer and summary: rosbags reads it by its index
    assert len(labels.get("/front/mfuser/labels", [])) == summary["cameras"]["/front"]["frames_out"]


def test_sigint_while_the_model_loads_exits_130_without_traceback(tmp_path, msgs, typestore, checkpoint):
    bag = write_bag(tmp_path / "drive", msgs, typestore, frames=2)
    out = tmp_path / "report"
    proc = start(bag, out, checkpoint)
    wait_for(out, proc)  # created just before the bag is opened and the model loaded
    time.sleep(0.1)  # inside load_model (the old code died of it with -2 here)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    if (out / "metrics.json").exists():  # a fast machine: the replay ran already, and stopped in order
        assert json.loads((out / "metrics.json").read_text())["partial"] is True
    else:
        assert "SIGINT while starting: exiting" in err and not (out / "drive_mfuser").exists()
