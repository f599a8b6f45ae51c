"""Every selective-scan backend against the sequential reference, forward and backward."""

from __future__ import annotations

import logging
import math

import pytest
import torch

import mfuser_model.ops._native as native
import mfuser_model.ops.selective_scan as ss

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}
CPU_BACKENDS = ("blocked", "native")


def make_inputs(
    regime: str,
    dtype: torch.dtype = torch.float64,
    batch: int = 2,
    dim: int = 64,
    length: int = 300,
    n: int = 16,
    groups: int | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """MVFuser-like inputs. Step sizes dt = softplus(delta + delta_bias) are centred on a per-channel dt drawn
    log-uniformly from [1e-3, 0.1] with A = -(1..n) ("initial", Mamba's initialisation) or from [1e-2, 1] with
    A = -4·(1..n) ("strong", trained-like: per-step log-decays down to about -64·4)."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi, a_scale = {"initial": (1e-3, 0.1, 1.0), "strong": (1e-2, 1.0, 4.0)}[regime]
    dt = torch.exp(torch.rand(dim, generator=gen, dtype=torch.float64) * (math.log(hi) - math.log(lo)) + math.log(lo))
    bc_shape = (batch, n, length) if groups is None else (batch, groups, n, length)
    inputs = {
        "u": torch.randn(batch, dim, length, generator=gen, dtype=torch.float64),
        "delta": 0.5 * torch.randn(batch, dim, length, generator=gen, dtype=torch.float64),
        "A": -a_scale * torch.arange(1, n + 1, dtype=torch.float64).repeat(dim, 1),
        "B": torch.randn(bc_shape, generator=gen, dtype=torch.float64),
        "C": torch.randn(bc_shape, generator=gen, dtype=torch.float64),
        "D": torch.randn(dim, generator=gen, dtype=torch.float64),
        "z": torch.randn(batch, dim, length, generator=gen, dtype=torch.float64),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),  # inverse softplus
    }
    return {k: v.to(dtype) for k, v in inputs.items()}


def run(fn, inputs: dict[str, torch.Tensor], seed: int = 1, **kwargs) -> dict[str, torch.Tensor]:
    """Forward (with last state) and the gradients of every input for a fixed random output gradient."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    out, last = fn(**leaves, delta_softplus=True, return_last_state=True, **kwargs)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    grads = torch.autograd.grad(out, list(leaves.values()), dout)
    return {"out": out.detach(), "last_state": last, **{f"d{k}": g for k, g in zip(leaves, grads, strict=True)}}


def assert_close(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], rtol: float) -> None:
    """Each tensor's max abs error, relative to the reference tensor's max abs value, is within rtol."""
    assert got.keys() == ref.keys()
    for name, expected in ref.items():
        assert got[name].shape == expected.shape, name
        scale = expected.abs().max().item()
        err = (got[name].double() - expected.double()).abs().max().item()
        assert err <= rtol * scale, f"{name}: max error {err:.3e} vs max |ref| {scale:.3e} (rtol {rtol:g})"


_REF_CACHE: dict[tuple, dict[str, torch.Tensor]] = {}


def reference(regime: str, length: int) -> dict[str, torch.Tensor]:
    """The float64 sequential reference, computed once per workload."""
    key = (regime, length)
    if key not in _REF_CACHE:
        _REF_CACHE[key] = run(ss.selective_scan_ref, make_inputs(regime, length=length))
    return _REF_CACHE[key]


def require(backend: str) -> None:
    if backend == "native" and ss._native_kernel() is None:
        pytest.skip("the native kernel did not build or verify here (no C++ compiler?)")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("regime", ["initial", "strong"])
@pytest.mark.parametrize("length", [300, 64, 7])  # not a multiple of the chunk (32), a multiple, shorter than one
def test_backend_matches_reference_forward_and_backward(backend, dtype, regime, length):
    require(backend)
    got = run(ss.selective_scan, make_inputs(regime, dtype, length=length), backend=backend)
    assert got["out"].dtype == dtype
    assert_close(got, reference(regime, length), RTOL[dtype])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(("groups", "n"), [(4, 16), (2, 5)])
def test_grouped_b_and_c_and_any_state_size(backend, groups, n):
    require(backend)
    inputs = make_inputs("strong", batch=2, dim=8, length=45, n=n, groups=groups)
    assert_close(run(ss.selective_scan, inputs, backend=backend), run(ss.selective_scan_ref, inputs), 1e-9)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_b_and_c_may_have_different_group_counts(backend):
    require(backend)
    inputs = make_inputs("strong", batch=2, dim=12, length=20, n=4, groups=4)
    inputs["C"] = make_inputs("strong", batch=2, dim=12, length=20, n=4, groups=6, seed=1)["C"]
    inputs["B"] = inputs["B"][:, :2]  # 2 groups of 6 channels for B, 6 groups of 2 for C
    assert_close(run(ss.selective_scan, inputs, backend=backend), run(ss.selective_scan_ref, inputs), 1e-9)


def test_blocked_scan_with_many_channel_blocks_matches_reference():
    # One channel per block and short chunks, so block, chunk and group boundaries all fall in different places.
    inputs = make_inputs("strong", batch=2, dim=6, length=53, n=4, groups=3)
    kernel = ss.BlockedKernel(chunk=8, block_bytes=1)

    def blocked(**kw):
        return ss._ScanFn.apply(kernel, *(kw[k] for k in GRAD_NAMES), kw["delta_softplus"], kw["return_last_state"])

    assert_close(run(blocked, inputs), run(ss.selective_scan_ref, inputs), 1e-9)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_optional_inputs_can_be_left_out(backend):
    require(backend)
    full = make_inputs("initial", batch=1, dim=4, length=40)
    inputs = {k: full[k].requires_grad_() for k in ("u", "delta", "A", "B", "C")}
    inputs["delta"] = inputs["delta"].detach().exp().requires_grad_()  # positive step sizes without softplus
    out = ss.selective_scan(**inputs, backend=backend)
    ref = ss.selective_scan_ref(**inputs)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(out.square().sum(), list(inputs.values()))
    ref_grads = torch.autograd.grad(ref.square().sum(), list(inputs.values()))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_on_a_tiny_problem(backend):
    require(backend)
    inputs = make_inputs("strong", batch=1, dim=2, length=5, n=3)
    leaves = [inputs[k].requires_grad_() for k in GRAD_NAMES]

    def fn(*args):
        return ss.selective_scan(*args[:6], z=args[6], delta_bias=args[7], delta_softplus=True, backend=backend)

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_low_precision_inputs_keep_their_dtype(backend):
    require(backend)
    inputs = make_inputs("initial", batch=1, dim=4, length=33)
    low = {k: v.to(torch.bfloat16) if k in ("u", "delta", "z") else v.float() for k, v in inputs.items()}
    out = ss.selective_scan(**low, delta_softplus=True, backend=backend)
    ref = ss.selective_scan_ref(**low, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


def test_reference_single_step_is_the_closed_form():
    inputs = make_inputs("initial", batch=1, dim=3, length=1, n=4)
    out = ss.selective_scan_ref(**inputs, delta_softplus=True)
    dt = torch.nn.functional.softplus(inputs["delta"] + inputs["delta_bias"][:, None])  # (1, 3, 1)
    h = dt[..., None] * inputs["u"][..., None] * inputs["B"][:, None, :, 0, None].transpose(-1, -2)  # (1, 3, 1, 4)
    y = (h * inputs["C"][:, None, :, 0, None].transpose(-1, -2)).sum(-1) + inputs["D"][:, None] * inputs["u"]
    torch.testing.assert_close(out, y * torch.nn.functional.silu(inputs["z"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["cuda", "blocked"])
def test_cuda_backends_match_reference(backend):
    if backend == "cuda" and ss._mamba_selective_scan_fn is None:
        pytest.skip("mamba-ssm (the [cuda] extra) is not installed")
    inputs = make_inputs("initial", torch.float32, length=300)
    got = run(ss.selective_scan, {k: v.cuda() for k, v in inputs.items()}, backend=backend)
    assert_close({k: v.cpu() for k, v in got.items()}, reference("initial", 300), 1e-3)


@pytest.mark.skipif(ss._mamba_selective_scan_fn is not None, reason="mamba-ssm is installed here")
def test_cuda_backend_without_mamba_ssm_says_what_to_install():
    inputs = make_inputs("initial", batch=1, dim=2, length=4, n=2)
    with pytest.raises(RuntimeError, match="mamba-ssm"):
        ss.selective_scan(**inputs, backend="cuda")


def test_native_self_check_rejects_a_wrong_kernel(monkeypatch, caplog):
    require("native")
    real_forward = native.NativeKernel.forward

    def off_by_a_little(self, *args, **kwargs):
        out, last = real_forward(self, *args, **kwargs)
        return out * (1 + 1e-3), last

    monkeypatch.setattr(native.NativeKernel, "forward", off_by_a_little)
    monkeypatch.setattr(ss, "_native_state", {})  # forget the verified kernel; restored after the test
    u = torch.zeros(1, 2, 3)
    with caplog.at_level(logging.WARNING, logger=ss.__name__):
        assert ss.resolve_backend(u) == "blocked"
        assert ss.resolve_backend(u) == "blocked"
    assert [r.message for r in caplog.records if "self-check" in r.message] != []
    assert len(caplog.records) == 1
    assert "native" not in ss.available_backends()
    with pytest.raises(RuntimeError, match="unavailable"):
        ss.selective_scan(*make_inputs("initial", batch=1, dim=2, length=4, n=2).values(), backend="native")


def test_native_results_are_bit_identical_for_any_thread_count():
    # Exact training resume needs gradients that do not depend on the thread count or on timing.
    require("native")
    inputs = make_inputs("strong", torch.float32, batch=2, dim=64, length=600)  # enough work for 3 threads
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            results.append(run(ss.selective_scan, inputs, backend="native"))
    finally:
        torch.set_num_threads(threads)
    for name, value in results[0].items():
        assert torch.equal(value, results[1][name]), name


def test_first_use_under_inference_mode_still_verifies_the_native_kernel(monkeypatch):
    require("native")
    monkeypatch.setattr(ss, "_native_state", {})
    inputs = make_inputs("initial", batch=1, dim=4, length=20)
    with torch.inference_mode():
        out = ss.selective_scan(**inputs, delta_softplus=True)
    assert ss.resolve_backend(inputs["u"]) == "native"
    torch.testing.assert_close(out, ss.selective_scan_ref(**inputs, delta_softplus=True), rtol=1e-9, atol=1e-12)


def test_portable_build_without_native_instructions_also_verifies(monkeypatch):
    # The second flag set (no -march=native: SSE2 / 16-byte vectors on x86) is what machines fall back to.
    require("native")
    monkeypatch.setattr(native, "_FLAG_SETS", native._FLAG_SETS[1:])
    monkeypatch.setattr(native, "_state", {})
    lib = native.load()
    assert lib is not None
    assert ss._verify_kernel(native.NativeKernel(lib)) is None


def test_missing_compiler_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(native, "_compiler", lambda: None)
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(ss, "_native_state", {})
    with caplog.at_level(logging.WARNING):
        assert native.load() is None
        assert ss.resolve_backend(torch.zeros(1, 1, 1)) == "blocked"
    assert len(caplog.records) == 1
    assert "compiler" in caplog.records[0].message


def test_automatic_choice_avoids_native_beyond_its_state_limit():
    inputs = make_inputs("initial", batch=1, dim=2, length=3, n=native.MAX_STATE + 1)
    out = ss.selective_scan(**inputs, delta_softplus=True)  # blocked, not a native size error
    torch.testing.assert_close(out, ss.selective_scan_ref(**inputs, delta_softplus=True))


def test_default_backend_is_native_on_cpu_and_can_be_set(monkeypatch):
    u = torch.zeros(1, 2, 3)
    monkeypatch.setattr(ss, "_default_backend", None)
    assert ss.resolve_backend(u) == ("native" if ss._native_kernel() is not None else "blocked")
    ss.set_default_backend("ref")
    assert ss.get_default_backend() == "ref"
    assert ss.resolve_backend(u) == "ref"
    assert ss.resolve_backend(u, "blocked") == "blocked"
    ss.set_default_backend(None)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        ss.set_default_backend("fast")
    with pytest.raises(ValueError, match="unknown backend"):
        ss.selective_scan(*make_inputs("initial", batch=1, dim=2, length=4, n=2).values(), backend="fast")


@pytest.mark.parametrize(
    ("name", "bad", "match"),
    [
        ("delta", torch.zeros(1, 2, 5), r"delta has shape \(1, 2, 5\)"),
        ("A", torch.zeros(3, 2), r"A has shape \(3, 2\), expected \(2, d_state\)"),
        ("B", torch.zeros(1, 3, 4), r"B has shape \(1, 3, 4\)"),
        ("C", torch.zeros(1, 3, 2, 4), r"C has shape \(1, 3, 2, 4\)"),  # 3 groups do not divide 2 channels
        ("D", torch.zeros(3), r"D has shape \(3,\)"),
        ("u", torch.zeros(1, 2, 0), r"u has shape \(1, 2, 0\), expected \(batch, d_inner, L\) with L >= 1"),
    ],
)
def test_bad_shapes_are_named(name, bad, match):
    inputs = make_inputs("initial", batch=1, dim=2, length=4, n=2)
    inputs[name] = bad
    with pytest.raises(ValueError, match=match):
        ss.selective_scan(**inputs)
