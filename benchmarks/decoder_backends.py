"""Decode-head latency per backend: PyTorch and onnxruntime on the CPU, TensorRT (and PyTorch CUDA) where present.

Two heads with random weights, batch 1:
- tiny: the tiny presets' head (96 input channels, text 32, K = 19) at their 128 px crop with patch 14
  (token grid 9: maps 36², 18², 9², 4²);
- full: the paper's head (2048 input channels = 1024 + 1024, text 768, K = 19, hidden 256, 9 decoder and 6 pixel
  decoder layers) at a 512² input with patch 16 (token grid 32: maps 128², 64², 32², 16²).

Run: `.venv/bin/python benchmarks/decoder_backends.py [--heads tiny full] [--iters 5] [--threads N]`.
Prints one table row per (head, backend) with median and min latency and the max |diff| of the semantic scores
against PyTorch (the same inputs), plus the export time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mfuser_model.deploy.decoder_backends import OnnxRuntimeDecoder, TorchDecoder
from mfuser_model.deploy.onnx_export import decoder_input_shapes, example_decoder_inputs, export_decoder
from mfuser_model.network.decode_head import MFuserHead
from mfuser_model.threads import add_threads_argument, apply_threads

HEADS = {
    "tiny": ({"in_channels": 96, "text_dim": 32, "num_classes": 19, "hidden_dim": 32, "num_heads": 2,
              "num_decoder_layers": 3, "num_pixel_decoder_layers": 2, "decoder_ffn_dim": 64,
              "pixel_decoder_ffn_dim": 64}, (9, 9), "128px/p14"),
    "full": ({"in_channels": 2048, "text_dim": 768, "num_classes": 19}, (32, 32), "512px/p16"),
}


def _time(fn, tensors, warmup, iters, cuda=False):
    out = None
    for _ in range(warmup):
        out = fn(tensors)
    times = []
    for _ in range(iters):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn(tensors)
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return out, times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--heads", nargs="+", choices=sorted(HEADS), default=["tiny", "full"])
    p.add_argument("--iters", type=int, default=5, help="timed runs of the full head (the tiny head gets 4x)")
    p.add_argument("--warmup", type=int, default=1)
    add_threads_argument(p)  # torch and onnxruntime intra-op threads, the commands' policy
    args = p.parse_args(argv)
    apply_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CUDA: "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    try:
        import tensorrt as trt
        trt_version = trt.__version__
    except ImportError:
        trt_version = None
    print(f"tensorrt: {trt_version or 'not installed (NVIDIA index); TensorRT rows skipped'}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.heads:
            cfg, grid, label = HEADS[name]
            iters = args.iters * (4 if name == "tiny" else 1)
            torch.manual_seed(0)
            head = MFuserHead(**cfg).eval()
            params = sum(p.numel() for p in head.parameters()) / 1e6
            shapes = decoder_input_shapes(in_channels=cfg["in_channels"], text_dim=cfg["text_dim"],
                                          num_classes=cfg["num_classes"], grid=grid)
            inputs = example_decoder_inputs(shapes)
            tensors = [*inputs.features, inputs.text]
            s4 = shapes["features_s4"]
            what = f"{name} ({params:.2f} M, {label}, s4 {s4[1]}x{s4[2]}x{s4[3]})"
            start = time.perf_counter()
            info = export_decoder(head, Path(tmp) / f"{name}.onnx", inputs)
            export_s = time.perf_counter() - start
            torch_backend = TorchDecoder(head).eval()
            with torch.no_grad():
                ref, t_torch = _time(torch_backend.run, tensors, args.warmup, iters)
            rows.append((what, "torch fp32", "cpu", t_torch, 0.0))
            ort_backend = OnnxRuntimeDecoder(info.path, num_threads=args.threads)
            got, t_ort = _time(ort_backend.run, tensors, args.warmup, iters)
            rows.append((what, "onnxruntime fp32", "cpu", t_ort, float((got[2] - ref[2]).abs().max())))
            print(f"{name}: ONNX export {export_s:.1f} s, {info.path.stat().st_size / 2**20:.1f} MiB", flush=True)
            if torch.cuda.is_available():
                cuda_head = TorchDecoder(head).cuda().eval()
                cuda_tensors = [t.cuda() for t in tensors]
                with torch.no_grad():
                    got, t_cuda = _time(cuda_head.run, cuda_tensors, max(args.warmup, 3), iters, cuda=True)
                rows.append((what, "torch fp32", "cuda", t_cuda, float((got[2].cpu() - ref[2]).abs().max())))
                head.cpu()
                if trt_version:
                    from mfuser_model.deploy.decoder_backends import TensorRTDecoder

                    cuda_tensors = [t.cuda() for t in tensors]
                    for precision in ("fp32", "fp16"):
                        trt_backend = TensorRTDecoder(info.path, precision=precision, device="cuda")
                        got, t_trt = _time(trt_backend.run, cuda_tensors, 3, iters, cuda=True)
                        rows.append((what, f"tensorrt {precision}", "cuda", t_trt,
                                     float((got[2].cpu() - ref[2]).abs().max())))
    print()
    print("| head | backend | device | median ms | min ms | max abs diff vs torch (scores) |")
    print("|---|---|---|---|---|---|")
    for what, backend, device, times, diff in rows:
        print(f"| {what} | {backend} | {device} | {statistics.median(times):.1f} | {min(times):.1f} | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
