"""Write synthetic driving scenes in a real dataset layout (GTAV, Cityscapes, BDD100K, Mapillary, SYNTHIA).

Examples::

    mfuser-make-synthetic gtav data/synth_gta --n 200 --size 512x256
    mfuser-make-synthetic cityscapes data/synth_city --n 50 --style night --split val
    mfuser-make-synthetic preview /tmp/preview.png --styles game,night,fog
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from mfuser_model.classes import colorize
from training.synthetic import (
    STYLES,
    render_scene,
    write_bdd100k,
    write_cityscapes,
    write_gtav,
    write_mapillary,
    write_synthia,
)

__all__ = ["main"]


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        msg = f"size must look like 512x256 (width x height), got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if w < 8 or h < 8:
        msg = f"size {text!r} is too small (at least 8x8)"
        raise argparse.ArgumentTypeError(msg)
    return w, h


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mfuser-make-synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("layout", choices=["gtav", "cityscapes", "bdd100k", "mapillary", "synthia", "preview"])
    p.add_argument("out", type=Path, help="dataset root to write (or the PNG file for 'preview')")
    p.add_argument("--n", type=int, default=16, help="number of scenes (default 16)")
    p.add_argument("--size", type=_size, default=(512, 256), help="WIDTHxHEIGHT (default 512x256)")
    p.add_argument("--style", choices=STYLES, default=None,
                   help="rendering style (default: game for gtav/synthia, day for cityscapes, rain for bdd100k, "
                        "texture for mapillary)")
    p.add_argument("--styles", default="game,night,fog", help="comma-separated styles for 'preview'")
    p.add_argument("--split", default=None, help="split folder (cityscapes/bdd100k: val; mapillary: validation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-ids", action="store_true", help="gtav: write converted *_labelTrainIds.png labels")
    return p


def _preview(out: Path, n: int, size: tuple[int, int], styles: list[str], seed: int) -> None:
    w, h = size
    rows = []
    for i in range(n):
        tiles = []
        for style in styles:
            rgb, lab = render_scene(np.random.default_rng([seed, i]), h, w, style)
            tiles += [rgb]
        tiles.append(colorize(lab))
        rows.append(np.concatenate(tiles, axis=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mfuser-make-synthetic``; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.n < 1:
        print(f"--n must be >= 1, got {args.n}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if args.layout == "preview":
        styles = [s.strip() for s in args.styles.split(",") if s.strip()]
        unknown = [s for s in styles if s not in STYLES]
        if unknown:
            print(f"unknown style(s) {unknown}; valid: {', '.join(STYLES)}", file=sys.stderr)
            return 2
        _preview(args.out, min(args.n, 8), args.size, styles, args.seed)
        print(f"wrote {args.out}")
        return 0
    common = {"n": args.n, "size": args.size, "seed": args.seed}
    if args.layout == "gtav":
        paths = write_gtav(args.out, style=args.style or "game", train_ids=args.train_ids, **common)
    elif args.layout == "cityscapes":
        paths = write_cityscapes(args.out, style=args.style or "day", split=args.split or "val", **common)
    elif args.layout == "bdd100k":
        paths = write_bdd100k(args.out, style=args.style or "rain", split=args.split or "val", **common)
    elif args.layout == "mapillary":
        paths = write_mapillary(args.out, style=args.style or "texture", split=args.split or "validation", **common)
    else:
        paths = write_synthia(args.out, style=args.style or "game", **common)
    dt = time.perf_counter() - t0
    print(f"wrote {len(paths)} {args.layout} scenes to {args.out} in {dt:.1f} s ({1000 * dt / len(paths):.0f} ms each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
