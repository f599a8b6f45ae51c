"""Rendering styles: photometric effects applied to a drawn scene's albedo, labels unchanged.

- ``"game"`` — GTAV-like source domain: saturated flat colours, clean, sunny.
- ``"day"`` — Cityscapes-like: muted palette, surface textures, sensor noise, ego-vehicle hood.
- ``"night"`` — dark ambient light, street-lamp pools, lit windows, head/tail lights with bloom, noise.
- ``"fog"`` — contrast lost toward a grey airlight with depth (``exp(-beta * depth)``).
- ``"rain"`` — dark, blue-tinted, wet road reflections, rain streaks, lens blur.
- ``"texture"`` — altered palette (shifted hues) with strong per-class procedural textures.
"""

from __future__ import annotations

import cv2
import numpy as np

from mfuser_model.classes import IGNORE_INDEX
from mfuser_model.synthetic.canvas import ROAD, SIDEWALK, SKY, TERRAIN, VEG, Scene

__all__ = ["STYLES", "apply_style", "draw_ego_hood"]

STYLES: tuple[str, ...] = ("game", "day", "night", "fog", "rain", "texture")


def apply_style(s: Scene, style: str, rng: np.random.Generator) -> np.ndarray:
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


def draw_ego_hood(s: Scene, rgb: np.ndarray, rng: np.random.Generator) -> None:
    """The recording car's bonnet at the bottom (Cityscapes frames show it; labelled ego vehicle -> ignore)."""
    H, W = s.H, s.W
    hood_h = float(rng.uniform(0.06, 0.1)) * H
    center = (round(W / 2), round(H + hood_h * 2.2))
    axes = (round(W * 0.75), round(hood_h * 3.2))
    cv2.ellipse(s.label, center, axes, 0, 0, 360, IGNORE_INDEX, -1)
    shade = tuple(int(v) for v in rng.uniform(20, 60) * np.ones(3))
    cv2.ellipse(rgb, center, axes, 0, 0, 360, shade, -1)
