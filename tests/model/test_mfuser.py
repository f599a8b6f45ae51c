"""The MFuser network end to end at tiny size: shapes, freezing, inference modes, text cache, configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mfuser_model.checkpoint import build_model, load_model, save_model
from mfuser_model.config import load_model_config
from mfuser_model.errors import CheckpointError, ConfigError
from mfuser_model.inference import Segmenter
from mfuser_model.network.context_decoder import ContextDecoder, MTEnhancer
from mfuser_model.network.mvfuser import MVFuser

VARIANTS = ["tiny-eva02", "tiny-clip", "tiny-siglip"]


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module", params=VARIANTS)
def tiny_model(request):
    torch.manual_seed(0)
    return build_model(request.param)


def test_forward_shapes_for_every_variant(tiny_model):
    cfg = tiny_model.config
    k = cfg.num_classes
    images = torch.randn(2, 3, 128, 96)
    out = tiny_model(images)
    grid = (128 // cfg.patch_size, 96 // cfg.patch_size)
    assert len(out.class_logits) == cfg.head_decoder_layers + 1
    assert len(out.mask_logits) == cfg.head_decoder_layers + 1
    for logits, masks in zip(out.class_logits, out.mask_logits, strict=True):
        assert logits.shape == (2, k, k + 1)
        assert masks.shape == (2, k, grid[0] * 4, grid[1] * 4)
    assert out.score_map.shape == (2, k, *grid)
    assert torch.isfinite(out.score_map).all()
    tiny_model.eval()
    assert tiny_model.predict(images).shape == (2, k, 128, 96)
    tiny_model.train()


@pytest.mark.parametrize("preset", VARIANTS)
def test_frozen_parts_get_no_gradient_and_trainable_parts_do(preset):
    torch.manual_seed(0)
    model = build_model(preset, overrides={"freeze_encoders": True})
    out = model(torch.randn(1, 3, 64, 64))
    loss = sum(o.float().square().mean() for o in [*out.class_logits, *out.mask_logits, out.score_map])
    loss.backward()
    frozen = {id(p) for m in model.frozen_modules() for p in m.parameters()}
    assert frozen, "the encoders must have parameters"
    for name, p in model.named_parameters():
        if id(p) in frozen:
            assert not p.requires_grad, name
            assert p.grad is None, name
    trainable = [(n, p) for n, p in model.named_parameters() if id(p) not in frozen]
    without_grad = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert without_grad == []
    assert any(n.startswith("backbone.fusers.") for n, _ in trainable)


def test_whole_and_slide_inference_agree_on_one_window():
    torch.manual_seed(0)
    model = build_model("tiny-clip")
    image = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    whole = Segmenter(model, mode="whole")
    slide = Segmenter(model, mode="slide", crop_size=128, stride=85)
    from mfuser_model.preprocess import normalize

    x = normalize(image)
    torch.testing.assert_close(whole.scores(x), slide.scores(x), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(whole.segment(image).labels, slide.segment(image).labels)


def test_slide_inference_covers_large_images_and_averages_overlaps():
    torch.manual_seed(0)
    model = build_model("tiny-eva02")
    seg = Segmenter(model, mode="slide", crop_size=112, stride=75)
    images = [np.random.default_rng(i).integers(0, 256, (150, 260, 3), dtype=np.uint8) for i in range(2)]
    results = seg.segment_batch(images)
    for r in results:
        assert r.labels.shape == (150, 260)
        assert r.labels.dtype == np.uint8
        assert r.labels.max() < model.config.num_classes
        assert r.confidence.dtype == np.float32
        assert r.confidence.min() >= 0.0
        assert r.confidence.max() <= 1.0


def test_segment_batch_mixes_sizes_and_honours_output_size():
    torch.manual_seed(0)
    seg = Segmenter(build_model("tiny-siglip"))
    a = np.zeros((64, 96, 3), np.uint8)
    b = np.full((80, 64, 3), 200, np.uint8)
    ra, rb = seg.segment_batch([a, b], [(32, 48), None])
    assert ra.labels.shape == (32, 48)
    assert rb.labels.shape == (80, 64)
    # Batching does not change a result.
    np.testing.assert_array_equal(seg.segment(b).labels, rb.labels)


def test_text_encoder_is_cached_in_eval_and_recomputed_when_weights_change():
    torch.manual_seed(0)
    model = build_model("tiny-eva02").eval()
    enc = model.text_encoder
    with torch.no_grad():
        first = enc()
        assert enc() is first  # cached: the text tower did not run again
        enc.contexts.add_(0.5)  # an optimizer step changes the weights in place
        second = enc()
    assert second is not first
    assert not torch.allclose(first, second)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["text_encoder.contexts"] -= 0.5
    model.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(enc(), first)
    model.train()
    assert enc() is not enc()  # training recomputes every time (gradients flow to the contexts)


def test_mvfuser_and_mtenhancer_parameter_counts_match_the_paper():
    # /shared reference section 6: counts derived from the reference code's dimensions.
    assert _n_params(MVFuser(1024)) == 1_667_585
    assert _n_params(MVFuser(256)) == 109_697
    assert _n_params(MTEnhancer(256, num_heads=4)) == 899_201
    assert _n_params(ContextDecoder(768)) == 1_494_401
    assert _n_params(ContextDecoder(1024)) == 1_692_289


def test_mvfuser_starts_as_a_small_perturbation_and_keeps_shape():
    torch.manual_seed(0)
    fuser = MVFuser(64).eval()
    tokens = torch.randn(2, 50, 64)
    out = fuser(tokens)
    assert out.shape == tokens.shape
    assert out.abs().max() < 0.05  # output scale starts at 1e-3
    a = -torch.exp(fuser.A_log)
    torch.testing.assert_close(a[0], -torch.arange(1, 17, dtype=torch.float32))
    dt = torch.nn.functional.softplus(fuser.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-9 and dt.max() <= 0.1 + 1e-6


def test_scan_is_causal_so_vfm_offsets_ignore_later_vlm_tokens():
    # Information flows VFM -> VLM inside a fuser: the first tokens' offsets depend only on earlier tokens
    # (plus one neighbour through the k=3 conv).
    torch.manual_seed(0)
    fuser = MVFuser(32).eval()
    x = torch.randn(1, 40, 32)
    y = x.clone()
    y[:, 30:] += torch.randn(1, 10, 32)
    torch.testing.assert_close(fuser(x)[:, :29], fuser(y)[:, :29])


def test_whole_model_file_round_trips_exactly(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny-eva02").eval()
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path).eval()
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(model.predict(x), loaded.predict(x), rtol=0, atol=0)
    assert loaded.config == model.config
    with pytest.raises(ConfigError, match="tiny-clip"):
        build_model("tiny-clip", checkpoint=path)


def test_corrupt_model_files_name_the_file(tmp_path):
    torch.manual_seed(0)
    path = save_model(build_model("tiny-clip"), tmp_path / "m.safetensors")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_model(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_model(garbage)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.safetensors")


def test_bad_configs_raise_errors_that_name_the_problem(tmp_path):
    base = (load_model_config("tiny-eva02"))
    assert base.num_classes == 19
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: x\nvlm: eva02\npatch_size: 14\ndeph: 4\n")
    with pytest.raises(ConfigError, match=r"typo.yaml.*unknown key 'deph'"):
        load_model_config(typo)
    wrong_type = tmp_path / "wrong_type.yaml"
    wrong_type.write_text("name: x\nvlm: eva02\npatch_size: 14\ndepth: four\n")
    with pytest.raises(ConfigError, match=r"wrong_type.yaml: depth: expected an integer"):
        load_model_config(wrong_type)
    classes = tmp_path / "classes.yaml"
    classes.write_text("name: x\nvlm: clip\nclass_names: [road, car]\n")
    with pytest.raises(ConfigError, match="palette has 19 colours for 2 class names"):
        load_model_config(classes)
    with pytest.raises(ConfigError, match="EVA02 pairing uses patch size 14"):
        load_model_config("tiny-eva02", {"patch_size": 16})
    with pytest.raises(ConfigError, match="valid presets: .*tiny-eva02"):
        load_model_config("tiny-eva03")
    with pytest.raises(ConfigError, match="not found"):
        load_model_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown key 'weights.vfmm'"):
        load_model_config("tiny-clip", {"weights.vfmm": "/x"})
