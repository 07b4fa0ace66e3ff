"""The classical restorer: detect-then-restore (Kokaram-style), no weights needed.

For each target frame t and its neighbours t-r..t+r:
  1. dense optical flow t<->k with a forward-backward check; unreliable flow is filled from its surroundings,
  2. dust/dirt: spike detection against the motion-compensated t-1 and t+1, grown into blobs,
  3. line scratches: thin vertical ridges that persist at the same x across the window,
  4. fill: motion-compensated temporal median where the neighbours agree, spatial inpainting elsewhere.
Only pixels inside the (slightly grown) defect matte change. Each frame depends only on its own window, so
restoring a chunk with its context gives exactly the frames of a whole-range run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import cv2
import numpy as np

from frdm.engine import depends
from frdm.engine.classical.detect import ScratchDetector, SpikeDetector
from frdm.engine.classical.fill import spatial_fill, temporal_fill
from frdm.engine.classical.flow import (
    FlowEstimator,
    fb_error,
    fill_unreliable,
    flow_gradient,
    flow_input,
    luminance,
    warp,
)
from frdm.engine.restorer import Clip, ProgressFn, RestoredFrame, no_progress

# Fill a few pixels beyond the matte so the blend's grow and feather have restored pixels to mix in. Fixed,
# not derived from 'feather'/'matte_grow': those are blend-stage knobs, and a cache keyed by the fill stage
# must stay valid when they change (engine/params.py).
FILL_MARGIN = 6
FLOW_MAX_SIDE = 1280  # px: larger frames get their flow on a reduced copy (2K: half size)


def _reduce(grey: np.ndarray, scale: int) -> np.ndarray:
    if scale == 1:
        return grey
    h, w = grey.shape
    return cv2.resize(grey, (w // scale, h // scale), interpolation=cv2.INTER_AREA)


def _enlarge_flow(
    flow: np.ndarray, reliable: np.ndarray, shape: tuple[int, ...], scale: int
) -> tuple[np.ndarray, np.ndarray]:
    """A reduced-size flow and its reliability mask, back at full size (flow vectors scaled too)."""
    h, w = shape[:2]
    big = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR) * float(scale)
    ok = cv2.resize(reliable.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return big, ok


class _FlowCache:
    """Flows between clip positions, computed once per ordered pair (a chunk's frames share neighbours)."""

    def __init__(self, images: list[np.ndarray]):
        self.images = images
        self.estimator = FlowEstimator()
        self.cache: dict[tuple[int, int], np.ndarray] = {}

    def __call__(self, a: int, b: int) -> np.ndarray:
        if (a, b) not in self.cache:
            self.cache[(a, b)] = self.estimator(self.images[a], self.images[b])
        return self.cache[(a, b)]

    def forget_before(self, position: int) -> None:
        for key in [k for k in self.cache if min(k) < position]:
            del self.cache[key]


class ClassicalRestorer:
    engine_version = depends.ENGINE_VERSIONS["classical"]

    def context(self, params: Mapping[str, Any]) -> tuple[int, int]:
        return depends.context({**params, "engine": "classical"})

    def restore(
        self, clip: Clip, params: Mapping[str, Any], progress: ProgressFn = no_progress
    ) -> Iterator[RestoredFrame]:
        radius = int(params["temporal_radius"])
        frames = clip.frames
        count = frames.shape[0]
        grey = [luminance(f) for f in frames]
        # Flow (and its checks and hole filling) at no more than FLOW_MAX_SIDE: at 2K DIS and the filling cost
        # 4x more at full size for motion that a 3x3 rank-order test and a median fill do not need finer.
        scale = max(1, int(np.ceil(max(grey[0].shape) / FLOW_MAX_SIDE)))
        flows = _FlowCache([flow_input(_reduce(g, scale)) for g in grey])
        spikes = SpikeDetector(threshold=float(params["dust_threshold"]), max_area=int(params["dust_max_area"]))
        scratches = ScratchDetector(
            threshold=float(params["scratch_threshold"]), min_length=float(params["scratch_min_length"])
        )
        reliability = float(params["flow_reliability"])
        use_scratches = bool(params["scratches"])
        candidates = [scratches.candidates(g) for g in grey] if use_scratches else []
        margin = FILL_MARGIN

        targets = [clip.index(n) for n in clip.targets]
        for done, t in enumerate(targets):
            lo, hi = max(0, t - radius), min(count - 1, t + radius)
            # A repeated frame (frame-rate conversions repeat every 4th or 5th) carries the same dust: it is
            # neither a reference for the spike test nor fill material.
            neighbours = [k for k in range(lo, hi + 1) if k != t and not _duplicate(grey[t], grey[k])]
            warped: dict[int, np.ndarray] = {}
            fixed_flow: dict[int, np.ndarray] = {}
            trusted_fill: dict[int, np.ndarray] = {}
            steep = np.zeros(grey[t].shape, dtype=bool)
            pair = _detection_pair(t, [k for k in neighbours if k < t], [k for k in neighbours if k > t])
            pair_set = set(pair or ())
            for k in neighbours:
                forward, backward = flows(t, k), flows(k, t)
                reliable = fb_error(forward, backward) < reliability / scale
                fixed = fill_unreliable(forward, reliable)
                if scale > 1:
                    fixed, reliable = _enlarge_flow(fixed, reliable, grey[t].shape, scale)
                warped[k] = warp(frames[k], fixed)
                fixed_flow[k] = fixed
                # The filled flow is trusted where most of the neighbourhood had reliable flow.
                local = cv2.blur(reliable.astype(np.float32), (15, 15)) > 0.5
                trusted_fill[k] = local
                if k in pair_set:
                    # Motion boundaries and samples from outside the picture cannot be compared.
                    steep |= (flow_gradient(fixed) > spikes.max_flow_gradient) | _outside(fixed)
            matte = np.zeros(grey[t].shape, dtype=bool)
            if pair is not None:
                p, n = pair
                matte |= spikes(grey[t], luminance(warped[p]), luminance(warped[n]), ~steep)
            scratch = np.zeros_like(matte)
            if use_scratches:
                window = list(range(lo, hi + 1))
                scratch = scratches([candidates[k] for k in window], window.index(t))
                matte |= scratch
            restored = frames[t].copy()
            if matte.any():
                region = matte
                if margin:
                    region = cv2.dilate(matte.astype(np.uint8), _disc(margin)) > 0
                valid = []
                for k in neighbours:
                    v = trusted_fill[k]
                    if use_scratches:
                        # A neighbour's own scratch at this spot is no fill material.
                        v = v & ~(warp(candidates[k].astype(np.float32), fixed_flow[k]) > 0.1)
                    valid.append(v)
                values, ok = temporal_fill([warped[k] for k in neighbours], valid, region)
                ys, xs = np.nonzero(region)
                restored[ys[ok], xs[ok]] = values[ok]
                leftover = np.zeros_like(region)
                leftover[ys[~ok], xs[~ok]] = True
                if leftover.any():
                    restored = spatial_fill(restored, leftover)
            flows.forget_before(max(0, t + 1 - radius))
            progress(done + 1, len(targets), f"classical: frame {clip.frame_numbers[t]}")
            yield RestoredFrame(clip.frame_numbers[t], restored, matte.astype(np.float32))


def _detection_pair(t: int, before: list[int], after: list[int]) -> tuple[int, int] | None:
    """The two references for the spike test: t-1 and t+1, or the two nearest on one side at a clip end."""
    if before and after:
        return before[-1], after[0]
    side = before[::-1] if before else after
    if len(side) >= 2:
        return side[0], side[1]
    if len(side) == 1:
        return side[0], side[0]
    return None


def _duplicate(a: np.ndarray, b: np.ndarray) -> bool:
    """The same picture repeated (frame-rate conversions repeat every 4th or 5th frame), dust and all.

    A still scene is not a duplicate: its dust differs from frame to frame. So two frames are one picture
    only when no pixel differs by more than compression noise, not merely when they differ little on average."""
    step = max(1, a.shape[0] // 512)
    diff = np.abs(a[::step, ::step] - b[::step, ::step])
    return float(diff.mean()) < 0.003 and float((diff > 0.08).mean()) < 1e-4


def _outside(flow: np.ndarray, margin: float = 1.0) -> np.ndarray:
    """Pixels whose flow points outside the neighbour's frame (new picture entering at the edges)."""
    h, w = flow.shape[:2]
    xs = np.arange(w, dtype=np.float32)[None, :] + flow[..., 0]
    ys = np.arange(h, dtype=np.float32)[:, None] + flow[..., 1]
    return (xs < margin) | (xs > w - 1 - margin) | (ys < margin) | (ys > h - 1 - margin)


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
