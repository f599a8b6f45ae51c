"""Model loading for the node: errors name the parameter; decoder_backend reaches the model-side factory."""

from __future__ import annotations

import numpy as np
import pytest

from mfuser_model.errors import ConfigError
from mfuser_ros.node.config import BUNDLED_MODEL, NodeConfig
from mfuser_ros.node.model_loader import load_model, release_model, startup_summary

torch = pytest.importorskip("torch")


def test_unavailable_cuda_device_is_a_config_error_naming_device():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="parameter 'device'"):
        load_model(NodeConfig(device="cuda:0"))


def test_unknown_preset_is_a_config_error():
    with pytest.raises(ConfigError, match="no-such-preset"):
        load_model(NodeConfig(preset="no-such-preset"))


def test_tensorrt_backend_on_cpu_is_a_config_error():
    with pytest.raises(ConfigError, match="tensorrt"):
        load_model(NodeConfig(decoder_backend="tensorrt"))


def test_class_names_and_palette_come_from_the_model(tiny_model):
    assert tiny_model.class_names[0] == "road"
    assert len(tiny_model.palette) == len(tiny_model.class_names) == 19
    assert tiny_model.random_weights


@pytest.mark.slow
def test_onnxruntime_decoder_backend_gives_the_torch_labels(tiny_model, tmp_path, scene):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    torch_model = load_model(NodeConfig(preset="tiny-eva02"))
    torch.manual_seed(0)
    ort_model = load_model(NodeConfig(preset="tiny-eva02", decoder_backend="onnxruntime",
                                      decoder_cache_dir=str(tmp_path)))
    rgb = scene(56, 70)
    expected = torch_model.pipeline.segmenter.segment(rgb)
    got = ort_model.pipeline.segmenter.segment(rgb)
    np.testing.assert_array_equal(got.labels, expected.labels)
    np.testing.assert_allclose(got.confidence, expected.confidence, atol=1e-5)
    assert any(tmp_path.iterdir()), "the decoder export was cached in decoder_cache_dir"
    release_model(ort_model)
    assert ort_model.pipeline.segmenter is None


def test_start_up_log_names_topics_model_file_preset_device_precision_backend_and_input_size():
    text = "\n".join(startup_summary(NodeConfig(image_topics=("front/image_raw",), checkpoint=BUNDLED_MODEL,
                                                 precision="bf16", inference_mode="slide", network_image_width=1280,
                                                 network_image_height=720)))
    for part in ("in front/image_raw", "out front/mfuser/", "models/tiny-eva02-synthetic.safetensors",
                 "preset tiny-eva02", "device cpu", "precision bf16", "decoder backend torch", "1280x720",
                 "slide windows 512 stride 341"):
        assert part in text, (part, text)
    assert "RANDOM WEIGHTS" in startup_summary(NodeConfig(allow_random_weights=True))[1]
