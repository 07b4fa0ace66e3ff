"""Quality control of a restoration: where did the engine touch the picture, and does each touch disappear?

Pure functions over display-referred arrays ((H, W, 3) float in [0, 1], the model's space; ``engine/color.py``
converts a scene-linear EXR or a log scan first). ``frdm qc`` (``frdm/commands/qc.py``) reads the sequences,
``engine/qc_report.py`` writes the page. Per frame:

- **changed share**: the fraction of pixels where any channel moved by more than ``threshold`` (8-bit units);
- **regions**: connected groups of changed pixels (8-connected, gaps of ``merge_gap`` px bridged, so a fill
  whose feathered edge frays is one region), each with
  - ``area`` (changed pixels) and bounding box; ``filled``: the restorer's matte pixels in it (0 without one);
  - ``step``: mean luma of the output over the region's *judged* pixels minus the mean luma of the source in a
    ring around them, in 8-bit display units (a fill that disappears has ~0; a grey disc on a sky has its
    contrast). ``step_before`` is the same of the source's judged pixels: what the defect looked like;
  - ``grain``: the ratio of the output's high-pass (grain-scale) spread over the judged pixels to the source's
    in the ring, both robust (median absolute deviation). ~1 is a fill with the surrounding grain, ~0 a smooth
    disc. None for regions too small to judge (fewer than ``MIN_GRAIN_PIXELS`` judged pixels);
  - the judged pixels and their ring (``judged``): with the restorer's matte (``frdm.matte`` of a restored EXR,
    or a matte sequence), "matte": the region's matte pixels, the filled defect itself, against a
    ``matte_ring`` px ring ``ring_gap`` px outside the matte: a fill is judged on what it replaced against the
    picture right beside it, whatever its size (a tight fill's region is mostly its defect; a wide one's
    margin only swaps grain). The fill reaches past the matte at full weight (the blend's matte grow), so the
    high-pass there sees fill on both sides and no erosion is needed. Without a matte (or where a region
    holds none of it), "changed": the changed pixels, their interior for grain (eroded by twice the high-pass
    sigma: there the feathered edge, a mix of two grains, is the fill's own border), against a ``ring`` px
    ring ``ring_gap`` px outside every change; a tight fill is then judged on its core only, and a small one
    not at all;
  - ``motion``: how far the picture there moves relative to the frame as a whole (px/frame, the larger of the
    flows to the previous and next source frames, camera weave removed by subtracting the frame's median
    flow); ``moving`` when that exceeds ``moving_px`` and the source there really differs from its
    neighbours (see ``motion_map``). Real content on moving actors is what a dust detector most often takes
    for dirt;
  - ``score``: how suspicious the region is (see ``suspicion``).

Rings leave a 2 px gap to every changed pixel (the feathered blend is not "surroundings"), or with a matte to
every matte pixel (the defects' halos), and stay inside the frame; a region without ring pixels (a whole-frame
change) has ``step``/``grain`` None. With a matte the step compares each judged pixel with the ring's level
carried in to it (``ring_level``), not with the ring's mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from frdm.engine import params as P
from frdm.engine.errors import InputError

LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)  # Rec.709 weights on display-referred RGB
MIN_GRAIN_PIXELS = 9  # interior pixels needed before a grain ratio means anything
GRAIN_LOW = 0.45  # the "carries < 45% of the surrounding grain"
STEP_VISIBLE = 2.0  # 8-bit: a fill brighter/darker than its ring by more than this can be seen on a flat area
MOTION_MAX_SIDE = 640  # px: flow for the motion test is measured on a copy this size (cheap at 2K)


@dataclass(frozen=True)
class QCSettings:
    threshold: float = 0.5  # 8-bit units: a channel moving by more than this is a change
    merge_gap: int = 2  # px: changed pixels this close belong to one region
    ring: int = 6  # px: width of the surroundings a region is compared with
    ring_gap: int = 2  # px: left out between a changed pixel and its ring (the feathered edge)
    # px: with the restorer's matte, the ring is this wide and lies ring_gap px outside the matte (a defect's halo
    # ends ~2 px outside it on real film), on the source: the clean picture right beside the defect. Close, so
    # that the content's own contrast (a speck on a small bright object) counts as little as it can.
    matte_ring: int = 3
    grain_sigma: float = 1.0  # px: the high-pass is luma minus a Gaussian blur of this sigma
    moving_px: float = 1.0  # px/frame of motion relative to the frame that counts as moving content


@dataclass
class Region:
    id: int
    x: int
    y: int
    w: int
    h: int
    area: int
    step: float | None  # 8-bit luma, output inside minus ring
    step_before: float | None  # the same on the source
    change: float  # 8-bit luma, mean of output minus source inside: how much the restorer moved it
    grain: float | None  # high-pass spread inside / ring, on the output
    motion: float | None  # px/frame relative to the frame; None without neighbours
    moving: bool
    score: float = 0.0
    filled: int = 0  # the restorer's matte pixels in the region (0: no matte known)
    judged: str = "changed"  # which pixels step, change and grain were measured on: "matte" or "changed"
    # 8-bit, judged on the matte: how far the fill's mean lies outside the range of the ring's sides (``sides``),
    # 0 within it; None judged on changed pixels.
    outside: float | None = None

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.w, self.h


@dataclass
class FrameQC:
    frame: int
    width: int
    height: int
    changed_pixels: int
    changed_share: float
    max_change: float  # 8-bit units, largest change of any channel
    mean_before: float  # 8-bit luma means: a per-frame brightness curve (flicker shows here)
    mean_after: float
    regions: list[Region] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["regions"] = [_region_json(r) for r in self.regions]
        return out


def _region_json(r: Region) -> dict[str, Any]:
    d = asdict(r)
    for k in ("step", "step_before", "change", "grain", "motion", "score", "outside"):
        if d[k] is not None:
            d[k] = round(float(d[k]), 4)
    return d


def luma(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) display-referred -> (H, W) float32 luma (Rec.709 weights)."""
    return np.asarray(rgb, np.float32) @ LUMA


def _check_pair(before: np.ndarray, after: np.ndarray, name: str) -> None:
    if before.ndim != 3 or before.shape[-1] != 3:
        raise InputError(f"{name}: expected an (H, W, 3) RGB image, got shape {before.shape}")
    if before.shape != after.shape:
        raise InputError(
            f"{name}: the restored frame is {after.shape[1]}x{after.shape[0]} but the source is "
            f"{before.shape[1]}x{before.shape[0]}; compare a restoration with its own source"
        )


def changed_mask(before: np.ndarray, after: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(H, W) bool: any channel moved by more than ``threshold`` 8-bit units."""
    diff = np.abs(np.asarray(after, np.float32) - np.asarray(before, np.float32))
    return diff.max(axis=-1) > threshold / 255.0


def _mad_sigma(values: np.ndarray) -> float:
    med = np.median(values)
    return float(1.4826 * np.median(np.abs(values - med)))


@dataclass
class MotionMaps:
    """Per-pixel evidence that the source's content moves, from the previous and next source frames."""

    flow: np.ndarray  # (H, W) px/frame relative to the frame's median motion, the larger over the neighbours
    difference: np.ndarray  # (H, W) smoothed frame difference after removing weave and flicker, in units of
    # twice the frame's typical difference (grain): above 1 the picture there really differs


def motion_map(frame: np.ndarray, neighbours: Sequence[np.ndarray]) -> MotionMaps | None:
    """How the content of ``frame`` moves towards its neighbours (None without neighbours).

    Flow alone is not enough: on a flat sky it is noise, and dust itself pulls it. So a region counts as moving
    only where the flow is large *and* the neighbour, shifted by the frame's median flow (weave, pans) and
    matched in local brightness (flicker), still differs from the frame beyond the grain."""
    if not neighbours:
        return None
    import cv2

    from frdm.engine.metrics.temporal import dis_flow

    h, w = frame.shape[:2]
    scale = max(1.0, max(h, w) / MOTION_MAX_SIDE)
    size = (max(8, int(round(w / scale))), max(8, int(round(h / scale))))

    def small(img: np.ndarray) -> np.ndarray:
        img = np.clip(np.asarray(img, np.float32), 0.0, 1.0)
        return cv2.resize(img, size, interpolation=cv2.INTER_AREA) if scale > 1 else img

    def smooth(grey: np.ndarray, sigma: float) -> np.ndarray:
        return cv2.GaussianBlur(grey, (0, 0), sigma)

    here = small(frame)
    here_y = luma(here)
    here_s, here_level = smooth(here_y, 1.5), smooth(here_y, 20.0) + 1e-3
    flow_best = diff_best = None
    for other in neighbours:
        other = small(other)
        flow = dis_flow(here, other)
        shift = np.median(flow.reshape(-1, 2), axis=0)
        rel = flow - shift
        mag = np.sqrt((rel**2).sum(-1)) * np.float32(scale)
        # The neighbour sampled at x + median flow: what it would show here if only the camera moved.
        m = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]], np.float32)
        other_y = cv2.warpAffine(
            luma(other), m, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
        )
        other_s, other_level = smooth(other_y, 1.5), smooth(other_y, 20.0) + 1e-3
        diff = np.abs(here_s - other_s * (here_level / other_level))
        typical = max(float(np.median(diff)), 0.75 / 255.0)
        diff = diff / np.float32(2.0 * typical)
        flow_best = mag if flow_best is None else np.maximum(flow_best, mag)
        diff_best = diff if diff_best is None else np.maximum(diff_best, diff)
    assert flow_best is not None and diff_best is not None
    if scale > 1:
        flow_best = cv2.resize(flow_best, (w, h), interpolation=cv2.INTER_LINEAR)
        diff_best = cv2.resize(diff_best, (w, h), interpolation=cv2.INTER_LINEAR)
    return MotionMaps(flow_best.astype(np.float32), diff_best.astype(np.float32))


def suspicion(r: Region) -> float:
    """How much a region deserves a look: a visible brightness step (per 2/255), missing grain (0 at the
    surrounding grain's 70%, 2 when smooth) and lying on moving content (1) add up; specks under 25 px count
    in proportion to their area, since a 3-pixel fill is hard to see whatever its figures.

    The step counts only as far as the restorer made it: a region on a bright object has the object's contrast
    against its ring whatever was done to it, so the step is capped by how much the region changed."""
    s = 0.0
    made = made_step(r)
    if made is not None:
        s += made / STEP_VISIBLE
    if r.grain is not None:
        s += 2.0 * max(0.0, 1.0 - r.grain / 0.7)
    if r.moving:
        s += 1.0
    return s * min(1.0, r.area / 25.0)


def analyse_frame(
    before: np.ndarray,
    after: np.ndarray,
    frame: int = 0,
    *,
    motion: MotionMaps | None = None,
    matte: np.ndarray | None = None,
    settings: QCSettings = QCSettings(),
    name: str | None = None,
) -> FrameQC:
    """The QC figures of one (source, restored) frame pair, display-referred RGB in [0, 1].

    ``motion`` is ``motion_map`` of the source frame (None: motion unknown, no region counts as moving).
    ``matte``: the restorer's defect matte (H, W), values in [0, 1] (above 0.5 is the defect), or None: the
    pixels each region is judged on (see the module's docstring)."""
    import cv2

    name = name or f"frame {frame}"
    before = np.asarray(before, np.float32)
    after = np.asarray(after, np.float32)
    _check_pair(before, after, name)
    h, w = before.shape[:2]
    if motion is not None and motion.flow.shape != (h, w):
        raise InputError(f"{name}: motion map is {motion.flow.shape}, the frame is {(h, w)}")
    filled = None
    if matte is not None:
        matte = np.asarray(matte)
        if matte.shape != (h, w):
            raise InputError(
                f"{name}: the matte is {matte.shape[1]}x{matte.shape[0]} but the frame is {w}x{h}; give the matte "
                "the restorer wrote with this frame"
            )
        filled = matte > 0.5
    changed = changed_mask(before, after, settings.threshold)
    n_changed = int(changed.sum())
    y_before, y_after = luma(before), luma(after)
    result = FrameQC(
        frame=int(frame),
        width=w,
        height=h,
        changed_pixels=n_changed,
        changed_share=n_changed / float(h * w),
        max_change=float(np.abs(after - before).max() * 255.0),
        mean_before=float(y_before.mean() * 255.0),
        mean_after=float(y_after.mean() * 255.0),
    )
    if n_changed == 0:
        return result

    sig = settings.grain_sigma
    hp_after = y_after - cv2.GaussianBlur(y_after, (0, 0), sig)
    hp_before = y_before - cv2.GaussianBlur(y_before, (0, 0), sig)
    changed_u8 = changed.astype(np.uint8)
    gap = settings.merge_gap
    joined = cv2.dilate(changed_u8, np.ones((2 * gap + 1, 2 * gap + 1), np.uint8)) if gap > 0 else changed_u8
    count, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    # Pixels too close to any change to be "surroundings".
    near = cv2.dilate(changed_u8, _disc(settings.ring_gap)) > 0
    # The crop around a region holds its ring, and with a matte its matte ring (wider than the ring or not).
    pad = max(settings.ring, settings.matte_ring if filled is not None else 0) + settings.ring_gap + 1
    ring_kernel = _disc(settings.ring + settings.ring_gap)
    erode_kernel = _disc(max(1, int(math.ceil(2 * sig))))
    if filled is not None:
        # A defect's halo: no ring pixels there (of any defect: two specks side by side are not each other's ring).
        halo = cv2.dilate(filled.astype(np.uint8), _disc(settings.ring_gap)) > 0
        matte_ring_kernel = _disc(settings.ring_gap + settings.matte_ring)

    for label in range(1, count):
        x, y, bw, bh, _ = (int(v) for v in stats[label])
        x0, y0 = max(0, x - pad), max(0, y - pad)
        x1, y1 = min(w, x + bw + pad), min(h, y + bh + pad)
        mine = labels[y0:y1, x0:x1] == label
        inside = mine & changed[y0:y1, x0:x1]
        area = int(inside.sum())
        if area == 0:
            continue
        grown = cv2.dilate(inside.astype(np.uint8), ring_kernel) > 0
        ring = grown & ~near[y0:y1, x0:x1]
        # The matte pixels of the region's bridged label: those the fill left within 0.5/255 of the source too.
        defect = mine & filled[y0:y1, x0:x1] if filled is not None else None
        n_filled = 0 if defect is None else int(defect.sum())
        ya, yb = y_after[y0:y1, x0:x1], y_before[y0:y1, x0:x1]
        expected = None
        if n_filled:
            judged, interior, how = defect, defect, "matte"
            surround = (cv2.dilate(defect.astype(np.uint8), matte_ring_kernel) > 0) & ~halo[y0:y1, x0:x1]
            expected = ring_level(yb, halo[y0:y1, x0:x1])
        else:
            judged, interior, how = inside, cv2.erode(inside.astype(np.uint8), erode_kernel) > 0, "changed"
            surround = ring
        step, step_before, grain = region_figures(
            ya, yb, hp_after[y0:y1, x0:x1], hp_before[y0:y1, x0:x1], judged, interior, surround, expected
        )
        outside = None
        if n_filled and step is not None and (span := sides(yb, surround, judged)) is not None:
            level = float(ya[judged].mean())
            outside = 255.0 * (level - min(max(level, span[0]), span[1]))
        region_motion, moving = None, False
        if motion is not None:
            region_motion = float(np.median(motion.flow[y0:y1, x0:x1][grown]))
            # The difference is read on the ring: the defect itself always differs from the neighbours.
            around = ring if ring.any() else grown
            differs = float(np.median(motion.difference[y0:y1, x0:x1][around])) > 1.0
            moving = region_motion > settings.moving_px and differs
        ys, xs = np.nonzero(inside)  # the box of the changed pixels, not of the bridged gaps
        region = Region(
            id=len(result.regions) + 1,
            x=x0 + int(xs.min()),
            y=y0 + int(ys.min()),
            w=int(xs.max() - xs.min()) + 1,
            h=int(ys.max() - ys.min()) + 1,
            area=area,
            step=step,
            step_before=step_before,
            change=float((ya[judged] - yb[judged]).mean() * 255.0),
            grain=grain,
            motion=region_motion,
            moving=bool(moving),
            filled=n_filled,
            judged=how,
            outside=outside,
        )
        region.score = suspicion(region)
        result.regions.append(region)
    return result


def region_figures(
    after: np.ndarray,
    before: np.ndarray,
    hp_after: np.ndarray,
    hp_before: np.ndarray,
    judged: np.ndarray,
    interior: np.ndarray,
    ring: np.ndarray,
    expected: np.ndarray | None = None,
) -> tuple[float | None, float | None, float | None]:
    """A region against its ring, the one definition of QC's figures: (step, step_before, grain).

    after, before: luma (0..1) of the output and the source, hp_after, hp_before their grain-scale high-passes;
    judged: the pixels the step is measured on, interior: those the grain is; ring: the surroundings, read on the
    source (bool masks, all of one shape); expected: what the ring says each judged pixel should be (its level
    carried inwards, ``ring_level``), or None: the ring's mean. step and step_before in 8-bit units; None without
    8 ring pixels, grain None also below ``MIN_GRAIN_PIXELS``."""
    if int(ring.sum()) < 8 or not judged.any():
        return None, None, None
    level = before[ring].mean() if expected is None else expected[judged]
    step = float(np.mean(after[judged] - level) * 255.0)
    step_before = float(np.mean(before[judged] - level) * 255.0)
    grain = None
    if int(interior.sum()) >= MIN_GRAIN_PIXELS:
        ring_sigma = _mad_sigma(hp_before[ring])
        if ring_sigma > 1e-6:
            grain = _mad_sigma(hp_after[interior]) / ring_sigma
    return step, step_before, grain


def ring_level(before: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The source's level carried into ``hole`` (bool) from around it (Telea inpainting, distance-weighted and
    along the edges): what a judged pixel should be, from the picture right beside it. A ring's mean would count
    the content's own contrast as a step: a speck on a bright object beside a dark background has the
    background in its ring. Done in 16-bit: OpenCV's float32 inpainting returns values far outside the input's
    range (engine/classical/fill.py says the same)."""
    import cv2

    u16 = np.rint(np.clip(before, 0.0, 1.0) * 65535.0).astype(np.uint16)
    return cv2.inpaint(u16, hole.astype(np.uint8), 3, cv2.INPAINT_TELEA).astype(np.float32) / 65535.0


def sides(before: np.ndarray, ring: np.ndarray, judged: np.ndarray, count: int = 8) -> tuple[float, float] | None:
    """(lowest, highest) mean luma of the source over the ring's sides: its pixels in ``count`` sectors of angle
    around the judged pixels' centre, twice, the second time turned by half a sector (a thin line through the
    region lies inside a sector of one of the two; sectors with fewer than 3 pixels left out), or None without
    two sides. A fill between them may be what the picture there is (a speck on an edge, or on a thin line);
    on flat film the sides agree to the grain's mean, and a fill outside them stands out."""
    ys, xs = np.nonzero(ring)
    cy, cx = (float(v.mean()) for v in np.nonzero(judged))
    turn = (np.arctan2(ys - cy, xs - cx) + np.pi) / (2 * np.pi) * count
    means = []
    for offset in (0.0, 0.5):
        sector = (turn + offset).astype(np.intp) % count
        n = np.bincount(sector, minlength=count)
        means.append(np.bincount(sector, before[ys, xs], minlength=count)[n >= 3] / n[n >= 3])
    found = np.concatenate(means)
    return (float(found.min()), float(found.max())) if len(found) >= 2 else None


def _disc(radius: int) -> np.ndarray:
    import cv2

    r = max(0, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def made_step(r: Region) -> float | None:
    """The part of a region's brightness step the restorer can have made: |step| capped by how much the region's
    mean changed (a region on a bright object keeps the object's contrast to its ring whatever was done) and,
    judged on the matte, by how far the fill lies outside the range of its ring's sides (``outside``): there the
    change is the defect's removal, no cap, and a speck at an edge has both sides of the edge in its ring."""
    if r.step is None:
        return None
    made = min(abs(r.step), abs(r.change))
    return made if r.outside is None else min(made, abs(r.outside))


def summarise(frames: Sequence[FrameQC], worst: int = 5) -> dict[str, Any]:
    """Clip-level figures: changed share (mean, max), region counts (and how many were judged on the restorer's
    matte), brightness steps (as measured, and as made
    by the restorer, ``made_step``; the worst ones by the latter), the share of regions short of grain and on
    moving content. Shares of regions are over the regions where the figure could be measured
    (``*_measured`` says how many)."""
    regions = [(f.frame, r) for f in frames for r in f.regions]
    steps = [(fr, r) for fr, r in regions if r.step is not None]
    grains = [r.grain for _, r in regions if r.grain is not None]
    motions = [r for _, r in regions if r.motion is not None]
    shares = [f.changed_share for f in frames]
    by_step = sorted(steps, key=lambda item: -(made_step(item[1]) or 0.0))[:worst]
    abs_steps = np.array([abs(r.step) for _, r in steps], np.float64)
    made = np.array([made_step(r) for _, r in steps], np.float64)

    def stat(values: np.ndarray, fn: Any) -> float | None:
        return float(fn(values)) if len(values) else None

    out: dict[str, Any] = {
        "frames": len(frames),
        "mean_changed_share": float(np.mean(shares)) if shares else 0.0,
        "max_changed_share": float(max(shares)) if shares else 0.0,
        "max_changed_frame": frames[int(np.argmax(shares))].frame if shares else None,
        "frames_changed": sum(1 for f in frames if f.changed_pixels),
        "regions": len(regions),
        "regions_per_frame": len(regions) / len(frames) if frames else 0.0,
        "regions_judged_on_matte": sum(1 for _, r in regions if r.judged == "matte"),
        "changed_pixels": int(sum(f.changed_pixels for f in frames)),
        "steps_measured": len(steps),
        "mean_abs_step": stat(abs_steps, np.mean),
        "p90_abs_step": stat(abs_steps, lambda v: np.percentile(v, 90)),
        "mean_made_step": stat(made, np.mean),
        "p90_made_step": stat(made, lambda v: np.percentile(v, 90)),
        "share_made_step_over_2": stat(made, lambda v: (v > STEP_VISIBLE).mean()),
        "worst_steps": [
            {
                "frame": fr,
                "region": r.id,
                "area": r.area,
                "step": round(float(r.step or 0.0), 2),
                "change": round(r.change, 2),
            }
            for fr, r in by_step
        ],
        "grain_measured": len(grains),
        "share_grain_below_0.45": float(np.mean(np.array(grains) < GRAIN_LOW)) if grains else None,
        "p10_grain": float(np.percentile(grains, 10)) if grains else None,
        "motion_measured": len(motions),
        "share_moving": float(np.mean([r.moving for r in motions])) if motions else None,
    }
    return out


# --- sequences on disk ----------------------------------------------------------------------------------


def _display(frame: Any, colorspace: str, ocio_config: str) -> tuple[np.ndarray, str]:
    """A frame's RGB display-referred in [0, 1], and the colour space it was read in ('auto' resolved per
    file, as frdm restore resolves it)."""
    from frdm.engine.color import resolve_colorspace, to_model

    space = resolve_colorspace(colorspace, frame, ocio_config)
    rgb = frame.pixels[..., frame.rgb_indices()]
    return np.clip(to_model(rgb, space, ocio_config), 0.0, 1.0), space


class SequencePair:
    """A source and its restoration, read frame by frame in display-referred RGB, and the restorer's matte when
    known: a ``matte`` sequence (its first channel), else the restored frames' own matte channel (``frdm
    restore`` writes one into EXR). Errors name the file."""

    def __init__(
        self,
        src: str,
        out: str,
        frames: Sequence[int] | None = None,
        *,
        colorspace: str = P.defaults()["colorspace"],
        ocio_config: str = P.defaults()["ocio_config"],
        matte: str | None = None,
    ):
        from frdm.engine.color import AUTO, check_colorspace
        from frdm.engine.frames import format_frame_range, open_source

        self.source = open_source(src)
        self.restored = open_source(out)
        if frames is None:
            frames = self.restored.frame_numbers
        self.frames = sorted(set(frames))
        self.restored.check_frames(self.frames)
        self.mattes = None if matte is None else open_source(matte)
        if self.mattes is not None:
            self.mattes.check_frames(self.frames)
        self._matte: dict[int, np.ndarray | None] = {}
        missing = [n for n in self.frames if n not in set(self.source.frame_numbers)]
        if missing:
            raise InputError(
                f"{src}: no source frame(s) {format_frame_range(missing)} for the restored frames of {out}; "
                "give the sequence the restoration was made from, or narrow --frames"
            )
        if colorspace != AUTO:
            check_colorspace(colorspace, ocio_config)
        self.colorspace = colorspace
        self.spaces: set[str] = set()  # what 'auto' resolved to, over the frames read
        self.ocio_config = ocio_config
        self._cache: dict[int, np.ndarray] = {}
        self._windows: dict[int, tuple[int, int, int, int]] = {}

    def _name(self, source: Any, n: int) -> str:
        return source.path(n) or f"{source.description} frame {n}"

    def source_frame(self, n: int) -> np.ndarray:
        if n not in self._cache:
            if len(self._cache) >= 4:  # the frame and its two neighbours, plus one
                self._cache.pop(next(iter(self._cache)))
            frame = self.source.read(n)
            self._windows[n] = frame.data_window
            self._cache[n], space = _display(frame, self.colorspace, self.ocio_config)
            self.spaces.add(space)
        return self._cache[n]

    def pair(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, restored) of frame ``n``, display-referred; an error names both files if they differ in size."""
        before = self.source_frame(n)
        after = self.restored.read(n)
        if after.data_window != self._windows[n]:
            raise InputError(
                f"{self._name(self.restored, n)}: data window {after.data_window} but its source "
                f"{self._name(self.source, n)} has {self._windows[n]}; compare a restoration with its own source"
            )
        after_rgb, space = _display(after, self.colorspace, self.ocio_config)
        self.spaces.add(space)
        from frdm.engine.pipeline import MATTE_CHANNEL

        self._matte = {
            n: after.pixels[..., after.channels.index(MATTE_CHANNEL)] if MATTE_CHANNEL in after.channels else None
        }
        return before, after_rgb

    def matte(self, n: int) -> np.ndarray | None:
        """The restorer's matte of frame ``n`` (H, W), or None when not known. After ``pair(n)``."""
        if self.mattes is not None:
            frame = self.mattes.read(n)
            if frame.data_window != self._windows[n]:
                raise InputError(
                    f"{self._name(self.mattes, n)}: data window {frame.data_window} but its source "
                    f"{self._name(self.source, n)} has {self._windows[n]}; give the matte written with this restore"
                )
            return np.asarray(frame.pixels[..., 0], np.float32)
        return self._matte.get(n)

    def neighbours(self, n: int) -> list[np.ndarray]:
        numbers = self.source.frame_numbers
        i = numbers.index(n)
        return [self.source_frame(numbers[j]) for j in (i - 1, i + 1) if 0 <= j < len(numbers)]

    def close(self) -> None:
        self.source.close()
        self.restored.close()
        if self.mattes is not None:
            self.mattes.close()


def analyse_sequences(
    pair: SequencePair,
    settings: QCSettings = QCSettings(),
    *,
    motion: bool = True,
    progress: Any = None,
) -> list[FrameQC]:
    """``analyse_frame`` over every frame of ``pair`` (with the source's neighbours for the motion test)."""
    results = []
    for i, n in enumerate(pair.frames):
        before, after = pair.pair(n)
        mmap = motion_map(before, pair.neighbours(n)) if motion else None
        name = pair._name(pair.restored, n)
        results.append(analyse_frame(before, after, n, motion=mmap, matte=pair.matte(n), settings=settings, name=name))
        if progress is not None:
            progress(i + 1, len(pair.frames), f"frame {n}")
    return results
