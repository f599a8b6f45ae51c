"""DDP on the CPU: two gloo processes on 127.0.0.1 train a tiny MFuser and keep identical replicas."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mfuser_model.config_io import dataclass_from_dict
from training.config import TrainConfig
from training.synthetic import write_gtav

WORLD = 2
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, cfg_dict: dict, out_dir: str) -> None:
    # What torchrun sets for each process; gloo is pinned to loopback.
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo"})
    torch.set_num_threads(1)
    from training.trainer import train

    result = train(dataclass_from_dict(TrainConfig, cfg_dict, where="<ddp test>"))
    state = {k: v.clone() for k, v in result.model.state_dict().items()}
    torch.save({"state": state, "losses": result.losses, "iterations": result.iterations},
               Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_gloo_processes_keep_identical_weights(tmp_path: Path):
    source = tmp_path / "gtav"
    write_gtav(source, 6, size=(112, 56), seed=4)
    cfg = {
        "name": "ddp_test", "work_dir": str(tmp_path / "run"), "model": {"preset": "tiny-eva02"},
        "data": {"source": {"kind": "gtav", "root": str(source)}, "crop_size": 56, "num_workers": 0,
                 "rare_class": {"min_pixels": 20}},
        "optim": {"lr": 1e-3, "warmup_iters": 1}, "loss": {"num_points": 64},
        "iterations": 3, "batch_size": 1, "seed": 5, "device": "cpu", "checkpoint_interval": 3,
        "log_interval": 1, "progress_bar": False, "tensorboard": False,
    }
    initial = dataclass_from_dict(TrainConfig, cfg)  # fail fast on a bad config, in this process
    assert initial.iterations == 3
    ctx = mp.spawn(_worker, args=(_free_port(), cfg, str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers did not finish within {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    outs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert all(o["iterations"] == 3 for o in outs)
    assert outs[0]["losses"] == outs[1]["losses"]  # logged losses are all-reduced means
    a, b = outs[0]["state"], outs[1]["state"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    # and they trained: the weights moved away from the shared initialisation
    from training.trainer import build_model, seed_everything

    seed_everything(initial.seed)
    init = build_model(initial).state_dict()
    assert not torch.equal(init["head.cls_embed.weight"], a["head.cls_embed.weight"])
    assert (tmp_path / "run" / "checkpoints" / "iter_0000003.pt").is_file()
    assert (tmp_path / "run" / "model.safetensors").is_file()
