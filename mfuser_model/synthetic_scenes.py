"""Procedural driving scenes with exact labels, for tests, demos and domain-shift checks.

A pinhole camera 1.5 m above a flat street looks down the road; the scene (road with lane markings, curbs,
sidewalks, grass strips, building rows with windows, walls, fences, hedges, trees, poles, street lamps, traffic
lights and signs, cars, trucks, buses, trams, pedestrians, cyclists and motorcyclists, a skyline at the far end)
is drawn far-to-near with cv2 polygons into an image, a train-id label map and a depth map at the same time.
Rendering styles then change appearance while the class structure stays the same:

- ``"game"`` — GTAV-like source domain: saturated flat colours, clean, sunny.
- ``"day"`` — Cityscapes-like: muted palette, surface textures, sensor noise, ego-vehicle hood.
- ``"night"`` — dark ambient light, street-lamp pools, lit windows, head/tail lights with bloom, noise.
- ``"fog"`` — contrast lost toward a grey airlight with depth (``exp(-beta * depth)``).
- ``"rain"`` — dark, blue-tinted, wet road reflections, rain streaks, lens blur.
- ``"texture"`` — altered palette (shifted hues) with strong per-class procedural textures.

It lives in the core library because training (dataset writers, ``training.synthetic``) and the ROS side
(the demo drive bag, ``mfuser_ros.make_demo_bag``) both draw from it and neither may import the other.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from mfuser_model.classes import IGNORE_INDEX

__all__ = ["STYLES", "render_scene"]

STYLES: tuple[str, ...] = ("game", "day", "night", "fog", "rain", "texture")

# Train ids, named for readability.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)

Color = tuple[float, float, float]

# Base albedo colours per class (RGB). "game" is bright and saturated, "city" muted (Cityscapes-like).
_PALETTES: dict[str, dict[str, list[Color]]] = {
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


def _texture_palette(rng: np.random.Generator) -> dict[str, list[Color]]:
    """The city palette with every class's hue rotated by its own random angle, saturation raised and brightness
    rescaled (purple skies, orange foliage, ...), to shift colour statistics without changing shapes."""
    out: dict[str, list[Color]] = {}
    for key, colors in _PALETTES["city"].items():
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


class _Scene:
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


# ---- scene content ----------------------------------------------------------------------------------------------
def _ground(s: _Scene, layout: dict[str, Any]) -> None:
    """Road, markings, curbs, sidewalks and grass per pixel below the horizon, and the sky gradient above."""
    H, W = s.H, s.W
    rows = np.arange(H, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(W, dtype=np.float32)[None, :] + 0.5
    below = rows > s.yh + 0.5
    z = np.where(below, s.f * s.hc / np.maximum(rows - s.yh, 1e-3), 1e4).astype(np.float32)
    x = (cols - s.cx) * z / s.f
    xl, xr = layout["road_left"], layout["road_right"]
    swl, swr = layout["sidewalk_left"], layout["sidewalk_right"]
    tl, tr = layout["terrain_left"], layout["terrain_right"]
    del tl, tr  # grass strips and whatever lies beyond the building lines are both terrain
    cls = np.full((H, W), TERRAIN, np.uint8)
    cls[(x > xl - swl) & (x < xr + swr)] = SIDEWALK
    cls[(x >= xl) & (x <= xr)] = ROAD
    cls = np.where(below, cls, SKY).astype(np.uint8)
    s.label[:] = cls
    s.depth[:] = np.where(below, z, 1e4)

    lut = np.zeros((256, 3), np.float32)
    lut[ROAD], lut[SIDEWALK], lut[TERRAIN] = s.color("road", 4), s.color("sidewalk", 6), s.color("terrain", 8)
    img = lut[cls]
    # Sky: vertical gradient from the zenith colour to the horizon colour.
    top, bottom = np.asarray(s.color("sky_top", 6)), np.asarray(s.color("sky_bottom", 6))
    t = np.clip(rows / max(s.yh, 1.0), 0, 1)[..., None]
    sky = (top * (1 - t) + bottom * t) * np.ones((1, W, 1), np.float32)
    img = np.where((cls == SKY)[..., None], sky, img)
    # Distance shading of the ground (slightly lighter far away).
    img *= np.where(below, 0.92 + 0.08 * np.clip(z / 60.0, 0, 1), 1.0)[..., None]
    # Curbs: a 0.2 m strip on each sidewalk edge (label stays sidewalk).
    curb = ((x > xl - 0.2) & (x < xl)) | ((x > xr) & (x < xr + 0.2))
    img[curb & below] = s.color("curb", 4)
    # Lane markings: dashed lane lines, solid edge lines, sometimes a zebra crossing (label stays road).
    width = 0.12
    mark = np.zeros((H, W), bool)
    for lx in layout["lane_lines"]:
        mark |= (np.abs(x - lx) < width) & (np.mod(z, 9.0) < 4.0)
    mark |= (np.abs(x - (xl + 0.35)) < width) | (np.abs(x - (xr - 0.35)) < width)
    if layout["zebra"] is not None:
        z0 = layout["zebra"]
        mark |= (z > z0) & (z < z0 + 3.5) & (np.mod(x, 1.0) < 0.5) & (x > xl + 0.6) & (x < xr - 0.6)
    mark &= cls == ROAD
    img[mark] = layout["mark_color"]
    s.img[:] = img


def _building_row(s: _Scene, side: int, x_line: float, z_start: float, z_end: float, night_lit: float) -> None:
    """A row of building blocks along one side, with gaps holding trees, walls, fences or hedges."""
    rng = s.rng
    z = z_start
    while z < z_end:
        length = float(rng.uniform(8, 26))
        if rng.random() < 0.28:  # a gap
            gap = min(float(rng.uniform(5, 14)), z_end - z)
            kind = rng.choice(["trees", "wall", "fence", "hedge"])
            _gap_filler(s, side, x_line, z, z + gap, str(kind))
            z += gap
            continue
        z1 = min(z + length, z_end)
        height = float(rng.uniform(7, 26))
        depth_b = float(rng.uniform(8, 15))
        setback = float(rng.uniform(0, 1.5))
        _building(s, side, x_line + setback, z, z1, height, depth_b, night_lit)
        z = z1


def _building(s: _Scene, side: int, xb: float, z0: float, z1: float, height: float, depth_b: float, lit: float) -> None:
    color = np.asarray(s.color("building", 10))
    win = s.color("window", 6)
    floor_h = float(s.rng.uniform(2.9, 3.5))
    pitch = float(s.rng.uniform(2.2, 3.4))
    x = side * xb
    rng = s.rng
    # The facade along the street, split into short segments so painter's order stays right near cars and poles.
    for a_raw, b in itertools.pairwise([*np.arange(z0, z1, 4.0).tolist(), z1]):
        if b <= 1.0:
            continue
        a = max(a_raw, 1.0)

        def draw(a: float = a, b: float = b) -> None:
            shade = 0.82 if side > 0 else 0.9
            s.quad([(x, 0, a), (x, height, a), (x, height, b), (x, 0, b)], tuple(color * shade), BUILDING)
            wins, lit_w = [], []
            for zc in np.arange(a + pitch / 2, b - 0.6, pitch):
                for yf in np.arange(floor_h * 0.45 + (0.6 if height > 8 else 0), height - 1.2, floor_h):
                    z_a, z_b = zc - 0.55, zc + 0.55
                    corners = [(x, yf, z_a), (x, yf + 1.5, z_a), (x, yf + 1.5, z_b), (x, yf, z_b)]
                    (lit_w if rng.random() < lit else wins).append(s.pts(corners))
            s.polys(wins, win, BUILDING, (a + b) / 2)
            s.polys(lit_w, (255, 214, 140), BUILDING, (a + b) / 2, emit=(255, 200, 120))

        s.add(b + 0.01, draw)
    # The near end face, facing the camera.
    if z0 > 1.5:
        xs = sorted([x, x + side * depth_b])

        def front() -> None:
            s.quad([(xs[0], 0, z0), (xs[1], 0, z0), (xs[1], height, z0), (xs[0], height, z0)], tuple(color), BUILDING)

        s.add(z0, front)


def _gap_filler(s: _Scene, side: int, x_line: float, z0: float, z1: float, kind: str) -> None:
    rng = s.rng
    if kind == "trees":
        for zt in np.arange(z0 + 2, z1, float(rng.uniform(3, 5))):
            _tree(s, side * (x_line + float(rng.uniform(0.5, 4))), float(zt), big=True)
        return
    h = float(rng.uniform(*{"wall": (1.2, 3.0), "fence": (1.2, 2.2), "hedge": (0.9, 1.6)}[kind]))
    cls = {"wall": WALL, "fence": FENCE, "hedge": VEG}[kind]
    color = np.asarray(s.color({"wall": "wall", "fence": "fence", "hedge": "veg"}[kind], 8))
    x = side * (x_line + 0.3)
    for a, b in itertools.pairwise([*np.arange(max(z0, 1.0), z1, 3.0).tolist(), z1]):

        def draw(a: float = a, b: float = b) -> None:
            s.quad([(x, 0, a), (x, h, a), (x, h, b), (x, 0, b)], tuple(color * 0.9), cls)
            if kind == "fence":  # posts and rails drawn darker over the fence area
                dark = tuple(color * 0.55)
                for zp in np.arange(a, b, 0.25):
                    p = s.pts([(x, 0, zp), (x, h, zp)])
                    cv2.line(s.img, tuple(p[0]), tuple(p[1]), dark, 1)
                for yr in (h * 0.15, h * 0.9):
                    p = s.pts([(x, yr, a), (x, yr, b)])
                    cv2.line(s.img, tuple(p[0]), tuple(p[1]), dark, 1)
            elif kind == "wall":
                p = s.pts([(x, h, a), (x, h, b)])
                cv2.line(s.img, tuple(p[0]), tuple(p[1]), tuple(color * 0.6), 2)

        s.add(b + 0.02, draw)


def _tree(s: _Scene, x: float, z: float, big: bool = False) -> None:
    rng = s.rng
    trunk_h = float(rng.uniform(2.0, 3.5))
    r = float(rng.uniform(1.6, 3.2) if big else rng.uniform(1.2, 2.2))
    trunk = s.color("trunk", 6)
    blobs = [(float(rng.normal(0, r * 0.35)), float(rng.normal(0, r * 0.3)), float(rng.uniform(0.55, 0.9)) * r)
             for _ in range(6)]
    shades = [s.color("veg", 14) for _ in blobs]

    def draw() -> None:
        s.quad([(x - 0.15, 0, z), (x + 0.15, 0, z), (x + 0.12, trunk_h + r * 0.5, z), (x - 0.12, trunk_h + r * 0.5, z)],
               trunk, VEG)
        for (dx, dy, rr), col in zip(blobs, shades, strict=True):
            s.disc(x + dx, trunk_h + r + dy, z, rr, col, VEG)

    s.add(z, draw)


def _pole_with(s: _Scene, x: float, z: float, kind: str) -> None:
    """Pole alone, street lamp, traffic light (side or overhead) or traffic sign."""
    rng = s.rng
    pole_c = s.color("pole", 6)
    h = {"pole": float(rng.uniform(4, 8)), "lamp": float(rng.uniform(6, 8.5)), "light": float(rng.uniform(3.2, 4.2)),
         "overhead": float(rng.uniform(5.5, 6.5)), "sign": float(rng.uniform(2.6, 3.4))}[kind]
    w = 0.09

    def draw() -> None:
        s.quad([(x - w, 0, z), (x + w, 0, z), (x + w, h, z), (x - w, h, z)], pole_c, POLE)
        inward = -np.sign(x) if x != 0 else 1.0
        if kind == "lamp":
            tip = x + inward * 1.6
            s.quad([(x, h - 0.05, z), (tip, h - 0.05, z), (tip, h + 0.08, z), (x, h + 0.08, z)], pole_c, POLE)
            s.quad([(tip - 0.35, h - 0.18, z), (tip + 0.35, h - 0.18, z), (tip + 0.3, h, z), (tip - 0.3, h, z)],
                   (200, 200, 190), POLE, emit=(255, 230, 180))
            gx, gy = s.proj(tip, 0, z)
            s.lamps.append((gx, gy, min(s.f * 3.0 / z, s.W * 0.25)))
        elif kind in ("light", "overhead"):
            cx = x
            top = h
            if kind == "overhead":
                cx = x + inward * float(rng.uniform(2.5, 4.5))
                s.quad([(x, h - 0.1, z), (cx, h - 0.1, z), (cx, h + 0.05, z), (x, h + 0.05, z)], pole_c, POLE)
                top = h - 0.1
            housing = (35, 35, 35)
            s.quad([(cx - 0.18, top - 1.0, z - 0.01), (cx + 0.18, top - 1.0, z - 0.01), (cx + 0.18, top, z - 0.01),
                    (cx - 0.18, top, z - 0.01)], housing, LIGHT)
            on = int(rng.integers(3))
            for k, col in enumerate([(230, 30, 20), (240, 170, 20), (30, 220, 90)]):
                lit = k == on
                c = col if lit else tuple(v * 0.25 for v in col)
                s.disc(cx, top - 0.2 - 0.3 * k, z - 0.02, 0.1, c, LIGHT, emit=col if lit else None)
        elif kind == "sign":
            shape = rng.choice(["circle", "triangle", "rect", "diamond"])
            y = h - 0.35
            zs = z - 0.01
            if shape == "circle":
                s.disc(x, y, zs, 0.35, (200, 20, 30), SIGN)
                s.disc(x, y, zs, 0.26, (235, 235, 235), SIGN)
            elif shape == "triangle":
                s.quad([(x - 0.4, y - 0.3, zs), (x + 0.4, y - 0.3, zs), (x, y + 0.4, zs), (x, y + 0.4, zs)],
                       (210, 30, 30), SIGN)
                s.quad([(x - 0.28, y - 0.22, zs), (x + 0.28, y - 0.22, zs), (x, y + 0.26, zs), (x, y + 0.26, zs)],
                       (240, 240, 240), SIGN)
            elif shape == "rect":
                s.quad([(x - 0.4, y - 0.3, zs), (x + 0.4, y - 0.3, zs), (x + 0.4, y + 0.3, zs), (x - 0.4, y + 0.3, zs)],
                       (30, 80, 190), SIGN)
            else:
                s.quad([(x, y - 0.4, zs), (x + 0.4, y, zs), (x, y + 0.4, zs), (x - 0.4, y, zs)], (240, 200, 20), SIGN)

    s.add(z, draw)


def _wheel(s: _Scene, x: float, zc: float, r: float) -> np.ndarray:
    ang = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    return s.pts([(x, r + r * np.sin(a), zc + r * np.cos(a)) for a in ang])


# (width, height, length) in metres.
_VEHICLE_DIMS = {
    "car": (1.8, 1.45, 4.3), "truck": (2.5, 3.4, 8.0), "bus": (2.55, 3.1, 12.0), "train": (2.65, 3.4, 26.0),
}
_VEHICLE_CLASS = {"car": CAR, "truck": TRUCK, "bus": BUS, "train": TRAIN}
_GLASS = (40, 46, 56)


def _vehicle_body(s: _Scene, kind: str, x0: float, x1: float, z0: float, color: np.ndarray, facing: str) -> None:
    """Body boxes and windows of a vehicle occupying ``[x0, x1] x [z0, z0 + length]``."""
    _, h, length = _VEHICLE_DIMS[kind]
    cls = _VEHICLE_CLASS[kind]
    z1 = z0 + length
    side_x = x0 if x0 > 0 else (x1 if x1 < 0 else None)
    if kind == "car":
        s.box(x0, x1, 0.3, 0.95, z0, z1, tuple(color), cls)
        s.box(x0 + 0.12, x1 - 0.12, 0.95, h, z0 + 0.9, z1 - 1.1, tuple(color * 0.95), cls)
        s.quad([(x0 + 0.22, 1.0, z0 + 0.9), (x1 - 0.22, 1.0, z0 + 0.9), (x1 - 0.3, h - 0.07, z0 + 0.9),
                (x0 + 0.3, h - 0.07, z0 + 0.9)], _GLASS, cls)
        if side_x is not None:
            sx = x0 + 0.12 if side_x == x0 else x1 - 0.12
            s.quad([(sx, 1.0, z0 + 1.1), (sx, h - 0.08, z0 + 1.2), (sx, h - 0.08, z1 - 1.3), (sx, 1.0, z1 - 1.2)],
                   _GLASS, cls)
        return
    s.box(x0, x1, 0.35, h, z0, z1, tuple(color), cls)
    if kind == "truck":  # cab in front, lower and differently coloured
        cab_z = (z0 - 0.1, z0 + 2.2) if facing == "toward" else (z1 - 2.2, z1 + 0.1)
        s.box(x0 + 0.05, x1 - 0.05, 0.35, 2.8, cab_z[0], cab_z[1], tuple(color * 0.7), cls)
        return
    lo, hi, zf = 1.3, 2.6, z0 - 0.01  # window band of buses and trams
    s.quad([(x0 + 0.2, lo, zf), (x1 - 0.2, lo, zf), (x1 - 0.2, hi, zf), (x0 + 0.2, hi, zf)], _GLASS, cls)
    if side_x is not None:
        wins = [s.pts([(side_x, lo, zz), (side_x, hi, zz), (side_x, hi, zz + 1.3), (side_x, lo, zz + 1.3)])
                for zz in np.arange(z0 + 0.6, z1 - 1.5, 1.6)]
        s.polys(wins, _GLASS, cls, z0 + length / 2)
    if kind == "train":  # pantograph
        xc = (x0 + x1) / 2
        p = s.pts([(xc, h, z0 + 5), (xc, h + 1.0, z0 + 6)])
        cv2.line(s.img, tuple(p[0]), tuple(p[1]), (40, 40, 40), 1)
        cv2.line(s.label, tuple(p[0]), tuple(p[1]), TRAIN, 1)


def _vehicle_gear(s: _Scene, kind: str, x0: float, x1: float, z0: float, facing: str) -> None:
    """Wheels (under the near face and on the visible side) and head/tail lights (emissive at night)."""
    cls = _VEHICLE_CLASS[kind]
    z1 = z0 + _VEHICLE_DIMS[kind][2]
    side_x = x0 if x0 > 0 else (x1 if x1 < 0 else None)
    dark = (20, 20, 22)
    zw0 = z0 + 0.3
    for wa, wb in ((x0 + 0.05, x0 + 0.3), (x1 - 0.3, x1 - 0.05)):
        s.quad([(wa, 0, zw0), (wb, 0, zw0), (wb, 0.36, zw0), (wa, 0.36, zw0)], dark, cls)
    if side_x is not None:
        wheel_r = 0.33 if kind == "car" else 0.5
        for zw in (z0 + 0.9, z1 - 0.9) if kind != "train" else (z0 + 2, z0 + 4, z1 - 4, z1 - 2):
            s.polys([_wheel(s, side_x, zw, wheel_r)], dark, cls, zw)
    lc, emit = ((200, 20, 20), (255, 40, 30)) if facing == "away" else ((235, 235, 220), (255, 250, 230))
    ly, zl = (0.75 if kind == "car" else 0.8), z0 - 0.02
    for lx in (x0 + 0.12, x1 - 0.42):
        s.quad([(lx, ly, zl), (lx + 0.3, ly, zl), (lx + 0.3, ly + 0.16, zl), (lx, ly + 0.16, zl)], lc, cls, emit=emit)


def _vehicle(s: _Scene, kind: str, xc: float, z0: float, facing: str) -> None:
    """Car / truck / bus / tram as shaded boxes with windows, wheels and lights. ``facing`` = "away" (we see
    its rear) or "toward" (its front)."""
    w = _VEHICLE_DIMS[kind][0]
    color = np.asarray(s.color(kind, 12))
    x0, x1 = xc - w / 2, xc + w / 2

    def draw() -> None:
        _vehicle_body(s, kind, x0, x1, z0, color, facing)
        _vehicle_gear(s, kind, x0, x1, z0, facing)

    s.add(z0, draw)


def _person_2d(s: _Scene, x: float, z: float, height: float, cls: int, pose: str = "walk") -> None:
    """Pedestrian (or seated rider when ``pose == "ride"``), drawn in the image plane at its depth."""
    rng = s.rng
    skin, shirt, pants = s.color("skin", 8), s.color("cloth", 20), s.color("cloth", 20)
    stride = float(rng.uniform(-0.15, 0.15))

    def draw() -> None:
        fx, fy = s.proj(x, 0, z)
        hp = s.f * height / z
        if pose == "ride":
            fy -= hp * 0.35  # sitting on a saddle about 0.9 m up
        wsh, wh = hp * 0.13, hp * 0.11
        yhip, ysh, yhead = fy - hp * 0.47, fy - hp * 0.80, fy - hp * 0.90

        def to_pts(pts: list[tuple[float, float]]) -> np.ndarray:
            return np.round(np.array(pts)).astype(np.int32)

        legs = []
        for sgn in (-1, 1):
            foot = fx + sgn * stride * hp * 0.5 if pose == "walk" else fx + sgn * hp * 0.12
            foot_y = fy if pose == "walk" else fy + hp * 0.25
            legs.append(to_pts([(fx + sgn * wh * 0.1, yhip), (fx + sgn * wh, yhip), (foot + sgn * hp * 0.04, foot_y),
                           (foot - sgn * hp * 0.03, foot_y)]))
        s.polys(legs, pants, cls, z)
        torso = to_pts([(fx - wh, yhip), (fx + wh, yhip), (fx + wsh, ysh), (fx - wsh, ysh)])
        s.poly(torso, shirt, cls, z)
        yh2 = yhip + hp * 0.04
        arms = [to_pts([(fx + sgn * wsh, ysh), (fx + sgn * (wsh + hp * 0.05), ysh), (fx + sgn * (wh + hp * 0.07), yh2),
                        (fx + sgn * (wh + hp * 0.02), yh2)]) for sgn in (-1, 1)]
        s.polys(arms, shirt, cls, z)
        r = max(1, round(hp * 0.065))
        c = (round(fx), round(yhead))
        cv2.circle(s.img, c, r, skin, -1)
        cv2.circle(s.label, c, r, int(cls), -1)
        cv2.circle(s.depth, c, r, float(z), -1)

    s.add(z - 0.05, draw)


def _two_wheeler(s: _Scene, x: float, z: float, kind: str) -> None:
    """Bicycle or motorcycle seen from the side, with its rider."""
    rng = s.rng
    cls = BICYCLE if kind == "bike" else MOTORCYCLE
    color = s.color("bike" if kind == "bike" else "moto", 10)
    r = 0.34 if kind == "bike" else 0.32
    base = 1.05 if kind == "bike" else 1.4
    direction = 1 if rng.random() < 0.5 else -1

    def draw() -> None:
        fx, fy = s.proj(x, 0, z)
        px = s.f / z  # pixels per metre at this depth
        rear = (fx - direction * base / 2 * px, fy - r * px)
        front = (fx + direction * base / 2 * px, fy - r * px)
        thick = max(1, round(0.06 * px))
        for c in (rear, front):
            cc = (round(c[0]), round(c[1]))
            rr = max(1, round(r * px))
            if kind == "bike":
                cv2.circle(s.img, cc, rr, color, thick)
                cv2.circle(s.label, cc, rr, cls, thick)
            else:
                cv2.circle(s.img, cc, rr, (22, 22, 22), -1)
                cv2.circle(s.label, cc, rr, cls, -1)
            cv2.circle(s.depth, cc, rr, float(z), -1)
        seat = (fx - direction * 0.15 * px, fy - 0.95 * px)
        bar = (fx + direction * 0.38 * px, fy - 1.05 * px)
        if kind == "bike":
            for a, b in ((rear, seat), (seat, (fx, fy - r * px)), ((fx, fy - r * px), rear), (seat, bar), (bar, front),
                         ((fx, fy - r * px), bar)):
                pa, pb = (round(a[0]), round(a[1])), (round(b[0]), round(b[1]))
                cv2.line(s.img, pa, pb, color, thick)
                cv2.line(s.label, pa, pb, cls, thick)
        else:
            body = np.round(np.array([rear, (seat[0], seat[1] + 0.05 * px), (bar[0], bar[1] + 0.1 * px), front,
                                      (fx, fy - 0.15 * px)])).astype(np.int32)
            s.poly(body, color, cls, z)

    s.add(z + 0.01, draw)
    _person_2d(s, x, z, float(rng.uniform(1.65, 1.85)), RIDER, pose="ride")


def _skyline(s: _Scene, z_far: float, x_min: float, x_max: float) -> None:
    rng = s.rng

    def draw() -> None:
        x = x_min
        while x < x_max:
            w = float(rng.uniform(6, 18))
            h = float(rng.uniform(8, 35))
            c = np.asarray(s.color("building", 10)) * 0.95
            if rng.random() < 0.25:
                _tree_far = s.color("veg", 10)
                s.quad([(x, 0, z_far), (x + w, 0, z_far), (x + w, h * 0.4, z_far), (x, h * 0.4, z_far)], _tree_far, VEG)
            else:
                s.quad([(x, 0, z_far), (x + w, 0, z_far), (x + w, h, z_far), (x, h, z_far)], tuple(c), BUILDING)
            x += w

    s.add(z_far + 1, draw)


def _layout(rng: np.random.Generator) -> dict[str, Any]:
    """Lateral layout in metres (camera at x = 0): lanes, sidewalks, grass strips, markings."""
    lanes_l, lanes_r = int(rng.integers(1, 3)), int(rng.integers(1, 3))  # oncoming lanes, lanes in our direction
    lane_w = float(rng.uniform(3.0, 3.6))
    c = float(rng.uniform(-0.6, 0.6))  # camera lane centre
    road_left = c - lane_w / 2 - lane_w * lanes_l
    road_right = c + lane_w / 2 + lane_w * (lanes_r - 1)
    return {
        "road_left": road_left,
        "road_right": road_right,
        "lane_w": lane_w,
        "lanes": [road_left + lane_w * (k + 0.5) for k in range(lanes_l + lanes_r)],
        "n_oncoming": lanes_l,
        "lane_lines": [road_left + lane_w * k for k in range(1, lanes_l + lanes_r)],
        "sidewalk_left": float(rng.uniform(2.0, 4.5)),
        "sidewalk_right": float(rng.uniform(2.0, 4.5)),
        "terrain_left": float(rng.uniform(1.5, 4.0)) if rng.random() < 0.5 else 0.0,
        "terrain_right": float(rng.uniform(1.5, 4.0)) if rng.random() < 0.5 else 0.0,
        "zebra": float(rng.uniform(8, 20)) if rng.random() < 0.3 else None,
        "mark_color": (235, 235, 230) if rng.random() < 0.8 else (230, 200, 60),
    }


def _roadside(s: _Scene, side: int, edge: float, sw: float, tw: float, z_far: float, lit: float) -> None:
    """One side of the street: building row, trees on the grass strip, poles, pedestrians, parked cars."""
    rng = s.rng
    _building_row(s, side, edge + sw + tw, float(rng.uniform(1, 6)), z_far, lit)
    if tw > 0 and rng.random() < 0.7:
        for zt in np.arange(float(rng.uniform(4, 10)), z_far * 0.6, float(rng.uniform(7, 14))):
            _tree(s, side * (edge + sw + tw / 2), float(zt))
    for zp in np.arange(float(rng.uniform(5, 12)), z_far * 0.7, float(rng.uniform(12, 22))):
        kind = str(rng.choice(["lamp", "pole", "sign", "light", "overhead", "lamp"]))
        _pole_with(s, side * (edge + 0.45), float(zp), kind)
    for _ in range(int(rng.integers(1, 6))):
        _person_2d(s, side * (edge + float(rng.uniform(0.6, sw - 0.3))), float(rng.uniform(5, 35)),
                   float(rng.uniform(1.55, 1.9)), PERSON)
    if rng.random() < 0.5:  # parked cars along the curb
        for zc in np.arange(float(rng.uniform(4, 12)), 45, float(rng.uniform(5.5, 9))):
            if rng.random() < 0.7:
                _vehicle(s, "car", side * (edge - 1.1), float(zc), "away" if side > 0 else "toward")


def _traffic(s: _Scene, lay: dict[str, Any], z_far: float) -> None:
    """Vehicles in the lanes (oncoming on the left), sometimes a tram, a cyclist and a motorcyclist."""
    rng = s.rng
    lanes = lay["lanes"]
    for k, lane in enumerate(lanes):
        facing = "toward" if k < lay["n_oncoming"] else "away"
        z = float(rng.uniform(5, 14)) if facing == "toward" or abs(lane) > 1.0 else float(rng.uniform(8, 20))
        while z < z_far * 0.8:
            kind = str(rng.choice(["car", "car", "car", "truck", "bus"], p=[0.3, 0.25, 0.2, 0.13, 0.12]))
            _vehicle(s, kind, float(lane + rng.uniform(-0.3, 0.3)), z, facing)
            z += _VEHICLE_DIMS[kind][2] + float(rng.uniform(4, 20))
    if rng.random() < 0.35:  # a tram in the leftmost lane
        _vehicle(s, "train", float(lanes[0]), float(rng.uniform(14, 30)), "toward")
    if rng.random() < 0.6:
        _two_wheeler(s, lay["road_right"] - 0.9, float(rng.uniform(6, 18)), "bike")
    if rng.random() < 0.5:
        _two_wheeler(s, float(rng.choice(lanes)) + 1.0, float(rng.uniform(7, 22)), "moto")


def _populate(s: _Scene, lay: dict[str, Any], lit: float) -> None:
    rng = s.rng
    xl, xr = lay["road_left"], lay["road_right"]
    z_far = float(rng.uniform(70, 130))
    _roadside(s, -1, -xl, lay["sidewalk_left"], lay["terrain_left"], z_far, lit)
    _roadside(s, 1, xr, lay["sidewalk_right"], lay["terrain_right"], z_far, lit)
    _skyline(s, z_far, xl - 60, xr + 60)
    _traffic(s, lay, z_far)


def _finish(s: _Scene, style: str, rng: np.random.Generator) -> np.ndarray:
    """Apply the style's photometric effects to the albedo image; returns uint8 RGB."""
    img = s.img
    H, W = s.H, s.W
    label = s.label
    if style != "game":
        # Per-class surface texture: low-frequency blotches and high-frequency grain, class-specific amounts.
        low = cv2.resize(rng.normal(0, 1, (max(2, H // 16), max(2, W // 16))).astype(np.float32), (W, H))
        high = rng.normal(0, 1, (H, W)).astype(np.float32)
        a = np.full(256, 0.05, np.float32)
        b = np.full(256, 0.04, np.float32)
        a[[ROAD, SIDEWALK, TERRAIN]], b[[ROAD, SIDEWALK, TERRAIN, VEG]] = 0.09, 0.09
        a[SKY], b[SKY] = 0.03, 0.01
        if style == "texture":
            a *= 3.0
            b *= 2.0
            freq = rng.uniform(0.08, 0.5, 256).astype(np.float32)
            yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
            stripes = np.sin(xx * freq[label] + yy * freq[(label.astype(np.int32) + 7) % 256] * 0.6)
            img = img * (1 + 0.22 * stripes[..., None])
        img = img * (1 + a[label][..., None] * low[..., None] + b[label][..., None] * high[..., None])
    if style == "game":
        img = img * (1.0 + 0.015 * rng.normal(0, 1, (H, W, 1)).astype(np.float32))
    elif style == "day":
        img = cv2.GaussianBlur(img, (0, 0), 0.6)
        gray = img.mean(axis=2, keepdims=True)
        img = gray + (img - gray) * 0.8
    elif style == "night":
        light = np.full((H, W), float(rng.uniform(0.10, 0.18)), np.float32)
        pools = np.zeros((H, W), np.float32)
        for gx, gy, rad in s.lamps:
            if -rad < gx < W + rad and gy < H + rad:
                cv2.ellipse(pools, ((gx, gy), (2.4 * rad, 1.0 * rad), 0.0), 1.0, -1)
        pools = cv2.GaussianBlur(pools, (0, 0), max(1.0, W / 80))
        light += 0.9 * pools
        tint = np.asarray([0.85, 0.9, 1.15], np.float32)  # moonlight blue in the ambient
        img = img * light[..., None] * tint
        sky = label == SKY
        rows = (np.arange(H, dtype=np.float32) / max(s.yh, 1.0))[:, None, None]
        sky_col = np.asarray([8, 10, 24], np.float32) + rows * np.asarray([30, 22, 18], np.float32)
        img = np.where(sky[..., None], np.broadcast_to(sky_col, img.shape), img)
        emit = s.emissive
        img = np.where(emit.max(axis=2, keepdims=True) > 0, emit, img)
        # Bloom: a tight halo at full resolution plus a wide glow blurred at quarter resolution (same look, cheaper).
        small = cv2.resize(emit, (max(1, W // 4), max(1, H // 4)), interpolation=cv2.INTER_AREA)
        wide = cv2.resize(cv2.GaussianBlur(small, (0, 0), max(1.0, W / 160)), (W, H), interpolation=cv2.INTER_LINEAR)
        img = img + 0.9 * cv2.GaussianBlur(emit, (0, 0), max(1.5, W / 120)) + 0.5 * wide
        img = img + rng.normal(0, 5, img.shape).astype(np.float32)
    elif style == "fog":
        beta = float(rng.uniform(0.025, 0.05))
        t = np.exp(-beta * np.minimum(s.depth, 1e3))[..., None]
        air = np.asarray(rng.uniform(185, 215) + rng.normal(0, 3, 3), np.float32)
        img = img * t + air * (1 - t)
        img = cv2.GaussianBlur(img, (0, 0), 0.8)
    elif style == "rain":
        wet = np.isin(label, [ROAD, SIDEWALK])[..., None]
        refl = cv2.blur(img, (1, max(3, H // 12)))  # vertically smeared reflections on wet surfaces
        img = np.where(wet, img * 0.55 + refl * 0.35, img * 0.75)
        img = img * np.asarray([0.88, 0.93, 1.05], np.float32)
        streaks = np.zeros((H, W), np.float32)
        n = H * W // 350
        x0 = rng.uniform(0, W, n)
        y0 = rng.uniform(0, H, n)
        length = rng.uniform(H / 40, H / 14, n)
        slant = float(rng.uniform(-0.3, 0.3))
        for xs, ys, ln in zip(x0, y0, length, strict=True):
            cv2.line(streaks, (int(xs), int(ys)), (int(xs + slant * ln), int(ys + ln)), 1.0, 1)
        streaks = cv2.GaussianBlur(streaks, (0, 0), 0.7)
        img = img * (1 - 0.35 * streaks[..., None]) + 200 * 0.35 * streaks[..., None]
        gray = img.mean()
        img = gray + (img - gray) * 0.8
        img = cv2.GaussianBlur(img, (0, 0), 1.0)
    elif style == "texture":
        img = cv2.GaussianBlur(img, (0, 0), 0.5)
    if style not in ("game", "night"):
        img = img + rng.normal(0, 2.5, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _ego_hood(s: _Scene, rgb: np.ndarray, rng: np.random.Generator) -> None:
    """The recording car's bonnet at the bottom (Cityscapes frames show it; labelled ego vehicle -> ignore)."""
    H, W = s.H, s.W
    hood_h = float(rng.uniform(0.06, 0.1)) * H
    center = (round(W / 2), round(H + hood_h * 2.2))
    axes = (round(W * 0.75), round(hood_h * 3.2))
    cv2.ellipse(s.label, center, axes, 0, 0, 360, IGNORE_INDEX, -1)
    shade = tuple(int(v) for v in rng.uniform(20, 60) * np.ones(3))
    cv2.ellipse(rgb, center, axes, 0, 0, 360, shade, -1)


def render_scene(
    rng: np.random.Generator, height: int, width: int, style: str = "game", ego_vehicle: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render one street scene.

    Args:
        rng: numpy Generator; the scene is a pure function of its state.
        height, width: image size in pixels (any; 64x128 upward looks sensible).
        style: one of :data:`STYLES`.
        ego_vehicle: draw the recording car's hood (label 255); default: every style except ``"game"``.

    Returns:
        ``(rgb (H, W, 3) uint8, labels (H, W) uint8 train ids, 255 = ignore)``.
    """
    if style not in STYLES:
        msg = f"unknown style {style!r}; valid: {', '.join(STYLES)}"
        raise ValueError(msg)
    if height < 8 or width < 8:
        msg = f"scene size {width}x{height} is too small (need at least 8x8)"
        raise ValueError(msg)
    # Style randomness has its own stream, so one rng state gives the same layout (labels) in every style.
    style_rng = np.random.default_rng(int(rng.integers(2**62)))
    if style == "game":
        palette = _PALETTES["game"]
    else:
        palette = _texture_palette(style_rng) if style == "texture" else _PALETTES["city"]
    s = _Scene(rng, height, width, palette)
    lay = _layout(rng)
    _ground(s, lay)
    _populate(s, lay, lit=0.35 if style == "night" else 0.0)
    for _, draw in sorted(s.objects, key=lambda kv: -kv[0]):  # painter's algorithm: far first
        draw()
    rgb = _finish(s, style, style_rng)
    if ego_vehicle if ego_vehicle is not None else style != "game":
        _ego_hood(s, rgb, style_rng)
    return rgb, s.label.copy()


# ---- writers in the real dataset layouts ---------------------------------------------------------------------------
