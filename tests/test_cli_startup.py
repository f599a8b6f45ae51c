"""Every console script answers ``--help`` without importing torch, and bad input paths fail before the model loads.

Each check runs a fresh interpreter and reads its ``sys.modules`` afterwards: the seconds torch and the network take
to import on a busy machine are what a user waits for on ``--help`` or a mistyped path.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "rosbags", "mfuser_model.network", "cyclonedds", "rclpy")

# ``module:function`` of every console script in setup.py; ``mfuser_node`` takes ROS arguments, not --help.
SCRIPTS = {name: target for name, target in re.findall(r'"([\w-]+) = ([\w.:]+)"', (REPO / "setup.py").read_text())
           if name != "mfuser_node"}

_PROBE = """
import contextlib, io, json, sys
module, function = sys.argv[1].split(":")
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
        code = getattr(__import__(module, fromlist=[function]), function)(sys.argv[2:])
    except SystemExit as exit:
        code = exit.code
print(json.dumps({"code": code, "out": out.getvalue(), "modules": sorted(sys.modules)}))
"""


def probe(target: str, *args: str) -> dict:
    """Run ``target(args)`` in a fresh interpreter; its exit code, output and the modules it imported."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, target, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(proc.stdout.splitlines()[-1])


def heavy(result: dict) -> list[str]:
    return [m for m in HEAVY if m in result["modules"]]


def test_setup_py_lists_the_console_scripts():
    assert {"mfuser-segment", "mfuser-replay", "mfuser-convert", "mfuser-train", "mfuser-node"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_imports_no_torch(name):
    result = probe(SCRIPTS[name], "--help")
    assert result["code"] == 0 and "usage:" in result["out"], result["out"][-2000:]
    assert not heavy(result), f"{name} --help imported {heavy(result)}"
    if name not in ("mfuser-make-synthetic", "mfuser-make-demo-bag"):  # they run no model
        assert "--threads" in result["out"] or name == "mfuser-replay-fleet", f"{name} has no --threads option"


# The README's start-up figure for --help holds only without numpy (~0.1 s to import on these
# machines); these CLIs need it only after their work, to print a summary.
@pytest.mark.parametrize("name", ["mfuser-replay", "mfuser-train", "mfuser-segment", "mfuser-convert"])
def test_help_imports_no_numpy(name):
    result = probe(SCRIPTS[name], "--help")
    assert result["code"] == 0 and "numpy" not in result["modules"], f"{name} --help imported numpy"


def test_replay_of_a_missing_bag_fails_before_the_model_loads(tmp_path):
    result = probe(SCRIPTS["mfuser-replay"], str(tmp_path / "nosuch.mcap"), "--out", str(tmp_path / "out"),
                   "--checkpoint", str(REPO / "models" / "tiny-eva02-synthetic.safetensors"))
    assert result["code"] == 1 and "nosuch.mcap: no such bag" in result["out"], result["out"]
    assert not heavy(result), heavy(result)


def test_replay_checks_checkpoint_and_output_folder_before_the_model_loads(tmp_path):
    bag = tmp_path / "drive.mcap"
    bag.write_bytes(b"")  # exists: the bag is opened only later, by the runner
    result = probe(SCRIPTS["mfuser-replay"], str(bag), "--out", str(tmp_path / "out"), "--checkpoint",
                   str(tmp_path / "nosuch.safetensors"))
    assert result["code"] == 1 and "checkpoint" in result["out"] and "nosuch.safetensors: no such file" in result["out"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = probe(SCRIPTS["mfuser-replay"], str(bag), "--out", str(blocker / "out"), "--preset", "tiny-eva02")
    assert result["code"] == 1 and "is not a writable folder" in result["out"], result["out"]
    assert not heavy(result), heavy(result)


@pytest.mark.parametrize(("name", "args", "message"), [
    ("mfuser-segment", ["nosuch.png", "--preset", "tiny-eva02"], "image nosuch.png: no such file"),
    ("mfuser-convert", ["--release", "nosuch.pth", "--preset", "tiny-eva02", "-o", "x.safetensors"],
     "--release nosuch.pth: no such file"),
    ("mfuser-eval", ["--config", "c.yaml", "--model", "nosuch.safetensors"], "--model nosuch.safetensors: no such"),
    ("mfuser-train", ["--config", "c.yaml", "--resume", "nosuch.pt"], "--resume nosuch.pt: no such file"),
])
def test_missing_input_files_fail_before_torch_loads(name, args, message):
    result = probe(SCRIPTS[name], *args)
    assert result["code"] == 2 and message in result["out"], result["out"]
    assert not heavy(result), heavy(result)


def test_ros_transport_without_rclpy_prints_one_line_and_exits_nonzero():
    hide = "import sys; sys.modules['rclpy'] = None; from mfuser_ros.node.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", hide, "--transport", "ros"], cwd=REPO, capture_output=True,
                          check=False, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "rclpy not found" in lines[0] and "setup.bash" in lines[0] and "--transport dds" in lines[0]
