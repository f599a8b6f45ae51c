"""Datasets read their real folder layouts, map labels to train ids, and explain malformed folders; RCS caches."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from mfuser_model.classes import IGNORE_INDEX
from training import rare_class_sampling as rcs
from training.datasets import BDD100KDataset, CityscapesDataset, GTAVDataset, MapillaryDataset, SynthiaDataset
from training.errors import DatasetError
from training.label_maps import (
    CITYSCAPES_LABEL_TO_TRAIN,
    MAPILLARY_CITYSCAPES_DEFINITIONS,
    MAPILLARY_NARROW,
    MAPILLARY_OPENSEG,
    MAPILLARY_TABLES,
    MAPILLARY_V12_NAMES,
    SYNTHIA_TO_TRAIN,
    mapillary_name_to_train_id,
)
from training.synthetic import (
    render_scene,
    write_bdd100k,
    write_cityscapes,
    write_gtav,
    write_mapillary,
    write_synthia,
)
from training.transforms import TrainTransform

W, H = 64, 32


def _expected(seed: int, i: int, style: str, w: int = W, h: int = H) -> np.ndarray:
    return render_scene(np.random.default_rng([seed, i]), h, w, style)[1]


# ---- label maps ----------------------------------------------------------------------------------------------------
def test_cityscapes_table_agrees_with_cityscapesscripts():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    official = {lbl.id: lbl.trainId for lbl in labels.labels if 0 <= lbl.trainId < 255 and lbl.id >= 0}
    assert official == CITYSCAPES_LABEL_TO_TRAIN


def test_synthia_table_covers_each_class_once():
    assert sorted(SYNTHIA_TO_TRAIN.values()) == list(range(19))
    assert SYNTHIA_TO_TRAIN[3] == 0 and SYNTHIA_TO_TRAIN[1] == 10 and SYNTHIA_TO_TRAIN[8] == 13


def test_mapillary_tables_use_real_label_names():
    # v2.0-only names in the "definitions" table, as spelled in Mapillary's config_v2.0.json.
    v20_only = {
        "object--support--pole-group", "object--traffic-sign--direction-front",
        "object--traffic-sign--information-parking", "object--traffic-sign--temporary-front",
        "human--person--individual", "human--person--person-group",
    }
    assert set(MAPILLARY_CITYSCAPES_DEFINITIONS) <= set(MAPILLARY_V12_NAMES) | v20_only
    for table in (MAPILLARY_CITYSCAPES_DEFINITIONS, MAPILLARY_NARROW, MAPILLARY_OPENSEG):
        assert set(table.values()) == set(range(19))
    # openseg keeps the v1.2 names that its readable-name rule maps (v2.0 adds its own, e.g. the marking-- split).
    assert {n for n in MAPILLARY_OPENSEG if n in MAPILLARY_V12_NAMES} == {
        n for n in MAPILLARY_V12_NAMES if not n.startswith(("animal", "void")) and MAPILLARY_OPENSEG.get(n) is not None}
    for name, table in MAPILLARY_TABLES.items():
        assert table.name == name and table.source  # every table says where it comes from
    assert "w1oves/Rein" in MAPILLARY_TABLES["openseg"].source
    assert "lhoyer/HRDA" in MAPILLARY_TABLES["narrow"].source


def test_mapillary_names_map_by_name():
    assert len(MAPILLARY_V12_NAMES) == 66
    assert set(MAPILLARY_NARROW) <= set(MAPILLARY_V12_NAMES)
    cases = {  # name: (definitions, narrow, openseg)
        "construction--flat--road": (0, 0, 0),
        "marking--crosswalk-zebra": (0, 255, 0),
        "construction--flat--bike-lane": (0, 255, 0),
        "construction--barrier--curb": (1, 1, 1),
        "human--rider--motorcyclist": (12, 12, 12),
        "object--vehicle--on-rails": (16, 16, 16),
        "object--traffic-sign--back": (255, 255, 7),
        "object--vehicle--caravan": (255, 255, 255),
        "void--unlabeled": (255, 255, 255),
        # v2.0 names
        "marking--discrete--arrow--left": (0, 255, 0),
        "marking-only--continuous--dashed": (0, 255, 0),
        "object--traffic-light--pedestrians": (6, 255, 255),
        "human--person--individual": (11, 255, 11),
    }
    for name, expected in cases.items():
        got = tuple(mapillary_name_to_train_id(name, m) for m in ("definitions", "narrow", "openseg"))
        assert got == expected, name
        assert mapillary_name_to_train_id(name) == expected[2], name  # openseg is the default
    with pytest.raises(KeyError, match="narrow"):
        mapillary_name_to_train_id("nature--sky", "other")


# The rows where the old default ("definitions") and Rein/openseg differ, as issue 13 lists them:
# name: (definitions, openseg). v1.2 rows first; v2.0 has them too, plus its own.
_OPENSEG_ROWS_V12 = {
    "construction--flat--parking": (255, 0),
    "nature--sand": (9, 255),
    "object--manhole": (0, 255),
    "object--pothole": (0, 255),
    "object--street-light": (255, 5),
    "object--support--traffic-sign-frame": (5, 7),
    "object--traffic-sign--back": (255, 7),
}
_OPENSEG_ROWS_V20 = _OPENSEG_ROWS_V12 | {
    "construction--flat--parking-aisle": (255, 0),
    "object--parking-meter": (255, 0),
    "human--person--person-group": (11, 255),
    "object--sign--back": (255, 7),
    "object--traffic-sign--direction-back": (255, 7),
    "object--traffic-sign--temporary-back": (255, 7),
    "object--traffic-sign--direction-front": (7, 7),
    "object--traffic-light--general-single": (6, 255),
    "object--traffic-light--general-upright": (6, 255),
    "object--traffic-light--pedestrians": (6, 255),
    "object--traffic-light--other": (6, 255),
    "object--traffic-light--cyclists": (6, 12),
}


def _mapillary_raw(root, version, names, ids, with_config=True):
    """One ``validation`` image whose label row holds ``ids`` (native label ids of ``names``)."""
    split = root / "validation"
    (split / "images").mkdir(parents=True)
    (split / version / "labels").mkdir(parents=True)
    if with_config:
        (root / f"config_{version}.json").write_text(json.dumps({"labels": [{"name": n} for n in names]}))
    cv2.imwrite(str(split / "images" / "k1.jpg"), np.zeros((2, len(ids), 3), np.uint8))
    Image.fromarray(np.array([ids] * 2, np.uint8), mode="L").save(split / version / "labels" / "k1.png")


@pytest.mark.parametrize("version", ["v1.2", "v2.0"])
def test_mapillary_default_is_the_openseg_table(tmp_path, version):
    rows = _OPENSEG_ROWS_V12 if version == "v1.2" else _OPENSEG_ROWS_V20
    if version == "v1.2":  # real v1.2 ids, from the built-in name list (no config file)
        names = list(MAPILLARY_V12_NAMES)
        _mapillary_raw(tmp_path, version, names, [names.index(n) for n in rows], with_config=False)
    else:  # v2.0 numbers its labels differently: the names come from config_v2.0.json
        names = ["void--unlabeled", *rows]
        _mapillary_raw(tmp_path, version, names, list(range(1, len(names))))
    default = MapillaryDataset(tmp_path, "validation")
    assert default.version == version and default.mapping == "openseg"
    assert default[0]["label"][0].tolist() == [o for _, o in rows.values()]
    old = MapillaryDataset(tmp_path, "validation", mapping="definitions")
    assert old[0]["label"][0].tolist() == [d for d, _ in rows.values()]
    info = default.ground_truth_info()
    assert info["label_map"] == "openseg" and "mapillary2cityscape.py" in info["label_map_source"]
    assert version in info["labels"] and info["split"] == "validation"


def _train_ids_png(path, value, shape=(4, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8), mode="L").save(path)


def test_mapillary_mfuser_readme_layout(tmp_path):
    # MFuser's README: training/images, cityscapes_trainIdLabel/{train,val}/label (Rein's converter, train ids) and
    # half/val_img + half/val_label (Rein's half-size validation copy).
    for split, rein, key, value in (("training", "train", "t1", 13), ("validation", "val", "v1", 11)):
        (tmp_path / split / "images").mkdir(parents=True)
        cv2.imwrite(str(tmp_path / split / "images" / f"{key}.jpg"), np.zeros((4, 6, 3), np.uint8))
        _train_ids_png(tmp_path / "cityscapes_trainIdLabel" / rein / "label" / f"{key}.png", value)
    (tmp_path / "half" / "val_img").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "half" / "val_img" / "v1.jpg"), np.zeros((2, 3, 3), np.uint8))
    _train_ids_png(tmp_path / "half" / "val_label" / "v1.png", 5, (2, 3))

    val = MapillaryDataset(tmp_path, "validation")
    assert val.version == "rein" and (val[0]["label"] == 11).all()
    assert val.ground_truth_info()["label_map"] == "openseg"
    train = MapillaryDataset(tmp_path, "train")
    assert train.version == "rein" and (train[0]["label"] == 13).all()
    half = MapillaryDataset(tmp_path, "val", version="half")
    assert half.names == ["v1"] and half[0]["label"].shape == (2, 3) and (half[0]["label"] == 5).all()
    with pytest.raises(DatasetError, match="validation split only"):
        MapillaryDataset(tmp_path, "training", version="half")
    with pytest.raises(DatasetError, match="converted by the 'openseg' table"):
        MapillaryDataset(tmp_path, "validation", mapping="narrow")
    # The README's tree has no validation/ folder at all: then the half-size copy is what there is.
    for p in (tmp_path / "validation" / "images").iterdir():
        p.unlink()
    (tmp_path / "validation" / "images").rmdir()
    assert MapillaryDataset(tmp_path, "validation").version == "half"


def test_mapillary_converted_train_ids_name_their_table(tmp_path):
    # What MFuser's configs read: validation/labels/*_labelTrainIds.png. Which table wrote them is not recorded in
    # the files; the report says so unless the user declares it.
    (tmp_path / "validation" / "images").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "validation" / "images" / "k.jpg"), np.zeros((4, 6, 3), np.uint8))
    _train_ids_png(tmp_path / "validation" / "labels" / "k_labelTrainIds.png", 2)
    ds = MapillaryDataset(tmp_path)
    assert ds.version == "trainids" and ds.ground_truth_info()["label_map"] == "unknown"
    declared = MapillaryDataset(tmp_path, mapping="narrow")
    assert (declared[0]["label"] == 2).all()
    assert declared.ground_truth_info()["label_map_source"] == MAPILLARY_TABLES["narrow"].source


def test_mapillary_options_through_the_config(tmp_path):
    from mfuser_model.errors import ConfigError
    from training.config import DatasetSpec
    from training.evaluate import open_dataset

    names = list(MAPILLARY_V12_NAMES)
    _mapillary_raw(tmp_path, "v1.2", names, [names.index("nature--sand")], with_config=False)
    spec = DatasetSpec(kind="mapillary", root=str(tmp_path), label_map="definitions", label_version="v1.2")
    assert open_dataset(spec)[0]["label"][0].tolist() == [9]
    assert open_dataset(DatasetSpec(kind="mapillary", root=str(tmp_path)))[0]["label"][0].tolist() == [255]
    with pytest.raises(ConfigError, match="mapillary only"):
        DatasetSpec(kind="gtav", root="x", label_map="narrow")


# ---- each layout loads through its dataset class ----------------------------------------------------------------
def test_gtav_labelids_palette_png(tmp_path):
    write_gtav(tmp_path, 2, (W, H), seed=3)
    with Image.open(tmp_path / "labels" / "00000.png") as im:
        assert im.mode == "P"  # as GTAV ships them
    ds = GTAVDataset(tmp_path)
    assert len(ds) == 2 and not ds.train_ids
    s = ds[1]
    assert s["image"].shape == (H, W, 3) and s["image"].dtype == np.uint8
    assert s["name"] == "00001"
    np.testing.assert_array_equal(s["label"], _expected(3, 1, "game"))


def test_gtav_converted_train_ids_are_detected(tmp_path):
    write_gtav(tmp_path, 2, (W, H), seed=4, train_ids=True)
    ds = GTAVDataset(tmp_path)
    assert ds.train_ids
    np.testing.assert_array_equal(ds[0]["label"], _expected(4, 0, "game"))


def _split_gtav(root, splits, train_ids=False):
    """A RobustNet/TLDR-style GTAV: ``images/<split>/`` and ``labels/<split>/``, frames numbered across splits."""
    write_gtav(root, sum(splits.values()), (W, H), seed=9, train_ids=train_ids)
    frames = iter(sorted((root / "images").glob("*.png")))
    for split, n in splits.items():
        for sub in ("images", "labels"):
            (root / sub / split).mkdir()
        for _ in range(n):
            img = next(frames)
            img.rename(root / "images" / split / img.name)
            for lbl in (root / "labels").glob(f"{img.stem}*.png"):
                lbl.rename(root / "labels" / split / lbl.name)


@pytest.mark.parametrize("train_ids", [False, True])
def test_gtav_split_subfolders(tmp_path, train_ids):
    _split_gtav(tmp_path, {"train": 2, "valid": 1, "test": 1}, train_ids)
    every = GTAVDataset(tmp_path)  # all splits, as MFuser's recursive scan of images/ reads them
    assert sorted(every.names) == ["00000", "00001", "00002", "00003"] and every.train_ids == train_ids
    for i, name in enumerate(every.names):
        np.testing.assert_array_equal(every[i]["label"], _expected(9, int(name), "game"))
    train = GTAVDataset(tmp_path, split="train")
    assert train.names == ["00000", "00001"]
    assert train.labels[1] == tmp_path / "labels" / "train" / ("00001_labelTrainIds.png" if train_ids else "00001.png")
    assert GTAVDataset(tmp_path, split="val").names == ["00002"]  # RobustNet calls it "valid"
    np.testing.assert_array_equal(GTAVDataset(tmp_path, split="test")[0]["label"], _expected(9, 3, "game"))
    with pytest.raises(DatasetError, match="GTAV split 'training' unknown"):
        GTAVDataset(tmp_path, split="training")


def test_gtav_split_through_the_config(tmp_path):
    from training.config import DatasetSpec
    from training.evaluate import open_dataset

    _split_gtav(tmp_path, {"train": 1, "valid": 2})
    assert len(open_dataset(DatasetSpec(kind="gtav", root=str(tmp_path)), role="source")) == 3
    assert open_dataset(DatasetSpec(kind="gtav", root=str(tmp_path), split="valid")).names == ["00001", "00002"]
    (tmp_path / "labels" / "valid" / "00002.png").unlink()
    with pytest.raises(DatasetError, match=r"00002\.png"):
        GTAVDataset(tmp_path, split="valid")


def test_cityscapes_labelids_and_ego_vehicle_ignored(tmp_path):
    write_cityscapes(tmp_path, 3, (W, H), style="fog", split="val", seed=5)
    ds = CityscapesDataset(tmp_path, "val")
    assert ds.names[0] == "fog_000000_000000"
    label = ds[2]["label"]
    np.testing.assert_array_equal(label, _expected(5, 2, "fog"))
    assert (label[-1] == IGNORE_INDEX).any()  # the hood
    assert ds.stats_dir == tmp_path / "gtFine" / "val"


def test_cityscapes_prefers_label_train_ids(tmp_path):
    write_cityscapes(tmp_path, 1, (W, H), style="day", split="train", seed=6)
    gt_dir = tmp_path / "gtFine" / "train" / "day"
    marker = np.full((H, W), 7, np.uint8)
    Image.fromarray(marker).save(gt_dir / "day_000000_000000_gtFine_labelTrainIds.png")
    ds = CityscapesDataset(tmp_path, "train")
    assert ds.train_ids
    assert (ds[0]["label"] == 7).all()


def test_bdd100k_masks_and_colormaps(tmp_path):
    write_bdd100k(tmp_path, 2, (W, H), style="rain", split="val", seed=7)
    ds = BDD100KDataset(tmp_path, "val")
    np.testing.assert_array_equal(ds[0]["label"], _expected(7, 0, "rain"))
    # The colour-coded colormaps folder is the fallback when masks/ is absent.
    from mfuser_model.classes import colorize

    masks = tmp_path / "labels" / "sem_seg" / "masks" / "val"
    colormaps = tmp_path / "labels" / "sem_seg" / "colormaps" / "val"
    colormaps.mkdir(parents=True)
    for p in masks.glob("*.png"):
        Image.fromarray(colorize(np.array(Image.open(p)))).save(colormaps / p.name)
        p.unlink()
    masks.rmdir()
    ds = BDD100KDataset(tmp_path, "val")
    np.testing.assert_array_equal(ds[1]["label"], _expected(7, 1, "rain"))


@pytest.mark.parametrize("mapping", ["openseg", "narrow", "definitions"])
def test_mapillary_v12_palette_labels(tmp_path, mapping):
    write_mapillary(tmp_path, 2, (W, H), style="texture", split="validation", seed=8)
    ds = MapillaryDataset(tmp_path, "val", mapping=mapping)
    assert ds.version == "v1.2"
    np.testing.assert_array_equal(ds[1]["label"], _expected(8, 1, "texture"))


def test_mapillary_v20_reads_names_from_config(tmp_path):
    split = tmp_path / "validation"
    (split / "images").mkdir(parents=True)
    (split / "v2.0" / "labels").mkdir(parents=True)
    names = ["void--unlabeled", "marking--discrete--arrow--left", "object--vehicle--car", "nature--sky",
             "object--traffic-light--general-upright"]
    (tmp_path / "config_v2.0.json").write_text(json.dumps({"labels": [{"name": n} for n in names]}))
    cv2.imwrite(str(split / "images" / "k1.jpg"), np.zeros((4, 5, 3), np.uint8))
    ids = np.array([[0, 1, 2, 3, 4]] * 4, np.uint8)
    Image.fromarray(ids, mode="L").save(split / "v2.0" / "labels" / "k1.png")
    ds = MapillaryDataset(tmp_path, "validation")
    assert ds.version == "v2.0"
    assert ds[0]["label"][0].tolist() == [255, 0, 13, 10, 255]  # openseg: v2.0's traffic lights are ignored
    assert MapillaryDataset(tmp_path, "validation", mapping="definitions")[0]["label"][0].tolist()[-1] == 6
    (tmp_path / "config_v2.0.json").unlink()
    with pytest.raises(DatasetError, match="config_v2.0.json"):
        MapillaryDataset(tmp_path, "validation")


def test_synthia_class_in_red_channel(tmp_path):
    write_synthia(tmp_path, 2, (W, H), seed=9)
    raw = cv2.imread(str(tmp_path / "GT" / "LABELS" / "0000000.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.ndim == 3
    ds = SynthiaDataset(tmp_path)
    expected = _expected(9, 0, "game")
    expected[np.isin(expected, [9, 14, 16])] = IGNORE_INDEX  # SYNTHIA has no terrain, truck, train
    np.testing.assert_array_equal(ds[0]["label"], expected)


# ---- malformed folders ---------------------------------------------------------------------------------------------
def test_missing_root_and_label_dir(tmp_path):
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "nope"))):
        GTAVDataset(tmp_path / "nope")
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "labels")) + ".*not found"):
        GTAVDataset(tmp_path)


def test_empty_image_folder(tmp_path):
    (tmp_path / "leftImg8bit" / "val" / "x").mkdir(parents=True)
    (tmp_path / "gtFine" / "val").mkdir(parents=True)
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "leftImg8bit" / "val")) + ".*no images"):
        CityscapesDataset(tmp_path, "val")


def test_image_without_label_is_named(tmp_path):
    write_gtav(tmp_path, 3, (W, H), seed=1)
    (tmp_path / "labels" / "00001.png").rename(tmp_path / "labels" / "renamed.png")
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "images" / "00001.png"))) as err:
        GTAVDataset(tmp_path)
    assert str(tmp_path / "labels" / "00001.png") in str(err.value)


def test_label_of_wrong_size(tmp_path):
    write_gtav(tmp_path, 1, (W, H), seed=2)
    path = tmp_path / "labels" / "00000.png"
    Image.fromarray(np.full((H // 2, W // 2), 7, np.uint8), mode="L").save(path)
    ds = GTAVDataset(tmp_path)
    with pytest.raises(DatasetError, match=re.escape(str(path)) + ".*32x16"):
        ds[0]
    fixed = GTAVDataset(tmp_path, on_size_mismatch="resize_label")[0]["label"]
    assert fixed.shape == (H, W) and (fixed == 0).all()


def test_unreadable_image_is_named(tmp_path):
    write_gtav(tmp_path, 1, (W, H), seed=2)
    bad = tmp_path / "images" / "00000.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=re.escape(str(bad))):
        GTAVDataset(tmp_path)[0]


# ---- transforms through the dataset ----------------------------------------------------------------------------
def test_transform_is_a_function_of_seed_epoch_and_index(tmp_path):
    write_gtav(tmp_path, 2, (128, 64), seed=1)
    ds = GTAVDataset(tmp_path, transform=TrainTransform(32), seed=5)
    a, b = ds[0], ds[0]
    assert a["image"].shape == (3, 32, 32) and a["label"].shape == (32, 32)
    assert (a["image"] == b["image"]).all() and (a["label"] == b["label"]).all()
    ds.set_epoch(1)
    c = ds[0]
    assert not ((a["image"].shape == c["image"].shape) and bool((a["image"] == c["image"]).all()))


# ---- rare-class sampling -------------------------------------------------------------------------------------------
def test_rcs_stats_are_cached_beside_the_data_and_reused(tmp_path, monkeypatch):
    write_gtav(tmp_path, 4, (W, H), seed=11)
    ds = GTAVDataset(tmp_path)
    sampler = rcs.RareClassSampler(ds, min_pixels=20)
    assert sampler.stats_path == tmp_path / "sample_class_stats.json"
    stats = json.loads((tmp_path / "sample_class_stats.json").read_text())
    by_class = json.loads((tmp_path / "samples_with_class.json").read_text())
    label0 = ds.load_label(0)
    assert stats[0]["file"] == "labels/00000.png"
    assert stats[0]["0"] == int((label0 == 0).sum())
    assert ["labels/00000.png", stats[0]["0"]] in by_class["0"]

    def boom(*args, **kwargs):
        raise AssertionError("statistics recomputed although cached")

    monkeypatch.setattr(rcs, "compute_class_stats", boom)
    again = rcs.RareClassSampler(ds, min_pixels=20)
    np.testing.assert_allclose(again.class_probs, sampler.class_probs)


def test_rcs_reads_daformer_caches_with_absolute_paths(tmp_path, monkeypatch):
    write_gtav(tmp_path, 2, (W, H), seed=12)
    stats = [{"file": str(tmp_path / "labels" / f"0000{i}.png"), "0": 100 + i} for i in range(2)]
    (tmp_path / "sample_class_stats.json").write_text(json.dumps(stats))
    monkeypatch.setattr(rcs, "compute_class_stats", lambda *a, **k: pytest.fail("recomputed"))
    loaded, _ = rcs.load_or_compute_stats(GTAVDataset(tmp_path))
    assert [e["0"] for e in loaded] == [100, 101]


def test_rcs_cache_for_other_files_is_recomputed(tmp_path):
    write_gtav(tmp_path, 2, (W, H), seed=12)
    (tmp_path / "sample_class_stats.json").write_text(json.dumps([{"file": "labels/other.png", "0": 5}]))
    _, path = rcs.load_or_compute_stats(GTAVDataset(tmp_path))
    assert len(json.loads(path.read_text())) == 2


def test_rcs_unwritable_folder_falls_back_to_user_cache(tmp_path, monkeypatch, caplog):
    write_gtav(tmp_path / "data", 2, (W, H), seed=13)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real_write = rcs._write_json_atomic

    def refuse_data_dir(path, data):
        if path.parent == tmp_path / "data":
            raise PermissionError(13, "Permission denied", str(path))
        real_write(path, data)

    monkeypatch.setattr(rcs, "_write_json_atomic", refuse_data_dir)
    with caplog.at_level("WARNING"):
        _, path = rcs.load_or_compute_stats(GTAVDataset(tmp_path / "data"))
    assert path.is_relative_to(tmp_path / "cache" / "mfuser" / "rcs")
    assert "not writable" in caplog.text and str(path.parent) in caplog.text
    # Found there next time.
    _, again = rcs.load_or_compute_stats(GTAVDataset(tmp_path / "data"))
    assert again == path


def test_rcs_class_probabilities_follow_the_temperature(tmp_path):
    stats = [{"file": "a.png", "0": 9000, "13": 4000}, {"file": "b.png", "0": 8000, "5": 3500}]
    ds = type("FakeDS", (), {"stats_dir": tmp_path})()
    freq = np.array([17000, 3500, 4000]) / 24500
    for temp in (0.01, 100.0):
        sampler = rcs.RareClassSampler(ds, class_temp=temp, min_pixels=3000, stats=stats)
        assert sampler.classes.tolist() == [0, 5, 13]
        expected = np.exp((1 - freq) / temp - np.max((1 - freq) / temp))
        np.testing.assert_allclose(sampler.class_probs, expected / expected.sum())
    assert sampler.class_probs.max() - sampler.class_probs.min() < 0.01  # T=100: nearly uniform
    assert sampler.samples_with_class[5].tolist() == [1]
    draws = {sampler.draw() for _ in range(50)}
    assert (1, 5) in draws and all(i in (0, 1) for i, _ in draws)


def test_rare_class_dataset_is_deterministic_and_recrops_toward_the_class(tmp_path):
    write_gtav(tmp_path, 4, (128, 64), seed=14)
    ds = GTAVDataset(tmp_path)
    sampler = rcs.RareClassSampler(ds, min_pixels=60, seed=0)
    train = rcs.RareClassDataset(ds, TrainTransform(48), sampler, min_crop_ratio=0.5, length=12, seed=3)
    items = [train[i] for i in range(12)]
    assert all((a["label"] == b["label"]).all() for a, b in zip(items, [train[i] for i in range(12)], strict=True))
    hits = sum(int((it["label"] == it["rcs_class"]).sum()) > 30 for it in items)
    assert hits >= 9
