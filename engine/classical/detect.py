"""Defect detection: dust/dirt by temporal spikes, line scratches by persistent thin vertical ridges.

Dust and dirt sit on one frame only, so a dusty pixel differs from *both* motion-compensated neighbours, with
the same sign (Kokaram's SDIp spike detector). Real content that moves is explained by the flow; content that
appears or disappears (occlusion) differs from one neighbour only.

Line scratches are the opposite: they stay at (nearly) the same place on the film for many frames whatever the
picture does, so the temporal test cannot see them. They are thin, near-vertical ridges that persist at the
same x over the temporal window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

# Horizontal motion from one frame to another at given pixels: (ys, xs) -> flow x in px.
FlowX = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _profile_shift(line: np.ndarray, other: np.ndarray, reach: int = 3) -> float:
    """Sub-pixel shift (px, + = right) of the column profile ``line`` (a line's mean ridge strength across
    its rows, zero away from it) that best matches ``other`` (the same rows of another frame): the peak of
    their cross-correlation over +-``reach`` px, refined by a parabola through its neighbours."""
    width = len(line)
    score = np.array(
        [
            float(np.dot(line[reach : width - reach], other[reach + d : width - reach + d]))
            for d in range(-reach, reach + 1)
        ]
    )
    best = int(np.argmax(score))
    if 0 < best < len(score) - 1:
        a, b, c = score[best - 1], score[best], score[best + 1]
        curve = a - 2 * b + c
        return best - reach + (0.5 * (a - c) / curve if curve < 0 else 0.0)
    return float(best - reach)


def _component_max(labels: np.ndarray, values: np.ndarray, count: int) -> np.ndarray:
    """Per label 0..count-1 the largest of ``values`` (0 for labels without values)."""
    out = np.zeros(count, dtype=np.float64)
    np.maximum.at(out, labels, values)
    return out


def _components_touching(weak: np.ndarray, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Connected components of ``weak`` that contain a seed pixel (hysteresis): labels, keep-flags, areas."""
    n, labels = _labels(weak)
    keep = np.zeros(n, dtype=bool)
    keep[np.unique(labels[seeds & weak])] = True
    keep[0] = False
    return labels, keep, _areas(labels, weak, n)


def _labels(mask: np.ndarray) -> tuple[int, np.ndarray]:
    """8-connected components of a bool mask: (count including the background, int32 labels)."""
    return cv2.connectedComponents(mask.view(np.uint8) if mask.dtype == bool else mask, connectivity=8)


def _areas(labels: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """Pixels per component (0 for the background). Counted from the mask's own pixels: cv2's
    connectedComponentsWithStats visits every pixel of the frame for its statistics, ~5x the labelling."""
    return np.bincount(labels[mask], minlength=n)


def pixels(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of a 2-D mask's nonzero pixels in row-major order, as np.nonzero gives them; np.nonzero on a
    2-D array is ~5x slower than finding the flat indices and dividing (a 2K frame: ~6 ms against ~1). A mask of
    labels is made bool first: flatnonzero is ~6x slower on int32 than on bool, more than the comparison."""
    ys, xs = np.divmod(np.flatnonzero(mask if mask.dtype == bool else mask != 0), mask.shape[1])
    return ys, xs


# Rows per block of the spike tests' whole-row arithmetic (``spikes``, ``_spike_rows``, ``_suspect_rows``): their
# temporaries stay in the cache, never a whole-frame array (two 12 MB arrays at 2K). No bit depends on it.
SPIKE_ROWS = 64

RANGE_DENSE = 1.0 / 64.0  # share of the frame's pixels above which ``_range_at`` takes the whole frame's ranges


def _range_at(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 3x3 maximum and minimum of ``image`` at the pixels (ys, xs): cv2.dilate/erode with a 3x3 box, at a
    few pixels instead of the whole frame (or of the whole frame when many pixels ask, ``RANGE_DENSE``). Indices
    are clamped at the border, which changes nothing: the clamped pixel is inside the window already (cv2
    ignores the pixels outside the image). Finite values only (the frames are refused with NaN: a NaN in a
    neighbour gives other extremes from cv2 than from np.maximum)."""
    h, w = image.shape
    if len(ys) > RANGE_DENSE * image.size:
        # Many pixels (grainy film: ~15% of a 720p frame): one 3x3 dilation and erosion of the whole frame (~0.3
        # ms each at 720p) and one gather each cost a sixth of nine gathers. The same extremes to the bit.
        flat_i = ys * w + xs
        box = np.ones((3, 3), np.uint8)
        return cv2.dilate(image, box).ravel()[flat_i], cv2.erode(image, box).ravel()[flat_i]
    flat = image.ravel()
    rows = [np.clip(ys + d, 0, h - 1) * w for d in (-1, 0, 1)]
    cols = [np.clip(xs + d, 0, w - 1) for d in (-1, 0, 1)]
    hi = lo = flat[rows[1] + cols[1]]
    for r in rows:
        for c in cols:
            v = flat[r + c]
            hi, lo = np.maximum(hi, v), np.minimum(lo, v)
    return hi, lo


# Above this share of the frame near a spike (grainy 720p film: ~90%, the real 480x368 films ~12%) the suspects'
# test runs over whole rows (``_suspect_rows``): gathering most of a frame's pixels one by one costs more than
# the arithmetic on contiguous rows (720p, 90%: ~27 -> ~12 ms; 480x368, 12%: about even).
NEAR_DENSE = 0.1


# Above this share of the frame's pixels that may be spikes (grainy 720p film: ~17%) spikes() takes its ranges over
# whole rows (``_spike_rows``): 720p, 17%: ~11 -> ~6 ms.
SPIKES_DENSE = 0.08


def _spike_rows(frame: np.ndarray, prev: np.ndarray, nxt: np.ndarray, maybe: np.ndarray) -> np.ndarray:
    """``SpikeDetector.spikes`` where ``maybe``, 0 elsewhere: the same arithmetic as at its gathered pixels, with
    the 3x3 ranges from one dilation and erosion of each whole neighbour, a block of rows at a time."""
    box = np.ones((3, 3), np.uint8)
    hi_p, lo_p, hi_n, lo_n = cv2.dilate(prev, box), cv2.erode(prev, box), cv2.dilate(nxt, box), cv2.erode(nxt, box)
    out = np.empty_like(frame)
    for y in range(0, frame.shape[0], SPIKE_ROWS):
        rows = slice(y, y + SPIKE_ROWS)
        f = frame[rows]
        spike = np.maximum(np.minimum(f - hi_p[rows], f - hi_n[rows]), np.minimum(lo_p[rows] - f, lo_n[rows] - f))
        out[rows] = np.where(maybe[rows], spike, 0.0)
    return out


def _suspect_rows(
    frame: np.ndarray, prev: np.ndarray, nxt: np.ndarray, threshold: float, near: np.ndarray
) -> np.ndarray:
    """``SpikeDetector.suspects``' test before its size filter, over whole rows: ``near``, ``frame`` more than
    ``threshold`` from ``prev`` or ``nxt``, and outside the 3x3 range of either by more than that. The same
    arithmetic as at gathered pixels, with the ranges from one dilation and erosion of each whole neighbour
    (``_range_at``'s extremes), a block of rows at a time."""
    box = np.ones((3, 3), np.uint8)
    hi_p, lo_p, hi_n, lo_n = cv2.dilate(prev, box), cv2.erode(prev, box), cv2.dilate(nxt, box), cv2.erode(nxt, box)
    out = np.empty(frame.shape, bool)
    for y in range(0, frame.shape[0], SPIKE_ROWS):
        rows = slice(y, y + SPIKE_ROWS)
        f = frame[rows]
        far = np.maximum(np.abs(f - prev[rows]), np.abs(f - nxt[rows])) > threshold
        bright = np.maximum(f - hi_p[rows], f - hi_n[rows])
        dark = np.maximum(lo_p[rows] - f, lo_n[rows] - f)
        np.greater(np.maximum(bright, dark, out=bright), threshold, out=out[rows])
        out[rows] &= far
        out[rows] &= near[rows]
    return out


@dataclass
class SpikeDetector:
    """Dust and dirt: pixels that differ from both motion-compensated neighbours with the same sign, where
    both neighbours agree with each other and the motion there was followed."""

    threshold: float = 0.06  # model-space units
    max_area: int = 6000  # larger blobs are taken as real change (motion the flow missed)
    max_flow_gradient: float = 0.5  # px/px: motion boundaries, where compensation cannot be trusted
    # A defect hides what both neighbours show: they agree there. Where they disagree by more than this share
    # of the spike, the "spike" is motion the compensation missed (occlusion, fast or non-rigid motion).
    max_disagreement: float = 0.5
    # Regions larger than this share of the frame over moving content (> moving_px per frame) need twice the
    # evidence: a large wrong fill over an actor is the worst artifact this engine can make.
    large_share: float = 0.002
    moving_px: float = 1.5
    # spikes() is exact only where the strength exceeds this share of the threshold (0 elsewhere, which saves
    # the 3x3 ranges at ~99% of the pixels): every test on spike strengths must tell apart only values above
    # it. The rim (hysteresis) test compares with half the threshold.
    exact_share: float = 0.5
    # Compensation errs most where the picture is textured: a blurred, deformed or sub-pixel misregistered edge
    # lies outside the 3x3 range of the neighbours by a share of the local contrast. So a speck's strongest
    # pixel must exceed the threshold plus this share of the texture around it (the mean 3x3 range of the
    # frame in a ring outside the speck): on flat film (range ~0.01) this adds little, on crowds and rubble
    # (0.1-0.2) a sixth of their contrast. And the more the two neighbours disagree with each other (beyond
    # ``agree_share`` of the spike), the more that spike may be motion the compensation missed: the evidence
    # asked for grows in proportion, up to the ``max_disagreement`` veto.
    texture_gain: float = 0.15
    agree_share: float = 0.2
    # On busy ground (texture above this) a disagreement of the references is likelier mis-compensation than on
    # flat film: the edges of a bright thing that moves or changes shape (a cloth on a moving hand, a pole's tip
    # against a web of wires) lie outside both references' ranges there, and the references, which show it in
    # two other shapes, disagree. So the share of the spike the references may disagree by (``max_disagreement``)
    # comes down in proportion to the texture above it: components whose disagreement share x texture exceeds
    # max_disagreement x busy_texture (0.045) go. On the hand-marked real frames no defect lies above 0.032 and
    # a dark speck of San Francisco 177 at 0.043; these false detections lie at 0.051-0.072.
    busy_texture: float = 0.09
    # A frame that differs from both neighbours as a whole (frame_threshold): the share of its pixels whose
    # spike level tells it (dust covers far less), and how far above that level a speck must stand. The level
    # is read from spikes(), which gives 0 below exact_share x threshold: so the threshold is raised only from
    # a level of 0.5 x threshold up (to 1.5 x threshold and more); a frame below that keeps its threshold.
    frame_share: float = 0.03
    frame_gain: float = 3.0
    # Both references on one side (a clip's first or last frame): occlusions look like spikes in both, so
    # the evidence asked for is this much stronger.
    one_sided_gain: float = 1.5
    texture_ring: int = 9  # px: the ring's outer size
    stand_out_ring: int = 3  # px: the ring a clip end's component is compared with (``_stands_out``)
    # Specks over fast motion (``_no_counterpart``): where the flow fails the references disagree, and the tests
    # above leave the component out, speck or not. A small, strong one (area <= fast_share of the frame, seeds
    # >= fast_gain x the threshold, moving > fast_px per frame) is looked for again in both references around
    # its place, within fast_reach of the frame's larger side (>= fast_reach_min px). Its contrast against its
    # own ring is compared at every shift: real content, however it moved, shows there with that contrast (a
    # shift leaves less than fast_left of the component's contrast energy); a speck shows nowhere, and where its
    # ring is found (the ring's residual <= fast_ring of that energy) the reference shows no trace of it (more
    # than fast_absent of the energy left). Figures: docs/quality.md, "Specks over fast motion".
    fast_px: float = 3.0
    fast_share: float = 0.0005
    fast_gain: float = 2.0
    fast_reach: float = 0.02
    fast_reach_min: int = 16
    fast_left: float = 0.7
    fast_absent: float = 0.9
    fast_ring: float = 0.1

    def spikes(self, frame: np.ndarray, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """Signed-free spike strength: how far ``frame`` lies outside the 3x3 range of both neighbours.

        Rank-ordered, like Kokaram's ROD detector: a pixel is a bright spike only if it is brighter than the
        *brightest* pixel of the 3x3 neighbourhood in both warped neighbours (dark: darker than the darkest).
        Sub-pixel misregistration and small changes of sharpness (motion blur, focus, resampling) move a
        textured pixel within its neighbourhood's range; dust lies outside it.

        Exact where it exceeds ``exact_share`` of the threshold; 0 at the other pixels. A pixel outside both
        3x3 ranges by more than that is outside both centre pixels by more than that, with the same sign: the
        ranges are only taken there (~1% of a real frame, not 3M pixels four times over at 2K). Rounding is
        monotone, so that test never drops a pixel."""
        level = self.exact_share * self.threshold
        # frame - max(prev, nxt) is min(frame - prev, frame - nxt) to the bit (rounding is monotone); in place,
        # a block of rows at a time (``SPIKE_ROWS``).
        maybe = np.empty(frame.shape, bool)
        for y in range(0, frame.shape[0], SPIKE_ROWS):
            rows = slice(y, y + SPIKE_ROWS)
            above = np.maximum(prev[rows], nxt[rows])
            np.subtract(frame[rows], above, out=above)
            below = np.minimum(prev[rows], nxt[rows])
            np.subtract(below, frame[rows], out=below)
            np.greater(above, level, out=maybe[rows])
            maybe[rows] |= below > level
        if np.count_nonzero(maybe) > SPIKES_DENSE * maybe.size:
            return _spike_rows(frame, prev, nxt, maybe)
        ys, xs = pixels(maybe)
        hi_p, lo_p = _range_at(prev, ys, xs)
        hi_n, lo_n = _range_at(nxt, ys, xs)
        f = frame[ys, xs]
        spike = np.zeros_like(frame)
        spike[ys, xs] = np.maximum(np.minimum(f - hi_p, f - hi_n), np.minimum(lo_p - f, lo_n - f))
        return spike

    def suspects(self, frame: np.ndarray, prev: np.ndarray, nxt: np.ndarray, spike: np.ndarray) -> np.ndarray:
        """Pixels outside the 3x3 range of *either* neighbour near a (half-threshold) spike: where a speck may
        have pulled the flow along, so that one neighbour shows the speck's brightness too."""
        near = cv2.dilate((spike > 0.5 * self.threshold).astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
        # Outside a range by more than the threshold means outside its centre pixel by more (as in spikes()):
        # the ranges are taken only near a spike and where the frame is that far from one neighbour.
        if np.count_nonzero(near) > NEAR_DENSE * near.size:
            found = _suspect_rows(frame, prev, nxt, self.threshold, near)
            ys, xs = pixels(found)
        else:
            ys, xs = pixels(near)
            f = frame[ys, xs]
            far = np.maximum(np.abs(f - prev[ys, xs]), np.abs(f - nxt[ys, xs])) > self.threshold
            ys, xs, f = ys[far], xs[far], f[far]
            hi_p, lo_p = _range_at(prev, ys, xs)
            hi_n, lo_n = _range_at(nxt, ys, xs)
            bright = np.maximum(f - hi_p, f - hi_n)
            dark = np.maximum(lo_p - f, lo_n - f)
            out = np.maximum(bright, dark) > self.threshold
            ys, xs = ys[out], xs[out]
            found = np.zeros(frame.shape, bool)
            found[ys, xs] = True
        # Only small ones: taking the flow of a large region from its surroundings would make a moving object
        # (whose own flow was right) look like a blotch over the background both neighbours show.
        n, labels = _labels(found)
        lab = labels[ys, xs]
        small = np.bincount(lab, minlength=n) <= self.large_share * frame.size
        small[0] = False
        found[ys, xs] = small[lab]
        return found

    def frame_threshold(self, spike: np.ndarray) -> float:
        """The spike threshold for this frame: ``threshold``, or more where the frame as a whole lies outside
        its neighbours (blurred, ghosted, differently exposed: a few % of its pixels outside their range, not
        the ~0.1% dust covers). There every edge is a 'spike', and only a speck far above the frame's own level
        of difference (``frame_gain`` x the level ``frame_share`` of its pixels exceed) is evidence; pasting
        the sharp neighbours' patches into it would be a patchwork."""
        step = max(1, spike.shape[0] // 512)  # a few hundred rows tell the level
        sample = spike[::step, ::step].ravel()
        rank = int((1.0 - self.frame_share) * (sample.size - 1))
        # The rank-th smallest value, found among the few nonzero values only: spikes() leaves ~99% of a frame
        # at exactly 0, and partitioning a 720p frame's million values costs ~40 ms.
        below, above = sample[sample < 0], sample[sample > 0]
        zeros = sample.size - len(below) - len(above)
        if rank < len(below):
            level = float(np.partition(below, rank)[rank])
        elif rank < len(below) + zeros:
            level = 0.0
        else:
            k = rank - len(below) - zeros
            level = float(np.partition(above, k)[k])
        return max(self.threshold, self.frame_gain * level)

    def _stands_out(
        self,
        frame: np.ndarray,
        reference: np.ndarray,
        labels: np.ndarray,
        ys: np.ndarray,
        xs: np.ndarray,
        lab: np.ndarray,
        n: int,
    ) -> np.ndarray:
        """(n,) bool, per component: it stands out from its ring more in the frame than in the references. With
        both references on one side (a clip's first or last frame) a difference is a defect of this frame or
        something the later (earlier) frames show and this one does not yet (San Francisco 133: a streak on a
        pillar in frames 134 and 135 was pasted into 133). A speck stands out from what surrounds it in its own
        frame; a feature of the references stands out there instead."""
        box = np.ones((2 * self.stand_out_ring + 1,) * 2, np.uint8)
        grown = cv2.dilate(labels.astype(np.float32), box)  # each component's ring takes its label
        ry, rx = pixels((grown > 0) & (labels == 0))
        rlab = grown[ry, rx].astype(np.intp)

        def step(image: np.ndarray) -> np.ndarray:
            inside = np.bincount(lab, image[ys, xs], minlength=n) / np.maximum(np.bincount(lab, minlength=n), 1)
            ring = np.bincount(rlab, image[ry, rx], minlength=n) / np.maximum(np.bincount(rlab, minlength=n), 1)
            return np.abs(inside - ring)

        return step(frame) > step(reference)

    def _no_counterpart(
        self,
        frame: np.ndarray,
        references: tuple[np.ndarray, ...],
        ys: np.ndarray,
        xs: np.ndarray,
        lab: np.ndarray,
        candidates: np.ndarray,
        n: int,
    ) -> np.ndarray:
        """(n,) bool per component label: among ``candidates``, those that no reference shows
        anywhere near while each shows what surrounds them. The component's contrast against its own ring
        (``stand_out_ring`` px), c = frame - the ring's mean, is compared with every shift d of each reference
        within the reach: the residual sum((c - (ref(p + d) - ref's ring mean at d))^2) over the component, and
        the ring's own (its pattern against the reference's, both less their means). Real content the flow
        missed (a fast limb, a thin rod, a light) has its counterpart at some d: a small residual. A speck has
        none, and where the reference shows its ring (the ring's best shift) nothing of it is there. A
        component whose search window leaves the frame is not taken (the gate's edge weaves). The sums are
        correlations of the reference window with the component's masks (cv2.matchTemplate), ~0.1 ms each."""
        h, w = frame.shape
        reach = max(self.fast_reach_min, int(round(self.fast_reach * max(h, w))))
        ring = self.stand_out_ring
        grow = np.ones((2 * ring + 1,) * 2, np.uint8)
        out = np.zeros(n, bool)
        order = np.argsort(lab, kind="stable")
        starts = np.searchsorted(lab[order], candidates)
        ends = np.searchsorted(lab[order], candidates, side="right")
        for i, first, last in zip(candidates, starts, ends):
            cy, cx = ys[order[first:last]], xs[order[first:last]]
            y0, x0 = int(cy.min()) - ring, int(cx.min()) - ring
            y1, x1 = int(cy.max()) + ring + 1, int(cx.max()) + ring + 1
            if y0 - reach < 0 or x0 - reach < 0 or y1 + reach > h or x1 + reach > w:
                continue
            inside = np.zeros((y1 - y0, x1 - x0), np.float32)
            inside[cy - y0, cx - x0] = 1.0
            around = (cv2.dilate(inside, grow) - inside).astype(np.float32)
            patch = frame[y0:y1, x0:x1]
            level = float((patch * around).sum() / around.sum())
            c = (patch - level) * inside
            r = (patch - level) * around
            energy = float((c * c).sum())
            n_in, n_ring, sum_c = float(inside.sum()), float(around.sum()), float(c.sum())
            speck = False
            for ref in references:
                win = ref[y0 - reach : y1 + reach, x0 - reach : x1 + reach]
                win2 = win * win

                def corr(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
                    return cv2.matchTemplate(image, kernel, cv2.TM_CCORR)

                ring_mean = corr(win, around) / n_ring
                a = corr(win, inside)
                left = (
                    energy
                    + corr(win2, inside)
                    - 2.0 * corr(win, c)
                    + ring_mean * (n_in * ring_mean + 2.0 * sum_c - 2.0 * a)
                )
                ring_left = (
                    float((r * r).sum()) + corr(win2, around) - 2.0 * corr(win, r) - n_ring * ring_mean * ring_mean
                )
                ring_best = int(np.argmin(ring_left))
                speck = (
                    float(left.min()) >= self.fast_left * energy
                    and float(left.flat[ring_best]) >= self.fast_absent * energy
                    and float(ring_left.flat[ring_best]) <= self.fast_ring * energy
                )
                if not speck:
                    break
            out[i] = speck and energy > 0.0
        return out

    def texture(self, frame: np.ndarray, found: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """At the pixels (ys, xs): the mean 3x3 range (morphological gradient) of ``frame`` in a
        ``texture_ring`` px window that leaves out ``found`` (the specks) and their edges: the contrast of the
        picture the speck lies on, not the speck's own.

        Computed on the 64 px tiles that hold the pixels, each with the margin the gradient, the dilation and
        the window reach across (the whole-frame values, exactly), or on the whole frame when the tiles would
        cover most of it: specks are sparse, and a 2K frame's whole map costs ~50 ms."""
        if len(ys) == 0:
            return np.zeros(0, np.float32)
        h, w = frame.shape
        box = np.ones((3, 3), np.uint8)
        size = (self.texture_ring, self.texture_ring)

        def window(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            contrast = cv2.morphologyEx(frame[y0:y1, x0:x1], cv2.MORPH_GRADIENT, box)
            outside = (cv2.dilate(found[y0:y1, x0:x1].view(np.uint8), box) == 0).astype(np.float32)
            total = cv2.blur(contrast * outside, size, borderType=cv2.BORDER_REFLECT)
            return total / np.maximum(cv2.blur(outside, size, borderType=cv2.BORDER_REFLECT), 1e-3)

        tile, margin = 64, self.texture_ring // 2 + 2
        keys = (ys // tile) * ((w + tile - 1) // tile) + xs // tile
        order = np.argsort(keys, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(keys[order]) != 0])
        if len(starts) * (tile + 2 * margin) ** 2 > h * w // 2:
            return window(0, h, 0, w)[ys, xs]
        out = np.empty(len(ys), np.float32)
        for first, last in zip(starts, np.r_[starts[1:], len(order)]):
            idx = order[first:last]
            ty, tx = int(ys[idx[0]]) // tile, int(xs[idx[0]]) // tile
            y0, x0 = max(0, ty * tile - margin), max(0, tx * tile - margin)
            y1, x1 = min(h, (ty + 1) * tile + margin), min(w, (tx + 1) * tile + margin)
            out[idx] = window(y0, y1, x0, x1)[ys[idx] - y0, xs[idx] - x0]
        return out

    def __call__(
        self,
        frame: np.ndarray,
        prev: np.ndarray,
        nxt: np.ndarray,
        trusted: np.ndarray,
        motion: np.ndarray | None = None,
        spike: np.ndarray | None = None,
        reliable: np.ndarray | None = None,
        one_sided: np.ndarray | None = None,
    ) -> np.ndarray:
        """frame, prev, nxt: (H, W) luminance, neighbours already warped onto ``frame``'s grid and matched to
        its brightness. trusted: (H, W) bool, where the neighbours can be compared at all (not at motion
        boundaries, not from outside the picture). motion: (H, W) px per frame. reliable: (H, W) bool, where
        the flow passed its forward-backward check around. one_sided: given when both references lie on one
        side of the frame (a clip's ends): each pixel's motion (px per frame) against the picture's dominant
        motion. spike: ``self.spikes(frame, prev, nxt)`` if the
        caller has it. Returns a bool matte.

        Untrusted or unreliable flow is not a veto: in flat sky DIS wanders by tens of pixels and the
        compensated neighbours are still right (flat is flat), and a speck disturbs the flow around itself.
        The neighbours' agreement with each other is the direct test that compensation worked (an occlusion
        or a missed motion shows different things in the two). Where the flow is in doubt over most of a
        region the neighbours must agree twice as closely; large regions over moving content must also be
        twice as strong."""
        if spike is None:
            spike = self.spikes(frame, prev, nxt)
        # The outermost row and column have a one-sided 3x3 range, and there the scan's gate edge weaves in
        # and out of the picture: no evidence of dust.
        spike = spike.copy()
        spike[[0, -1], :] = 0.0
        spike[:, [0, -1]] = 0.0
        threshold = self.frame_threshold(spike) * (1.0 if one_sided is None else self.one_sided_gain)
        seeds = spike > threshold
        if not seeds.any():
            return seeds
        # Grow seeds into the soft rim of each speck (hysteresis at half the threshold), but only a few
        # pixels: a rim is thin, and a long weak trail is mis-compensated texture, not dust.
        near = cv2.dilate(seeds.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        weak = (spike > 0.5 * threshold) & near
        labels, keep, area = _components_touching(weak, seeds)
        keep &= area <= self.max_area
        # Evidence per component, from its own pixels only (a few thousand, not the frame).
        ys, xs = pixels(weak)
        lab = labels[ys, xs]
        n = len(keep)

        def mean(values: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
            w = np.ones(len(lab)) if where is None else where.astype(np.float64)
            return np.bincount(lab, values * w, minlength=n) / np.maximum(np.bincount(lab, w, minlength=n), 1)

        s = spike[ys, xs]
        strength = mean(s)
        peak = mean(s, s > threshold)  # the seeds' mean: the core of the speck, not its rim
        disagree = mean(np.abs(prev[ys, xs] - nxt[ys, xs]))
        keep &= disagree <= self.max_disagreement * strength  # the veto on any ground, before the costly texture
        agree = disagree <= 0.5 * self.max_disagreement * strength
        ok = trusted[ys, xs] if reliable is None else trusted[ys, xs] & reliable[ys, xs]
        if one_sided is not None:
            # Two references on one side of the frame (a clip's first or last frame) agree over an occlusion
            # too: what the frame shows and both later (or earlier) frames hide, where something moves against
            # the rest of the picture. Their agreement proves nothing there, only flow that passed its checks.
            agree &= mean(one_sided[ys, xs]) <= self.moving_px
        keep &= (mean(ok.astype(np.float64)) >= 0.5) | agree
        # The texture around a component is the costliest evidence: it is taken only for those still kept after
        # the cheaper tests, at the same values (``texture`` is exact at any pixel).
        held = keep[lab]
        texture = np.zeros(n)
        if held.any():
            at = self.texture(frame, weak, ys[held], xs[held])
            texture = np.bincount(lab[held], at, minlength=n) / np.maximum(np.bincount(lab[held], minlength=n), 1)
        needed = (threshold + self.texture_gain * texture) * (
            1.0 + np.maximum(disagree / np.maximum(strength, 1e-6) - self.agree_share, 0.0)
        )
        keep &= _component_max(lab, s, n) >= needed
        busy = np.minimum(1.0, self.busy_texture / np.maximum(texture, 1e-6))
        keep &= disagree <= self.max_disagreement * busy * strength
        if motion is not None:
            moving = mean(motion[ys, xs])
            large_moving = (moving > self.moving_px) & (area > self.large_share * frame.size)
            keep &= ~large_moving | (agree & (peak > 2.0 * threshold))
            # Left out over fast motion: looked for in the references themselves (``_no_counterpart``).
            fast = ~keep & (area <= min(self.fast_share * frame.size, self.max_area)) & (area > 0)
            fast &= (peak >= self.fast_gain * threshold) & (moving > self.fast_px)
            fast[0] = False
            if fast.any():
                keep |= self._no_counterpart(frame, (prev, nxt), ys, xs, lab, np.flatnonzero(fast), n)
        if one_sided is not None and keep.any():
            keep &= self._stands_out(frame, 0.5 * (prev + nxt), labels, ys, xs, lab, n)
        # The kept components' pixels, set from the weak pixels' labels (not a gather over the whole frame).
        matte = np.zeros(frame.shape, bool)
        matte[ys, xs] = keep[lab]
        return matte


@dataclass
class ScratchDetector:
    """Line scratches: thin (<= max_width px) near-vertical ridges, long and persistent over frames."""

    threshold: float = 0.03
    min_length: float = 0.5  # fraction of the frame height
    max_width: int = 5
    persistence: float = 0.5  # fraction of the window's frames in which the line must be found
    # Telling scene lines from scratches (scene_lines): the motion (px, in some window frame) beside a line
    # from which its position over the window can tell, and the largest flank step (share of the line's
    # contrast) of a scratch.
    moving_px: float = 0.3
    follow_share: float = 1.0 / 3.0  # a line that moves this share of the scene's motion or more goes with it
    stay_share: float = 0.25  # one that moves at most this share of it stays put: a scratch even on a step
    max_step: float = 0.3
    # A static shot: where the scene beside a line moves nowhere in the window, its position cannot tell, and
    # only something crossing it can: a scratch is on the film, on top of whatever passes under it. The share
    # of the samples beside the line (both sides, every row) that must move by cross_px or more in some window
    # frame for something to have crossed it (DIS wanders by up to ~0.8 px on still texture: a thing that
    # crosses moves by pixels); a line nothing crosses in a still picture is the scene's (a door's groove in
    # Within Our Gates 101-138), and is left as it is.
    cross_px: float = 1.5
    cross_share: float = 0.03

    def ridges(self, grey: np.ndarray) -> np.ndarray:
        """Signed ridge strength: > 0 for bright lines, < 0 for dark lines, ~0 on edges and flat areas.

        A horizontal opening/closing wider than a scratch removes it and keeps step edges: the difference
        (a horizontal top-hat) is a thin-line detector that ignores the edges of objects."""
        k = 2 * self.max_width + 1
        kernel = np.ones((1, k), np.uint8)
        bright = grey - cv2.morphologyEx(grey, cv2.MORPH_OPEN, kernel)
        dark = cv2.morphologyEx(grey, cv2.MORPH_CLOSE, kernel) - grey
        return np.where(bright >= dark, bright, -dark)

    def candidates(self, grey: np.ndarray) -> np.ndarray:
        """(H, W) bool: pixels on long thin vertical ridges in one frame.

        A pixel is on a line when, along its column (allowing a 1-px wander), the ridge is present in at least
        85% of a window of the minimum length and strong on average there. Texture has ridges too, but
        short ones: the coverage test is what separates a scratch from grain and detail."""
        h, w = grey.shape
        # Scratches are vertical: averaging a few rows keeps them and their contrast (and averages grain
        # away), so tall frames are searched on a copy at most ~400 rows high (2K: 4x fewer pixels).
        rows = max(1, h // 384)
        if rows > 1:
            small = cv2.resize(grey, (w, h // rows), interpolation=cv2.INTER_AREA)
            found = self._candidates(small)
            # Each row of the copy back onto its rows, the last onto the rest (in place: no repeated temporary).
            out = np.empty((h, w), bool)
            out[: found.shape[0] * rows].reshape(found.shape[0], rows, w)[:] = found[:, None, :]
            out[found.shape[0] * rows :] = found[-1]
            return out
        return self._candidates(grey)

    def _candidates(self, grey: np.ndarray) -> np.ndarray:
        h, w = grey.shape
        ridge = self.ridges(grey)
        min_len = max(8, int(self.min_length * h))
        window = min_len
        out = np.zeros((h, w), dtype=bool)
        wander = np.ones((1, 3), np.uint8)
        for sign in (1.0, -1.0):
            strength = np.maximum(sign * ridge, 0.0)
            present = (strength > 0.5 * self.threshold).astype(np.float32)
            coverage = cv2.blur(cv2.dilate(present, wander), (1, window), borderType=cv2.BORDER_REPLICATE)
            mean = cv2.blur(cv2.dilate(strength, wander), (1, window), borderType=cv2.BORDER_REPLICATE)
            centre = (coverage >= 0.85) & (mean >= 0.8 * self.threshold)
            # Back from window centres to the pixels of the run.
            run = cv2.dilate(centre.astype(np.uint8), np.ones((window, 1), np.uint8)) > 0
            line = run & (present > 0)
            line = self._trim_rows(line, strength)
            n, labels = _labels(line)
            ys = pixels(line)[0]
            lab = labels[line]
            top = np.full(n, h, np.int64)
            bottom = np.full(n, -1, np.int64)
            np.minimum.at(top, lab, ys)
            np.maximum.at(bottom, lab, ys)
            height = np.maximum(bottom - top + 1, 0)
            area = np.bincount(lab, minlength=n)
            keep = (height >= min_len) & (area / np.maximum(height, 1) <= self.max_width + 1)
            keep[0] = False
            out[line] |= keep[lab]
        # The scan's own frame border (black film edge meeting the picture) is a perfect persistent vertical
        # line; a scratch hugging the outermost columns is rare enough to give up.
        edge = max(6, int(0.012 * w))
        out[:, :edge] = False
        out[:, w - edge :] = False
        return out

    @staticmethod
    def _trim_rows(line: np.ndarray, strength: np.ndarray) -> np.ndarray:
        """Within each connected line, keep per row only the pixels at least half as strong as the row's
        strongest: a scratch running beside a weaker thin highlight of the picture must not swallow it."""
        n, labels = cv2.connectedComponents(line.astype(np.uint8), connectivity=8)
        if n <= 1:
            return line
        ys, xs = pixels(line)
        key = labels[ys, xs].astype(np.int64) * line.shape[0] + ys
        s = strength[ys, xs]
        row_max = np.zeros(n * line.shape[0], dtype=np.float32)
        np.maximum.at(row_max, key, s)
        keep = s >= 0.5 * row_max[key]
        out = np.zeros_like(line)
        out[ys[keep], xs[keep]] = True
        return out

    def transient(self, current: np.ndarray, spike: np.ndarray, trusted: np.ndarray) -> np.ndarray:
        """Candidate lines of one frame that are absent from both compensated neighbours: scratches that last
        one or two frames, too short for the persistence test. ``spike``: the spike detector's strength (the
        neighbours matched to this frame's brightness). A line of the picture moves with it and is in the
        neighbours; a line scratch that stays put across frames is left to the persistence test."""
        if not current.any():
            return current
        n, labels = cv2.connectedComponents(current.astype(np.uint8), connectivity=8)
        ys, xs = pixels(current)
        lab = labels[ys, xs]
        count = np.maximum(np.bincount(lab, minlength=n), 1)
        absent = (spike[ys, xs] > self.threshold) & trusted[ys, xs]
        keep = np.bincount(lab, absent, minlength=n) / count >= 0.6
        keep[0] = False
        found = np.zeros_like(current)
        found[ys, xs] = keep[lab]
        return cv2.dilate(found.astype(np.uint8), np.ones((1, 3), np.uint8)) > 0

    def __call__(
        self,
        candidates: list[np.ndarray],
        index: int,
        greys: list[np.ndarray] | None = None,
        flow_x: list[FlowX | None] | None = None,
    ) -> np.ndarray:
        """Keep the candidate lines of frame ``index`` that recur at the same x in enough window frames.

        greys, flow_x (the window's luminance frames, and per frame the horizontal motion from frame ``index``
        to it, None for ``index`` itself): when given, lines that belong to the scene are dropped
        (``scene_lines``). A static scene's own thin lines (door frames, poles) persist as well as scratches."""
        current = candidates[index]
        if not current.any():
            return current
        h = current.shape[0]
        need = max(1, int(np.ceil(self.persistence * len(candidates))))
        # Per frame: which columns (+-1 px) hold a long enough stretch of line.
        min_rows = max(1, int(0.5 * self.min_length * h))
        hits = np.zeros(current.shape[1], dtype=np.int32)
        for cand in candidates:
            rows = cand.sum(axis=0)
            present = rows >= min_rows
            present = cv2.dilate(present.astype(np.uint8)[None, :], np.ones((1, 3), np.uint8))[0] > 0
            hits += present
        persistent_columns = hits >= need
        keep = current & persistent_columns[None, :]
        if greys is not None and flow_x is not None and keep.any():
            keep &= ~self.scene_lines(keep, greys, flow_x, index)
        # A scratch is removed with a 1-px margin: its edges are anti-aliased in real scans.
        return cv2.dilate(keep.astype(np.uint8), np.ones((1, 3), np.uint8)) > 0

    def scene_lines(
        self, lines: np.ndarray, greys: list[np.ndarray], flow_x: list[FlowX | None], index: int
    ) -> np.ndarray:
        """(H, W) bool: the persistent lines of frame ``index`` that are the scene's own, not scratches.

        A scratch is on the film, not in the scene; a line is the scene's when
        - it moves with the scene: where the scene beside it moves (by ``moving_px`` or more in some window
          frame: pans, gate weave), a scratch stays at its x in the frame while a scene line's sub-pixel
          position follows the flow (by ``follow_share`` of it or more);
        - or it sits on a step, unless it stays put (moves ``stay_share`` of the scene's motion or less) while
          the scene beside it moves: a scratch is a ridge on whatever the picture shows, so along its length
          its two flanks average out to the same level; the thin line of a door frame or a wall's edge lies
          between two areas of different brightness (mean flank difference > ``max_step`` of its contrast).
          This is what tells a static shot's door frame from a scratch, where positions cannot;
        - or nothing tells: the scene beside it does not move, and nothing moves across it (``cross_share``).
          Removing a still picture's own line (a groove, a pole) is a new artifact; leaving a scratch nothing
          crosses in a still shot is a defect left."""
        h, w = lines.shape
        out = np.zeros_like(lines)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(lines.astype(np.uint8), connectivity=8)
        for i in range(1, n):
            x, y, bw, bh = stats[i, :4]
            lo, hi = max(0, x - 2 * self.max_width - 12), min(w, x + bw + 2 * self.max_width + 12)
            mine = labels[y : y + bh, lo:hi] == i
            rows = np.nonzero(mine.any(axis=1))[0]
            left = np.argmax(mine[rows], axis=1)  # per row the line's first and last column (crop coordinates)
            right = mine.shape[1] - 1 - np.argmax(mine[rows, ::-1], axis=1)
            ys = rows + y
            # Horizontal morphology only: the ridge on a column crop is the ridge of the frame inside it.
            ridge_t = self.ridges(greys[index][ys, lo:hi])
            sign = 1.0 if np.median(ridge_t[np.arange(len(ys)), left]) >= 0 else -1.0
            span = cv2.dilate(mine.any(axis=0).astype(np.uint8)[None, :], np.ones((1, 3), np.uint8))[0] > 0
            profile_t = np.where(span, np.maximum(sign * ridge_t, 0.0).mean(axis=0), 0.0)
            # The scene's motion beside the line (not on it: a line may hold the flow in place).
            side_x = np.concatenate([left - 8, right + 8]).clip(0, hi - lo - 1) + lo
            side_y = np.concatenate([ys, ys])
            shifts, moved, crossing = [], [], []
            for k, flow in enumerate(flow_x):
                if flow is None or k == index:
                    continue
                beside = flow(side_y, side_x)
                shifts.append(float(np.median(beside)))
                crossing.append(float(np.mean(np.abs(beside) >= self.cross_px)))
                profile_k = np.maximum(sign * self.ridges(greys[k][ys, lo:hi]), 0.0).mean(axis=0)
                moved.append(_profile_shift(profile_t, profile_k))
            shift, move = np.array(shifts), np.array(moved)
            # Moves with the scene: the scene moved enough somewhere in the window to tell, and the line went
            # along (its shifts ~ share x the scene's, least squares; a scratch's share is ~0, a scene line's
            # ~1, less where the motion beside it is not quite its own).
            moving = bool(len(shift)) and float(np.abs(shift).max()) >= self.moving_px
            follows = moving and float(np.dot(move, shift)) > self.follow_share * float(np.dot(shift, shift))
            # Stays put while the scene beside it moves: a scratch, whatever the picture under it does.
            stays = moving and float(np.abs(move).max()) <= self.stay_share * float(np.abs(shift).max())
            grey = greys[index][ys]
            cols = np.arange(len(ys))
            flank_l = np.mean([grey[cols, (left + lo - d).clip(0, w - 1)] for d in (3, 4, 5, 6)], axis=0)
            flank_r = np.mean([grey[cols, (right + lo + d).clip(0, w - 1)] for d in (3, 4, 5, 6)], axis=0)
            contrast = np.abs(np.where(mine[rows], ridge_t, 0.0)).max(axis=1)
            on_step = abs(float(np.mean(flank_l - flank_r))) > self.max_step * float(np.mean(contrast))
            crossed = bool(crossing) and max(crossing) >= self.cross_share
            scene = follows or (on_step and not stays) or (not moving and not crossed)
            if scene:
                out |= labels == i
        return out
