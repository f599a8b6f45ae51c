"""Decoder deployment: ONNX export, onnxruntime parity, backend swapping, TensorRT cache logic and mfuser-export.

TensorRT itself is not installable here: its tests check everything up to the engine build (cache keys, sidecars,
rebuild decisions, calibration data, CLI handling, the missing-package error); the build/run test skips without it.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys

import numpy as np
import pytest
import torch

from mfuser_model.deploy.onnx_export import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    decoder_input_shapes,
    example_decoder_inputs,
    export_decoder,
    read_onnx_io,
)
from mfuser_model.deploy.tensorrt_engine import (
    CalibrationData,
    Profile,
    default_engine_path,
    engine_cache_key,
    rebuild_decision,
    shape_profiles,
    sidecar_path,
    write_engine,
)
from mfuser_model.errors import ConfigError, MFuserError
from mfuser_model.network.decode_head import HeadOutput, MFuserHead, semantic_scores

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# the tiny presets' head: 96 input channels (48 + 48), text 32, 19 classes, widths of tiny-*.yaml
TINY_HEAD = {
    "in_channels": 96,
    "text_dim": 32,
    "num_classes": 19,
    "hidden_dim": 32,
    "num_heads": 2,
    "num_decoder_layers": 3,
    "num_pixel_decoder_layers": 2,
    "decoder_ffn_dim": 64,
    "pixel_decoder_ffn_dim": 64,
}
GRID = (10, 10)  # token grid: maps of 40, 20, 10, 5


def _tensorrt_installed() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def _torch_outputs(head, tensors):
    with torch.no_grad():
        out = head(list(tensors[:4]), tensors[4])
    cls, mask = out.class_logits[-1], out.mask_logits[-1]
    return cls, mask, semantic_scores(cls, mask)


def _assert_parity(got, ref):
    """The brief's bar: class scores within 1e-4 (fp32) and the same argmax on >= 99.9 % of pixels."""
    for name, a, b in zip(DECODER_OUTPUTS, got, ref, strict=True):
        assert a.shape == b.shape, name
    assert float((got[0] - ref[0]).abs().max()) <= 1e-4
    assert float((got[2] - ref[2]).abs().max()) <= 1e-4
    agree = (got[2].argmax(1) == ref[2].argmax(1)).float().mean()
    assert float(agree) >= 0.999


@pytest.fixture(scope="module")
def tiny_head():
    torch.manual_seed(0)
    return MFuserHead(**TINY_HEAD).eval()


@pytest.fixture(scope="module")
def dynamic_export(tiny_head, tmp_path_factory):
    shapes = decoder_input_shapes(in_channels=96, text_dim=32, num_classes=19, grid=GRID, batch=2)
    path = tmp_path_factory.mktemp("onnx") / "decoder.onnx"
    return export_decoder(tiny_head, path, example_decoder_inputs(shapes), dynamic_batch=True)


# --- export ---------------------------------------------------------------------------------------------------------

def test_export_writes_named_five_input_graph_with_grid_sample_at_opset_17(dynamic_export):
    model = onnx.load(str(dynamic_export.path))
    assert model.opset_import[0].version == 17
    assert "GridSample" in {n.op_type for n in model.graph.node}
    inputs, outputs = read_onnx_io(dynamic_export.path)
    assert tuple(inputs) == DECODER_INPUTS
    assert tuple(outputs) == DECODER_OUTPUTS
    assert inputs["features_s4"] == ("batch", 96, 40, 40)
    assert inputs["features_s32"] == ("batch", 96, 5, 5)
    assert inputs["text"] == ("batch", 19, 32)
    assert outputs["class_logits"] == ("batch", 19, 20)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["mfuser.decoder.inputs"])["features_s8"] == [-1, 96, 20, 20]
    assert meta["mfuser.decoder.num_classes"] == "19"


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_backend_matches_pytorch_head_at_any_batch(tiny_head, dynamic_export, batch):
    from mfuser_model.deploy.decoder_backends import OnnxRuntimeDecoder

    shapes = decoder_input_shapes(in_channels=96, text_dim=32, num_classes=19, grid=GRID, batch=batch)
    inputs = example_decoder_inputs(shapes, seed=batch)
    tensors = [*inputs.features, inputs.text]
    got = OnnxRuntimeDecoder(dynamic_export.path).run(tensors)
    _assert_parity(got, _torch_outputs(tiny_head, tensors))


def test_backends_return_the_final_stage_as_a_head_output(tiny_head, dynamic_export):
    from mfuser_model.deploy.decoder_backends import OnnxRuntimeDecoder, TorchDecoder

    shapes = decoder_input_shapes(in_channels=96, text_dim=32, num_classes=19, grid=GRID)
    inputs = example_decoder_inputs(shapes)
    with torch.no_grad():
        full = tiny_head(inputs.features, inputs.text)
        torch_out = TorchDecoder(tiny_head)(inputs.features, inputs.text)
    ort_out = OnnxRuntimeDecoder(dynamic_export.path)(inputs.features, inputs.text)
    for out in (torch_out, ort_out):
        assert isinstance(out, HeadOutput)
        assert len(out.class_logits) == len(out.mask_logits) == 1
    torch.testing.assert_close(torch_out.mask_logits[0], full.mask_logits[-1])
    scores = OnnxRuntimeDecoder(dynamic_export.path).semantic_scores(inputs.features, inputs.text)
    assert scores.shape == (1, 19, 40, 40)


def test_fixed_size_export_rejects_another_spatial_size_naming_the_input(dynamic_export):
    from mfuser_model.deploy.decoder_backends import OnnxRuntimeDecoder

    shapes = decoder_input_shapes(in_channels=96, text_dim=32, num_classes=19, grid=(12, 12))
    inputs = example_decoder_inputs(shapes)
    with pytest.raises(ValueError, match=r"'features_s4' has shape \(1, 96, 48, 48\).*exported for"):
        OnnxRuntimeDecoder(dynamic_export.path)(inputs.features, inputs.text)


def test_whole_images_are_exported_at_the_size_the_segmenter_pads_them_to():
    from mfuser_model.deploy.onnx_export import whole_image_size

    assert whole_image_size(150, 190, 14) == (168, 196)
    assert whole_image_size(512, 1024, 16) == (512, 1024)


def test_export_refuses_opsets_without_grid_sample(tiny_head, tmp_path):
    shapes = decoder_input_shapes(in_channels=96, text_dim=32, num_classes=19, grid=GRID)
    with pytest.raises(ConfigError, match="opset >= 16"):
        export_decoder(tiny_head, tmp_path / "d.onnx", example_decoder_inputs(shapes), opset=15)
    assert not (tmp_path / "d.onnx").exists()


def test_per_shape_backend_exports_once_per_size_into_the_cache(tmp_path):
    from mfuser_model.deploy.decoder_backends import OnnxRuntimeDecoder, PerShapeDecoder

    torch.manual_seed(1)
    head = MFuserHead(**{**TINY_HEAD, "num_decoder_layers": 1, "num_pixel_decoder_layers": 1}).eval()
    backend = PerShapeDecoder(head, OnnxRuntimeDecoder, tmp_path)
    for grid, batch in (((8, 8), 1), ((8, 8), 2), ((6, 8), 1)):
        shapes = decoder_input_shapes(in_channels=96, text_dim=32, num_classes=19, grid=grid, batch=batch)
        inputs = example_decoder_inputs(shapes, seed=batch)
        tensors = [*inputs.features, inputs.text]
        _assert_parity(backend.run(tensors), _torch_outputs(head, tensors))
    # dynamic batch: batch 1 and 2 share a file; the second grid needs its own
    assert len(list(tmp_path.glob("decoder-*.onnx"))) == 2
    assert "head" not in dict(backend.named_modules())


# --- whole model: the tiny presets, the segmenter hook, the CLI ------------------------------------------------------

@pytest.fixture(scope="module")
def eva02(tmp_path_factory):
    """A random tiny-eva02 saved as a whole-model file, and that file exported by mfuser-export --verify."""
    from mfuser_model.checkpoint import build_model, save_model
    from mfuser_model.deploy.cli import main

    torch.manual_seed(0)
    model = build_model("tiny-eva02").eval()
    folder = tmp_path_factory.mktemp("eva02")
    checkpoint = save_model(model, folder / "tiny.safetensors")
    onnx_path = folder / "tiny.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["--checkpoint", str(checkpoint), "--output", str(onnx_path), "--dynamic-batch", "--verify"])
    return model, onnx_path, code, stdout.getvalue()


def test_cli_exports_a_checkpoint_and_verifies_it_against_pytorch(eva02):
    _, path, code, out = eva02
    assert code == 0
    assert f"exported {path}" in out
    assert "image 128x128" in out
    diffs = [float(x) for x in re.findall(r"(?:class_logits|mask_logits|semantic_scores) ([0-9.e+-]+)", out)]
    assert len(diffs) == 3
    assert max(diffs[0], diffs[2]) <= 1e-4
    assert float(re.search(r"argmax agreement ([0-9.]+)%", out).group(1)) >= 99.9
    inputs, _ = read_onnx_io(path)
    # 128 px / patch 14 -> 9 tokens: the pyramid's maps are what decoder_input_shapes predicts
    expected = decoder_input_shapes(in_channels=96, text_dim=32, num_classes=19, grid=(9, 9))
    assert {k: v[1:] for k, v in inputs.items()} == {k: v[1:] for k, v in expected.items()}
    assert inputs["features_s32"] == ("batch", 96, 4, 4)


@pytest.mark.parametrize("preset", ["tiny-clip", "tiny-siglip"])  # tiny-eva02: the CLI test above
def test_tiny_preset_decoders_match_pytorch_in_onnxruntime(preset, tmp_path):
    from mfuser_model.checkpoint import build_model
    from mfuser_model.deploy.decoder_backends import OnnxRuntimeDecoder
    from mfuser_model.deploy.onnx_export import capture_decoder_inputs, export_model_decoder

    torch.manual_seed(0)
    model = build_model(preset).eval()
    crop = model.config.crop_size
    info = export_model_decoder(model, tmp_path / f"{preset}.onnx", image_size=crop)
    images = torch.randn(1, 3, crop, crop, generator=torch.Generator().manual_seed(3))
    inputs = capture_decoder_inputs(model, images)
    tensors = [*inputs.features, inputs.text]
    _assert_parity(OnnxRuntimeDecoder(info.path).run(tensors), _torch_outputs(model.head, tensors))


def test_segmenter_with_onnxruntime_decoder_matches_pytorch_and_detaches(eva02):
    from mfuser_model.deploy.decoder_backends import DecoderBackend, build_segmenter, detach_decoder_backend
    from mfuser_model.inference import Segmenter

    model, onnx_path, _, _ = eva02
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (150, 190, 3), dtype=np.uint8)  # 4 windows of 128
    head = model.head
    expected = Segmenter(model, mode="slide").segment(image)
    segmenter = build_segmenter(model, decoder_backend="onnxruntime", onnx_path=onnx_path, mode="slide")
    try:
        assert isinstance(model.head, DecoderBackend)
        got = segmenter.segment(image)
    finally:
        detach_decoder_backend(model)
    assert model.head is head
    assert (got.labels == expected.labels).mean() >= 0.999
    np.testing.assert_allclose(got.confidence, expected.confidence, atol=1e-4)


def test_decoder_backend_names_are_checked():
    from mfuser_model.deploy.decoder_backends import build_segmenter, make_decoder_backend

    with pytest.raises(ConfigError, match="decoder_backend must be one of"):
        make_decoder_backend("openvino")
    with pytest.raises(ConfigError, match="needs an ONNX file"):
        make_decoder_backend("onnxruntime")
    with pytest.raises(ConfigError, match="'tensorrt' needs a CUDA device"):
        build_segmenter(torch.nn.Module(), decoder_backend="tensorrt", device="cpu")


# --- TensorRT: cache key, sidecar, rebuild decision (no TensorRT needed) ----------------------------------------------

def _profiles(batch=1):
    return shape_profiles({"features_s4": ("batch", 96, 40, 40), "text": ("batch", 19, 32)}, max_batch=batch)


def _key(**changes):
    fields = {"onnx_sha256": "ab" * 32, "tensorrt_version": "10.13.0", "gpu": "NVIDIA H100 (sm_90)",
              "precision": "fp16", "profiles": _profiles(4), "calibration_sha256": None}
    fields.update(changes)
    return engine_cache_key(**fields)


def test_shape_profiles_make_the_batch_dynamic_and_keep_spatial_sizes_fixed():
    profiles = _profiles(4)
    assert profiles["features_s4"] == Profile((1, 96, 40, 40), (4, 96, 40, 40), (4, 96, 40, 40))
    fixed = shape_profiles({"text": (2, 19, 32)}, max_batch=8)
    assert fixed["text"] == Profile((2, 19, 32), (2, 19, 32), (2, 19, 32))
    with pytest.raises(ConfigError, match="only the batch axis may be dynamic"):
        shape_profiles({"features_s4": ("batch", 96, "h", 40)})
    with pytest.raises(ConfigError, match="opt_batch=5"):
        shape_profiles({"text": ("batch", 19, 32)}, max_batch=4, opt_batch=5)


def test_shape_profiles_read_from_a_real_export(dynamic_export):
    inputs, _ = read_onnx_io(dynamic_export.path)
    profiles = shape_profiles(inputs, max_batch=2)
    assert set(profiles) == set(DECODER_INPUTS)
    assert profiles["features_s16"].max == (2, 96, 10, 10)


def test_cache_key_is_json_ready_and_changes_with_every_field():
    key = _key()
    assert json.loads(json.dumps(key)) == key
    assert key == _key()
    for change in ({"onnx_sha256": "cd" * 32}, {"tensorrt_version": "10.14.1"}, {"gpu": "Orin (sm_87)"},
                   {"precision": "fp32"}, {"profiles": _profiles(2)}):
        assert _key(**change) != key, change
    # calibration data matters for int8 only
    assert _key(calibration_sha256="ff") == key
    assert _key(precision="int8", calibration_sha256="ff") != _key(precision="int8", calibration_sha256="ee")
    with pytest.raises(ConfigError, match="precision must be one of"):
        _key(precision="int4")


def test_engine_and_sidecar_live_next_to_the_onnx_file(tmp_path):
    engine = default_engine_path(tmp_path / "decoder.onnx", "fp16")
    assert engine == tmp_path / "decoder.fp16.engine"
    assert sidecar_path(engine) == tmp_path / "decoder.fp16.engine.json"


def test_rebuild_decision_follows_the_sidecar(tmp_path):
    engine = tmp_path / "decoder.fp16.engine"
    key = _key()
    assert rebuild_decision(engine, key) == (True, f"{engine}: no engine file")
    engine.write_bytes(b"plan")
    decision = rebuild_decision(engine, key)
    assert decision.rebuild
    assert "no sidecar" in decision.reason

    write_engine(engine, b"plan", key, extra={"onnx": "decoder.onnx"})
    assert engine.read_bytes() == b"plan"
    assert json.loads(sidecar_path(engine).read_text())["key"] == key
    assert rebuild_decision(engine, key) == (False, f"{engine}: cached engine matches")
    assert rebuild_decision(engine, key, force=True).rebuild

    newer = rebuild_decision(engine, _key(tensorrt_version="10.14.1", gpu="Orin (sm_87)"))
    assert newer.rebuild
    assert "tensorrt_version: '10.13.0' -> '10.14.1'" in newer.reason
    assert "gpu: 'NVIDIA H100 (sm_90)' -> 'Orin (sm_87)'" in newer.reason
    assert "input_shapes" in rebuild_decision(engine, _key(profiles=_profiles(1))).reason

    sidecar_path(engine).write_text("{not json")
    assert "unreadable sidecar" in rebuild_decision(engine, key).reason


def test_calibration_data_loads_npz_folders_and_checks_them(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        np.savez(tmp_path / f"calib{i}.npz", features_s4=rng.random((3, 96, 40, 40), dtype=np.float32),
                 text=rng.random((3, 19, 32), dtype=np.float32))
    data = CalibrationData.from_npz(tmp_path, ["features_s4", "text"])
    assert data.num_samples == 6
    assert [b["text"].shape for b in data.batches(4)] == [(4, 19, 32)]
    assert CalibrationData.from_npz(tmp_path, ["features_s4", "text"], limit=2).sha256() != data.sha256()
    data.check_shapes(_profiles(4), 4)
    with pytest.raises(ConfigError, match="sample shape"):
        data.check_shapes(shape_profiles({"text": ("batch", 19, 64)}), 1)
    with pytest.raises(ConfigError, match=r"calib0.npz: calibration file lacks input 'features_s8'"):
        CalibrationData.from_npz(tmp_path, ["features_s8"])
    with pytest.raises(ConfigError, match="no .npz calibration files"):
        CalibrationData.from_npz(tmp_path / "none", ["text"])


# --- TensorRT missing: clear errors; CLI argument handling -----------------------------------------------------------

@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError


def test_missing_tensorrt_names_the_package_and_nvidias_index(no_tensorrt, dynamic_export):
    from mfuser_model.deploy.decoder_backends import make_decoder_backend
    from mfuser_model.deploy.tensorrt_engine import ensure_engine, require_tensorrt

    with pytest.raises(MFuserError, match=r"'tensorrt'.*pypi\.nvidia\.com"):
        require_tensorrt()
    with pytest.raises(MFuserError, match="TensorRT backend unavailable"):
        ensure_engine(dynamic_export.path, precision="fp16")
    with pytest.raises(MFuserError, match="TensorRT backend unavailable"):
        make_decoder_backend("tensorrt", onnx_path=dynamic_export.path, device="cuda")
    with pytest.raises(ConfigError, match="int8 needs calibration data"):
        ensure_engine(dynamic_export.path, precision="int8")


def test_cli_fails_fast_without_tensorrt_before_exporting(no_tensorrt, tmp_path, capsys):
    from mfuser_model.deploy.cli import main

    code = main(["--preset", "tiny-eva02", "--output", str(tmp_path / "d.onnx"), "--tensorrt", "--build-only"])
    assert code == 1
    assert "pypi.nvidia.com" in capsys.readouterr().err
    assert not (tmp_path / "d.onnx").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--preset", "tiny-eva02"], "--output is required"),
    (["--preset", "tiny-eva02", "--output", "d.onnx", "--build-only"], "--build-only needs --tensorrt"),
    (["--onnx", "d.onnx"], "nothing to do"),
    (["--onnx", "d.onnx", "--tensorrt", "--precision", "int8"], "int8 needs --calib"),
    (["--preset", "tiny-eva02", "--output", "d.onnx", "--calib", "x"], "only used with --precision int8"),
    (["--preset", "tiny-eva02", "--output", "d.onnx", "--mode", "whole"], "needs --image-size"),
    (["--preset", "tiny-eva02", "--output", "d.onnx", "--opset", "13"], "opset >= 16"),
    (["--preset", "tiny-eva02", "--checkpoint", "m.safetensors", "--output", "d.onnx"], "not allowed with"),
])
def test_cli_rejects_bad_argument_combinations(argv, message, capsys):
    from mfuser_model.deploy.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# --- TensorRT for real (skipped where it is not installed) -----------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA device")
@pytest.mark.skipif(not _tensorrt_installed(), reason="tensorrt (NVIDIA's index) is not installed")
def test_tensorrt_engine_builds_once_caches_and_matches_pytorch(tiny_head, dynamic_export):
    from mfuser_model.deploy.decoder_backends import TensorRTDecoder

    backend = TensorRTDecoder(dynamic_export.path, precision="fp32", max_batch=2, device="cuda")
    assert backend.status.rebuilt
    again = TensorRTDecoder(dynamic_export.path, precision="fp32", max_batch=2, device="cuda", warmup=0)
    assert not again.status.rebuilt
    shapes = decoder_input_shapes(in_channels=96, text_dim=32, num_classes=19, grid=GRID, batch=2)
    inputs = example_decoder_inputs(shapes)
    tensors = [t.cuda() for t in (*inputs.features, inputs.text)]
    got = [t.cpu() for t in backend.run(tensors)]
    ref = _torch_outputs(tiny_head, [t.cpu() for t in tensors])
    assert float((got[2] - ref[2]).abs().max()) <= 1e-3  # TF32 may be on inside TensorRT's fp32
    assert float((got[2].argmax(1) == ref[2].argmax(1)).float().mean()) >= 0.99


def test_onnxruntime_sessions_follow_the_thread_policy(dynamic_export, monkeypatch):
    from mfuser_model import threads
    from mfuser_model.deploy.decoder_backends import OnnxRuntimeDecoder

    monkeypatch.setattr(threads, "_applied", threads.ThreadSettings(3, "option", 4, passive_wait=True))
    options = OnnxRuntimeDecoder(dynamic_export.path).session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    explicit = OnnxRuntimeDecoder(dynamic_export.path, num_threads=2).session.get_session_options()
    assert explicit.intra_op_num_threads == 2
