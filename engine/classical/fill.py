"""Filling detected defects: motion-compensated temporal median where motion is trustworthy, spatial
inpainting elsewhere (and for line scratches in static shots, where every neighbour has the same scratch)."""

from __future__ import annotations

import cv2
import numpy as np


def temporal_fill(
    candidates: list[np.ndarray],
    valid: list[np.ndarray],
    region: np.ndarray,
    max_spread: float = 0.12,
) -> tuple[np.ndarray, np.ndarray]:
    """Median of the valid warped neighbours at each ``region`` pixel.

    candidates: warped neighbour frames (H, W, 3); valid: (H, W) bool each. Returns (values (N, 3) for the
    region's pixels in row-major order, ok (N,) bool). A pixel is ok when at least one neighbour is valid there
    and the valid neighbours agree (luma spread <= max_spread): disagreeing neighbours mean the motion was
    not really followed, and a median of wrong pixels would paint a ghost."""
    ys, xs = np.nonzero(region)
    n = len(ys)
    if n == 0 or not candidates:
        return np.zeros((n, 3), np.float32), np.zeros(n, bool)
    stack = np.stack([c[ys, xs] for c in candidates])  # (K, N, 3)
    ok_k = np.stack([v[ys, xs] for v in valid])  # (K, N)
    vals = np.where(ok_k[..., None], stack, np.nan)
    count = ok_k.sum(axis=0)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(vals, axis=0)
            luma = vals[..., 0] * 0.2126 + vals[..., 1] * 0.7152 + vals[..., 2] * 0.0722
            spread = np.nanmax(luma, axis=0) - np.nanmin(luma, axis=0)
    ok = (count >= 1) & (np.nan_to_num(spread, nan=1.0) <= max_spread)
    return np.nan_to_num(med).astype(np.float32), ok


def spatial_fill(image: np.ndarray, region: np.ndarray, radius: int = 5) -> np.ndarray:
    """Inpaint ``region`` of an (H, W, 3) image in [0, 1] from its surroundings (Telea), channel by channel.

    Done in 16-bit: OpenCV 5's float32 inpainting returns garbage (values far outside the input range), and
    16 bits keep far more precision than the 1/255 the tests ask for."""
    if not region.any():
        return image
    mask = region.astype(np.uint8)
    out = image.copy()
    for c in range(image.shape[-1]):
        u16 = (np.clip(image[..., c], 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
        filled = cv2.inpaint(u16, mask, radius, cv2.INPAINT_TELEA).astype(np.float32) / 65535.0
        out[..., c] = np.where(region, filled, image[..., c])
    return out
