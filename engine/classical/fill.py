"""Filling detected defects so that the fill disappears: motion-compensated temporal fill where the neighbours
are trustworthy and agree, spatial inpainting with the frame's own grain elsewhere (and for line scratches in
static shots, where every neighbour has the same scratch).

A fill is seen when it is brighter or darker than what surrounds it, or smoother. So:
- each temporal candidate is brought to the frame's brightness around the region (the ring just outside it):
  the neighbour may be exposed differently (flicker);
- a region is filled from one neighbour (the one that agrees best with the median of all), not from their
  median: a median of several frames averages their grain away and leaves a smooth patch;
- a spatial fill (Telea, smooth by nature) gets grain: the frame's own high frequencies, copied from a clean
  patch next to the region.
Everything is computed on the region's pixels or a crop around each region, never on the whole frame.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

RING = 3  # px: the ring around a region whose brightness a fill must match
LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


def region_rings(region: np.ndarray, matte: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels of ``region``'s connected components (0 = none) and of the ring of RING px around each (pixels
    of another defect excluded). Returns (labels, ring_labels, count including the background)."""
    n, labels = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
    # Grow the labels into the ring (a dilation takes the largest touching label: fine where rings meet). In
    # 16 bits when the labels fit (a maximum is exact in any type; half the bytes of float32, ~3x faster).
    wide = np.uint16 if n <= np.iinfo(np.uint16).max else np.float32
    ring = cv2.dilate(labels.astype(wide), np.ones((2 * RING + 1, 2 * RING + 1), np.uint8)).astype(np.int32)
    ring[region | matte] = 0
    return labels, ring, n


def temporal_fill(
    frame: np.ndarray,
    sample: Callable[[int, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    neighbours: list[int],
    labels: np.ndarray,
    ring: np.ndarray,
    count: int,
    max_spread: float = 0.12,
) -> tuple[np.ndarray, np.ndarray]:
    """Fill values for the labelled region's pixels (row-major order) from motion-compensated neighbours.

    frame: (H, W, 3) the current frame. sample(k, ys, xs) -> (colours (N, 3), valid (N,)): neighbour k seen
    from the current frame's grid at those pixels. Returns (values (N, 3), ok (N,)). A pixel is ok when at
    least one neighbour is valid there and the valid neighbours agree (luma spread <= max_spread):
    disagreeing neighbours mean the motion was not really followed, and any of them would paint a ghost."""
    ys, xs = np.nonzero(labels)
    n = len(ys)
    if n == 0 or not neighbours:
        return np.zeros((n, 3), np.float32), np.zeros(n, bool)
    lab = labels[ys, xs]
    ry, rx = np.nonzero(ring)
    rlab = ring[ry, rx]
    ring_frame = frame[ry, rx]
    matched, valid = [], []
    for k in neighbours:
        colours, ok = sample(k, np.concatenate([ys, ry]), np.concatenate([xs, rx]))
        c, c_ring = colours[:n], colours[n:]
        ok, ok_ring = ok[:n], ok[n:]
        # Brightness of this neighbour around each region -> the frame's (per channel).
        w = ok_ring.astype(np.float64)
        ring_n = np.bincount(rlab, w, minlength=count)
        offset = np.zeros((count, 3), np.float32)
        for ch in range(3):
            diff = np.bincount(rlab, w * (ring_frame[:, ch] - c_ring[:, ch]), minlength=count)
            offset[:, ch] = np.where(ring_n >= 4, diff / np.maximum(ring_n, 1), 0.0)
        matched.append(c + offset[lab])
        valid.append(ok)
    stack = np.stack(matched)  # (K, N, 3)
    ok_k = np.stack(valid)  # (K, N)
    luma = stack @ LUMA  # (K, N)
    median = _valid_median(stack, ok_k)
    masked_hi = np.where(ok_k, luma, -np.inf).max(axis=0)
    masked_lo = np.where(ok_k, luma, np.inf).min(axis=0)
    ok = ok_k.any(axis=0) & (masked_hi - masked_lo <= max_spread)
    # One neighbour per region keeps real grain: the one closest to the median over the region.
    distance = np.abs(luma - median @ LUMA)  # (K, N)
    score = np.full((len(neighbours), count), np.inf)
    for i, (d, o) in enumerate(zip(distance, ok_k)):
        used = np.bincount(lab, o, minlength=count)
        total = np.bincount(lab, np.where(o, d, 0.0), minlength=count)
        score[i] = np.where(used > 0, total / np.maximum(used, 1), np.inf)
    best = np.argmin(score, axis=0)[lab]  # (N,)
    pick = np.arange(n)
    chosen = stack[best, pick]
    use = ok_k[best, pick] & (distance[best, pick] <= 0.5 * max_spread)
    values = np.where(use[:, None], chosen, median)
    return values.astype(np.float32), ok


def _valid_median(stack: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-pixel median over the K axis of (K, N, C) values, counting only the valid ones ((K, N) bool);
    0 where none is valid. (np.nanmedian does the same ~10x slower, warning once per empty pixel.)"""
    k = stack.shape[0]
    ordered = np.sort(np.where(valid[..., None], stack, np.inf), axis=0)  # invalid ones sort last
    count = valid.sum(axis=0)  # (N,)
    lo = np.clip((count - 1) // 2, 0, k - 1)[None, :, None]
    hi = np.clip(count // 2, 0, k - 1)[None, :, None]
    shape = (1,) + stack.shape[1:]
    a = np.take_along_axis(ordered, np.broadcast_to(lo, shape), axis=0)[0]
    b = np.take_along_axis(ordered, np.broadcast_to(hi, shape), axis=0)[0]
    return np.where((count > 0)[:, None], 0.5 * (a + b), 0.0).astype(np.float32)


def spatial_fill(
    image: np.ndarray,
    region: np.ndarray,
    matte: np.ndarray | None = None,
    radius: int = 5,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Inpaint ``region`` of an (H, W, 3) image in [0, 1] from its surroundings (Telea), one crop around each
    connected region, and give the fill the grain of the frame next to it.

    Done in 16-bit: OpenCV 5's float32 inpainting returns garbage (values far outside the input range), and
    16 bits keep far more precision than the 1/255 the tests ask for. ``matte``: pixels that are defects (no
    grain is copied from them); defaults to ``region``. ``out``: where to write (may be ``image`` itself); a
    copy of ``image`` by default."""
    if out is None:
        out = image.copy()
    if not region.any():
        return out
    matte = region if matte is None else (matte | region)
    h, w = region.shape
    n, labels = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
    stats = _boxes(labels, region, n)
    pad = 2 * radius + 2
    for i in range(1, n):
        x, y, bw, bh = stats[i]
        x0, y0, x1, y1 = max(0, x - pad), max(0, y - pad), min(w, x + bw + pad), min(h, y + bh + pad)
        mask = labels[y0:y1, x0:x1] == i
        crop = out[y0:y1, x0:x1]
        m8 = mask.astype(np.uint8)
        filled = crop.copy()
        for c in range(crop.shape[-1]):
            u16 = (np.clip(crop[..., c], 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
            filled[..., c] = cv2.inpaint(u16, m8, radius, cv2.INPAINT_TELEA) / 65535.0
        grain = _grain_patch(image, matte, (y0, y1, x0, x1), mask, (bw, bh))
        if grain is not None:
            filled[mask] += grain[mask]
        crop[mask] = np.clip(filled[mask], 0.0, 1.0)
    return out


def _boxes(labels: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """(n, 4) bounding boxes (x, y, width, height) of the labelled components, from the mask's own pixels:
    cv2's connectedComponentsWithStats visits every pixel of the frame for its statistics (~20 ms at 2K)."""
    ys, xs = np.divmod(np.flatnonzero(mask), mask.shape[1])
    lab = labels[ys, xs]
    lo = np.full((n, 2), np.iinfo(np.int64).max, np.int64)
    hi = np.full((n, 2), -1, np.int64)
    for axis, coords in enumerate((xs, ys)):
        np.minimum.at(lo[:, axis], lab, coords)
        np.maximum.at(hi[:, axis], lab, coords)
    return np.concatenate([lo, hi - lo + 1], axis=1)


def _highpass(image: np.ndarray) -> np.ndarray:
    """Film grain and fine detail: the image minus its Gaussian-smoothed copy (sigma 1.5 px)."""
    return image - cv2.GaussianBlur(image, (0, 0), 1.5)


def _grain_patch(
    image: np.ndarray,
    matte: np.ndarray,
    box: tuple[int, int, int, int],
    mask: np.ndarray,
    size: tuple[int, int],
) -> np.ndarray | None:
    """The frame's own grain for a crop: the high frequencies of the nearest same-size patch beside it (left,
    right, above, below) that holds no defect. None when there is no such patch (the region is too large)."""
    h, w = matte.shape
    y0, y1, x0, x1 = box
    bw, bh = size
    for dy, dx in ((0, -(bw + 4)), (0, bw + 4), (-(bh + 4), 0), (bh + 4, 0)):
        sy0, sy1, sx0, sx1 = y0 + dy, y1 + dy, x0 + dx, x1 + dx
        if sy0 < 0 or sx0 < 0 or sy1 > h or sx1 > w:
            continue
        if (matte[sy0:sy1, sx0:sx1] & mask).any():
            continue
        # High-pass over a 4 px wider window so the patch's own edges are not those of the blur's border.
        py0, py1, px0, px1 = max(0, sy0 - 4), min(h, sy1 + 4), max(0, sx0 - 4), min(w, sx1 + 4)
        high = _highpass(image[py0:py1, px0:px1])
        return high[sy0 - py0 : sy0 - py0 + (y1 - y0), sx0 - px0 : sx0 - px0 + (x1 - x0)]
    return None
