"""Time and peak memory of turning low-resolution scores into labels at a large output size.

    .venv/bin/python benchmarks/postprocess_memory.py [--out 4096] [--confidence]

The worst case for ``mfuser_model.inference.labels_from_lowres``: noise scores (K = 19, 256x256, as a 1024x1024
network input gives), so nearly every output pixel lies on a class border and needs the K-channel interpolation;
output 4096x4096 (the node's largest accepted frame, labels at the camera's size). Border pixels are interpolated
in groups of ``_BORDER_PIXELS_PER_PASS``; the peak RSS printed is this process's, torch included.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from mfuser_model.inference import _BORDER_PIXELS_PER_PASS, labels_from_lowres
from mfuser_model.threads import add_threads_argument, apply_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=int, default=4096, help="output side (square)")
    parser.add_argument("--confidence", action="store_true", help="also compute the confidence map")
    add_threads_argument(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    scores = torch.rand(19, 256, 256, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    result = labels_from_lowres(scores, (1024, 1024), (1024, 1024), (args.out, args.out),
                                with_confidence=args.confidence)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"labels {result.labels.shape[1]}x{result.labels.shape[0]}, confidence {args.confidence}, "
          f"{_BORDER_PIXELS_PER_PASS} border pixels per pass: {seconds:.2f} s, peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
