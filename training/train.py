"""``mfuser-train``: train MFuser from a config in ``config/train/``.

Usage::

    mfuser-train --config config/train/gtav_eva02.yaml data.source.root=/data/gta \\
        'model.overrides={weights: {vfm: /w/dinov2_vitl14_pretrain.pth, vlm: /w/EVA02_CLIP_L_336_psz14_s6B.pt}}'
    torchrun --nproc_per_node 4 -m training.train --config config/train/gtav_eva02.yaml

Overrides are ``key.sub=value`` with the value read as YAML. ``--resume auto`` (default) continues from the latest
checkpoint in the run folder, ``--resume none`` starts afresh, ``--resume PATH`` continues from that checkpoint.
The run folder gets ``config.yaml``, ``metrics.jsonl``, TensorBoard logs in ``tb/`` (``tensorboard --logdir
<run folder>/tb``), ``checkpoints/`` and ``model.safetensors``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mfuser_model.errors import MFuserError
from mfuser_model.resources import require_file
from mfuser_model.threads import add_threads_argument, apply_threads

if TYPE_CHECKING:
    from mfuser_model.threads import ThreadSettings
    from training.config import TrainConfig

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``mfuser-train`` argument parser."""
    parser = argparse.ArgumentParser(prog="mfuser-train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="training YAML (config/train/<name>.yaml)")
    parser.add_argument("--work-dir", default=None, help="run folder (default: the config's work_dir)")
    parser.add_argument("--resume", default=None, metavar="auto|none|PATH",
                        help="auto: continue from the latest checkpoint in the run folder (the config's default); "
                             "none: start afresh; PATH: continue from that training checkpoint (.pt)")
    add_threads_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. optim.lr=2e-4")
    return parser


def _print_start(cfg: TrainConfig, threads: ThreadSettings) -> None:
    """The merged config, device, thread count and run folder, so a log says what ran where (rank 0 only)."""
    import torch  # noqa: PLC0415
    import yaml  # noqa: PLC0415

    from mfuser_model.config_io import dataclass_to_dict  # noqa: PLC0415

    if int(os.environ.get("RANK", "0")) != 0:
        return
    device = cfg.device
    if device == "auto":
        device = f"auto -> {'cuda' if torch.cuda.is_available() else 'cpu'}"
    resume = {"auto": f"auto (latest checkpoint in {cfg.run_dir / 'checkpoints'}, if any)",
              "none": "none (start afresh)"}.get(cfg.resume, cfg.resume)
    print("mfuser-train: merged config:\n" + yaml.safe_dump(dataclass_to_dict(cfg), sort_keys=False).rstrip(),
          flush=True)
    tb = f"{cfg.run_dir / 'tb'} (tensorboard --logdir {cfg.run_dir / 'tb'})" if cfg.tensorboard else "off"
    print(f"mfuser-train: device {device}, precision {cfg.precision}, {threads.describe()}\n"
          f"mfuser-train: run folder {cfg.run_dir}; resume {resume}; TensorBoard {tb}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 bad config/data/checkpoint, 3 training failed)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.work_dir is not None:
        overrides.append(f"work_dir={args.work_dir}")
    try:
        if args.resume not in (None, "auto", "none"):
            require_file(args.resume, "--resume")  # a path; auto and none are the other choices
        threads = apply_threads(args.threads)  # before torch loads (see mfuser_model.threads)
    except MFuserError as err:
        print(f"mfuser-train: {err}", file=sys.stderr)
        return 2
    from training.config import load_train_config  # noqa: PLC0415 - imports torch: only past --help
    from training.trainer import TrainingError, train  # noqa: PLC0415

    try:
        cfg = load_train_config(args.config, overrides)
        if args.resume is not None:
            cfg = dataclasses.replace(cfg, resume=args.resume)
        _print_start(cfg, threads)
        result = train(cfg)
    except TrainingError as err:
        print(f"mfuser-train: {err}", file=sys.stderr)
        return 3
    except MFuserError as err:
        print(f"mfuser-train: {err}", file=sys.stderr)
        return 2
    from mfuser_model.report import percent  # noqa: PLC0415 - numpy: after training, so that --help stays fast

    summary = ", ".join(f"{k} {percent(v)}" for k, v in result.eval.items())
    print(f"done: {result.iterations} iterations in {result.run_dir}; model {result.model_path}"
          + (f"; mIoU {summary}" if summary else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
