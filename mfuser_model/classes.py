"""The 19 Cityscapes training classes every model here predicts, and their standard palette."""

from __future__ import annotations

import numpy as np

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABEL_TO_TRAIN",
    "CITYSCAPES_PALETTE",
    "IGNORE_INDEX",
    "colorize",
    "palette_from_hex",
    "palette_to_hex",
]

IGNORE_INDEX = 255

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

# Cityscapes labelId -> trainId for the 19 evaluated classes (GTAV labels use the same ids); every other labelId
# (0-6 void, 9 parking, 10 rail track, 14 guard rail, 15 bridge, 16 tunnel, 18 polegroup, 29 caravan, 30 trailer)
# is ignored. Training's datasets and the replay evaluator both read it from here.
CITYSCAPES_LABEL_TO_TRAIN: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

# RGB, as in cityscapesscripts' label table.
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)


def palette_to_hex(palette: tuple[tuple[int, int, int], ...]) -> tuple[str, ...]:
    """RGB triples -> ``"#RRGGBB"`` strings (the node's ``color_palette`` parameter, the report's legend)."""
    return tuple(f"#{r:02X}{g:02X}{b:02X}" for r, g, b in palette)


def palette_from_hex(colors: tuple[str, ...] | list[str]) -> tuple[tuple[int, int, int], ...]:
    """``"#RRGGBB"`` strings -> RGB triples; raises ValueError naming a malformed entry."""
    palette = []
    for color in colors:
        text = str(color)
        if len(text) != 7 or text[0] != "#":
            msg = f"colour {text!r} is not '#RRGGBB'"
            raise ValueError(msg)
        try:
            palette.append((int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)))
        except ValueError:
            msg = f"colour {text!r} is not '#RRGGBB'"
            raise ValueError(msg) from None
    return tuple(palette)


def colorize(labels: np.ndarray, palette: tuple[tuple[int, int, int], ...] = CITYSCAPES_PALETTE) -> np.ndarray:
    """Map an (H, W) uint8 label image to (H, W, 3) uint8 RGB; ignore (255) and unknown ids become black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[labels]
