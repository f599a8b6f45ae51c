"""``mfuser-eval``: evaluate a whole-model file on the targets of a training config (the paper's protocol).

Usage::

    mfuser-eval --config config/train/gtav_eva02.yaml --model work_dirs/gtav_eva02/model.safetensors \\
        [--targets g2c,g2b] [--out eval_out] [KEY=VALUE ...]

Per target it writes ``<out>/<target>/iou.md``, ``iou.json`` and ``samples.png``, and prints the mIoU table.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mfuser_model.errors import ConfigError, MFuserError
from mfuser_model.resources import require_file
from mfuser_model.threads import add_threads_argument, apply_threads

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``mfuser-eval`` argument parser."""
    parser = argparse.ArgumentParser(prog="mfuser-eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="training YAML whose eval section lists the targets")
    parser.add_argument("--model", required=True, help="whole-model file (model.safetensors from mfuser-train)")
    parser.add_argument("--targets", default=None, help="comma-separated target names (default: all)")
    parser.add_argument("--out", default=None, help="output folder (default: <model folder>/eval_<model stem>)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_threads_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 bad config, data or model file)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        require_file(args.model, "--model")
        apply_threads(args.threads)  # before torch loads (see mfuser_model.threads)
        from mfuser_model.checkpoint import load_model  # noqa: PLC0415 - torch only past --help and the checks
        from mfuser_model.report import percent  # noqa: PLC0415
        from training.config import load_train_config  # noqa: PLC0415
        from training.distributed import setup_distributed, teardown_distributed  # noqa: PLC0415
        from training.evaluate import evaluate_targets  # noqa: PLC0415

        cfg = load_train_config(args.config, args.overrides)
        targets = list(cfg.eval.targets)
        if args.targets:
            wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
            known = {t.name for t in targets}
            unknown = [t for t in wanted if t not in known]
            if unknown:
                msg = f"{args.config}: unknown target(s) {unknown}; valid: {sorted(known)}"
                raise ConfigError(msg)
            targets = [t for t in targets if t.name in wanted]
        if not targets:
            msg = f"{args.config}: eval.targets is empty"
            raise ConfigError(msg)
        ctx = setup_distributed(args.device)
        try:
            model = load_model(args.model, ctx.device)
            model_path = Path(args.model)
            out = Path(args.out) if args.out else model_path.parent / f"eval_{model_path.stem}"
            results = evaluate_targets(model, targets, cfg.eval, out, ctx=ctx, generate=cfg.data.generate_if_missing,
                                       model_file=model_path)
        finally:
            teardown_distributed(ctx)
    except MFuserError as err:
        print(f"mfuser-eval: {err}", file=sys.stderr)
        return 2
    if ctx.is_main:
        width = max(len(n) for n in results)
        print(f"| {'target':<{width}} | mIoU    | rule    |")
        print(f"|{'-' * (width + 2)}|---------|---------|")
        for name, r in results.items():
            print(f"| {name:<{width}} | {percent(r.miou):>7} | {r.metrics['miou_rule']:<7} |")
        print(f"reports in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
