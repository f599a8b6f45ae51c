"""The scene canvas: a pinhole camera over a flat street, draw buffers (image, train-id labels, depth, emitted light)
and the drawing primitives every street object is built from, plus the class palettes the styles start from.

Coordinates are metres: x to the right, y up from the ground, z forward from the camera, which sits ``hc`` = 1.5 m
above the road. Everything drawn writes colour, label and depth together, so labels are exact by construction.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

__all__ = [
    "BICYCLE", "BUILDING", "BUS", "CAR", "FENCE", "LIGHT", "MOTORCYCLE", "PALETTES", "PERSON", "POLE", "RIDER", "ROAD",
    "SIDEWALK", "SIGN", "SKY", "TERRAIN", "TRAIN", "TRUCK", "VEG", "WALL", "Color", "Scene", "texture_palette",
]

# Train ids, named for readability.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)

Color = tuple[float, float, float]

# Base albedo colours per class (RGB). "game" is bright and saturated, "city" muted (Cityscapes-like).
PALETTES: dict[str, dict[str, list[Color]]] = {
    "game": {
        "road": [(72, 72, 78), (84, 82, 86)],
        "sidewalk": [(168, 160, 150), (150, 150, 158)],
        "curb": [(200, 198, 190)],
        "building": [(214, 190, 150), (178, 84, 64), (150, 152, 160), (236, 230, 214), (96, 130, 168), (190, 150, 110)],
        "window": [(40, 60, 90), (60, 90, 130)],
        "wall": [(186, 176, 156), (150, 140, 130)],
        "fence": [(120, 100, 80), (130, 130, 135)],
        "pole": [(96, 96, 102), (60, 70, 60)],
        "veg": [(54, 130, 40), (80, 150, 50), (40, 110, 50)],
        "trunk": [(90, 62, 40)],
        "terrain": [(120, 170, 70), (140, 160, 80)],
        "sky_top": [(70, 140, 230)],
        "sky_bottom": [(190, 220, 250)],
        "skin": [(230, 190, 160), (170, 120, 90), (120, 80, 60)],
        "cloth": [(200, 40, 40), (40, 60, 160), (30, 30, 30), (230, 230, 230), (230, 190, 40), (60, 140, 60)],
        "car": [(200, 30, 30), (30, 70, 190), (230, 230, 230), (20, 20, 20), (230, 180, 20), (40, 150, 60)],
        "truck": [(235, 235, 235), (90, 100, 120), (200, 90, 30)],
        "bus": [(240, 200, 30), (200, 40, 40), (40, 100, 200)],
        "train": [(220, 40, 40), (240, 240, 240)],
        "moto": [(20, 20, 20), (190, 20, 20)],
        "bike": [(30, 30, 30), (30, 90, 170)],
    },
    "city": {
        "road": [(92, 88, 96), (104, 100, 106)],
        "sidewalk": [(142, 132, 136), (128, 124, 122)],
        "curb": [(160, 156, 150)],
        "building": [(120, 116, 110), (150, 140, 124), (96, 92, 90), (170, 160, 146), (130, 110, 98)],
        "window": [(40, 44, 50), (56, 60, 66)],
        "wall": [(140, 134, 124), (118, 114, 108)],
        "fence": [(100, 96, 88), (120, 118, 112)],
        "pole": [(90, 92, 94), (70, 74, 72)],
        "veg": [(70, 92, 46), (56, 80, 40), (86, 104, 56)],
        "trunk": [(70, 58, 48)],
        "terrain": [(100, 112, 70), (118, 120, 84)],
        "sky_top": [(150, 170, 196)],
        "sky_bottom": [(205, 212, 220)],
        "skin": [(200, 160, 140), (150, 110, 90)],
        "cloth": [(40, 40, 46), (80, 80, 90), (120, 40, 40), (50, 60, 90), (160, 150, 140)],
        "car": [(40, 42, 46), (150, 152, 156), (190, 190, 192), (40, 50, 90), (110, 30, 30)],
        "truck": [(180, 180, 178), (70, 76, 84)],
        "bus": [(200, 200, 196), (150, 40, 40)],
        "train": [(200, 200, 196), (170, 60, 50)],
        "moto": [(30, 30, 34), (80, 80, 90)],
        "bike": [(30, 30, 34), (60, 60, 70)],
    },
}


def texture_palette(rng: np.random.Generator) -> dict[str, list[Color]]:
    """The city palette with every class's hue rotated by its own random angle, saturation raised and brightness
    rescaled (purple skies, orange foliage, ...), to shift colour statistics without changing shapes."""
    out: dict[str, list[Color]] = {}
    for key, colors in PALETTES["city"].items():
        shift = int(rng.integers(30, 150))
        sat = float(rng.uniform(1.2, 2.0))
        val = float(rng.uniform(0.75, 1.35))
        new = []
        for c in colors:
            hsv = cv2.cvtColor(np.uint8([[c]]), cv2.COLOR_RGB2HSV).astype(np.int32)[0, 0]
            hsv[0] = (hsv[0] + shift) % 180
            hsv[1] = int(np.clip(max(hsv[1], 80) * sat, 0, 255))
            hsv[2] = int(np.clip(hsv[2] * val, 0, 255))
            rgb = cv2.cvtColor(np.uint8([[hsv]]), cv2.COLOR_HSV2RGB)[0, 0]
            new.append(tuple(float(v) for v in rgb))
        out[key] = new
    return out


class Scene:
    """Camera, draw buffers and primitive helpers for one scene."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, palette: dict[str, list[Color]]) -> None:
        self.rng = rng
        self.H, self.W = height, width
        self.pal = palette
        self.f = width * float(rng.uniform(0.5, 0.68))
        self.cx = width / 2 + float(rng.uniform(-0.04, 0.04)) * width
        self.yh = height * float(rng.uniform(0.36, 0.46))
        self.hc = 1.5
        self.img = np.zeros((height, width, 3), np.float32)
        self.label = np.full((height, width), SKY, np.uint8)
        self.depth = np.full((height, width), 1e4, np.float32)
        self.emissive = np.zeros((height, width, 3), np.float32)  # light sources (used by the night style)
        self.lamps: list[tuple[float, float, float]] = []  # (x, y_ground, radius px) of street-lamp pools
        self.objects: list[tuple[float, Callable[[], None]]] = []

    # ---- helpers ---------------------------------------------------------------------------------------------
    def color(self, key: str, jitter: float = 12.0) -> Color:
        base = self.pal[key][int(self.rng.integers(len(self.pal[key])))]
        j = self.rng.normal(0, jitter, 3)
        return tuple(float(np.clip(b + d, 0, 255)) for b, d in zip(base, j, strict=True))  # type: ignore[return-value]

    def proj(self, x: float, y: float, z: float) -> tuple[float, float]:
        return self.cx + self.f * x / z, self.yh + self.f * (self.hc - y) / z

    def pts(self, xyz: list[tuple[float, float, float]]) -> np.ndarray:
        return np.round(np.array([self.proj(*p) for p in xyz], np.float64)).astype(np.int32)

    def poly(self, pts: np.ndarray, color: Color, cls: int, z: float, emit: Color | None = None) -> None:
        cv2.fillPoly(self.img, [pts], color)
        cv2.fillPoly(self.label, [pts], int(cls))
        cv2.fillPoly(self.depth, [pts], float(z))
        if emit is not None:
            cv2.fillPoly(self.emissive, [pts], emit)

    def polys(self, many: list[np.ndarray], color: Color, cls: int, z: float, emit: Color | None = None) -> None:
        if many:
            cv2.fillPoly(self.img, many, color)
            cv2.fillPoly(self.label, many, int(cls))
            cv2.fillPoly(self.depth, many, float(z))
            if emit is not None:
                cv2.fillPoly(self.emissive, many, emit)

    def quad(
        self, corners: list[tuple[float, float, float]], color: Color, cls: int, emit: Color | None = None
    ) -> None:
        z = float(np.mean([c[2] for c in corners]))
        self.poly(self.pts(corners), color, cls, z, emit)

    def disc(self, x: float, y: float, z: float, r: float, color: Color, cls: int, emit: Color | None = None) -> None:
        """A disc of radius r metres facing the camera."""
        px, py = self.proj(x, y, z)
        rp = max(1, round(self.f * r / z))
        c = (round(px), round(py))
        cv2.circle(self.img, c, rp, color, -1)
        cv2.circle(self.label, c, rp, int(cls), -1)
        cv2.circle(self.depth, c, rp, float(z), -1)
        if emit is not None:
            cv2.circle(self.emissive, c, rp, emit, -1)

    def box(self, x0: float, x1: float, y0: float, y1: float, z0: float, z1: float, color: Color, cls: int) -> None:
        """Axis-aligned 3D box: draws the visible side, top and near faces with simple shading."""
        c = np.asarray(color)
        if x0 > 0:  # right of the camera: its left side faces us
            self.quad([(x0, y0, z0), (x0, y1, z0), (x0, y1, z1), (x0, y0, z1)], tuple(c * 0.78), cls)
        elif x1 < 0:
            self.quad([(x1, y0, z0), (x1, y1, z0), (x1, y1, z1), (x1, y0, z1)], tuple(c * 0.78), cls)
        if y1 < self.hc:
            self.quad([(x0, y1, z0), (x1, y1, z0), (x1, y1, z1), (x0, y1, z1)], tuple(np.minimum(c * 1.12, 255)), cls)
        self.quad([(x0, y0, z0), (x1, y0, z0), (x1, y1, z0), (x0, y1, z0)], tuple(c), cls)

    def add(self, key: float, fn: Callable[[], None]) -> None:
        self.objects.append((key, fn))

    def ground_y(self, z: float) -> float:
        return self.yh + self.f * self.hc / z
