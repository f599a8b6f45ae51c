"""Synthetic scenes: all 19 classes, seeded, same structure in every style, clearly shifted image statistics."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mfuser_model.classes import IGNORE_INDEX
from training.datasets import CityscapesDataset, GTAVDataset
from training.make_synthetic import main
from training.synthetic import STYLES, render_scene


def _scene(style: str, i: int = 0, h: int = 96, w: int = 192, seed: int = 1):
    return render_scene(np.random.default_rng([seed, i]), h, w, style)


def test_all_19_classes_appear_across_a_few_scenes():
    seen: set[int] = set()
    for i in range(6):
        _, label = render_scene(np.random.default_rng([0, i]), 64, 128, "game")
        seen |= set(np.unique(label).tolist())
    assert set(range(19)) <= seen
    assert seen <= set(range(19))  # the game style draws no ego hood, so no ignore pixels


def test_scene_is_a_function_of_the_generator_state():
    a = _scene("rain")
    b = _scene("rain")
    c = _scene("rain", i=1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_styles_share_the_class_layout():
    labels = {style: _scene(style)[1] for style in STYLES}
    game = labels["game"]
    for style, label in labels.items():
        hood = label == IGNORE_INDEX
        assert (hood.any()) == (style != "game"), style
        np.testing.assert_array_equal(label[~hood], game[~hood])
        assert hood[: game.shape[0] * 3 // 4].sum() == 0  # the hood stays at the bottom


def _stats(style: str) -> dict[str, float]:
    scenes = [_scene(style, i) for i in range(3)]
    images = np.stack([im for im, _ in scenes])
    hsv = np.stack([cv2.cvtColor(im, cv2.COLOR_RGB2HSV) for im in images])
    gray = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY).astype(np.float32) for im in images]
    return {
        "mean": float(images.mean()),
        "std": float(images.astype(np.float64).std()),
        "sat": float(hsv[..., 1].mean()),
        "detail": float(np.mean([np.abs(cv2.Laplacian(g, cv2.CV_32F)).mean() for g in gray])),
    }


def _class_colour_shift(style: str, i: int) -> float:
    """Mean absolute difference of per-class mean colours against the day style on the same layout."""
    (a, label), (b, _) = _scene(style, i), _scene("day", i)
    classes = [c for c in range(19) if (label == c).any()]
    return float(np.mean([np.abs(a[label == c].mean(0) - b[label == c].mean(0)).mean() for c in classes]))


def test_styles_are_a_real_domain_shift():
    s = {style: _stats(style) for style in STYLES}
    assert s["night"]["mean"] < 0.5 * s["day"]["mean"]
    assert s["fog"]["mean"] > s["day"]["mean"] and s["fog"]["sat"] < 0.7 * s["day"]["sat"]
    assert s["fog"]["detail"] < 0.75 * s["day"]["detail"]
    assert s["rain"]["mean"] < 0.85 * s["day"]["mean"] and s["rain"]["std"] < s["day"]["std"]
    assert s["game"]["sat"] > 1.5 * s["day"]["sat"]
    assert s["texture"]["detail"] > 1.4 * s["day"]["detail"]
    for style in ("game", "night", "fog", "rain", "texture"):
        assert min(_class_colour_shift(style, i) for i in range(2)) > 15, style


def test_any_resolution_and_bad_arguments():
    rgb, label = render_scene(np.random.default_rng(0), 61, 97, "night")
    assert rgb.shape == (61, 97, 3) and rgb.dtype == np.uint8
    assert label.shape == (61, 97) and label.dtype == np.uint8
    with pytest.raises(ValueError, match="sepia"):
        render_scene(np.random.default_rng(0), 64, 64, "sepia")
    with pytest.raises(ValueError, match="too small"):
        render_scene(np.random.default_rng(0), 4, 64, "game")


def test_cli_writes_layouts_the_dataset_classes_read(tmp_path, capsys):
    assert main(["gtav", str(tmp_path / "gta"), "--n", "2", "--size", "64x32", "--seed", "3"]) == 0
    assert main(["cityscapes", str(tmp_path / "cs"), "--n", "2", "--size", "64x32", "--style", "night"]) == 0
    assert "wrote 2 cityscapes scenes" in capsys.readouterr().out
    gta = GTAVDataset(tmp_path / "gta")
    np.testing.assert_array_equal(gta[1]["label"], render_scene(np.random.default_rng([3, 1]), 32, 64, "game")[1])
    cs = CityscapesDataset(tmp_path / "cs", "val")
    assert len(cs) == 2 and cs.names[0] == "night_000000_000000"
    assert main(["preview", str(tmp_path / "p.png"), "--n", "2", "--size", "64x32", "--styles", "game,fog"]) == 0
    assert cv2.imread(str(tmp_path / "p.png")).shape == (64, 3 * 64, 3)
    assert main(["preview", str(tmp_path / "q.png"), "--styles", "sepia"]) == 2
    with pytest.raises(SystemExit):
        main(["gtav", str(tmp_path / "x"), "--size", "64by32"])
