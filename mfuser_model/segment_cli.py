"""``mfuser-segment``: segment image files and write colourised label PNGs (and overlays).

Examples:
    mfuser-segment --checkpoint models/tiny-eva02-synthetic.safetensors street.png --out-dir out/
    mfuser-segment --preset tiny-eva02 street.png   # random weights: checks the install, not accuracy
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mfuser_model.errors import MFuserError
from mfuser_model.resources import require_file
from mfuser_model.threads import add_threads_argument, apply_threads

if TYPE_CHECKING:
    import numpy as np

__all__ = ["main", "overlay"]


def overlay(rgb: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colour label image over the RGB input (both (H, W, 3) uint8)."""
    import cv2  # noqa: PLC0415 - heavy imports only past --help

    return cv2.addWeighted(rgb, 1.0 - alpha, color, alpha, 0.0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mfuser-segment", description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG)")
    p.add_argument("--checkpoint", type=Path, help="whole-model .safetensors file (mfuser-convert / mfuser-train)")
    p.add_argument("--preset", help="model preset (config/presets) when no checkpoint is given")
    p.add_argument("--out-dir", type=Path, default=Path("out"), help="where the PNGs go (default: out/)")
    p.add_argument("--mode", choices=["whole", "slide"], default="whole")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    add_threads_argument(p)
    return p


def _check_inputs(args: argparse.Namespace) -> None:
    """Missing files fail here, in a fraction of a second, before torch and the model load."""
    for path in args.images:
        require_file(path, "image")
    if args.checkpoint:
        require_file(args.checkpoint, "--checkpoint")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        _check_inputs(args)
        apply_threads(args.threads)  # before torch loads (see mfuser_model.threads)
        import cv2  # noqa: PLC0415 - heavy imports only past --help and the input checks
        import numpy as np  # noqa: PLC0415

        from mfuser_model.checkpoint import build_model  # noqa: PLC0415
        from mfuser_model.classes import colorize  # noqa: PLC0415
        from mfuser_model.inference import Segmenter  # noqa: PLC0415

        model = build_model(preset=args.preset, checkpoint=args.checkpoint, device=args.device)
        segmenter = Segmenter(model, mode=args.mode, device=args.device, precision=args.precision)
    except (MFuserError, OSError) as err:
        print(f"mfuser-segment: {err}", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    palette = model.config.palette
    for path in args.images:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            print(f"mfuser-segment: {path}: not a readable image", file=sys.stderr)
            return 2
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        result = segmenter.segment(rgb)
        color = colorize(result.labels, palette)
        stem = args.out_dir / path.stem
        cv2.imwrite(f"{stem}_labels.png", result.labels)
        cv2.imwrite(f"{stem}_color.png", cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
        cv2.imwrite(f"{stem}_overlay.png", cv2.cvtColor(overlay(rgb, color), cv2.COLOR_RGB2BGR))
        names = model.config.class_names
        present = ", ".join(f"{names[c]} {n / result.labels.size:.0%}"
                            for c, n in zip(*np.unique(result.labels, return_counts=True), strict=True)
                            if c < len(names))
        print(f"{path} -> {stem}_color.png ({present})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
