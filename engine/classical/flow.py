"""Dense optical flow between neighbouring frames, with a forward-backward reliability check.

DIS (OpenCV) on luminance that is median-filtered first: dust specks and thin scratches are exactly what the
flow must *not* follow, and a 5x5 median removes most of them before the flow sees them.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

LUMA_ROWS = 64  # rows per block of ``luminance``: its temporaries stay in the cache


def luminance(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) model-space RGB -> (H, W) Rec.709 luma (display-referred, like the thresholds).

    r * 0.2126 + g * 0.7152 + b * 0.0722 in float32, in that order (the same bits as the one-line formula), a
    block of rows at a time: over a whole 2K frame its four full-size temporaries cost more than the arithmetic."""
    rgb = np.asarray(rgb, np.float32)
    out = np.empty(rgb.shape[:2], np.float32)
    for y in range(0, rgb.shape[0], LUMA_ROWS):
        block, o = rgb[y : y + LUMA_ROWS], out[y : y + LUMA_ROWS]
        np.multiply(block[..., 0], np.float32(0.2126), out=o)
        term = block[..., 1] * np.float32(0.7152)
        o += term
        o += np.multiply(block[..., 2], np.float32(0.0722), out=term)
    return out


def flow_input(grey: np.ndarray) -> np.ndarray:
    """The 8-bit, defect-suppressed image the flow is computed on."""
    u8 = np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.medianBlur(u8, 5)


class FlowEstimator:
    """flow(a, b): for each pixel x of a, b(x + flow(x)) ~ a(x)."""

    def __init__(self, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM):
        self._dis = cv2.DISOpticalFlow_create(preset)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._dis.calc(a, b, None)


@lru_cache(maxsize=2)
def _grid(h: int, w: int) -> np.ndarray:
    """(H, W, 2) float32 pixel coordinates (x, y): added to a flow, the map cv2.remap samples at."""
    grid = np.empty((h, w, 2), np.float32)
    grid[..., 0] = np.arange(w, dtype=np.float32)[None, :]
    grid[..., 1] = np.arange(h, dtype=np.float32)[:, None]
    grid.flags.writeable = False
    return grid


WARP_ROWS = 64  # rows per block of ``warp``: its sampling map stays in the cache, never a whole-frame array


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``image`` (a neighbour) at x + flow(x): the neighbour seen from the current frame's grid. One
    two-channel map (one add over the interleaved flow) rather than two maps cut from its channels: the same
    coordinates to the bit, a third less time at 2K. Made a block of rows at a time (remap samples each pixel
    from its own map entry alone, so the blocks give the bits of one whole-frame call): the whole map would
    be a fresh 25 MB at 2K."""
    h, w = flow.shape[:2]
    out = np.empty((h, w) + image.shape[2:], image.dtype)
    rewarp(image, flow, out, row_blocks(h, w))
    return out


def row_blocks(h: int, w: int) -> list[tuple[int, int, int, int]]:
    """A frame of (h, w) as boxes (y0, y1, x0, x1) of WARP_ROWS whole rows: ``warp``'s blocks."""
    return [(y, min(h, y + WARP_ROWS), 0, w) for y in range(0, h, WARP_ROWS)]


def rewarp(image: np.ndarray, flow: np.ndarray, warped: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> None:
    """``warped`` made ``warp(image, flow)`` again inside ``boxes`` (y0, y1, x0, x1), in place. Where a flow
    changed only here and there (the second look of the spike test), the rest of the old warp still holds:
    remap samples each pixel from its own map entry alone, so a box gives the bits the whole frame gives."""
    grid = _grid(*flow.shape[:2])
    for y0, y1, x0, x1 in boxes:
        coords = flow[y0:y1, x0:x1] + grid[y0:y1, x0:x1]
        block = warped[y0:y1, x0:x1]
        done = cv2.remap(image, coords, None, cv2.INTER_LINEAR, dst=block, borderMode=cv2.BORDER_REPLICATE)
        if done is not block:  # cv2 made an array of its own after all (it may for a layout it cannot take)
            block[...] = done


def remap_points(
    image: np.ndarray, sx: np.ndarray, sy: np.ndarray, interpolation: int = cv2.INTER_LINEAR
) -> np.ndarray:
    """``image`` sampled at the points (sx, sy): (N,) + image.shape[2:]. Fills need colour at a few thousand
    pixels, not a whole warped RGB frame (at 2K that is 38 MB and ~30 ms per neighbour). The points go to
    cv2.remap as rows of 1024 (it refuses maps longer than 32767 in either direction)."""
    n = len(sx)
    tail = image.shape[2:]
    if n == 0:
        return np.zeros((0,) + tail, image.dtype)
    width = 1024
    rows = -(-n // width)
    mx = np.zeros(rows * width, np.float32)
    my = np.zeros(rows * width, np.float32)
    mx[:n], my[:n] = sx, sy
    out = cv2.remap(
        image, mx.reshape(rows, width), my.reshape(rows, width), interpolation, borderMode=cv2.BORDER_REPLICATE
    )
    return out.reshape((rows * width,) + tail)[:n]


def magnitude(vectors: np.ndarray) -> np.ndarray:
    """|v| of an (H, W, 2) field (cv2.magnitude: a numpy norm over a length-2 axis is ~5x slower)."""
    return cv2.magnitude(np.ascontiguousarray(vectors[..., 0]), np.ascontiguousarray(vectors[..., 1]))


def fb_error(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """|f(x) + b(x + f(x))|: 0 where following the flow there and back returns to x."""
    return magnitude(forward + warp(backward, forward))


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a large sigma on a reduced copy: the result is smooth anyway, and a full-resolution
    blur with sigma ~100 px at 2K would cost seconds."""
    h, w = image.shape[:2]
    factor = max(1, int(sigma // 3))
    if factor == 1:
        return cv2.GaussianBlur(image, (0, 0), sigma)
    small = cv2.resize(image, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / factor)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def fill_unreliable(flow: np.ndarray, reliable: np.ndarray, sigma: float = 6.0) -> np.ndarray:
    """Replace flow where it is unreliable by a reliability-weighted (normalised-convolution) average of its
    surroundings, at growing scales until every hole is filled. Inside a dust blotch the flow is garbage but
    the motion around it is not: this is what lets the detector compare the blotch with what lies *behind*
    it in the neighbours."""
    if reliable.all():
        return flow
    out = np.array(flow, np.float32, order="C")  # a copy: each pixel's (x, y) pair is one 8-byte item of it
    pairs = out.view(np.uint64).reshape(-1)
    reliable = reliable.copy()
    for s in (sigma, sigma * 4, sigma * 16):
        weight = reliable.astype(np.float32)
        # The product with the weight in both channels by cv2 (numpy broadcasting over a length-2 last axis is
        # ~5x slower): the same float32 products, so the same bits. The (H, W, 2) smoothing stays as it was:
        # cv2's resizes of one plane do not round as those of two interleaved ones do.
        num = _smooth(cv2.multiply(out, cv2.merge([weight, weight])), s)
        den = _smooth(weight, s)
        todo = (~reliable) & (den > 1e-3)
        # The quotients at the holes only, each pixel's pair gathered and put back as one 8-byte item (fancy
        # indexing of (N, 2) rows is several times slower): the same divisions, so the same bits.
        holes = np.flatnonzero(todo)
        quotient = num.view(np.uint64).reshape(-1)[holes].view(np.float32).reshape(-1, 2)
        quotient /= np.maximum(den.reshape(-1)[holes], 1e-6)[:, None]
        pairs[holes] = quotient.view(np.uint64).reshape(-1)
        reliable |= todo
        if reliable.all():
            break
    return out


def flow_gradient(flow: np.ndarray) -> np.ndarray:
    """Magnitude of the flow's spatial gradient (px of motion per px): large at motion boundaries."""
    gx = cv2.Sobel(flow, cv2.CV_32F, 1, 0, ksize=3, scale=1.0 / 8.0)
    gy = cv2.Sobel(flow, cv2.CV_32F, 0, 1, ksize=3, scale=1.0 / 8.0)
    # Channel by channel: numpy reductions over a length-2 last axis are slow.
    return np.sqrt(gx[..., 0] ** 2 + gx[..., 1] ** 2 + gy[..., 0] ** 2 + gy[..., 1] ** 2)
