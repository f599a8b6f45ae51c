"""Run files after kills and damage: bad resume files, leftovers of killed writes, the metrics log across a resume,
checksums of model files and checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_trainer import tiny_config

from mfuser_model.checkpoint import DIGEST_KEY, build_model, load_model, read_model_metadata, save_model
from mfuser_model.config_io import dataclass_to_dict
from mfuser_model.errors import CheckpointError
from mfuser_model.fileio import atomic_path, remove_stale_temp_files
from training.checkpointing import (
    checkpoint_path,
    load_checkpoint,
    load_resume_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from training.synthetic import write_gtav
from training.train import main as train_main
from training.trainer import train


@pytest.fixture(scope="module")
def source_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "gtav"
    write_gtav(root, 6, size=(112, 56), seed=3)
    return root


def killed_write(path: Path, size: int = 4096) -> Path:
    """Start an atomic write of ``path`` in a child process that is SIGKILLed mid-write; returns its temp file."""
    code = ("import os, signal, sys\nfrom mfuser_model.fileio import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    open(tmp, 'wb').write(b'x' * int(sys.argv[2]))\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    before = set(path.parent.iterdir()) if path.parent.is_dir() else set()
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(size)], timeout=60, check=False)
    assert proc.returncode == -9
    (temp,) = set(path.parent.iterdir()) - before
    return temp


def flip_bit(path: Path, pattern: bytes) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(pattern)
    assert at > 0
    data[at + len(pattern) // 2] ^= 0x04
    path.write_bytes(bytes(data))


# ---- 12: resume from a file that is not a training checkpoint ------------------------------------------------
@pytest.mark.parametrize("kind", ["garbage", "model"])
def test_resume_from_a_safetensors_file_is_a_clear_error_naming_it(tmp_path, source_root, capsys, kind):
    bad = tmp_path / f"{kind}.safetensors"
    if kind == "garbage":
        bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    else:
        save_model(build_model("tiny-eva02"), bad)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(dataclass_to_dict(tiny_config(tmp_path, source_root))))
    assert train_main(["--config", str(cfg), f"resume={bad}"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: a safetensors file, not a training checkpoint" in err and "Traceback" not in err


def test_damaged_checkpoint_payloads_are_named_errors(tmp_path):
    path = checkpoint_path(tmp_path, 2)
    save_checkpoint(path, {"iteration": 2, "model": {}})  # no optimizer, scaler, fingerprint
    with pytest.raises(CheckpointError, match=r"iter_0000002.pt: checkpoint key 'optimizer' is missing"):
        load_resume_checkpoint(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"iter_0000002.pt: cannot read checkpoint"):
        load_checkpoint(path)


# ---- 13: temporary files of killed writes ------------------------------------------------------------------------
def test_stale_temp_files_are_removed_unless_their_writer_still_runs(tmp_path):
    with atomic_path(tmp_path / "a.pt") as tmp:
        assert Path(tmp).name.startswith(f".a.pt.{os.getpid()}-")
    dead = killed_write(tmp_path / "iter_0000004.pt")
    legacy = tmp_path / ".iter_0000006.pt.k2j4_9xq.tmp"  # written before the writer's pid was in the name
    legacy.write_bytes(b"x")
    alive = tmp_path / f".iter_0000008.pt.{os.getppid()}-abcdefgh.tmp"  # the parent process is writing it
    alive.write_bytes(b"x")
    other = tmp_path / ".notes.txt.swp"
    other.write_bytes(b"x")
    assert sorted(remove_stale_temp_files(tmp_path, "iter_*.pt")) == sorted([dead, legacy])
    assert alive.exists() and other.exists() and (tmp_path / "a.pt").exists()


def test_training_removes_killed_writes_at_start_on_resume_and_when_pruning(tmp_path, source_root):
    cfg = tiny_config(tmp_path, source_root, iterations=4, keep_checkpoints=1)
    ckpts = cfg.run_dir / "checkpoints"
    leftovers = [killed_write(ckpts / "iter_0000002.pt", 1 << 20), killed_write(cfg.run_dir / "model.safetensors")]
    train(cfg, stop_at=2)  # start
    assert not any(p.exists() for p in leftovers)
    leftover = killed_write(ckpts / "iter_0000004.pt")
    train(cfg)  # resume
    assert not leftover.exists()
    assert [p.name for p in ckpts.iterdir()] == ["iter_0000004.pt"]
    leftover = killed_write(ckpts / "iter_0000006.pt")
    prune_checkpoints(ckpts, keep=1)
    assert not leftover.exists() and (ckpts / "iter_0000004.pt").exists()


# ---- 14: metrics.jsonl across a resume -----------------------------------------------------------------------------
def test_metrics_log_holds_each_iteration_once_and_marks_the_resume(tmp_path, source_root):
    cfg = tiny_config(tmp_path, source_root, iterations=4)  # checkpoints every 2, a row every iteration
    first = train(cfg, stop_at=3)  # killed after logging iteration 3; the checkpoint is at 2
    log = cfg.run_dir / "metrics.jsonl"
    with log.open("a") as f:
        f.write('{"iteration": 4, "lo')  # and cut short while writing the next row
    resumed = train(cfg)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["iteration"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    (marker,) = [r for r in rows if r.get("event") == "resume"]
    assert marker["iteration"] == 2 and marker["dropped_rows"] == 2
    assert marker["checkpoint"].endswith("iter_0000002.pt") and rows.index(marker) == 2
    assert [r["loss"] for r in rows if "loss" in r][2:] == resumed.losses
    assert rows[2 - 1]["loss"] == first.losses[1]


# ---- 15: checksums --------------------------------------------------------------------------------------------------
def test_a_bit_flip_in_a_model_file_is_found_at_load(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny-eva02")
    path = save_model(model, tmp_path / "m.safetensors")
    load_model(path)  # intact: loads
    weight = model.state_dict()["backbone.fusers.0.in_proj.weight"]
    flip_bit(path, weight.numpy().tobytes()[:64])
    with pytest.raises(CheckpointError, match=r"m.safetensors: corrupt model file"):
        load_model(path)
    assert len(read_model_metadata(path)[DIGEST_KEY]) == 64  # the digest travels in the safetensors metadata
    damaged = load_model(path, verify=False)  # on request, as it is
    assert not torch.equal(damaged.state_dict()["backbone.fusers.0.in_proj.weight"], weight)


def test_a_bit_flip_in_a_training_checkpoint_is_found_at_load(tmp_path):
    weight = torch.linspace(-1, 1, 4096)
    path = save_checkpoint(checkpoint_path(tmp_path, 2), {
        "iteration": 2, "model": {"w": weight}, "optimizer": {"state": {0: {"exp_avg": weight * 2}}},
        "scaler": {}, "frozen_fingerprint": 1.5})
    assert torch.equal(load_checkpoint(path)["model"]["w"], weight)
    flip_bit(path, weight.numpy().tobytes()[4000:4064])
    with pytest.raises(CheckpointError, match=r"iter_0000002.pt: corrupt checkpoint"):
        load_checkpoint(path)
