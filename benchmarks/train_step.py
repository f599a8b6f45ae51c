"""Training-step cost: seconds per iteration and peak memory of one MFuser optimisation step.

CPU: the tiny preset (default ``tiny-eva02``, batch 2, 128² crops), peak resident memory of the process.
CUDA (when available): the full EVA02 variant (``mfuser-eva02-large``, random weights, frozen encoders as in the
paper) at batch 2 and 512², with and without gradient checkpointing through the frozen encoders, reporting
iterations/s and peak allocated GPU memory. Each step = forward, all losses (12,544 points), backward, AdamW.

    python benchmarks/train_step.py [--preset tiny-eva02] [--iters 5] [--crop 128] [--batch 2] [--skip-cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time

import torch

from mfuser_model.checkpoint import build_model
from mfuser_model.threads import add_threads_argument, apply_threads
from training.losses import LossWeights, MFuserLoss
from training.optim import OptimConfig, build_optimizer


def _step_fn(model, crop: int, batch: int, device: torch.device, num_points: int, precision: str):
    torch.manual_seed(0)
    images = torch.randn(batch, 3, crop, crop, device=device)
    labels = torch.randint(0, model.config.num_classes, (batch, crop, crop), device=device)
    labels[:, : crop // 8] = 255
    criterion = MFuserLoss(model.config.num_classes, LossWeights(num_points=num_points))
    optimizer = build_optimizer(model, OptimConfig())
    dtype = {"bf16": torch.bfloat16}.get(precision)

    def step() -> float:
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            out = model(images)
        loss = criterion(out.class_logits, out.mask_logits, out.score_map, labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def _time(step, iters: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return (time.perf_counter() - start) / iters


def bench_cpu(preset: str, crop: int, batch: int, iters: int, num_points: int) -> None:
    """Tiny preset on the CPU."""
    model = build_model(preset).train()
    step = _step_fn(model, crop, batch, torch.device("cpu"), num_points, "fp32")
    cpu0 = time.process_time()
    sec = _time(step, iters, warmup=2, sync=lambda: None)
    cpu = (time.process_time() - cpu0) / (iters + 2)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"cpu  {preset}: batch {batch}, {crop}x{crop}, {num_points} points, {torch.get_num_threads()} threads, "
          f"{trainable / 1e6:.2f}M trainable params")
    print(f"cpu  {preset}: {sec:.3f} s/iter wall ({1 / sec:.2f} it/s), {cpu:.3f} s/iter process CPU time, "
          f"peak RSS {peak_mb:.0f} MB")


def bench_cuda(crop: int, batch: int, iters: int, precision: str) -> None:
    """Full EVA02 variant on the GPU, with and without gradient checkpointing."""
    device = torch.device("cuda")
    model = build_model("mfuser-eva02-large").to(device).train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"cuda mfuser-eva02-large: {torch.cuda.get_device_name(device)}, batch {batch}, {crop}x{crop}, "
          f"{precision}, {trainable / 1e6:.1f}M trainable params")
    for checkpointing in (False, True):
        model.backbone.grad_checkpointing = checkpointing
        step = _step_fn(model, crop, batch, device, 12544, precision)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            sec = _time(step, iters, warmup=3, sync=torch.cuda.synchronize)
        except torch.cuda.OutOfMemoryError:
            print(f"cuda grad_checkpointing={checkpointing}: out of memory")
            continue
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"cuda grad_checkpointing={checkpointing}: {1 / sec:.2f} it/s ({sec:.3f} s/iter), "
              f"peak allocated {peak:.2f} GiB")


def main() -> None:
    """Parse arguments and run the CPU and (if present) CUDA benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny-eva02")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--points", type=int, default=1024, help="mask-loss points for the CPU run")
    parser.add_argument("--cuda-precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--skip-cuda", action="store_true")
    add_threads_argument(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    bench_cpu(args.preset, args.crop, args.batch, args.iters, args.points)
    if args.skip_cuda:
        return
    if not torch.cuda.is_available():
        print("cuda: skipped (no CUDA device); the full EVA02 benchmark needs a GPU with ~40+ GiB")
        return
    bench_cuda(512, 2, args.iters, args.cuda_precision)


if __name__ == "__main__":
    main()
