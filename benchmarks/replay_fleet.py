"""Fleet replay on Ray: bags per minute with 1 and 2 local workers, the scaling, and the job's overhead.

    .venv/bin/python benchmarks/replay_fleet.py [--bags 8] [--frames 24] [--size 256x128] [--checkpoint M]

Makes ``--bags`` demo bags (two cameras each: raw rgb8 "game" and JPEG "fog", with ground truth), then

1. replays each bag alone in this process (one torch thread, like a worker with one CPU) with one loaded model:
   the summed single-bag model time (the model calls inside the replays) and replay time;
2. runs ``run_fleet`` over all bags with 1 worker, then with 2 workers, each job starting its own local Ray
   instance (127.0.0.1) and its workers, as ``mfuser-replay-fleet`` does;
3. runs the job ``--in-process`` (no Ray: one model load in this process, the bags one after another).

Printed per job: wall time, bags per minute, Ray start-up, and the overhead against the summed single-bag model
time in worker-seconds: (workers x job wall - summed model time) / summed model time. It holds everything that is
not a model call: Ray and worker start-up (one model load per worker), bag I/O, decode/encode, evaluation,
reports, scheduling. The machine's load average is printed before and after: on a shared machine the 2-worker
figure is bounded by the cores that are actually free. Each job's own summed model time is printed too: when it
differs much from the single-bag runs', the load changed between the phases (or the workers contend for cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from mfuser_ros.node.config import NodeConfig
from mfuser_ros.node.model_loader import load_model
from mfuser_ros.replay.demo_bag import DemoCamera, make_demo_bag
from mfuser_ros.replay.fleet import FleetOptions, run_fleet
from mfuser_ros.replay.runner import ReplayOptions, run_replay

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "models" / "tiny-eva02-synthetic.safetensors"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bags", type=int, default=8)
    p.add_argument("--frames", type=int, default=24, help="frames per camera per bag")
    p.add_argument("--size", default="256x128", help="WIDTHxHEIGHT of the demo frames")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    args = p.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    node = NodeConfig(checkpoint=str(args.checkpoint), preset="", warmup=True)
    base = ReplayOptions(bag=Path("unused"), out=Path("unused"), node=node, progress=False)
    with tempfile.TemporaryDirectory(prefix="mfuser-fleet-bench-") as tmp:
        root = Path(tmp)
        cameras = [DemoCamera("cam_game", "game"), DemoCamera("cam_fog", "fog", compressed=True)]
        bags = [make_demo_bag(root / "drives" / f"drive{i:03d}", cameras, frames=args.frames, size=(width, height),
                              seed=1000 * i) for i in range(args.bags)]
        frames = args.bags * args.frames * len(cameras)
        loaded = load_model(node)
        t0 = time.perf_counter()
        singles = [run_replay(replace(base, bag=b, out=root / "single" / b.name), loaded=loaded) for b in bags]
        single_wall = time.perf_counter() - t0
        model_s = sum(r.summary["model_s"] for r in singles)
        replay_s = sum(r.summary["wall_s"] for r in singles)
        jobs = {}
        for workers in (1, 2):
            result = run_fleet(FleetOptions(bags=tuple(bags), out=root / f"job{workers}", replay=base,
                                            workers=workers), log=lambda _: None)
            assert result.merged["bags_ok"] == args.bags, result.merged["failed"]
            jobs[workers] = result.job
        here = run_fleet(FleetOptions(bags=tuple(bags), out=root / "job-in-process", replay=base, in_process=True),
                         log=lambda _: None)
        assert here.merged["bags_ok"] == args.bags, here.merged["failed"]
    load_after = os.getloadavg()
    print(f"{args.bags} bags x {len(cameras)} cameras x {args.frames} frames ({frames} frames, {width}x{height}), "
          f"checkpoint {args.checkpoint.name}; {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after")
    print(f"single-bag runs, one process: {single_wall:.2f} s in all; summed model time {model_s:.2f} s, "
          f"summed replay time {replay_s:.2f} s ({60 * args.bags / single_wall:.2f} bags/min, no Ray)")
    for workers, job in jobs.items():
        overhead = (workers * job["wall_s"] - model_s) / model_s
        steady = (workers * (job["wall_s"] - job["ray_start_s"]) - model_s) / model_s
        print(f"fleet, {workers} worker{'s' if workers > 1 else ' '}: {job['wall_s']:6.2f} s, "
              f"{job['bags_per_minute']:6.2f} bags/min; Ray start-up {job['ray_start_s']:.2f} s; overhead vs summed "
              f"model time {100 * overhead:.0f} % ({100 * steady:.0f} % without Ray start-up); its bags' own model "
              f"time {job['sum_model_s']:.2f} s")
    overhead = (here.job["wall_s"] - model_s) / model_s
    print(f"fleet, --in-process (no Ray): {here.job['wall_s']:6.2f} s, {here.job['bags_per_minute']:6.2f} bags/min; "
          f"overhead vs summed model time {100 * overhead:.0f} %; its bags' own model time "
          f"{here.job['sum_model_s']:.2f} s")
    ratio = jobs[2]["bags_per_minute"] / jobs[1]["bags_per_minute"]
    print(f"scaling 1 -> 2 workers: {ratio:.2f}x bags/min (ideal 2.00x on 2 free cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
