"""What a street is made of, drawn on a :class:`~mfuser_model.synthetic.canvas.Scene`: the ground (road, markings,
curbs, sidewalks, grass, sky), buildings, trees, poles with lamps, lights and signs, vehicles, people, two-wheelers
and the far skyline. Objects register a draw call keyed by depth; the scene paints them far to near.
"""

from __future__ import annotations

import itertools
from typing import Any

import cv2
import numpy as np

from mfuser_model.synthetic.canvas import (
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    FENCE,
    LIGHT,
    MOTORCYCLE,
    POLE,
    RIDER,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    TERRAIN,
    TRAIN,
    TRUCK,
    VEG,
    WALL,
    Scene,
)

__all__ = ["VEHICLE_DIMS", "building_row", "ground", "person", "pole_with", "skyline", "tree", "two_wheeler", "vehicle"]


def ground(s: Scene, layout: dict[str, Any]) -> None:
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


def building_row(s: Scene, side: int, x_line: float, z_start: float, z_end: float, night_lit: float) -> None:
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


def _building(s: Scene, side: int, xb: float, z0: float, z1: float, height: float, depth_b: float, lit: float) -> None:
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


def _gap_filler(s: Scene, side: int, x_line: float, z0: float, z1: float, kind: str) -> None:
    rng = s.rng
    if kind == "trees":
        for zt in np.arange(z0 + 2, z1, float(rng.uniform(3, 5))):
            tree(s, side * (x_line + float(rng.uniform(0.5, 4))), float(zt), big=True)
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


def tree(s: Scene, x: float, z: float, big: bool = False) -> None:
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


def pole_with(s: Scene, x: float, z: float, kind: str) -> None:
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


def _wheel(s: Scene, x: float, zc: float, r: float) -> np.ndarray:
    ang = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    return s.pts([(x, r + r * np.sin(a), zc + r * np.cos(a)) for a in ang])


# (width, height, length) in metres.
VEHICLE_DIMS = {
    "car": (1.8, 1.45, 4.3), "truck": (2.5, 3.4, 8.0), "bus": (2.55, 3.1, 12.0), "train": (2.65, 3.4, 26.0),
}
_VEHICLE_CLASS = {"car": CAR, "truck": TRUCK, "bus": BUS, "train": TRAIN}
_GLASS = (40, 46, 56)


def _vehicle_body(s: Scene, kind: str, x0: float, x1: float, z0: float, color: np.ndarray, facing: str) -> None:
    """Body boxes and windows of a vehicle occupying ``[x0, x1] x [z0, z0 + length]``."""
    _, h, length = VEHICLE_DIMS[kind]
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


def _vehicle_gear(s: Scene, kind: str, x0: float, x1: float, z0: float, facing: str) -> None:
    """Wheels (under the near face and on the visible side) and head/tail lights (emissive at night)."""
    cls = _VEHICLE_CLASS[kind]
    z1 = z0 + VEHICLE_DIMS[kind][2]
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


def vehicle(s: Scene, kind: str, xc: float, z0: float, facing: str) -> None:
    """Car / truck / bus / tram as shaded boxes with windows, wheels and lights. ``facing`` = "away" (we see
    its rear) or "toward" (its front)."""
    w = VEHICLE_DIMS[kind][0]
    color = np.asarray(s.color(kind, 12))
    x0, x1 = xc - w / 2, xc + w / 2

    def draw() -> None:
        _vehicle_body(s, kind, x0, x1, z0, color, facing)
        _vehicle_gear(s, kind, x0, x1, z0, facing)

    s.add(z0, draw)


def person(s: Scene, x: float, z: float, height: float, cls: int, pose: str = "walk") -> None:
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


def two_wheeler(s: Scene, x: float, z: float, kind: str) -> None:
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
    person(s, x, z, float(rng.uniform(1.65, 1.85)), RIDER, pose="ride")


def skyline(s: Scene, z_far: float, x_min: float, x_max: float) -> None:
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
