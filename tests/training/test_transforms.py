"""Train/eval transforms follow mmseg semantics and are deterministic given a numpy Generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mfuser_model.classes import IGNORE_INDEX
from mfuser_model.preprocess import CLIP_MEAN, CLIP_STD, denormalize, normalize
from training.transforms import (
    EvalTransform,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    RandomRescale,
    TrainTransform,
    rescale_size,
)


def _sample(h: int = 64, w: int = 128, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    label = np.zeros((h, w), np.uint8)
    label[:, w // 3 :] = 1
    label[h // 2 :, : w // 4] = 13
    return {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "label": label, "name": "x"}


def test_train_transform_shapes_and_dtypes():
    out = TrainTransform(48)(_sample(), np.random.default_rng(0))
    assert out["image"].shape == (3, 48, 48) and out["image"].dtype == torch.float32
    assert out["label"].shape == (48, 48) and out["label"].dtype == torch.int64
    assert out["name"] == "x"
    out = TrainTransform((32, 40))(_sample(), np.random.default_rng(0))
    assert out["image"].shape == (3, 32, 40)


def test_small_images_are_padded_with_ignore_and_zero():
    t = TrainTransform(96, ratio_range=(0.5, 0.5), photometric=False)
    out = t(_sample(64, 128), np.random.default_rng(1))  # rescaled to 32x64, so both sides need padding
    assert out["image"].shape == (3, 96, 96)
    assert (out["label"][32:] == IGNORE_INDEX).all() and (out["label"][:, 64:] == IGNORE_INDEX).all()
    assert (out["label"][:32, :64] != IGNORE_INDEX).all()
    assert (out["image"][:, 32:] == 0).all() and (out["image"][:, :, 64:] == 0).all()


def test_same_generator_state_same_output_different_seed_different_output():
    t = TrainTransform(40)
    a = t(_sample(), np.random.default_rng(7))
    b = t(_sample(), np.random.default_rng(7))
    c = t(_sample(), np.random.default_rng(8))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])


def test_random_crop_honours_cat_max_ratio():
    # Columns 0-59 are class 0, 60-99 class 1: about half of the 50x50 windows are under the 0.75 cap.
    label = np.zeros((50, 100), np.uint8)
    label[:, 60:] = 1
    image = np.zeros((50, 100, 3), np.uint8)

    def max_share(out: dict) -> float:
        counts = np.bincount(out["label"].reshape(-1), minlength=2)
        return counts.max() / counts.sum()

    capped = [max_share(RandomCrop((50, 50), 0.75)({"image": image, "label": label}, np.random.default_rng(s)))
              for s in range(30)]
    free = [max_share(RandomCrop((50, 50), 1.0)({"image": image, "label": label}, np.random.default_rng(s)))
            for s in range(30)]
    assert max(capped) < 0.75
    assert max(free) >= 0.75  # without the cap some crops are dominated by one class


def test_rescale_keeps_ratio_and_range():
    for seed in range(5):
        out = RandomRescale((0.5, 2.0))(_sample(64, 128), np.random.default_rng(seed))
        h, w = out["label"].shape
        assert 32 <= h <= 128 and abs(w - 2 * h) <= 1
        assert out["image"].shape[:2] == (h, w)
        assert set(np.unique(out["label"])) <= {0, 1, 13}  # nearest-neighbour labels
    out = RandomRescale((1.0, 1.0), base_scale=(2048, 1024))(_sample(64, 128), np.random.default_rng(0))
    assert out["label"].shape == (1024, 2048)


def test_rescale_size_matches_mmcv_keep_ratio():
    assert rescale_size(1914, 1052, (2048, 1024)) == (1863, 1024)
    assert rescale_size(2048, 1024, (2048, 1024)) == (2048, 1024)
    assert rescale_size(1280, 720, (1280, 720)) == (1280, 720)
    assert rescale_size(640, 360, (1280, 720)) == (1280, 720)


def test_flip_moves_image_and_label_together():
    s = _sample()
    flipped = None
    for seed in range(10):
        out = RandomFlip(0.5)(dict(s), np.random.default_rng(seed))
        if out["label"][0, 0] != s["label"][0, 0]:
            flipped = out
            break
    assert flipped is not None
    np.testing.assert_array_equal(flipped["image"], s["image"][:, ::-1])
    np.testing.assert_array_equal(flipped["label"], s["label"][:, ::-1])


def test_photometric_distortion_changes_colours_only():
    s = _sample()
    outs = [PhotoMetricDistortion()(dict(s), np.random.default_rng(seed)) for seed in range(6)]
    assert all(o["image"].dtype == np.uint8 and o["image"].shape == s["image"].shape for o in outs)
    assert all(o["label"] is s["label"] for o in outs)
    assert sum(not np.array_equal(o["image"], s["image"]) for o in outs) >= 4


def test_eval_transform_fits_the_box_and_keeps_the_label():
    s = _sample(64, 128)
    out = EvalTransform((2048, 1024))(s)
    assert out["image"].shape == (3, 1024, 2048)
    assert out["label"].shape == (64, 128) and out["label"].dtype == torch.int64
    assert out["ori_size"] == (64, 128)
    out = EvalTransform((1280, 720))(_sample(72, 128))
    assert out["image"].shape == (3, 720, 1280)


def test_normalize_uses_clip_statistics():
    img = np.full((2, 3, 3), 255, np.uint8)
    img[..., 1] = 0
    x = normalize(img)
    assert x.shape == (1, 3, 2, 3) and x.dtype == torch.float32
    assert x[0, 0, 0, 0].item() == pytest.approx((1 - CLIP_MEAN[0]) / CLIP_STD[0], rel=1e-6)
    assert x[0, 1, 0, 0].item() == pytest.approx((0 - CLIP_MEAN[1]) / CLIP_STD[1], rel=1e-6)
    batch = normalize(np.stack([img, img]))
    assert batch.shape == (2, 3, 2, 3)
    np.testing.assert_array_equal(denormalize(batch)[1], img)
    with pytest.raises(ValueError, match="uint8"):
        normalize(img.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        normalize(np.zeros((4, 4), np.uint8))
