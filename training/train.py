"""``mfuser-train``: train MFuser from a config in ``config/train/``.

Usage::

    mfuser-train --config config/train/gtav_eva02.yaml data.source.root=/data/gta \\
        'model.overrides={weights: {vfm: /w/dinov2_vitl14_pretrain.pth, vlm: /w/EVA02_CLIP_L_336_psz14_s6B.pt}}'
    torchrun --nproc_per_node 4 -m training.train --config config/train/gtav_eva02.yaml

Overrides are ``key.sub=value`` with the value read as YAML. The run resumes from the latest checkpoint in its
work_dir unless ``resume=none``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mfuser_model.errors import MFuserError
from training.config import load_train_config

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``mfuser-train`` argument parser."""
    parser = argparse.ArgumentParser(prog="mfuser-train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="training YAML (config/train/<name>.yaml)")
    parser.add_argument("--work-dir", default=None, help="run folder (default: the config's work_dir)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. optim.lr=2e-4")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 bad config/data/checkpoint, 3 training failed)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.work_dir is not None:
        overrides.append(f"work_dir={args.work_dir}")
    from training.trainer import TrainingError, train  # noqa: PLC0415  (torch import after argument parsing)

    try:
        cfg = load_train_config(args.config, overrides)
        result = train(cfg)
    except TrainingError as err:
        print(f"mfuser-train: {err}", file=sys.stderr)
        return 3
    except MFuserError as err:
        print(f"mfuser-train: {err}", file=sys.stderr)
        return 2
    summary = ", ".join(f"{k} {100 * v:.2f}" for k, v in result.eval.items())
    print(f"done: {result.iterations} iterations in {result.run_dir}; model {result.model_path}"
          + (f"; mIoU {summary}" if summary else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
