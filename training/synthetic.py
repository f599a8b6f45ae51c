"""Synthetic datasets in the real folder layouts, drawn by :mod:`mfuser_model.synthetic.scenes`.

Writers put scenes in the layouts users download, so they load through exactly the dataset classes used for real
data: :func:`write_gtav`, :func:`write_cityscapes`, :func:`write_bdd100k`, :func:`write_mapillary`,
:func:`write_synthia`. The scene renderer and its styles are re-exported here for convenience.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from mfuser_model.classes import CITYSCAPES_PALETTE, IGNORE_INDEX
from mfuser_model.synthetic.canvas import TERRAIN, TRAIN, TRUCK
from mfuser_model.synthetic.scenes import STYLES, render_scene
from training.label_maps import (
    MAPILLARY_NARROW,
    MAPILLARY_V12_NAMES,
    SYNTHIA_TO_TRAIN,
    TRAIN_TO_CITYSCAPES_LABEL,
    build_lut,
)

__all__ = [
    "STYLES",
    "render_scene",
    "write_bdd100k",
    "write_cityscapes",
    "write_gtav",
    "write_mapillary",
    "write_synthia",
]


def _parse_size(size: tuple[int, int]) -> tuple[int, int]:
    w, h = (int(v) for v in size)
    return w, h


def _cityscapes_label_palette() -> list[int]:
    """Palette PNG colours indexed by Cityscapes labelId (how GTAV ships its label files)."""
    pal = np.zeros((256, 3), np.uint8)
    for train_id, label_id in TRAIN_TO_CITYSCAPES_LABEL.items():
        if train_id != IGNORE_INDEX:
            pal[label_id] = CITYSCAPES_PALETTE[train_id]
    return pal.reshape(-1).tolist()


_TRAIN_TO_LABEL_LUT = build_lut(TRAIN_TO_CITYSCAPES_LABEL, default=0)


def _save_rgb(path: Path, rgb: np.ndarray, quality: int = 92) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), bgr, params):
        msg = f"{path}: cannot write image"
        raise OSError(msg)


def write_gtav(root: str | Path, n: int, size: tuple[int, int] = (512, 256), seed: int = 0,
               style: str = "game", train_ids: bool = False) -> list[Path]:
    """GTAV layout: ``images/00000.png`` and ``labels/00000.png`` (palette PNG of Cityscapes labelIds, as GTAV);
    with ``train_ids=True`` the converted ``labels/00000_labelTrainIds.png`` instead. Returns the image paths."""
    root = Path(root)
    w, h = _parse_size(size)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        rgb, lab = render_scene(np.random.default_rng([seed, i]), h, w, style)
        path = root / "images" / f"{i:05d}.png"
        _save_rgb(path, rgb)
        if train_ids:
            Image.fromarray(lab, mode="L").save(root / "labels" / f"{i:05d}_labelTrainIds.png")
        else:
            im = Image.fromarray(_TRAIN_TO_LABEL_LUT[lab], mode="P")
            im.putpalette(_cityscapes_label_palette())
            im.save(root / "labels" / f"{i:05d}.png")
        out.append(path)
    return out


def write_cityscapes(root: str | Path, n: int, size: tuple[int, int] = (512, 256), style: str = "day",
                     split: str = "val", seed: int = 0, city: str | None = None) -> list[Path]:
    """Cityscapes layout: ``leftImg8bit/<split>/<city>/<city>_000000_<i>_leftImg8bit.png`` and
    ``gtFine/<split>/<city>/..._gtFine_labelIds.png`` (8-bit labelIds). The city defaults to the style name."""
    root = Path(root)
    city = city or style
    w, h = _parse_size(size)
    img_dir = root / "leftImg8bit" / split / city
    gt_dir = root / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        rgb, lab = render_scene(np.random.default_rng([seed, i]), h, w, style)
        stem = f"{city}_000000_{i:06d}"
        path = img_dir / f"{stem}_leftImg8bit.png"
        _save_rgb(path, rgb)
        label_ids = _TRAIN_TO_LABEL_LUT[lab]
        label_ids[lab == IGNORE_INDEX] = 1 if style != "game" else 0  # the hood is "ego vehicle" (labelId 1)
        Image.fromarray(label_ids, mode="L").save(gt_dir / f"{stem}_gtFine_labelIds.png")
        out.append(path)
    return out


def write_bdd100k(root: str | Path, n: int, size: tuple[int, int] = (512, 288), style: str = "rain",
                  split: str = "val", seed: int = 0) -> list[Path]:
    """BDD100K layout: ``images/10k/<split>/<name>.jpg`` and ``labels/sem_seg/masks/<split>/<name>.png``
    (train ids, 255 ignore)."""
    root = Path(root)
    w, h = _parse_size(size)
    mask_dir = root / "labels" / "sem_seg" / "masks" / split
    mask_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        rgb, lab = render_scene(np.random.default_rng([seed, i]), h, w, style)
        name = f"{seed:04x}{i:04x}-synth{i:05d}"
        path = root / "images" / "10k" / split / f"{name}.jpg"
        _save_rgb(path, rgb)
        Image.fromarray(lab, mode="L").save(mask_dir / f"{name}.png")
        out.append(path)
    return out


# One Mapillary v1.2 name per train id, for writing synthetic Mapillary labels (inverse of the "narrow" table).
_TRAIN_TO_MAPILLARY_NAME = {t: name for name, t in reversed(list(MAPILLARY_NARROW.items()))}


def write_mapillary(root: str | Path, n: int, size: tuple[int, int] = (512, 384), style: str = "texture",
                    split: str = "validation", seed: int = 0) -> list[Path]:
    """Mapillary Vistas v1.2 layout: ``<split>/images/<key>.jpg``, ``<split>/v1.2/labels/<key>.png`` (palette PNG
    of v1.2 label ids) and ``config_v1.2.json`` (names in id order; the colours are made up, not Mapillary's)."""
    root = Path(root)
    w, h = _parse_size(size)
    names = list(MAPILLARY_V12_NAMES)
    index = {name: i for i, name in enumerate(names)}
    lut = np.full(256, index["void--unlabeled"], np.uint8)
    for t, name in _TRAIN_TO_MAPILLARY_NAME.items():
        lut[t] = index[name]
    colors = np.random.default_rng(1234).integers(0, 256, (len(names), 3))
    config = {"labels": [{"name": nm, "readable": nm.split("--")[-1], "color": [int(c) for c in colors[i]],
                          "instances": False, "evaluate": nm != "void--unlabeled"} for i, nm in enumerate(names)],
              "version": "1.2", "mapping": "public", "folder_structure": "{split}/{content}/{key:.{ext}}"}
    root.mkdir(parents=True, exist_ok=True)
    (root / "config_v1.2.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    lbl_dir = root / split / "v1.2" / "labels"
    lbl_dir.mkdir(parents=True, exist_ok=True)
    pal = np.zeros((256, 3), np.uint8)
    pal[: len(names)] = colors
    out = []
    for i in range(n):
        rgb, lab = render_scene(np.random.default_rng([seed, i]), h, w, style)
        key = f"synth{seed:03d}_{i:05d}"
        path = root / split / "images" / f"{key}.jpg"
        _save_rgb(path, rgb)
        im = Image.fromarray(lut[lab], mode="P")
        im.putpalette(pal.reshape(-1).tolist())
        im.save(lbl_dir / f"{key}.png")
        out.append(path)
    return out


def write_synthia(root: str | Path, n: int, size: tuple[int, int] = (512, 304), style: str = "game",
                  seed: int = 0) -> list[Path]:
    """SYNTHIA RAND-CITYSCAPES layout: ``RGB/<i>.png`` and 16-bit 3-channel ``GT/LABELS/<i>.png`` with the class
    id in the first (R) channel and an instance id in the second. Terrain, truck and train are written as void
    (id 0), as SYNTHIA has none."""
    root = Path(root)
    w, h = _parse_size(size)
    inv = np.zeros(256, np.uint16)
    for syn_id, train_id in SYNTHIA_TO_TRAIN.items():
        if train_id not in (TERRAIN, TRUCK, TRAIN):
            inv[train_id] = syn_id
    (root / "GT" / "LABELS").mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        rgb, lab = render_scene(np.random.default_rng([seed, i]), h, w, style)
        path = root / "RGB" / f"{i:07d}.png"
        _save_rgb(path, rgb)
        rgb16 = np.zeros((h, w, 3), np.uint16)
        rgb16[..., 0] = inv[lab]  # R: class
        rgb16[..., 1] = (lab.astype(np.uint16) * 7) % 50  # G: a stand-in instance id
        cv2.imwrite(str(root / "GT" / "LABELS" / f"{i:07d}.png"), cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
        out.append(path)
    return out
