"""Source and target datasets in their published folder layouts, all returning Cityscapes train ids.

Each dataset validates its folder on construction (missing folder, no images, images without labels) and raises a
:class:`DatasetError` naming the path. Items are plain dicts before transforms::

    {"image": (H, W, 3) uint8 RGB, "label": (H, W) uint8 train ids (255 = ignore), "name": str}

A ``transform(sample, rng)`` callable (see ``training.transforms``) is applied in ``__getitem__`` with a numpy
Generator seeded from ``(seed, epoch, index)``, so an item is the same whatever DataLoader worker loads it.

Layouts (root-relative):

| class | images | labels |
|---|---|---|
| GTAVDataset | ``images/*.png`` or ``images/<split>/*.png`` | ``labels/[<split>/]<name>.png`` (labelIds) or ``..._labelTrainIds.png`` |
| SynthiaDataset | ``RGB/*.png`` | ``GT/LABELS/<name>.png`` (16-bit, class in R = cv2's last channel) |
| CityscapesDataset | ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` | ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` or ``*_gtFine_labelIds.png`` |
| BDD100KDataset | ``images/10k/<split>/*.jpg`` | ``labels/sem_seg/masks/<split>/<name>.png`` (train ids) or ``colormaps/`` |
| MapillaryDataset | ``<split>/images/*.jpg``, ``half/val_img`` | ``<split>/labels/*_labelTrainIds.png``, ``cityscapes_trainIdLabel/<train|val>/label``, ``<split>/v1.2/labels``, ``<split>/labels`` (v1.0/1.1), ``<split>/v2.0/labels``, ``half/val_label`` |
"""  # noqa: E501

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch.utils.data
from PIL import Image

from mfuser_model.classes import CITYSCAPES_PALETTE, IGNORE_INDEX
from training.errors import DatasetError
from training.label_maps import (
    CITYSCAPES_LABEL_TO_TRAIN,
    DEFAULT_MAPILLARY_TABLE,
    MAPILLARY_TABLES,
    MAPILLARY_V12_NAMES,
    SYNTHIA_TO_TRAIN,
    build_lut,
    mapillary_lut,
)

__all__ = [
    "BDD100KDataset",
    "CityscapesDataset",
    "GTAVDataset",
    "MapillaryDataset",
    "SegmentationDataset",
    "SynthiaDataset",
    "read_rgb",
]

Transform = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]
SizeMismatch = Literal["error", "resize_label"]

_CITYSCAPES_LUT = build_lut(CITYSCAPES_LABEL_TO_TRAIN)
_SYNTHIA_LUT = build_lut(SYNTHIA_TO_TRAIN, size=65536)
_IDENTITY_LUT = np.concatenate([np.arange(19, dtype=np.uint8), np.full(256 - 19, IGNORE_INDEX, dtype=np.uint8)])


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB, raising DatasetError naming the file if unreadable."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        msg = f"{path}: cannot read image (missing, truncated or not an image)"
        raise DatasetError(msg)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_label_png(path: Path) -> np.ndarray:
    """Read a label PNG keeping palette indices (``P``) and gray values; RGB files come back ``(H, W, 3)``."""
    try:
        with Image.open(path) as im:
            # Palette PNGs (GTAV, Mapillary) must stay indices: cv2 would expand them to colours.
            arr = np.array(im)
    except (OSError, ValueError) as err:
        msg = f"{path}: cannot read label image: {err}"
        raise DatasetError(msg) from err
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return arr


def _rgb_to_train_ids(rgb: np.ndarray, palette: Sequence[Sequence[int]], path: Path) -> np.ndarray:
    """Map colour-coded labels to train ids by exact palette match (unknown colours -> ignore)."""
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    out = np.full(code.shape, IGNORE_INDEX, dtype=np.uint8)
    for train_id, (r, g, b) in enumerate(palette):
        out[code == ((r << 16) | (g << 8) | b)] = train_id
    if rgb.size and not (out != IGNORE_INDEX).any() and code.any():
        msg = f"{path}: colour label matches none of the {len(palette)} palette colours"
        raise DatasetError(msg)
    return out


def _missing_message(kind: str, folder: Path, missing: list[tuple[Path, Path]]) -> str:
    shown = "; ".join(f"{img} -> expected {lbl}" for img, lbl in missing[:3])
    more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
    return f"{folder}: {len(missing)} {kind} image(s) have no label: {shown}{more}"


class SegmentationDataset(torch.utils.data.Dataset):
    """Common base: a list of (image, label) file pairs plus a label decoder.

    Subclasses fill ``self.images``, ``self.labels``, ``self.names`` in ``__init__`` and implement
    :meth:`_decode_label`. ``stats_dir`` is where rare-class statistics are cached.

    Args:
        transform: ``transform(sample, rng) -> sample`` applied in ``__getitem__``; None returns raw samples.
        seed: base seed of the per-item generator.
        on_size_mismatch: ``"error"`` raises when an image and its label differ in size; ``"resize_label"``
            resizes the label (nearest) to the image (a few real GTAV frames need it).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        transform: Transform | None = None,
        seed: int = 0,
        on_size_mismatch: SizeMismatch = "error",
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            msg = f"{self.root}: dataset root not found"
            raise DatasetError(msg)
        if on_size_mismatch not in ("error", "resize_label"):
            msg = f"on_size_mismatch must be 'error' or 'resize_label', got {on_size_mismatch!r}"
            raise ValueError(msg)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.on_size_mismatch = on_size_mismatch
        self.images: list[Path] = []
        self.labels: list[Path] = []
        self.names: list[str] = []
        self.stats_dir = self.root
        # What the label files hold and which table turned them into train ids (ground_truth_info, for reports).
        self.label_format = ""
        self.label_map = "identity"
        self.label_map_source = "labels hold train ids already"

    # ---- construction helpers -------------------------------------------------------------------------------
    @staticmethod
    def _require_dir(path: Path, what: str) -> Path:
        if not path.is_dir():
            msg = f"{path}: {what} folder not found"
            raise DatasetError(msg)
        return path

    @staticmethod
    def _list_images(folder: Path, pattern: str, recursive: bool = False) -> list[Path]:
        files = sorted(folder.rglob(pattern) if recursive else folder.glob(pattern))
        if not files:
            msg = f"{folder}: no images matching {pattern!r}"
            raise DatasetError(msg)
        return files

    def _pair(self, images: list[Path], label_of: Callable[[Path], Path], names: list[str], folder: Path) -> None:
        labels = [label_of(p) for p in images]
        missing = [(i, lbl) for i, lbl in zip(images, labels, strict=True) if not lbl.is_file()]
        if missing:
            raise DatasetError(_missing_message(type(self).__name__, folder, missing))
        self.images, self.labels, self.names = images, labels, names

    # ---- item access -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Change the per-item random stream (call once per epoch when iterating epochs)."""
        self.epoch = epoch

    def _decode_label(self, path: Path) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement _decode_label")

    def load_image(self, index: int) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB image of item ``index``."""
        return read_rgb(self.images[index])

    def load_label(self, index: int) -> np.ndarray:
        """``(H, W)`` uint8 train-id label of item ``index`` (255 = ignore)."""
        label = self._decode_label(self.labels[index])
        if label.ndim != 2:
            msg = f"{self.labels[index]}: decoded label has shape {label.shape}, expected (H, W)"
            raise DatasetError(msg)
        return label

    def load(self, index: int) -> dict[str, Any]:
        """Raw sample ``{"image", "label", "name"}`` (no transform)."""
        if not -len(self) <= index < len(self):
            msg = f"index {index} out of range for {type(self).__name__} of {len(self)} items at {self.root}"
            raise IndexError(msg)
        image = self.load_image(index)
        label = self.load_label(index)
        if image.shape[:2] != label.shape:
            if self.on_size_mismatch == "error":
                msg = (
                    f"{self.labels[index]}: label is {label.shape[1]}x{label.shape[0]} but image "
                    f"{self.images[index]} is {image.shape[1]}x{image.shape[0]} (on_size_mismatch='resize_label' "
                    "resizes such labels)"
                )
                raise DatasetError(msg)
            label = cv2.resize(label, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        return {"image": image, "label": label, "name": self.names[index]}

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.load(index)
        if self.transform is None:
            return sample
        rng = np.random.default_rng([self.seed, self.epoch, index % len(self)])
        return self.transform(sample, rng)

    def _describe_cityscapes_ids(self, lbl_dir: Path) -> None:
        if getattr(self, "train_ids", False):
            self.label_format = f"converted *_labelTrainIds.png in {lbl_dir}"
            return
        self.label_format = f"Cityscapes labelIds in {lbl_dir}"
        self.label_map = "cityscapes"
        self.label_map_source = ("cityscapesscripts labelId -> trainId: https://github.com/mcordts/cityscapesScripts/"
                                 "blob/master/cityscapesscripts/helpers/labels.py")

    def ground_truth_info(self) -> dict[str, str]:
        """Where the ground truth comes from, for reports: dataset class, root, split, label format, and the table
        (name and source, with a URL where one exists) that mapped the native labels to train ids."""
        return {
            "dataset": type(self).__name__,
            "root": str(self.root),
            "split": str(getattr(self, "split", None) or "all"),
            "labels": self.label_format,
            "label_map": self.label_map,
            "label_map_source": self.label_map_source,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, items={len(self)})"


def _decode_cityscapes_ids(path: Path, train_ids: bool) -> np.ndarray:
    """A Cityscapes-id label PNG (GTAV and Cityscapes share them) -> train ids; ``train_ids``: already converted."""
    raw = _read_label_png(path)
    if raw.ndim == 3:
        msg = f"{path}: expected a single-channel/palette label PNG, found {raw.shape[2]} channels"
        raise DatasetError(msg)
    return (_IDENTITY_LUT if train_ids else _CITYSCAPES_LUT)[raw.astype(np.uint8, copy=False)]


_GTAV_SPLITS = {"train": "train", "val": "valid", "valid": "valid", "test": "test"}


class GTAVDataset(SegmentationDataset):
    """GTAV (Playing for Data): ``images/*.png`` with ``labels/*.png`` labelIds (palette PNGs) or converted
    ``labels/*_labelTrainIds.png``; the kind is detected from the label folder.

    The RobustNet split (as RobustNet and TLDR ship it) puts both in subfolders, ``images/{train,valid,test}`` and
    ``labels/{train,valid,test}``. ``split=None`` takes every image under ``images/`` (flat or in subfolders, as
    MFuser's config does with mmseg's recursive scan: DG training uses all 24,966 frames); ``"train"``,
    ``"valid"`` (or ``"val"``) or ``"test"`` takes that subfolder only.
    """

    def __init__(self, root: str | Path, split: str | None = None, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        img_dir = self._require_dir(self.root / "images", "GTAV images")
        lbl_dir = self._require_dir(self.root / "labels", "GTAV labels")
        if split is not None:
            if split not in _GTAV_SPLITS:
                msg = f"GTAV split {split!r} unknown; valid: None (all images), {', '.join(_GTAV_SPLITS)}"
                raise DatasetError(msg)
            sub = _GTAV_SPLITS[split]
            img_dir = self._require_dir(img_dir / sub, f"GTAV images/{sub}")
            lbl_dir = self._require_dir(lbl_dir / sub, f"GTAV labels/{sub}")
        self.split = split
        # Flat folders hold only images; split folders hold one level of subfolders. rglob reads both.
        images = self._list_images(img_dir, "*.png", recursive=True)
        self.train_ids = next(lbl_dir.rglob("*_labelTrainIds.png"), None) is not None
        suffix = "_labelTrainIds.png" if self.train_ids else ".png"

        def label_of(p: Path) -> Path:
            return lbl_dir / p.parent.relative_to(img_dir) / f"{p.stem}{suffix}"

        self._pair(images, label_of, [p.stem for p in images], img_dir)
        self._describe_cityscapes_ids(lbl_dir)

    def _decode_label(self, path: Path) -> np.ndarray:
        return _decode_cityscapes_ids(path, self.train_ids)


class SynthiaDataset(SegmentationDataset):
    """SYNTHIA RAND-CITYSCAPES: ``RGB/*.png`` and 16-bit ``GT/LABELS/*.png``.

    The class id is the first channel in the PNG's own (RGB) order, i.e. the *last* channel of the BGR array that
    ``cv2.imread(..., IMREAD_UNCHANGED)`` returns (the second channel holds instance ids).
    """

    def __init__(self, root: str | Path, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        img_dir = self._require_dir(self.root / "RGB", "SYNTHIA RGB")
        lbl_dir = self._require_dir(self.root / "GT" / "LABELS", "SYNTHIA GT/LABELS")
        images = self._list_images(img_dir, "*.png")
        self._pair(images, lambda p: lbl_dir / p.name, [p.stem for p in images], img_dir)
        self.label_format = f"SYNTHIA class ids (R channel of 16-bit PNGs) in {lbl_dir}"
        self.label_map, self.label_map_source = "synthia", "MFuser/DAFormer tools/convert_datasets/synthia.py"

    def _decode_label(self, path: Path) -> np.ndarray:
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            msg = f"{path}: cannot read SYNTHIA label PNG"
            raise DatasetError(msg)
        if raw.ndim == 3:
            raw = raw[:, :, -1]  # BGR order from cv2: the last channel is the file's first (R) = class id
        return _SYNTHIA_LUT[raw.astype(np.uint16, copy=False)]


class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine annotations for one split, labelIds mapped to train ids (converted trainIds preferred)."""

    def __init__(self, root: str | Path, split: str = "val", **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.split = split
        img_dir = self._require_dir(self.root / "leftImg8bit" / split, f"Cityscapes leftImg8bit/{split}")
        gt_dir = self._require_dir(self.root / "gtFine" / split, f"Cityscapes gtFine/{split}")
        images = self._list_images(img_dir, "*_leftImg8bit.png", recursive=True)
        self.train_ids = next(gt_dir.rglob("*_gtFine_labelTrainIds.png"), None) is not None
        suffix = "_gtFine_labelTrainIds.png" if self.train_ids else "_gtFine_labelIds.png"

        def label_of(p: Path) -> Path:
            stem = p.name[: -len("_leftImg8bit.png")]
            return gt_dir / p.parent.relative_to(img_dir) / f"{stem}{suffix}"

        names = [p.name[: -len("_leftImg8bit.png")] for p in images]
        self._pair(images, label_of, names, img_dir)
        self.stats_dir = gt_dir
        self._describe_cityscapes_ids(gt_dir)

    def _decode_label(self, path: Path) -> np.ndarray:
        return _decode_cityscapes_ids(path, self.train_ids)


class BDD100KDataset(SegmentationDataset):
    """BDD100K 10k semantic segmentation: ``images/10k/<split>/*.jpg`` with native train-id masks
    (``labels/sem_seg/masks/<split>``), or ``labels/sem_seg/colormaps/<split>`` (palette or RGB colour PNGs)."""

    def __init__(self, root: str | Path, split: str = "val", **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.split = split
        img_dir = self._require_dir(self.root / "images" / "10k" / split, f"BDD100K images/10k/{split}")
        masks = self.root / "labels" / "sem_seg" / "masks" / split
        colormaps = self.root / "labels" / "sem_seg" / "colormaps" / split
        if masks.is_dir():
            lbl_dir = masks
        elif colormaps.is_dir():
            lbl_dir = colormaps
        else:
            msg = f"{masks}: BDD100K label folder not found (nor {colormaps})"
            raise DatasetError(msg)
        images = self._list_images(img_dir, "*.jpg")
        self._pair(images, lambda p: lbl_dir / f"{p.stem}.png", [p.stem for p in images], img_dir)
        self.stats_dir = lbl_dir
        self.label_format = f"BDD100K {'train-id masks' if lbl_dir == masks else 'colour maps'} in {lbl_dir}"
        if lbl_dir != masks:
            self.label_map, self.label_map_source = "palette", "Cityscapes palette colours -> train ids"

    def _decode_label(self, path: Path) -> np.ndarray:
        raw = _read_label_png(path)
        if raw.ndim == 3:
            return _rgb_to_train_ids(raw, CITYSCAPES_PALETTE, path)
        return _IDENTITY_LUT[raw.astype(np.uint8, copy=False)]


_MAPILLARY_SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}
# Mapillary label layouts: (image folder, label folder, label suffix), relative to the root; {s} is the split folder
# (training/validation), {r} Rein's name for it (train/val).
_MAPILLARY_LAYOUTS: dict[str, tuple[str, str, str]] = {
    "trainids": ("{s}/images", "{s}/labels", "_labelTrainIds.png"),  # what MFuser's configs read
    "rein": ("{s}/images", "cityscapes_trainIdLabel/{r}/label", ".png"),  # MFuser's README (Rein's converter)
    "v1.2": ("{s}/images", "{s}/v1.2/labels", ".png"),
    "legacy": ("{s}/images", "{s}/labels", ".png"),  # v1.0/1.1 folders, 66 labels
    "v2.0": ("{s}/images", "{s}/v2.0/labels", ".png"),
    "half": ("half/{r}_img", "half/{r}_label", ".png"),  # MFuser's README: Rein's half-size validation copy
}
_MAPILLARY_CONVERTED = ("trainids", "rein", "half")


class MapillaryDataset(SegmentationDataset):
    """Mapillary Vistas, one split (``training``/``validation``; ``train``/``val`` accepted), mapped to 19 classes.

    Label layouts (``version``), in ``"auto"`` order; a layout counts when its image and label folders both exist:

    - ``trainids``: ``<split>/labels/*_labelTrainIds.png``, converted train ids (what MFuser's configs read);
    - ``rein``: ``cityscapes_trainIdLabel/{train,val}/label/*.png``, train ids written by Rein's openseg converter
      (the layout of MFuser's README), images in ``<split>/images``;
    - ``v1.2``: ``<split>/v1.2/labels``; ``legacy``: ``<split>/labels`` (v1.0/1.1); ``v2.0``: ``<split>/v2.0/labels``,
      raw label ids mapped by name with table ``mapping``, names read from ``config_v1.2.json`` / ``config.json`` /
      ``config_v2.0.json`` in the root (v1.2 falls back to the built-in name list; v2.0 requires the file);
    - ``half``: ``half/val_img`` and ``half/val_label``, Rein's half-size copy of the validation split (MFuser's
      README); last in ``auto`` order, as it changes the resolution the numbers are measured at.

    Args:
        version: ``"auto"`` or one of the layouts above.
        mapping: name table for raw labels (``training.label_maps.MAPILLARY_TABLES``), default ``openseg``. For
            ``trainids`` files it declares which table converted them (for the report; nothing is remapped);
            ``rein``/``half`` files were converted by ``openseg``, and another table is refused.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "validation",
        *,
        version: str = "auto",
        mapping: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, **kwargs)
        if split not in _MAPILLARY_SPLITS:
            msg = f"Mapillary split {split!r} unknown; valid: {sorted(_MAPILLARY_SPLITS)}"
            raise DatasetError(msg)
        if mapping is not None and mapping not in MAPILLARY_TABLES:
            msg = f"Mapillary mapping {mapping!r} unknown; valid: {', '.join(MAPILLARY_TABLES)}"
            raise DatasetError(msg)
        self.split = _MAPILLARY_SPLITS[split]
        self.version = self._detect_version(version)
        img_dir, lbl_dir, suffix = self._folders(self.version)
        images = self._list_images(img_dir, "*.jpg")
        self.palette: list[tuple[int, int, int]] | None = None
        if self.version in _MAPILLARY_CONVERTED:
            self.lut = _IDENTITY_LUT
            table = "openseg" if self.version != "trainids" else mapping
            if mapping is not None and table != mapping:
                msg = (f"{lbl_dir}: these train ids were converted by the 'openseg' table (Rein's converter); "
                       f"mapping={mapping!r} applies to raw labels (version v1.2/legacy/v2.0)")
                raise DatasetError(msg)
            self.label_format = f"{self.version}: converted train ids in {lbl_dir}"
        else:
            table = mapping or DEFAULT_MAPILLARY_TABLE
            names, self.palette = self._read_config(self.version)
            self.lut = mapillary_lut(names, table)
            self.label_format = f"Mapillary {self.version} label ids ({len(names)} labels) in {lbl_dir}"
        self.mapping = table
        if table is None:
            self.label_map = "unknown"
            self.label_map_source = (
                "the converter that wrote these *_labelTrainIds.png files (HRDA's tools/convert_datasets/mapillary.py "
                "writes this name); pass mapping= to declare it"
            )
        else:
            self.label_map, self.label_map_source = table, MAPILLARY_TABLES[table].source
        self._pair(images, lambda p: lbl_dir / f"{p.stem}{suffix}", [p.stem for p in images], img_dir)
        self.stats_dir = lbl_dir

    def _folders(self, version: str) -> tuple[Path, Path, str]:
        img, lbl, suffix = _MAPILLARY_LAYOUTS[version]
        names = {"s": self.split, "r": "train" if self.split == "training" else "val"}
        return self.root / img.format(**names), self.root / lbl.format(**names), suffix

    def _detect_version(self, version: str) -> str:
        if version != "auto":
            if version not in _MAPILLARY_LAYOUTS:
                msg = f"Mapillary version {version!r} unknown; valid: auto, {', '.join(_MAPILLARY_LAYOUTS)}"
                raise DatasetError(msg)
            if version == "half" and self.split != "validation":
                msg = f"{self.root}: Mapillary version 'half' holds the validation split only"
                raise DatasetError(msg)
            img_dir, lbl_dir, _ = self._folders(version)
            self._require_dir(img_dir, f"Mapillary {version} images")
            self._require_dir(lbl_dir, f"Mapillary {version} labels")
            return version
        for v in _MAPILLARY_LAYOUTS:
            if v == "half" and self.split != "validation":
                continue
            img_dir, lbl_dir, _ = self._folders(v)
            if not (img_dir.is_dir() and lbl_dir.is_dir()):
                continue
            if v == "trainids" and next(lbl_dir.glob("*_labelTrainIds.png"), None) is None:
                continue  # raw v1.0/1.1 labels in the same folder: "legacy"
            return v
        looked = ", ".join(str(self._folders(v)[1].relative_to(self.root)) for v in _MAPILLARY_LAYOUTS)
        msg = f"{self.root}: no Mapillary {self.split} images with labels (looked for label folders {looked})"
        raise DatasetError(msg)

    def _read_config(self, version: str) -> tuple[list[str], list[tuple[int, int, int]] | None]:
        files = ["config_v2.0.json"] if version == "v2.0" else ["config_v1.2.json", "config.json"]
        for name in files:
            path = self.root / name
            if not path.is_file():
                continue
            try:
                labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
                names = [str(lbl["name"]) for lbl in labels]
                palette = [tuple(int(c) for c in lbl["color"][:3]) for lbl in labels] if all(
                    "color" in lbl for lbl in labels
                ) else None
            except (OSError, ValueError, KeyError, TypeError) as err:
                msg = f"{path}: cannot read Mapillary label names (expected {{'labels': [{{'name': ...}}]}}): {err}"
                raise DatasetError(msg) from err
            if len(names) > 256:
                msg = f"{path}: {len(names)} labels do not fit 8-bit label PNGs"
                raise DatasetError(msg)
            return names, palette  # type: ignore[return-value]
        if version == "v2.0":
            msg = f"{self.root / 'config_v2.0.json'}: needed to map Mapillary v2.0 label ids (names) to classes"
            raise DatasetError(msg)
        return list(MAPILLARY_V12_NAMES), None

    def _decode_label(self, path: Path) -> np.ndarray:
        raw = _read_label_png(path)
        if raw.ndim == 3:
            if self.palette is None:
                msg = f"{path}: colour label PNG but no label colours known (config json missing)"
                raise DatasetError(msg)
            ids = _rgb_to_train_ids(raw, self.palette, path)  # -> native ids (palette index)
            return self.lut[ids]
        return self.lut[raw.astype(np.uint8, copy=False)]
