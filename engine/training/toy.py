"""A toy training set: dust and line scratches over simple moving shapes, for tests and smoke runs.

Built with ``frdm.engine.data.synthesis`` (the same generators as real training data) and written in the
dataset layout by ``frdm.engine.data.dataset.write_shot``. Defect sizes are given at 480 lines and scale
with the frame, so at toy sizes (32x32) they are enlarged to stay a few pixels wide.
"""

from __future__ import annotations

import os

import numpy as np

CAPTIONS = (
    "a red disc moving over a blue gradient",
    "a bright square drifting over a dark field",
    "two shapes crossing a green background",
)


def moving_shapes(rng: np.random.Generator, frames: int, size: int) -> np.ndarray:
    """(T, size, size, 3) float32: a smooth background and two shapes moving a few pixels per frame."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(0.15, 0.6, 3).astype(np.float32)
    tilt = rng.uniform(-0.25, 0.25, 3).astype(np.float32)
    out = np.empty((frames, size, size, 3), np.float32)
    shapes = []
    for kind in ("disc", "square"):
        shapes.append(
            (
                kind,
                rng.uniform(0.2, 0.8, 2),
                rng.uniform(-0.06, 0.06, 2),
                rng.uniform(0.12, 0.22),
                rng.uniform(0.3, 0.95, 3).astype(np.float32),
            )
        )
    for t in range(frames):
        img = base + tilt * (xx[..., None] * 0.7 + yy[..., None] * 0.3)
        for kind, pos, vel, radius, colour in shapes:
            cx, cy = pos + vel * t
            if kind == "disc":
                inside = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
            else:
                inside = (np.abs(xx - cx) < radius) & (np.abs(yy - cy) < radius)
            img[inside] = colour
        out[t] = img
    return np.clip(out, 0, 1)


def degrade(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Dust on every frame plus a constant line scratch; returns (degraded, mask (T, H, W) bool)."""
    from frdm.engine.data import synthesis

    scale = 480.0 / min(clean.shape[1:3])  # sizes below are toy-frame pixels
    out, m1 = synthesis.dust(clean, rng, density=0, size=(0.8 * scale, 1.8 * scale), min_per_frame=3)
    out, m2 = synthesis.line_scratches(out, rng, count=1, width=(1.0 * scale, 2.0 * scale), wander=0.5 * scale)
    return out, m1 | m2


def make_toy_dataset(
    root: str | os.PathLike[str], *, shots: int = 3, frames: int = 4, size: int = 32, seed: int = 0
) -> list[str]:
    """Write ``shots`` toy shots under ``root``; returns their folders."""
    from frdm.engine.data.dataset import write_shot

    rng = np.random.default_rng(seed)
    folders = []
    for i in range(shots):
        clean = moving_shapes(rng, frames, size)
        degraded, mask = degrade(clean, rng)
        folders.append(write_shot(root, f"shot{i:02d}", degraded, clean, mask, CAPTIONS[i % len(CAPTIONS)]))
    return folders
