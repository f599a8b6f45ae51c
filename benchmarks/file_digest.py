"""Cost of the checksum that model files and training checkpoints carry (``mfuser_model.fileio.tensor_digest``).

Hashes ``--mib`` MiB of float32 tensors (split like a state dict) and prints the throughput, then the time a load
of each full-size preset's model file spends on it (sizes from a meta-device build: no memory, no weights).

    python benchmarks/file_digest.py [--mib 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from mfuser_model.config import load_model_config
from mfuser_model.fileio import tensor_digest
from mfuser_model.network.mfuser import build_mfuser

FULL_PRESETS = ("mfuser-eva02-large", "mfuser-clip-large", "mfuser-siglip-large")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    chunk = 4 << 20  # 4 MiB tensors, about the size of a ViT-L linear weight
    tensors = {f"layer{i}.weight": torch.randn(chunk // 4) for i in range(max(1, args.mib * (1 << 20) // chunk))}
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    best = min(_timed(tensors) for _ in range(args.repeats))
    rate = size / best
    print(f"tensor_digest (sha256): {size / 2**20:.0f} MiB in {best:.3f} s = {rate / 2**30:.2f} GiB/s (best of "
          f"{args.repeats})")
    for name in FULL_PRESETS:
        config = load_model_config(name)
        with torch.device("meta"):  # token ids stand in for the tokenizer (SigLIP's is not bundled)
            token_ids = torch.zeros(config.num_classes, config.name_length, dtype=torch.long)
            model = build_mfuser(config, token_ids=token_ids)
        nbytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
        print(f"  {name}: {nbytes / 2**30:.2f} GiB file -> {nbytes / rate:.1f} s of verification per load")


def _timed(tensors: dict[str, torch.Tensor]) -> float:
    t0 = time.perf_counter()
    tensor_digest(tensors)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
