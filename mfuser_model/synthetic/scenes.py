"""Procedural driving scenes with exact labels, for tests, demos and domain-shift checks.

A pinhole camera 1.5 m above a flat street looks down the road; the scene (road with lane markings, curbs,
sidewalks, grass strips, building rows with windows, walls, fences, hedges, trees, poles, street lamps, traffic
lights and signs, cars, trucks, buses, trams, pedestrians, cyclists and motorcyclists, a skyline at the far end)
is drawn far-to-near with cv2 polygons into an image, a train-id label map and a depth map at the same time.
A style (:mod:`mfuser_model.synthetic.styles`) then changes appearance while the class structure stays the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mfuser_model.synthetic.canvas import PALETTES, PERSON, Scene, texture_palette
from mfuser_model.synthetic.street_objects import (
    VEHICLE_DIMS,
    building_row,
    ground,
    person,
    pole_with,
    skyline,
    tree,
    two_wheeler,
    vehicle,
)
from mfuser_model.synthetic.styles import STYLES, apply_style, draw_ego_hood

__all__ = ["STYLES", "render_scene"]


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


def _roadside(s: Scene, side: int, edge: float, sw: float, tw: float, z_far: float, lit: float) -> None:
    """One side of the street: building row, trees on the grass strip, poles, pedestrians, parked cars."""
    rng = s.rng
    building_row(s, side, edge + sw + tw, float(rng.uniform(1, 6)), z_far, lit)
    if tw > 0 and rng.random() < 0.7:
        for zt in np.arange(float(rng.uniform(4, 10)), z_far * 0.6, float(rng.uniform(7, 14))):
            tree(s, side * (edge + sw + tw / 2), float(zt))
    for zp in np.arange(float(rng.uniform(5, 12)), z_far * 0.7, float(rng.uniform(12, 22))):
        kind = str(rng.choice(["lamp", "pole", "sign", "light", "overhead", "lamp"]))
        pole_with(s, side * (edge + 0.45), float(zp), kind)
    for _ in range(int(rng.integers(1, 6))):
        person(s, side * (edge + float(rng.uniform(0.6, sw - 0.3))), float(rng.uniform(5, 35)),
                   float(rng.uniform(1.55, 1.9)), PERSON)
    if rng.random() < 0.5:  # parked cars along the curb
        for zc in np.arange(float(rng.uniform(4, 12)), 45, float(rng.uniform(5.5, 9))):
            if rng.random() < 0.7:
                vehicle(s, "car", side * (edge - 1.1), float(zc), "away" if side > 0 else "toward")


def _traffic(s: Scene, lay: dict[str, Any], z_far: float) -> None:
    """Vehicles in the lanes (oncoming on the left), sometimes a tram, a cyclist and a motorcyclist."""
    rng = s.rng
    lanes = lay["lanes"]
    for k, lane in enumerate(lanes):
        facing = "toward" if k < lay["n_oncoming"] else "away"
        z = float(rng.uniform(5, 14)) if facing == "toward" or abs(lane) > 1.0 else float(rng.uniform(8, 20))
        while z < z_far * 0.8:
            kind = str(rng.choice(["car", "car", "car", "truck", "bus"], p=[0.3, 0.25, 0.2, 0.13, 0.12]))
            vehicle(s, kind, float(lane + rng.uniform(-0.3, 0.3)), z, facing)
            z += VEHICLE_DIMS[kind][2] + float(rng.uniform(4, 20))
    if rng.random() < 0.35:  # a tram in the leftmost lane
        vehicle(s, "train", float(lanes[0]), float(rng.uniform(14, 30)), "toward")
    if rng.random() < 0.6:
        two_wheeler(s, lay["road_right"] - 0.9, float(rng.uniform(6, 18)), "bike")
    if rng.random() < 0.5:
        two_wheeler(s, float(rng.choice(lanes)) + 1.0, float(rng.uniform(7, 22)), "moto")


def _populate(s: Scene, lay: dict[str, Any], lit: float) -> None:
    rng = s.rng
    xl, xr = lay["road_left"], lay["road_right"]
    z_far = float(rng.uniform(70, 130))
    _roadside(s, -1, -xl, lay["sidewalk_left"], lay["terrain_left"], z_far, lit)
    _roadside(s, 1, xr, lay["sidewalk_right"], lay["terrain_right"], z_far, lit)
    skyline(s, z_far, xl - 60, xr + 60)
    _traffic(s, lay, z_far)


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
        palette = PALETTES["game"]
    else:
        palette = texture_palette(style_rng) if style == "texture" else PALETTES["city"]
    s = Scene(rng, height, width, palette)
    lay = _layout(rng)
    ground(s, lay)
    _populate(s, lay, lit=0.35 if style == "night" else 0.0)
    for _, draw in sorted(s.objects, key=lambda kv: -kv[0]):  # painter's algorithm: far first
        draw()
    rgb = apply_style(s, style, style_rng)
    if ego_vehicle if ego_vehicle is not None else style != "game":
        draw_ego_hood(s, rgb, style_rng)
    return rgb, s.label.copy()
