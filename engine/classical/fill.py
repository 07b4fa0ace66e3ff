"""Filling detected defects so that the fill disappears: motion-compensated temporal fill where the neighbours
are trustworthy and agree, spatial inpainting with the frame's own grain elsewhere (and for line scratches in
static shots, where every neighbour has the same scratch).

A fill is seen when it is brighter or darker than what surrounds it, or smoother. So:
- each temporal candidate is aligned to and checked against the frame on the region's ring (the pixels just
  outside it, where the frame is known): moved as one piece (re-aligned by a whole-pixel shift only when
  SHIFT_SEARCH > 0; by default not), brought to the frame's exposure there (flicker is a gain), and dropped
  when its ring does not match the frame's beyond the grain (a neighbour pasted misaligned shows edges that
  do not line up);
- a region is filled from one neighbour (the best-fitting kept one), not from their median: a median of
  several frames averages their grain away and leaves a smooth patch;
- a spatial fill (Telea, smooth by nature) gets grain: the frame's own high frequencies, copied from a clean
  patch next to the region.
Everything is computed on the region's pixels or a crop around each region, never on the whole frame.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from frdm.engine.classical.detect import pixels

RING = 3  # px: the ring around a region whose brightness a fill must match
LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)
# A temporal candidate is kept for a region when, on the region's ring and after its exposure gain, it differs
# from the frame by at most GRAIN_TOLERANCE times the frame's grain (8-neighbour high-pass spread; two
# independent grains differ by ~1.4-2.4 times that, depending on how fine the grain is), and by what a
# misalignment of SUBPIXEL px leaves on the ring's edges, plus MISFIT_FLOOR. Generous on purpose: the veto is
# for candidates that are plainly off (edges px apart); a slightly imperfect temporal fill on real film's moving
# edges still looks better than the spatial fill that replaces it (Telea smears edges into notches and blobs).
GRAIN_TOLERANCE = 6.0
SUBPIXEL = 1.5  # px
MISFIT_FLOOR = 1.0 / 255.0
MAX_GAIN = 2.0  # a neighbour exposed more than twice or half as bright is no fill material
RIGID_SIDE = 48  # px: regions up to this size move as one piece
# px: how far a candidate is re-aligned to its ring. 1 px (9 samplings of every ring) tripled the fill's time
# (San Francisco 140-147: 0.56 -> 1.57 s) for no gain on real film, and the grainy-fill bounds hold without it.
SHIFT_SEARCH = 0
GRAIN_CLIP = 3.0  # a spatial fill's copied grain is clipped to this many robust spreads (``_grain_patch``)
# A patch whose plain spread is at most this many robust spreads holds grain only (Gaussian grain: 1.0; the
# boards beside a fill, ~5): taken without looking further (``_grain_patch``).
PLAIN_GRAIN = 1.15


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
    flow: Callable[[int, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    sample: Callable[[int, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    neighbours: list[int],
    labels: np.ndarray,
    ring: np.ndarray,
    count: int,
    known: np.ndarray | None = None,
    max_spread: float = 0.12,
) -> tuple[np.ndarray, np.ndarray]:
    """Fill values for the labelled region's pixels (row-major order) from motion-compensated neighbours.

    frame: (H, W, 3) the current frame. flow(k, ys, xs) -> (vectors (N, 2) x/y px, trusted (N,)): the motion
    from the frame to neighbour k at those pixels. sample(k, sx, sy) -> (colours (N, 3), valid (N,)):
    neighbour k at those (sub-pixel) points. known: (H, W) bool, the region's pixels that are no defect (the
    margin a fill reaches beyond the matte for the blend to feather into): there the frame is probably right,
    so a candidate that differs from it there beyond the grain is not used there (those pixels are not kept as
    they are either, the matte may have missed a defect's halo; nor used as ring, a halo would bias the
    exposure match). Returns (values (N, 3), ok (N,)).

    Each neighbour gives two candidates for a region, judged on the region's ring, where the frame is known:
    the per-pixel flow, and (small regions) the region moved as one piece by the mean trusted flow on its ring
    (per-pixel flow is a pixel or two off on soft, grainy pictures, while a flat sky's consistent nonsense flow
    makes a mean wrong: the ring decides which holds). Each is re-aligned by the whole-pixel shift (within
    SHIFT_SEARCH px; 0, none, by default) that best matches its ring to the frame's, brought to the frame's
    exposure there (flicker: a gain per channel) and dropped when what is left on the ring exceeds the grain
    and a sub-pixel misalignment (``_ring_tolerance``): edges that do not line up around the region would be
    pasted misaligned into it. Each pixel takes one kept candidate (one neighbour's real grain, never a median of
    several, which would average the grain away): per region the one closest to the kept candidates' median,
    where it is valid and close to that median, else the next. ok when the kept candidates valid there agree
    (luma spread <= max_spread: disagreeing neighbours mean the motion was not really followed, and any of
    them would paint a ghost) and one is usable. Elsewhere the caller fills spatially."""
    ys, xs = pixels(labels)  # the order the caller puts the values back in
    n = len(ys)
    if n == 0 or not neighbours:
        return np.zeros((n, 3), np.float32), np.zeros(n, bool)
    lab = labels[ys, xs]
    ry, rx = pixels(ring)
    rlab = ring[ry, rx]
    known_px = np.zeros(n, bool) if known is None else known[ys, xs]
    ring_frame = frame[ry, rx]
    ring_size = np.bincount(rlab, minlength=count)
    tolerance = _ring_tolerance(frame, ry, rx, rlab, count)  # (count,)
    # Regions small enough to move as one piece (a box side of at most RIGID_SIDE px).
    top = np.full(count, labels.shape[0]), np.full(count, labels.shape[1])
    bottom = np.zeros(count, int), np.zeros(count, int)
    np.minimum.at(top[0], lab, ys)
    np.minimum.at(top[1], lab, xs)
    np.maximum.at(bottom[0], lab, ys)
    np.maximum.at(bottom[1], lab, xs)
    rigid = np.maximum(bottom[0] - top[0], bottom[1] - top[1]) < RIGID_SIDE

    matched, valid, misfit = [], [], []
    for k in neighbours:
        vec_ring, trust_ring = flow(k, ry, rx)
        vec, trust = flow(k, ys, xs)
        w = trust_ring.astype(np.float64)
        seen = np.bincount(rlab, w, minlength=count)
        whole = np.stack([np.bincount(rlab, w * vec_ring[:, i], minlength=count) for i in range(2)], 1)
        whole /= np.maximum(seen, 1)[:, None]
        piece = rigid & (seen > 0)
        # Two candidates per neighbour: the per-pixel flow, and the region moved as one piece; the ring decides.
        for one_piece in (False, True):
            if one_piece:
                vec_ring = np.where(piece[rlab, None], whole[rlab], vec_ring).astype(np.float32)
                vec = np.where(piece[lab, None], whole[lab], vec).astype(np.float32)
            best, shift, gain = _align(ring_frame, sample, k, ry, rx, vec_ring, trust_ring, rlab, ring_size, count)
            if one_piece:
                best = np.where(piece, best, np.inf)  # the same as the per-pixel candidate elsewhere
            colours, ok = sample(k, xs + vec[:, 0] + shift[lab, 0], ys + vec[:, 1] + shift[lab, 1])
            misfit.append(best)
            matched.append(colours * gain[lab])
            valid.append(ok & trust)
    stack = np.stack(matched)  # (K, N, 3)
    ok_k = np.stack(valid)  # (K, N)
    fit = np.stack(misfit)  # (K, count)
    # Only candidates that passed their ring check take part from here: one known to be off must not veto the
    # others either.
    ok_k &= (fit <= tolerance[None, :])[:, lab]
    luma = stack @ LUMA  # (K, N)
    median = _valid_median(luma[..., None], ok_k)[:, 0]
    masked_hi = np.where(ok_k, luma, -np.inf).max(axis=0)
    masked_lo = np.where(ok_k, luma, np.inf).min(axis=0)
    agree = ok_k.any(axis=0) & (masked_hi - masked_lo <= max_spread)
    usable = ok_k & (np.abs(luma - median) <= 0.5 * max_spread)  # (K, N)
    # Where the frame is known, a candidate must show what the frame shows: a neighbour's own defect, or
    # content that changed, lying in the margin would otherwise be pasted over clean picture.
    here = frame[ys, xs] @ LUMA
    usable &= ~known_px | (np.abs(luma - here) <= 2.0 * tolerance[lab])
    # Per region, the kept candidates in order of how close they stay to the kept candidates' median over it
    # (the ring check is a veto, not a ranking: among aligned candidates it mostly measures grain).
    distance = np.abs(luma - median)
    score = np.full((len(stack), count), np.inf)
    for i, (d, o) in enumerate(zip(distance, ok_k)):
        used = np.bincount(lab, o, minlength=count)
        total = np.bincount(lab, np.where(o, d, 0.0), minlength=count)
        score[i] = np.where(used > 0, total / np.maximum(used, 1), np.inf)
    order = np.argsort(score, axis=0, kind="stable")[:, lab]  # (K, N)
    pick = np.arange(n)
    chosen = np.full(n, -1)
    for rank in range(len(stack)):
        k = order[rank]
        take = (chosen < 0) & usable[k, pick]
        chosen[take] = k[take]
    ok = agree & (chosen >= 0)
    values = stack[np.maximum(chosen, 0), pick]
    return values.astype(np.float32), ok


def _align(
    ring_frame: np.ndarray,
    sample: Callable[[int, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    k: int,
    ry: np.ndarray,
    rx: np.ndarray,
    vec_ring: np.ndarray,
    trust_ring: np.ndarray,
    rlab: np.ndarray,
    ring_size: np.ndarray,
    count: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per region, the whole-pixel shift (within SHIFT_SEARCH px) of neighbour k's sampling points that best
    matches its ring to the frame's: (misfit (count,), shift (count, 2), gain (count, 3)) of the best one."""
    r = np.arange(-SHIFT_SEARCH, SHIFT_SEARCH + 1, dtype=np.float32)
    dy, dx = (a.ravel() for a in np.meshgrid(r, r, indexing="ij"))  # (S,) every shift, sampled in one go
    shifts = len(dx)
    c_ring, ok_ring = sample(
        k,
        ((rx + vec_ring[:, 0])[None, :] + dx[:, None]).ravel(),
        ((ry + vec_ring[:, 1])[None, :] + dy[:, None]).ravel(),
    )
    # Each (shift, region) pair is a label of its own.
    labels = (np.arange(shifts)[:, None] * count + rlab[None, :]).ravel()
    rms, gain = _ring_misfit(
        np.tile(ring_frame, (shifts, 1)),
        c_ring,
        ok_ring & np.tile(trust_ring, shifts),
        labels,
        np.tile(ring_size, shifts),
        shifts * count,
    )
    # A shift must earn its place: ties (flat rings, where any shift fits) keep the flow's own.
    rms = rms.reshape(shifts, count) * (1.0 + 0.02 * (dx * dx + dy * dy))[:, None]
    pick = np.argmin(rms, axis=0)  # (count,): a region no shift could check keeps inf
    best = rms[pick, np.arange(count)]
    shift = np.stack([dx[pick], dy[pick]], axis=1).astype(np.float32)
    return best, shift, gain.reshape(shifts, count, 3)[pick, np.arange(count)]


def _ring_misfit(
    ring_frame: np.ndarray, c_ring: np.ndarray, ok: np.ndarray, rlab: np.ndarray, ring_size: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per region: the gain per channel that brings a candidate to the frame's brightness on the ring, and the
    luma rms by which the two rings still differ then ((count,), (count, 3)). Flicker is a change of exposure:
    a gain, not an offset (an offset matched on the ring leaves a region that is darker or brighter than its
    ring off by the gain times that contrast). inf where less than half of the ring (or fewer than 8 pixels)
    could be sampled: a candidate that cannot be checked is not used."""
    w = ok.astype(np.float64)
    n = np.bincount(rlab, w, minlength=count)
    frame_sum = np.stack([np.bincount(rlab, w * ring_frame[:, ch], minlength=count) for ch in range(3)], axis=1)
    cand_sum = np.stack([np.bincount(rlab, w * c_ring[:, ch], minlength=count) for ch in range(3)], axis=1)
    # Near black a ratio means nothing: there the gain is 1 (what is left is grain and the misfit says so).
    dark = cand_sum < 0.02 * np.maximum(n, 1)[:, None]
    gain = np.clip(np.where(dark, 1.0, frame_sum / np.maximum(cand_sum, 1e-9)), 1 / MAX_GAIN, MAX_GAIN)
    left = (ring_frame - c_ring * gain[rlab].astype(np.float32)) @ LUMA
    rms = np.sqrt(np.bincount(rlab, w * left.astype(np.float64) ** 2, minlength=count) / np.maximum(n, 1))
    seen = n >= np.maximum(8, 0.5 * ring_size)
    return np.where(seen, rms, np.inf), gain.astype(np.float32)


def _ring_tolerance(frame: np.ndarray, ry: np.ndarray, rx: np.ndarray, rlab: np.ndarray, count: int) -> np.ndarray:
    """Per region, how far (luma rms) a well-aligned neighbour may differ from the frame on its ring: two
    independent grains, plus what a sub-pixel misalignment leaves on the ring's edges (whole-pixel sampling
    keeps the grain but may be half a pixel off: on an edge that is a large difference, and a fair one),
    plus a little. The frame's grain is read on the rings themselves (each pixel minus the mean of its 8
    neighbours, robust spread over all ring pixels, so edges crossing a few rings do not count); the edges are
    the ring's own luma gradient (rms per region). A neighbour a pixel or more off across an edge differs by
    several times the sub-pixel allowance and is dropped."""
    if len(ry) == 0:
        return np.zeros(count)
    h, w = frame.shape[:2]
    grey = frame @ LUMA

    def at(dy: int, dx: int) -> np.ndarray:
        return grey[np.clip(ry + dy, 0, h - 1), np.clip(rx + dx, 0, w - 1)]

    around = sum(at(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
    high = grey[ry, rx] - around / 8.0
    grain = 1.4826 * float(np.median(np.abs(high - np.median(high))))
    gradient2 = ((at(0, 1) - at(0, -1)) / 2.0) ** 2 + ((at(1, 0) - at(-1, 0)) / 2.0) ** 2
    n = np.maximum(np.bincount(rlab, minlength=count), 1)
    edges = np.sqrt(np.bincount(rlab, gradient2.astype(np.float64), minlength=count) / n)
    return np.sqrt((GRAIN_TOLERANCE * grain) ** 2 + (SUBPIXEL * edges) ** 2) + MISFIT_FLOOR


def _median(values: np.ndarray) -> float:
    """``float(np.median(values))`` of a non-empty 1-D array, to the bit, without np.median's ~80 us of overhead
    per call (a spatial fill asks for ~20 medians of a few hundred values per region; on grainy 720p frames
    with ~150 such regions that was a sixth of the main thread's time). The same selection (a partition at
    the middle one or two, and at the end, where a NaN would sort) and the same float32 mean of the two
    middle values (summed from 0, as np.mean sums)."""
    n = len(values)
    half = n // 2
    part = np.partition(values, [half - 1, half, n - 1] if n % 2 == 0 else [half, n - 1])
    if np.isnan(part[-1]):
        return float("nan")
    zero = part.dtype.type(0)  # np.mean's sum starts at 0: a -0.0 median comes out as +0.0
    if n % 2:
        return float(zero + part[half])
    return float((zero + part[half - 1] + part[half]) / 2)


def _std(values: np.ndarray) -> float:
    """``float(values.std())`` of a non-empty 1-D float32 array, to the bit, without the ~25 us of np.std's
    Python layers per call (a spatial fill asks for up to 8 per region). numpy's own steps: the float32 sum
    (pairwise, as np.add.reduce sums), divided by the count in float64 and rounded to float32; the squared
    float32 deviations summed the same way, divided so; the float32 square root."""
    n = values.size
    mean = np.float32(float(np.add.reduce(values)) / n)
    deviation = values - mean
    np.square(deviation, out=deviation)
    return float(np.sqrt(np.float32(float(np.add.reduce(deviation)) / n)))


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


# The black gate (the unexposed film edge a scan often shows at a border, weaving with the picture): border
# columns or rows whose median luma is below GATE_LEVEL, at most GATE_SHARE of the frame's side, plus the soft
# column or row beside them. It is no picture: inpainting must not draw from it (Telea would smear black into a
# fill next to it) and a fill must not replace it.
GATE_LEVEL = 0.05
GATE_SHARE = 0.05


def gate(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: the black gate along the borders of an (H, W, 3) frame in [0, 1] (see GATE_LEVEL). Every
    column (row) near an edge is judged, by its median over ~128 of its pixels."""
    h, w = image.shape[:2]
    out = np.zeros((h, w), bool)
    for axis, size in ((0, w), (1, h)):  # axis 0: the columns at the left and right edges; 1: the rows
        limit = max(1, int(GATE_SHARE * size))
        for far in (False, True):
            band = slice(size - limit, size) if far else slice(0, limit)
            strip = image[:: max(1, h // 128), band] if axis == 0 else image[band, :: max(1, w // 128)]
            line = np.median(strip @ LUMA, axis=axis)  # one value per column (row) of the band
            edge = line[::-1] if far else line
            dark = int(np.argmin(np.append(edge < GATE_LEVEL, False)))  # dark lines from the edge inwards
            if dark == 0:
                continue
            width = min(size, dark + 1)  # and the soft one beside them
            lines = slice(size - width, size) if far else slice(0, width)
            if axis == 0:
                out[:, lines] = True
            else:
                out[lines, :] = True
    return out


def spatial_fill(
    image: np.ndarray,
    region: np.ndarray,
    matte: np.ndarray | None = None,
    radius: int = 5,
    out: np.ndarray | None = None,
    border: np.ndarray | None = None,
) -> np.ndarray:
    """Inpaint ``region`` of an (H, W, 3) image in [0, 1] from its surroundings (Telea), one crop around each
    connected region, and give the fill the grain of the frame next to it. The black gate (``border``, by
    default ``gate(image)``) is neither drawn from nor filled.

    Done in 16-bit: OpenCV 5's float32 inpainting returns garbage (values far outside the input range), and
    16 bits keep far more precision than the 1/255 the tests ask for. ``matte``: pixels that are defects (no
    grain is copied from them); defaults to ``region``. ``out``: where to write (may be ``image`` itself); a
    copy of ``image`` by default."""
    if out is None:
        out = image.copy()
    if not region.any():
        return out
    border = gate(image) if border is None else border
    if border.any():
        region = region & ~border
        if not region.any():
            return out
    matte = region if matte is None else (matte | region)
    h, w = region.shape
    n, labels = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
    stats = _boxes(labels, region, n)
    pad = 2 * radius + 2  # the crop whose grain the fill takes (``_grain_patch``)
    near = radius + INPAINT_REACH  # the crop Telea needs (see INPAINT_REACH)
    for i in range(1, n):
        x, y, bw, bh = stats[i]
        x0, y0, x1, y1 = max(0, x - pad), max(0, y - pad), min(w, x + bw + pad), min(h, y + bh + pad)
        mask = labels[y0:y1, x0:x1] == i
        if border[y0:y1, x0:x1].any():
            # The gate is no source material: it is inpainted with the region, and how far it reaches within
            # the crop shapes the fill's marching order. Inpainted on the whole crop, as it always was.
            ty0, ty1, tx0, tx1 = y0, y1, x0, x1
            m8 = (mask | border[y0:y1, x0:x1]).astype(np.uint8)
            inside = mask
        else:
            ty0, ty1, tx0, tx1 = max(0, y - near), min(h, y + bh + near), max(0, x - near), min(w, x + bw + near)
            inside = labels[ty0:ty1, tx0:tx1] == i
            m8 = inside.view(np.uint8)
        # The crop's channels to 16 bits at once (the same values channel by channel), each channel inpainted
        # on its own (cv2.inpaint takes one 16-bit channel); only the region's values are kept.
        u16 = (np.clip(out[ty0:ty1, tx0:tx1], 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
        filled = np.empty((int(np.count_nonzero(inside)), u16.shape[-1]), np.float32)
        for c in range(u16.shape[-1]):
            inpainted = cv2.inpaint(np.ascontiguousarray(u16[..., c]), m8, radius, cv2.INPAINT_TELEA)
            filled[:, c] = inpainted[inside] / 65535.0
        grain = _grain_patch(image, matte, (y0, y1, x0, x1), mask, (bw, bh))
        if grain is not None:
            # Grain has no mean of its own: the patch's high frequencies average to zero over a large area only,
            # and over a small mask their mean would lift or sink the whole fill.
            patch = grain[mask]
            filled += patch - patch.mean(axis=0)
        out[y0:y1, x0:x1][mask] = np.clip(filled, 0.0, 1.0)
    return out


# px beyond cv2.inpaint's radius that its Telea fill of a region reads (OpenCV's photo/inpaint.cpp): the fill
# of a pixel weighs the known pixels within the radius, and their image gradients one pixel further; the
# marching distances outside the region reach the radius (a square dilation of it), read one pixel further too;
# and the crop's outermost rows and columns are handled apart. So a crop with this margin gives the region the
# values of any larger crop, to the bit, as long as nothing else in the crop is inpainted (the gate: then the
# whole crop is taken). Measured on the grainy 720p benchmark's ~1200 regions: margins 6-8 all give the bits of
# 12 (``pad``).
INPAINT_REACH = 2


def _boxes(labels: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """(n, 4) bounding boxes (x, y, width, height) of the labelled components, from the mask's own pixels:
    cv2's connectedComponentsWithStats visits every pixel of the frame for its statistics (~20 ms at 2K)."""
    ys, xs = pixels(mask)
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
    """The frame's own grain for a crop: the high frequencies of a same-size patch beside it (left, right,
    above, below or diagonally) that holds no defect, the one with the least structure in it, brought to the
    grain level around the region and clipped to what grain reaches. None when there is no such patch.

    High frequencies are grain and edges alike: a patch across a building's edge or a wall's boards pasted
    them into the fill (Market Street 39: a ghost of building edges beside the tower; Train Robbery 23: patches
    of wainscot over the dirt). Grain is noise-like, its spread about the robust one (median absolute
    deviation); an edge makes the plain spread far larger. So the patch whose ratio of the two is smallest is
    taken, scaled so that its robust spread is that of the crop around the region (a patch of coarser or
    mottled picture would stand out as a blotchy fill), and clipped to GRAIN_CLIP times that spread: grain
    passes, what is left of an edge or a speck does not stand out."""
    h, w = matte.shape
    y0, y1, x0, x1 = box

    def high_pass(sy0: int, sy1: int, sx0: int, sx1: int) -> np.ndarray:
        # Over a 4 px wider window so the patch's own edges are not those of the blur's border.
        py0, py1, px0, px1 = max(0, sy0 - 4), min(h, sy1 + 4), max(0, sx0 - 4), min(w, sx1 + 4)
        high = _highpass(image[py0:py1, px0:px1])
        return high[sy0 - py0 : sy1 - py0, sx0 - px0 : sx1 - px0]

    def robust(values: np.ndarray) -> float:
        return 1.4826 * _median(np.abs(values - _median(values))) if len(values) else 0.0

    around = ~matte[y0:y1, x0:x1]  # the crop's clean pixels: the grain the fill must carry
    level = robust(high_pass(y0, y1, x0, x1)[around] @ LUMA)
    bw, bh = size
    sx, sy = bw + 4, bh + 4
    best, best_structure, spread = None, np.inf, 0.0
    for dy, dx in ((0, -sx), (0, sx), (-sy, 0), (sy, 0), (-sy, -sx), (-sy, sx), (sy, -sx), (sy, sx)):
        sy0, sy1, sx0, sx1 = y0 + dy, y1 + dy, x0 + dx, x1 + dx
        if sy0 < 0 or sx0 < 0 or sy1 > h or sx1 > w:
            continue
        if (matte[sy0:sy1, sx0:sx1] & mask).any():
            continue
        high = high_pass(sy0, sy1, sx0, sx1)
        luma = high[mask] @ LUMA  # only what the fill receives is judged
        patch_spread = robust(luma)
        structure = _std(luma) / max(patch_spread, 1e-6)
        if structure < best_structure:
            best, best_structure, spread = high, structure, patch_spread
            if structure <= PLAIN_GRAIN:
                break  # as plain as grain gets: the others need not be looked at
    if best is None:
        return None
    if level <= 0.0 or spread <= 0.0:
        return best
    scaled = best * np.float32(level / spread)
    return np.clip(scaled, -GRAIN_CLIP * level, GRAIN_CLIP * level)
