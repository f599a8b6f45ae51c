"""CPU threads against a second busy process: step time of a command's work with 1, 2, ... threads.

Why the project's default is one thread (:mod:`mfuser_model.threads`): a parallel region ends only when its last
thread does, so with another process on the CPUs every small operator can wait for a descheduled thread. This
benchmark starts one CPU-burning process itself (bounded: it ends after ``--busy-timeout-s`` even if this script is
killed), and runs each thread count in its own process that applies the policy before torch loads, as every command
does. The processes take their steps in turn (one step of each, then the next round), so a change in the machine's
other load hits every thread count alike. It prints the median and spread (p10, p90, min, max) over ``--runs`` timed
steps, not the best run. ``--idle`` also measures without the busy process; ``--torch-default`` adds each thread
count set the way torch leaves it (``torch.set_num_threads`` only: OpenMP threads spin while they wait) beside the
policy's (passive wait above one thread).

Steps:
- ``segment``: ``mfuser-segment``'s work: the bundled model (``models/tiny-eva02-synthetic.safetensors``), one
  ``--size`` RGB image, whole-image inference.
- ``train``: ``mfuser-train``'s work: one optimisation step of the tiny preset (random weights; forward, all losses,
  backward, AdamW; batch 2, 128² crops; ``benchmarks/train_step.py``'s step).

    python benchmarks/threads.py [--step segment|train] [--threads 1 2] [--runs 15] [--idle] [--torch-default]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "models" / "tiny-eva02-synthetic.safetensors"
_BUSY = "import time\nend = time.monotonic() + float(__import__('sys').argv[1])\nwhile time.monotonic() < end: pass\n"


def _segment_step(size: tuple[int, int]):
    # torch loads here, after apply_threads, as in the commands
    from mfuser_model.checkpoint import build_model
    from mfuser_model.inference import Segmenter

    segmenter = Segmenter(build_model(checkpoint=BUNDLED), mode="whole")
    image = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return lambda: segmenter.segment(image)


def _train_step():
    # torch loads here, after apply_threads; the step is the training benchmark's, not a copy
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch
    from train_step import _step_fn

    from mfuser_model.checkpoint import build_model

    return _step_fn(build_model("tiny-eva02").train(), 128, 2, torch.device("cpu"), 1024, "fp32")


def child(args: argparse.Namespace) -> None:
    """One thread count: apply the policy first (as the commands do), warm up, then one timed step per stdin line."""
    if args.torch_default:  # torch's own way: the thread count only, OpenMP's default (spinning) wait
        import torch

        torch.set_num_threads(args.child)
        threads = torch.get_num_threads()
    else:
        from mfuser_model.threads import apply_threads

        threads = apply_threads(args.child).threads
    width, height = (int(v) for v in args.size.split("x"))
    step = _segment_step((width, height)) if args.step == "segment" else _train_step()
    for _ in range(args.warmup):
        step()
    print(json.dumps({"threads": threads}), flush=True)
    for _ in sys.stdin:
        t = time.perf_counter()
        step()
        print(time.perf_counter() - t, flush=True)


def _measure(args: argparse.Namespace) -> dict[tuple[str, int], list[float]]:
    """Start one process per (setup, thread count), then time their steps in turns."""
    setups = [("policy", n) for n in args.threads] + ([("torch", n) for n in args.threads] if args.torch_default
                                                      else [])
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    procs = [subprocess.Popen([sys.executable, __file__, "--child", str(n), "--step", args.step, "--warmup",
                               str(args.warmup), "--size", args.size, *(["--torch-default"] if setup == "torch"
                                                                        else [])],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
             for setup, n in setups]
    try:
        keys = [(setup, json.loads(p.stdout.readline())["threads"])  # each one loaded and warm
                for (setup, _), p in zip(setups, procs, strict=True)]
        times: dict[tuple[str, int], list[float]] = {k: [] for k in keys}
        for _ in range(args.runs):
            for key, p in zip(keys, procs, strict=True):
                p.stdin.write("\n")
                p.stdin.flush()
                times[key].append(float(p.stdout.readline()))
        return times
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)


def _row(condition: str, setup: str, threads: int, times: list[float]) -> str:
    p10, p50, p90 = np.percentile(times, [10, 50, 90])
    setup = "policy" if setup == "policy" else "torch's own"
    return (f"| {condition:<11} | {setup:<11} | {threads:>7} | {len(times):>4} | {p50:8.3f} | {p10:8.3f} | "
            f"{p90:8.3f} | {min(times):8.3f} | {max(times):8.3f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--step", choices=("segment", "train"), default="segment")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to compare")
    p.add_argument("--runs", type=int, default=15, help="timed steps per thread count")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--size", default="512x256", help="WIDTHxHEIGHT of the segment step's image")
    p.add_argument("--idle", action="store_true", help="also measure without the busy process")
    p.add_argument("--torch-default", action="store_true",
                   help="also run each thread count as torch leaves it (set_num_threads only, spinning waits)")
    p.add_argument("--busy-timeout-s", type=float, default=900.0, help="the busy process ends after this at most")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child(args)
        return 0
    from mfuser_model.threads import available_cpus

    print(f"step {args.step} ({'image ' + args.size if args.step == 'segment' else 'tiny-eva02, batch 2, 128²'}), "
          f"{available_cpus()} CPUs, {args.runs} timed steps after {args.warmup} warm-up, seconds per step")
    print("| condition   | setup       | threads | runs |   median |      p10 |      p90 |      min |      max |")
    print("|-------------|-------------|---------|------|----------|----------|----------|----------|----------|")
    for busy in ([False] if args.idle else []) + [True]:
        burner = (subprocess.Popen([sys.executable, "-c", _BUSY, str(args.busy_timeout_s)]) if busy else None)
        try:
            for (setup, n), times in _measure(args).items():
                print(_row("1 busy proc" if busy else "idle", setup, n, times), flush=True)
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
