"""Rare-class sampling (RCS) as in DAFormer's ``UGDataset``, which MFuser trains with.

Per-image class pixel counts are computed once from the labels and cached beside the data in DAFormer's format:

- ``sample_class_stats.json``: ``[{"file": <label path relative to the stats folder>, "<train id>": pixels, ...}]``
- ``samples_with_class.json``: ``{"<train id>": [[file, pixels], ...]}``

Sampling a training item: class ``c ~ softmax((1 - f_c) / T)`` where ``f_c`` is the class's pixel frequency over the
set and ``T = class_temp``; an image uniformly among those with more than ``min_pixels`` pixels of ``c``; then the
augmentation is redrawn up to ``max_recrops`` times until the crop holds more than ``min_pixels * min_crop_ratio``
pixels of ``c``. MFuser uses T=100 (close to uniform over classes), min_pixels 3000, min_crop_ratio 0.5, 10 tries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data

from mfuser_model.classes import IGNORE_INDEX
from mfuser_model.fileio import atomic_path
from training.datasets import SegmentationDataset, Transform
from training.errors import DatasetError

__all__ = [
    "RareClassDataset",
    "RareClassSampler",
    "compute_class_stats",
    "load_or_compute_stats",
    "user_cache_dir",
]

_log = logging.getLogger(__name__)

STATS_FILE = "sample_class_stats.json"
SAMPLES_FILE = "samples_with_class.json"


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mfuser`` (default ``~/.cache/mfuser``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mfuser"


def compute_class_stats(dataset: SegmentationDataset, num_threads: int = 4) -> list[dict[str, Any]]:
    """Per-image train-id pixel counts (classes with zero pixels omitted), in dataset order."""
    stats_dir = dataset.stats_dir.resolve()

    def one(i: int) -> dict[str, Any]:
        label = dataset.load_label(i)
        counts = np.bincount(label.reshape(-1), minlength=256)
        entry: dict[str, Any] = {"file": os.path.relpath(dataset.labels[i].resolve(), stats_dir)}
        for c in np.flatnonzero(counts[:IGNORE_INDEX]):
            entry[str(int(c))] = int(counts[c])
        return entry

    if num_threads > 1:
        # PIL/cv2 PNG decoding releases the GIL, so threads give a real speed-up without pickling the dataset.
        with ThreadPoolExecutor(num_threads) as pool:
            return list(pool.map(one, range(len(dataset))))
    return [one(i) for i in range(len(dataset))]


def _samples_with_class(stats: list[dict[str, Any]]) -> dict[str, list[list[Any]]]:
    out: dict[str, list[list[Any]]] = {}
    for entry in stats:
        for key, n in entry.items():
            if key != "file":
                out.setdefault(key, []).append([entry["file"], n])
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def _write_json_atomic(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1), encoding="utf-8")


def _relative_entries(stats: Any, dataset: SegmentationDataset) -> list[dict[str, Any]] | None:
    """Cache entries with ``file`` relative to the stats folder, or None if the cache is not for these labels.

    DAFormer's converters (which MFuser's tools reuse) store absolute label paths; those are accepted too.
    """
    if not isinstance(stats, list) or len(stats) != len(dataset) or not all(isinstance(e, dict) for e in stats):
        return None
    stats_dir = dataset.stats_dir.resolve()
    out = []
    for e in stats:
        f = e.get("file")
        if not isinstance(f, str):
            return None
        out.append(e | {"file": os.path.relpath(f, stats_dir) if os.path.isabs(f) else f})
    expected = {os.path.relpath(p.resolve(), stats_dir) for p in dataset.labels}
    return out if {e["file"] for e in out} == expected else None


def load_or_compute_stats(
    dataset: SegmentationDataset, cache_dir: str | Path | None = None, num_threads: int = 4
) -> tuple[list[dict[str, Any]], Path]:
    """Class statistics of ``dataset``, read from cache or computed and cached (both JSON files, atomically).

    The cache folder is ``cache_dir`` if given, else ``dataset.stats_dir``; if that is not writable the files go
    to ``user_cache_dir()/rcs/<hash of the data path>`` and a warning says so. A cache whose file list does not
    match the dataset is recomputed.

    Returns:
        (per-image stats in dataset order, path of the ``sample_class_stats.json`` used).
    """
    folders = [Path(cache_dir)] if cache_dir is not None else [dataset.stats_dir]
    digest = hashlib.sha1(str(dataset.stats_dir.resolve()).encode()).hexdigest()[:16]
    fallback = user_cache_dir() / "rcs" / digest
    if cache_dir is None:
        folders.append(fallback)
    for folder in folders:
        path = folder / STATS_FILE
        if path.is_file():
            try:
                stats = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                _log.warning("%s: unreadable RCS cache (%s); recomputing", path, err)
                continue
            entries = _relative_entries(stats, dataset)
            if entries is not None:
                by_file = {e["file"]: e for e in entries}
                stats_dir = dataset.stats_dir.resolve()
                ordered = [by_file[os.path.relpath(p.resolve(), stats_dir)] for p in dataset.labels]
                return ordered, path
            _log.warning("%s: RCS cache does not match the %d labels of %s; recomputing", path, len(dataset), dataset)
    _log.info("computing rare-class statistics over %d labels of %s", len(dataset), dataset)
    stats = compute_class_stats(dataset, num_threads=num_threads)
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _write_json_atomic(folder / STATS_FILE, stats)
            _write_json_atomic(folder / SAMPLES_FILE, _samples_with_class(stats))
        except OSError as err:
            if folder == folders[-1]:
                msg = f"{folder}: cannot write rare-class statistics: {err}"
                raise DatasetError(msg) from err
            _log.warning("%s is not writable (%s); caching rare-class statistics in %s instead", folder, err, fallback)
            continue
        return stats, folder / STATS_FILE
    raise AssertionError("unreachable: the last folder either returns or raises")


class RareClassSampler:
    """Draws ``(dataset index, class id)`` pairs with DAFormer's rare-class sampling.

    Args:
        dataset: the source dataset (its labels give the statistics).
        class_temp: softmax temperature T; large T -> uniform over classes, small T -> rarest class.
        min_pixels: an image qualifies for class c when it has more than this many pixels of c.
        seed: seed of the sampler's own generator (used when :meth:`draw` gets no ``rng``).
        cache_dir: where the statistics are cached (default: beside the labels).
        stats: precomputed per-image stats (skips the cache; for tests and tools).

    Raises:
        DatasetError: no image has more than ``min_pixels`` pixels of any class.
    """

    def __init__(
        self,
        dataset: SegmentationDataset,
        *,
        class_temp: float = 100.0,
        min_pixels: int = 3000,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        stats: list[dict[str, Any]] | None = None,
    ) -> None:
        if class_temp <= 0:
            msg = f"class_temp must be > 0, got {class_temp}"
            raise ValueError(msg)
        if stats is None:
            stats, self.stats_path = load_or_compute_stats(dataset, cache_dir)
        else:
            self.stats_path = None
        self.class_temp = class_temp
        self.min_pixels = min_pixels
        totals: dict[int, int] = {}
        for entry in stats:
            for key, n in entry.items():
                if key != "file":
                    totals[int(key)] = totals.get(int(key), 0) + int(n)
        # samples_with_class filtered by min_pixels, as indices into the dataset.
        self.samples_with_class: dict[int, np.ndarray] = {}
        for c in sorted(totals):
            idx = [i for i, e in enumerate(stats) if int(e.get(str(c), 0)) > min_pixels]
            if idx:
                self.samples_with_class[c] = np.asarray(idx, dtype=np.int64)
            else:
                _log.warning("RCS: no image has more than %d pixels of class %d; it is never sampled", min_pixels, c)
        if not self.samples_with_class:
            msg = f"{dataset.stats_dir}: no label has more than min_pixels={min_pixels} pixels of any class"
            raise DatasetError(msg)
        self.classes = np.asarray(list(self.samples_with_class), dtype=np.int64)
        freq = np.asarray([totals[int(c)] for c in self.classes], dtype=np.float64)
        freq = freq / sum(totals.values())  # frequency over all counted pixels, as DAFormer
        logits = (1.0 - freq) / class_temp
        logits -= logits.max()
        prob = np.exp(logits)
        self.class_probs = prob / prob.sum()
        self.generator = np.random.default_rng(seed)

    def draw(self, rng: np.random.Generator | None = None) -> tuple[int, int]:
        """One ``(dataset index, class id)``; uses the sampler's own generator when ``rng`` is None."""
        g = self.generator if rng is None else rng
        c = int(g.choice(self.classes, p=self.class_probs))
        index = int(g.choice(self.samples_with_class[c]))
        return index, c

    def state_dict(self) -> dict[str, Any]:
        """Generator state, for exact resume."""
        return {"generator": self.generator.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.generator.bit_generator.state = state["generator"]


class RareClassDataset(torch.utils.data.Dataset):
    """Training dataset that draws every item with rare-class sampling and re-crops toward the drawn class.

    Item ``i`` is a pure function of ``(seed, i)`` (its generator is seeded from them), so a DataLoader with any
    number of workers yields the same stream, and resuming needs only the item index.

    Args:
        dataset: source dataset (its own ``transform`` is not used).
        transform: ``transform(sample, rng) -> sample`` with a ``"label"`` entry (numpy or torch).
        sampler: a :class:`RareClassSampler` over ``dataset``.
        min_crop_ratio: re-crop until the crop holds more than ``sampler.min_pixels * min_crop_ratio`` pixels.
        max_recrops: at most this many augmentation draws per item.
        length: nominal length (e.g. iterations × batch size); default ``len(dataset)``.
        seed: base seed.
    """

    def __init__(
        self,
        dataset: SegmentationDataset,
        transform: Transform,
        sampler: RareClassSampler,
        *,
        min_crop_ratio: float = 0.5,
        max_recrops: int = 10,
        length: int | None = None,
        seed: int = 0,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.sampler = sampler
        self.min_crop_ratio = min_crop_ratio
        self.max_recrops = max(1, max_recrops)
        self.length = len(dataset) if length is None else length
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, index])
        i, c = self.sampler.draw(rng)
        raw = self.dataset.load(i)
        threshold = self.sampler.min_pixels * self.min_crop_ratio
        for _ in range(self.max_recrops):
            out = self.transform(dict(raw), rng)
            label = out["label"]
            n = int((label == c).sum())
            if n > threshold:
                break
        out["rcs_class"] = c
        return out
