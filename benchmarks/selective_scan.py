"""Time every selective-scan backend at the MVFuser shapes and print one table.

Shapes: batch 1 and 2, d_inner 512, L 2594, d_state 16, B and C (b, n, L), z gate, D skip, delta_bias and softplus on
(as Mamba-1 calls `selective_scan_fn`), with Mamba's initial parameters: A = -(1..16), delta = 0.5·randn and
delta_bias = softplus⁻¹(dt), dt log-uniform in [1e-3, 0.1]; u, B, C, z ~ N(0, 1); D = 1.

For each backend: median wall-clock ms per call (forward, and forward + backward where marked), the process CPU ms
per call (all threads; what the call itself costs when other processes share the machine), the speedup in wall
clock over the sequential reference ("ref", mamba-ssm's `selective_scan_ref` loop), the peak extra resident memory
of the timed calls (peak RSS minus RSS before them), and the max abs error of the output against the reference. The
first call of the native and default backends (warm-up: it builds and verifies the kernel) is not timed; blocked
and ref need no warm-up and get none. Forward + backward rows are compared with the reference's *forward* time, a
lower bound on their speedup (autograd through the 2594-step reference loop takes minutes); ``--ref-backward``
times that too.

Run: .venv/bin/python benchmarks/selective_scan.py  (about 1 minute on an idle 2-core machine)
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import mfuser_model.ops.selective_scan as ss
from mfuser_model.threads import add_threads_argument, apply_threads

D_INNER, LENGTH, D_STATE = 512, 2594, 16


def make_inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(D_INNER, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return {
        "u": torch.randn(batch, D_INNER, LENGTH, generator=gen),
        "delta": 0.5 * torch.randn(batch, D_INNER, LENGTH, generator=gen),
        "A": -torch.arange(1, D_STATE + 1, dtype=torch.float32).repeat(D_INNER, 1),
        "B": torch.randn(batch, D_STATE, LENGTH, generator=gen),
        "C": torch.randn(batch, D_STATE, LENGTH, generator=gen),
        "D": torch.ones(D_INNER),
        "z": torch.randn(batch, D_INNER, LENGTH, generator=gen),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }


_libc = ctypes.CDLL(ctypes.util.find_library("c"))


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def measure(fn: Callable[[], object], repeats: int, warmup: bool = True) -> tuple[float, float, float]:
    """(median wall ms, median process CPU ms (all threads), peak extra MB) per call."""
    if warmup:
        fn()
    _libc.malloc_trim(0)
    before = _status_kb("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    peak_mb = (_status_kb("VmHWM:") - before) / 1024
    return statistics.median(times) * 1e3, statistics.median(cpu) * 1e3, peak_mb


def forward(inputs: dict[str, torch.Tensor], backend: str | None) -> Callable[[], torch.Tensor]:
    def call() -> torch.Tensor:
        with torch.no_grad():
            return ss.selective_scan(**inputs, delta_softplus=True, backend=backend)

    return call


def forward_backward(inputs: dict[str, torch.Tensor], backend: str | None) -> Callable[[], None]:
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    dout = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(1))

    def call() -> None:
        out = ss.selective_scan(**leaves, delta_softplus=True, backend=backend)
        torch.autograd.grad(out, list(leaves.values()), dout)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per backend (ref and blocked: fewer)")
    parser.add_argument("--ref-backward", action="store_true", help="also time forward + backward of the reference")
    # On a machine busy with other processes, torch's OpenMP barriers make ref and blocked many times slower with
    # 2 threads than with 1 (benchmarks/threads.py); the default, the commands' policy, is 1.
    add_threads_argument(parser)
    args = parser.parse_args()
    apply_threads(args.threads)

    default = ss.resolve_backend(torch.zeros(1, 1, 1))
    backends = ["blocked", "native"] + (["cuda"] if "cuda" in ss.available_backends("cuda") else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, default CPU backend: {default}; "
          f"shapes (b, d_inner={D_INNER}, L={LENGTH}, d_state={D_STATE}), float32")
    print(f"load average before: {os.getloadavg()[0]:.1f} (other processes compete for the {os.cpu_count()} cores)")
    print()
    print("| backend | batch | pass | ms/call | CPU ms/call | speedup vs ref | peak extra MB | max abs err vs ref |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in args.batches:
        inputs = make_inputs(batch)
        with torch.no_grad():
            ref_out = ss.selective_scan(**inputs, delta_softplus=True, backend="ref")
        ref_ms, ref_cpu, ref_mb = measure(forward(inputs, "ref"), repeats=3, warmup=False)
        print(f"| ref (sequential) | {batch} | fwd | {ref_ms:.1f} | {ref_cpu:.1f} | 1.0x | {ref_mb:.0f} | 0 |")
        for backend in backends:
            if backend == "native" and "native" not in ss.available_backends():
                print(f"| native | {batch} | fwd | unavailable | | | | |")
                continue
            repeats = max(1, args.repeats // 2) if backend == "blocked" else args.repeats
            ms, cpu, mb = measure(forward(inputs, backend), repeats, warmup=backend != "blocked")
            err = (forward(inputs, backend)() - ref_out).abs().max().item()
            label = f"{backend} (default)" if backend == default else backend
            print(f"| {label} | {batch} | fwd | {ms:.1f} | {cpu:.1f} | {ref_ms / ms:.1f}x | {mb:.0f} | {err:.1e} |")
        base_ms, base = ref_ms, "vs ref fwd"
        if args.ref_backward:
            base_ms, fb_cpu, fb_mb = measure(forward_backward(inputs, "ref"), repeats=1, warmup=False)
            base = "vs ref fwd+bwd"
            print(f"| ref (sequential) | {batch} | fwd+bwd | {base_ms:.1f} | {fb_cpu:.1f} | 1.0x | {fb_mb:.0f} | |")
        for backend in ("blocked", default) if default != "blocked" else ("blocked",):
            repeats = max(1, args.repeats // 2) if backend == "blocked" else args.repeats
            ms, cpu, mb = measure(forward_backward(inputs, backend), repeats, warmup=backend != "blocked")
            label = f"{backend} (default)" if backend == default else backend
            print(f"| {label} | {batch} | fwd+bwd | {ms:.1f} | {cpu:.1f} | {base_ms / ms:.1f}x ({base}) | {mb:.0f} | |")
    print()
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
