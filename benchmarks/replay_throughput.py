"""Replay frames/s against pure model frames/s on the same frames: the replay's own overhead.

    .venv/bin/python benchmarks/replay_throughput.py [--checkpoint M.safetensors] [--frames 12] [--size 256x128]
                                                      [--repeats 5] [--bag BAG] [--threads N]

The model is the bundled one (``models/tiny-eva02-synthetic.safetensors``) unless ``--checkpoint`` names another
(``--checkpoint ''``: tiny-eva02 with random weights).

Makes the demo bag (two cameras: raw rgb8 "game" style and JPEG "fog" style, with ground-truth topics) unless
``--bag`` is given, then times, alternately and ``--repeats`` times (the median of each is printed, with the
lowest and highest run, since other processes share the CPU):

- model:  ``Segmenter.segment_batch`` alone on the already decoded frames, batched as the replay batches them
  (the node's policy: one frame per camera per call, at most ``max_batch``);
- replay: ``run_replay`` in evaluation mode: bag read + CDR deserialisation + decode + the same model calls +
  label/colour encoding + output bag writes (inputs copied, labels, colour) + ground-truth matching + confusion
  matrices + montage sampling.

overhead = (replay time - model time) / model time; the target is <= 10 %. Because other processes may share the
CPU, each replay run also reports its own split: its wall time against the summed time of the model calls made
inside it (same moment, same contention), which is the most robust overhead figure on a busy machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mfuser_model.threads import add_threads_argument, apply_threads
from mfuser_ros.node.config import BUNDLED_MODEL, NodeConfig
from mfuser_ros.node.conversions import message_to_rgb
from mfuser_ros.node.model_loader import load_model
from mfuser_ros.replay.bagio import BagInput
from mfuser_ros.replay.demo_bag import DemoCamera, make_demo_bag
from mfuser_ros.replay.runner import ReplayOptions, find_camera_topics, run_replay


def model_batches(bag: Path, max_batch: int) -> list[list]:
    """Decoded RGB frames of the bag's cameras, grouped as the replay groups them."""
    with BagInput(bag) as reader:
        cameras = find_camera_topics(reader.topics)
        batches: list[list] = []
        batch: list[tuple[str, object]] = []
        for _, message in reader.messages(cameras):
            if any(t == message.topic for t, _ in batch) or len(batch) >= max_batch:
                batches.append([rgb for _, rgb in batch])
                batch = []
            batch.append((message.topic, message_to_rgb(message.msg)))
        if batch:
            batches.append([rgb for _, rgb in batch])
    return batches


def time_model(segmenter, batches: list[list]) -> float:
    t0 = time.perf_counter()
    for images in batches:
        segmenter.segment_batch(images, output_sizes=[im.shape[:2] for im in images])
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=BUNDLED_MODEL, help="model file (default: the bundled model; '': "
                                                                "tiny-eva02 with random weights)")
    p.add_argument("--frames", type=int, default=12, help="frames per camera in the generated bag")
    p.add_argument("--size", default="256x128", help="WIDTHxHEIGHT of the generated bag")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bag", type=Path, help="replay this bag instead of generating one")
    add_threads_argument(p)
    args = p.parse_args()
    apply_threads(args.threads)
    torch.manual_seed(0)
    config = NodeConfig(preset="" if args.checkpoint else "tiny-eva02", checkpoint=args.checkpoint, warmup=False)
    loaded = load_model(config)
    with tempfile.TemporaryDirectory(prefix="mfuser-bench-") as tmp:
        bag = args.bag
        if bag is None:
            width, height = (int(v) for v in args.size.split("x"))
            bag = make_demo_bag(Path(tmp) / "drive", [DemoCamera("cam_game", "game"),
                                                      DemoCamera("cam_fog", "fog", compressed=True)],
                                frames=args.frames, size=(width, height))
        batches = model_batches(bag, config.max_batch)
        frames = sum(len(b) for b in batches)
        time_model(loaded.pipeline.segmenter, batches[:1])  # warm up allocator and kernels
        model_s, replay_s = [], []
        inside: list[tuple[float, float]] = []  # (replay wall, its model calls) of each replay run
        for r in range(args.repeats):
            model_s.append(time_model(loaded.pipeline.segmenter, batches))
            result = run_replay(ReplayOptions(bag=bag, out=Path(tmp) / f"report{r}", node=config, progress=False),
                                loaded=loaded)
            replay_s.append(result.summary["wall_s"])
            inside.append((result.summary["wall_s"], result.summary["model_s"]))
            assert result.summary["frames"]["processed"] == frames, result.summary["frames"]
    m, rp = float(np.median(model_s)), float(np.median(replay_s))
    print(f"frames: {frames} ({len(batches)} model calls), torch threads {torch.get_num_threads()}, "
          f"checkpoint {args.checkpoint or 'tiny-eva02 (random weights)'}")
    for name, med, runs in (("model only", m, model_s), ("replay    ", rp, replay_s)):
        print(f"{name} : median {med:.3f} s  {frames / med:.2f} frames/s  (min {min(runs):.3f}, max {max(runs):.3f}; "
              f"runs: {', '.join(f'{v:.3f}' for v in runs)})")
    overhead = (rp - m) / m
    print(f"replay overhead (I/O, conversion, evaluation; medians) = {100 * overhead:.1f} % of model time "
          f"({1e3 * (rp - m) / frames:.1f} ms/frame); target <= 10 %: {'PASS' if overhead <= 0.10 else 'FAIL'}")
    for wall, in_model in inside:
        print(f"inside replay run: wall {wall:.3f} s, model calls {in_model:.3f} s -> everything else "
              f"{100 * (wall - in_model) / in_model:.1f} % of model time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
