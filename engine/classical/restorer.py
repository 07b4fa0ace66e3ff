"""The classical restorer: detect-then-restore (Kokaram-style), no weights needed.

For each target frame t and its neighbours t-r..t+r:
  1. dense optical flow t<->k with a forward-backward check; unreliable flow is filled from its surroundings.
     Each flow is computed once per frame pair and kept across blocks and server chunks (keyed by the frames'
     content, so a chunked run computes exactly what a whole-range run does);
  2. the compensated neighbours t-1 and t+1 are matched to t's local brightness and contrast (a smooth
     gain/offset field: flicker), then dust/dirt is what lies outside both, where both agree with each other
     and the motion was followed; large regions over moving content need twice the evidence;
  3. line scratches: thin vertical ridges that persist at the same x across the window, or that are absent
     from both compensated neighbours (scratches of one frame);
  4. fill: motion-compensated, brightness-matched temporal fill from one agreeing neighbour per region where
     the neighbours agree, spatial inpainting with the frame's own grain elsewhere;
  5. optionally (``deflicker`` > 0) the whole frame's local brightness is moved towards its neighbours'.
Only pixels inside the (slightly grown) defect matte change, unless deflicker is on. Each frame depends only on
its own window, so restoring a chunk with its context gives exactly the frames of a whole-range run.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple
from typing import Any, TypeVar

import cv2
import numpy as np

from frdm.engine import depends
from frdm.engine.classical.brightness import Reference, apply_fields, deflicker_fields, match
from frdm.engine.classical.detect import ScratchDetector, SpikeDetector, pixels
from frdm.engine.classical.fill import gate, region_rings, spatial_fill, temporal_fill
from frdm.engine.classical.flow import (
    FlowEstimator,
    fb_error,
    fill_unreliable,
    flow_gradient,
    flow_input,
    luminance,
    magnitude,
    remap_points,
    rewarp,
    row_blocks,
    warp,
)
from frdm.engine.errors import InputError
from frdm.engine.restorer import Clip, ProgressFn, RestoredFrame, no_progress

# px: how far a fill reaches beyond the matte, for the blend's grow and feather to have restored pixels to
# mix in: about as far as the feathered matte reaches with the default knobs (matte_grow 2, feather 0.5: full
# weight to 2 px, ~0.9 at 3, <= 0.18 at 4, nothing beyond 5). On the real films a defect's halo ends ~2 px
# outside the detector's matte (the fill's change there falls to the two grains' difference by 2-3 px); beyond
# that a fill only swaps the frame's grain for a neighbour's, and each pixel of margin is changed picture (6 px
# made the changed area ~8x the matte for small specks). Fixed, not derived from 'feather'/'matte_grow': those
# are blend-stage knobs, and a cache keyed by the fill stage must stay valid when they change (engine/params.py).
FILL_MARGIN = 4
# px: larger frames get their flow on a reduced copy (1280x720: half size, 2K: quarter size). The spike test
# compares 3x3 ranges at full size and the fill follows smooth motion: neither needs flow finer than this, and
# DIS plus its checks are most of the time per frame.
FLOW_MAX_SIDE = 640
TRUST_WINDOW = 31  # px (full size): filled flow is trusted where most of this neighbourhood had reliable flow


_T = TypeVar("_T")


# The shorter side of the flow's grid (the frame reduced by ``flow_scale``) DIS needs: below it OpenCV's DIS
# raises (a frame under 12x12) or, on a strip 8-15 px high, crashes the process (OpenCV 5.1, measured).
MIN_FLOW_SIDE = 16


def flow_scale(h: int, w: int) -> int:
    """The factor a frame is reduced by for the flow (its longer side to at most FLOW_MAX_SIDE)."""
    return max(1, int(np.ceil(max(h, w) / FLOW_MAX_SIDE)))


def check_frame_size(h: int, w: int, frame: int) -> None:
    """InputError for a frame too small for the flow (see MIN_FLOW_SIDE), naming the frame, its size and the
    least it needs: checked before any DIS call, which would raise a raw cv2.error or end the process."""
    scale = flow_scale(h, w)
    if min(h // scale, w // scale) < MIN_FLOW_SIDE:
        need = (
            f"at least {MIN_FLOW_SIDE} pixels on each side"
            if scale == 1
            else f"at least {MIN_FLOW_SIDE * scale} pixels on its shorter side when the longer is {max(h, w)} "
            f"(the motion is estimated on the frame reduced {scale}x)"
        )
        raise InputError(
            f"frame {frame}: {w}x{h} pixels is too small for the classical engine, which needs {need}; "
            "restore frames (or a region) of at least that size"
        )


def _reduce(grey: np.ndarray, scale: int) -> np.ndarray:
    if scale == 1:
        return grey
    h, w = grey.shape
    return cv2.resize(grey, (w // scale, h // scale), interpolation=cv2.INTER_AREA)


def _enlarge(image: np.ndarray, shape: tuple[int, ...], nearest: bool = False) -> np.ndarray:
    h, w = shape[:2]
    if image.shape[:2] == (h, w):
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def _enlarge_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A bool mask on the flow's grid at full size (each pixel takes its nearest reduced pixel's value)."""
    return _enlarge(mask.astype(np.uint8), shape, nearest=True) > 0


class _FlowCache:
    """Raw DIS flows by the content of the two frames they join, most recent kept. Blocks of a run and chunks
    sent to a server share frames at their edges; keying by content (not by clip position) lets them share the
    flows, and since DIS is deterministic the result is the one a whole-range run computes."""

    def __init__(self, size: int = 24):
        self.size = size
        self.estimator = FlowEstimator()
        self.items: OrderedDict[tuple[bytes, bytes], np.ndarray] = OrderedDict()
        # Flows are computed in a worker thread (restore's one-ahead look); a restore abandoned midway may
        # still have its worker running when the next begins. One DIS object must not run twice at once.
        self._lock = threading.Lock()

    def __call__(self, key_a: bytes, key_b: bytes, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        key = (key_a, key_b)
        with self._lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
            flow = self.estimator(a, b)
            self.items[key] = flow
            while len(self.items) > self.size:
                self.items.popitem(last=False)
            return flow


class _LineCache:
    """Scratch candidates (``ScratchDetector.candidates``) by the content of the luminance they were found in and
    the detector's settings, most recent kept. ``frdm restore`` and the server restore a clip in blocks, each
    with its context frames: each block edge made 2 * radius frames' candidates again (24 720p frames in blocks of
    8: 32 searches instead of 24, ~50 ms each). A frame's candidates depend on its luminance alone, so the
    cached ones are the bits a fresh search gives; the arrays are read-only (every caller only reads them)."""

    def __init__(self, size: int = 6):
        self.size = size
        self.items: OrderedDict[tuple[bytes, tuple], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # both engine threads look candidates up (``_balance``)
        self._busy: dict[tuple[bytes, tuple], threading.Event] = {}  # keys being searched now

    def __call__(self, detector: ScratchDetector, grey: np.ndarray) -> np.ndarray:
        # SHA-1 (hardware-accelerated on current CPUs: ~2.6 ms for a 720p luminance against ~7 for BLAKE2b); a
        # key against accidental equality, as the flows' is.
        key = (hashlib.sha1(np.ascontiguousarray(grey).data).digest(), grey.shape, astuple(detector))
        while True:
            with self._lock:
                if key in self.items:
                    self.items.move_to_end(key)
                    return self.items[key]
                # The other engine thread may be searching this very frame: wait for its result rather than
                # search twice (a wasted ~50 ms, and a count of searches that would depend on timing).
                busy = self._busy.get(key)
                if busy is None:
                    busy = self._busy[key] = threading.Event()
                    break
            busy.wait()
        try:
            found = detector.candidates(grey)
            found.flags.writeable = False
            with self._lock:
                self.items[key] = found
                while len(self.items) > self.size:
                    self.items.popitem(last=False)
        finally:
            with self._lock:
                del self._busy[key]
            busy.set()  # a waiter whose search failed here searches itself (it finds neither entry nor mark)
        return found


class _Frames:
    """What the engine derives from each clip frame, computed when first needed."""

    def __init__(
        self, frames: np.ndarray, scale: int, scratches: ScratchDetector | None, lines: _LineCache | None = None
    ):
        self.frames, self.scale, self.scratch_detector = frames, scale, scratches
        self.lines = _LineCache() if lines is None else lines
        self._grey: dict[int, np.ndarray] = {}
        self._small: dict[int, np.ndarray] = {}
        self._flow_in: dict[int, tuple[bytes, np.ndarray]] = {}
        self._cand: dict[int, np.ndarray] = {}
        self._copies: dict[int, np.ndarray] = {}
        self._gate: dict[int, np.ndarray] = {}
        self._same: dict[tuple[int, int], bool] = {}

    def grey(self, i: int) -> np.ndarray:
        if i not in self._grey:
            self._grey[i] = luminance(self.frames[i])
        return self._grey[i]

    def small(self, i: int) -> np.ndarray:
        """Luminance on the flow's grid."""
        if i not in self._small:
            self._small[i] = _reduce(self.grey(i), self.scale)
        return self._small[i]

    def flow_in(self, i: int) -> tuple[bytes, np.ndarray]:
        if i not in self._flow_in:
            image = flow_input(self.small(i))
            self._flow_in[i] = (hashlib.blake2b(image.tobytes(), digest_size=16).digest(), image)
        return self._flow_in[i]

    def duplicate(self, i: int, j: int) -> bool:
        """``_duplicate`` of frames i and j, once per pair: each is a neighbour of the other's window too, and
        the test is symmetric (|a - b| is |b - a| to the bit)."""
        key = (min(i, j), max(i, j))
        if key not in self._same:
            self._same[key] = _duplicate(self.grey(i), self.grey(j))
        return self._same[key]

    def candidates(self, i: int) -> np.ndarray:
        if i not in self._cand:
            assert self.scratch_detector is not None
            self._cand[i] = self.lines(self.scratch_detector, self.grey(i))
        return self._cand[i]

    def gate(self, i: int) -> np.ndarray:
        """The black gate along the frame's borders (``fill.gate``); a frame is a fill's neighbour for several
        targets."""
        if i not in self._gate:
            self._gate[i] = gate(self.frames[i])
        return self._gate[i]

    def copy_ahead(self, i: int) -> None:
        """Copy frame i now (in the worker thread) for its fill to write into: a fresh 2K RGB frame costs
        ~50 ms of page faults, more than the copy itself, and the fill waits for none of it then."""
        self._copies[i] = self.frames[i].copy()

    def writable(self, i: int) -> np.ndarray:
        """A copy of frame i that the caller may write into (the one made ahead, if any)."""
        made = self._copies.pop(i, None)
        return self.frames[i].copy() if made is None else made

    def drop_copy(self, i: int) -> None:
        """Frame i needed no copy after all (nothing to fill)."""
        self._copies.pop(i, None)

    def forget_before(self, i: int) -> None:
        # list(store): taken at once (no Python code runs inside it) while the worker thread may be adding
        # entries, all at or after i.
        for store in (self._grey, self._small, self._flow_in, self._cand, self._copies, self._gate):
            for k in [k for k in list(store) if k < i]:
                del store[k]
        for pair in [pair for pair in list(self._same) if pair[0] < i]:
            del self._same[pair]


class _Motion:
    """Motion from frame t to neighbour k on the flow's (possibly reduced) grid, and what is known of it."""

    def __init__(self, forward: np.ndarray, backward: np.ndarray, reliability: float, scale: int):
        self.scale = scale
        reliable = fb_error(forward, backward) < reliability / scale
        self.forward, self.reliable_raw = forward, reliable
        self.window = max(3, (TRUST_WINDOW // scale) | 1)
        self.trusted = _trusted(reliable, self.window)
        self._flow: np.ndarray | None = None
        self._full: np.ndarray | None = None
        self._excluded: np.ndarray | None = None

    @property
    def flow(self) -> np.ndarray:
        """The flow on the reduced grid, in reduced-grid px, unreliable flow filled from around it. Made when
        first asked for: a neighbour that is neither reference of the spike test nor asked by the scratch test
        has its flow taken from around the defects (``exclude``) before anything reads it."""
        if self._flow is None:
            self._flow = fill_unreliable(self.forward, self.reliable_raw)
        return self._flow

    def exclude(self, suspect: np.ndarray) -> None:
        """Take the flow inside ``suspect`` (bool, full size or already on the flow's grid (``_on_grid``): likely
        defects) from the motion around it. A blotch larger than the flow's median filter drags the flow with
        it (to some bright or dark patch of the neighbour), and can pass the forward-backward check doing so.
        Inside a large one the flow is then as trustworthy as the motion around it (``_trusted``)."""
        small = _on_grid(suspect, self.forward.shape)
        if self._excluded is not None:
            # Taken from around already, but for specks the flow's 5x5 median filter removed before the flow
            # saw them (nothing 3x3 on the flow's grid): they did not drag it, and one more hole filling of the
            # whole flow costs ~15 ms at 2K.
            if not cv2.erode((small & ~self._excluded).astype(np.uint8), np.ones((3, 3), np.uint8)).any():
                return
            # Earlier looks still hold. A new array: ``small`` may be the grid every neighbour is given.
            small = small | self._excluded
        self._excluded = small
        self._flow = fill_unreliable(self.forward, self.reliable_raw & ~small)
        self.trusted = _trusted(self.reliable_raw, self.window, small)
        self._full = None

    def forget_full(self) -> None:
        """Drop the full-size flow (made again when next asked for)."""
        self._full = None

    def full(self, shape: tuple[int, ...]) -> np.ndarray:
        """The flow at full size, in full-size px."""
        if self._full is None:
            if self.scale == 1:
                self._full = self.flow
            else:
                self._full = _enlarge(self.flow, shape)
                self._full *= float(self.scale)  # in place: a second full-size temporary costs ~3x the multiply
        return self._full

    def comparable(self, max_gradient: float) -> np.ndarray:
        """Bool on the flow's grid: where the compensated neighbour can be compared with the frame at all. Not
        at motion boundaries (the gradient in px per px is the same on the reduced grid), not where the sample
        comes from outside the picture."""
        return (flow_gradient(self.flow) <= max_gradient) & ~_outside(self.flow)

    def at(self, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Full-size flow vectors (N, 2) and trust (N,) at full-size pixels."""
        if self.scale == 1:
            return self.flow[ys, xs], self.trusted[ys, xs]
        s = float(self.scale)
        # Bilinear on the reduced grid, pixel centres aligned as cv2.resize aligns them.
        fx = (xs.astype(np.float32) + 0.5) / s - 0.5
        fy = (ys.astype(np.float32) + 0.5) / s - 0.5
        vec = remap_points(self.flow, fx, fy) * s
        h, w = self.trusted.shape
        ty = np.minimum(ys // self.scale, h - 1)
        tx = np.minimum(xs // self.scale, w - 1)
        return vec, self.trusted[ty, tx]


# Threads the engine keeps busy itself: the detection and fill, and the look ahead (``_one_ahead``).
ENGINE_THREADS = 2


def cv2_threads(cores: int) -> int:
    """cv2's own thread pool beside the engine's threads: the cores those leave, at least 1 (cv2 then runs each
    call in its caller's thread). On a machine with no more cores than the engine's threads, cv2's pool only
    contends with them: measured on 2 cores under load, ~9% more CPU at 720p and up to ~40% at 2K for no
    faster frames. No result depends on it: DIS and every cv2 call the engine makes split their work by the
    image, not by the thread count (the test restores a clip with 1 and with 4 threads: the same bits)."""
    return max(1, cores - ENGINE_THREADS)


def _cores() -> int:
    """The CPUs cv2 may use: its own count, which takes the process's affinity and a container's CPU quota
    (cgroups v1 and v2) into account. The affinity alone lists every core of the host under a quota (docker
    --cpus, Kubernetes limits): 62 threads in a container of 2 CPUs."""
    return max(1, int(cv2.getNumberOfCPUs()))


#: A thread count the user set for OpenCV's pool (read by OpenCV itself at start): kept as it is.
CV2_THREADS_ENV = "OPENCV_FOR_THREADS_NUM"


def tune_cv2_threads() -> int:
    """Set cv2's pool, process-wide, to ``cv2_threads`` of the cores cv2 may use, unless the user set
    OPENCV_FOR_THREADS_NUM; the pool's size after. Called once by a process that runs this engine
    (``frdm/commands/tuning.tune_process``), not by the restorer's constructor: the diffusion engine builds a
    classical restorer per frame, and a program that embeds the engine keeps its own setting."""
    if CV2_THREADS_ENV not in os.environ:
        cv2.setNumThreads(cv2_threads(_cores()))
    return cv2.getNumThreads()


class ClassicalRestorer:
    engine_version = depends.ENGINE_VERSIONS["classical"]

    def __init__(self) -> None:
        self._flows = _FlowCache()
        self._lines = _LineCache()

    def context(self, params: Mapping[str, Any]) -> tuple[int, int]:
        return depends.context({**params, "engine": "classical"})

    def restore(
        self, clip: Clip, params: Mapping[str, Any], progress: ProgressFn = no_progress
    ) -> Iterator[RestoredFrame]:
        radius = int(params["temporal_radius"])
        h, w = clip.shape
        check_frame_size(h, w, min(clip.targets, default=clip.frame_numbers[0] if clip.frame_numbers else 0))
        frames = clip.frames
        count = frames.shape[0]
        shape = (h, w)
        scale = flow_scale(h, w)
        # Room for every pair a window's frames share, as the window slides.
        self._flows.size = max(self._flows.size, 8 * radius + 8)
        # The frames the next block shares with this one: its context before its first target.
        self._lines.size = max(self._lines.size, 2 * radius + 2)
        spikes = SpikeDetector(threshold=float(params["dust_threshold"]), max_area=int(params["dust_max_area"]))
        use_scratches = bool(params["scratches"])
        scratches = ScratchDetector(
            threshold=float(params["scratch_threshold"]), min_length=float(params["scratch_min_length"])
        )
        reliability = float(params["flow_reliability"])
        strength = float(params["deflicker"])
        data = _Frames(frames, scale, scratches if use_scratches else None, self._lines)
        # CPU seconds each of the two threads has spent on its share so far (``_balance``).
        busy = {"look": 0.0, "detect": 0.0}

        def look_around(t: int) -> tuple[list[int], dict[int, _Motion], _Look | None]:
            """Frame t's usable neighbours, the motion to each, the spike test's first look and the copy its
            fill writes into: what frame t needs that does not depend on what is found in any frame (about
            half the work per frame: the rest is the detection and fill that depend on it)."""
            start = time.thread_time()
            lo, hi = max(0, t - radius), min(count - 1, t + radius)
            # A repeated frame (frame-rate conversions repeat every 4th or 5th) carries the same dust: it is
            # neither a reference for the spike test nor fill material.
            neighbours = [k for k in range(lo, hi + 1) if k != t and not data.duplicate(t, k)]
            motion: dict[int, _Motion] = {}
            key_t, in_t = data.flow_in(t)
            for k in neighbours:
                key_k, in_k = data.flow_in(k)
                forward = self._flows(key_t, key_k, in_t, in_k)
                backward = self._flows(key_k, key_t, in_k, in_t)
                motion[k] = _Motion(forward, backward, reliability, scale)
            pair = _detection_pair(t, [k for k in neighbours if k < t], [k for k in neighbours if k > t])
            look = None if pair is None else _Look(data, t, *pair, motion, spikes, shape)
            if use_scratches and _balance(busy):
                for k in range(lo, hi + 1):
                    data.candidates(k)
            data.copy_ahead(t)
            busy["look"] += time.thread_time() - start
            return neighbours, motion, look

        # In increasing order, as the Restorer protocol yields them; forget_before and the worker one target
        # ahead rely on it too (the worker's window never starts before the one just forgotten).
        targets = sorted({clip.index(n) for n in clip.targets})
        for done, (t, (neighbours, motion, look)) in enumerate(_one_ahead(look_around, targets)):
            start = time.thread_time()
            lo, hi = max(0, t - radius), min(count - 1, t + radius)
            grey = data.grey(t)
            matte = np.zeros(shape, dtype=bool)
            spike = trusted = None
            if look is not None:
                p, n, trusted = look.p, look.n, look.trusted
                if look.suspect.any():
                    # Second look with the flow inside every candidate speck taken from around it.
                    warped_p, warped_n = look.again(data, motion, shape)
                    spike = spikes.spikes(grey, warped_p, warped_n)
                else:
                    warped_p, warped_n, spike = look.warped_p, look.warped_n, look.spike
                speed = magnitude(motion[p].full(shape))
                own = None
                if (p < t) == (n < t):  # a clip's end: what moves against the picture may be occluded
                    dominant = np.median(motion[p].flow.reshape(-1, 2), axis=0) * float(scale)
                    own = magnitude(motion[p].full(shape) - dominant.astype(np.float32))
                matte |= spikes(grey, warped_p, warped_n, trusted, speed, spike, look.reliable, own)
            if use_scratches:
                window = list(range(lo, hi + 1))
                # Horizontal motion from t to each window frame, to tell the scene's own lines from scratches.
                flow_x = [None if k not in motion else _flow_x(motion[k]) for k in window]
                lines = [data.candidates(k) for k in window]
                matte |= scratches(lines, window.index(t), [data.grey(k) for k in window], flow_x)
                if spike is not None and trusted is not None:
                    matte |= scratches.transient(data.candidates(t), spike, trusted)

            restored = frames[t]  # never written to: a frame without defects is returned as it came
            if matte.any():
                restored = self._fill(data, t, neighbours, motion, matte, use_scratches)
            else:
                data.drop_copy(t)  # not needed: held to the end of its window, a whole frame for nothing
            base = None
            if strength > 0.0 and neighbours:
                # Deflicker on the flow's grid (the brightness fields are smooth). The fill above matched the
                # frame as it was, so one per-pixel map takes both the frame and its restored copy.
                small = [warp(data.small(k), motion[k].flow) for k in neighbours]
                gain, offset = deflicker_fields(data.small(t), small, strength, spikes.threshold, shape)
                base = apply_fields(frames[t], gain, offset)
                restored = apply_fields(restored, gain, offset)
            data.forget_before(max(0, t + 1 - radius))
            busy["detect"] += time.thread_time() - start
            progress(done + 1, len(targets), f"classical: frame {clip.frame_numbers[t]}")
            yield RestoredFrame(clip.frame_numbers[t], restored, matte.astype(np.float32), base)

    def _fill(
        self,
        data: _Frames,
        t: int,
        neighbours: list[int],
        motion: dict[int, _Motion],
        matte: np.ndarray,
        use_scratches: bool,
    ) -> np.ndarray:
        frames = data.frames
        h, w = matte.shape
        region = cv2.dilate(matte.astype(np.uint8), _disc(FILL_MARGIN)) > 0 if FILL_MARGIN else matte
        # The flow inside a defect follows the defect (a blotch drags DIS with it, and the forward-backward
        # check does not always catch it): every neighbour's flow is taken from around the defects here.
        defects = cv2.dilate(matte.astype(np.uint8), _disc(2)) > 0
        # One reduction for all the neighbours: they share the flow's grid.
        grid = _on_grid(defects, motion[neighbours[0]].forward.shape) if neighbours else defects
        for k in neighbours:
            # Also the detector's two references: their flow was taken from around its candidate specks, which
            # need not hold a large blotch found otherwise.
            motion[k].exclude(grid)
        # The black gate is no picture: not filled here, and no fill material in a neighbour (it weaves, so a
        # neighbour's gate lies where this frame shows picture).
        gates = {k: data.gate(k) for k in [t, *neighbours]}
        region = region & ~gates[t]
        labels, ring, count = region_rings(region, matte)

        def flow(k: int, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return motion[k].at(ys, xs)

        # Per neighbour, made once for the fill's four samplings of it (rings and pixels, two candidates each):
        # whether it has a gate at all, and its scratch candidates as an 8-bit image for bilinear sampling.
        gated = {k: bool(gates[k].any()) for k in neighbours}
        scratch_images: dict[int, np.ndarray] = {}

        def sample(k: int, sx: np.ndarray, sy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            ok = (sx >= 1) & (sx <= w - 2) & (sy >= 1) & (sy <= h - 2)
            if gated[k]:
                gy = np.clip(np.rint(sy), 0, h - 1).astype(np.intp)
                gx = np.clip(np.rint(sx), 0, w - 1).astype(np.intp)
                ok &= ~gates[k][gy, gx]
            # Nearest pixel: a neighbour's own grain, not a blur of it.
            colours = remap_points(frames[k], sx, sy, cv2.INTER_NEAREST)
            if use_scratches:
                # A neighbour's own scratch at this spot is no fill material.
                if k not in scratch_images:
                    scratch_images[k] = data.candidates(k).view(np.uint8) * np.uint8(255)
                own = remap_points(scratch_images[k], sx, sy)
                ok &= own <= 25
            return colours, ok

        known = region & ~defects
        values, ok = temporal_fill(frames[t], flow, sample, neighbours, labels, ring, count, known)
        restored = data.writable(t)
        ys, xs = pixels(labels)
        restored[ys[ok], xs[ok]] = values[ok]
        leftover = np.zeros_like(region)
        leftover[ys[~ok], xs[~ok]] = True
        if leftover.any():
            spatial_fill(restored, leftover, matte, out=restored, border=gates[t])
        return restored


class _Look:
    """The spike test's first look at frame t: its two references p and n (t-1 and t+1, or two on one side at a
    clip end) warped onto it and brought to its local brightness (flicker) where the motion lets them be
    compared, and the spikes and suspects found then. It depends on nothing found in any frame, so the worker
    makes it one frame ahead."""

    def __init__(
        self,
        data: _Frames,
        t: int,
        p: int,
        n: int,
        motion: dict[int, _Motion],
        spikes: SpikeDetector,
        shape: tuple[int, int],
    ) -> None:
        self.p, self.n = p, n
        grey = data.grey(t)
        # Both references' masks joined on the flow's grid and enlarged once (nearest: the same as joining
        # them at full size).
        both = motion[p].comparable(spikes.max_flow_gradient) & motion[n].comparable(spikes.max_flow_gradient)
        self.trusted = _enlarge_mask(both, shape)
        # The flow passed its forward-backward check in most of the neighbourhood. Read before any exclusion
        # (``_Motion.exclude`` remakes ``trusted``): t's motions are its own, made just above in this thread, and
        # the detection reads this, not the trust its second look and the fill leave.
        self.reliable = _enlarge_mask(motion[p].trusted & motion[n].trusted, shape)
        self.threshold = spikes.threshold
        self.reference = Reference(grey, self.trusted)
        # The warps before the brightness match, kept for the second look to redo only where the flow changed.
        self.raw = {k: warp(data.grey(k), motion[k].full(shape)) for k in (p, n)}
        self.warped_p: np.ndarray | None = match(self.reference, self.raw[p], self.threshold)
        self.warped_n: np.ndarray | None = match(self.reference, self.raw[n], self.threshold)
        self.spike: np.ndarray | None = spikes.spikes(grey, self.warped_p, self.warped_n)
        self.suspect = spikes.suspects(grey, self.warped_p, self.warped_n, self.spike)
        # Held while the frame before is restored: only what the detection will read (at 2K, 12 MB per image
        # and 25 MB per full-size flow).
        if self.suspect.any():
            # The second look takes the flow inside the suspects from around them, so it makes the full-size
            # flows, the warps and the spikes anew; it needs the warps before the match.
            for k in (p, n):
                motion[k].forget_full()
            self.warped_p = self.warped_n = self.spike = None
        else:
            self.raw = {}

    def again(self, data: _Frames, motion: dict[int, _Motion], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The references warped and matched again with the flow inside every suspect (grown by 2 px) taken from
        around it (``_Motion.exclude``): (warped_p, warped_n)."""
        suspect = cv2.dilate(self.suspect.astype(np.uint8), _disc(2)) > 0
        grid = _on_grid(suspect, motion[self.p].forward.shape)  # once for both references: they share the grid
        for k in self.raw:
            before = motion[k].flow
            motion[k].exclude(grid)
            rewarp(data.grey(k), motion[k].full(shape), self.raw[k], _changed_boxes(before, motion[k].flow, shape))
        return (
            match(self.reference, self.raw[self.p], self.threshold),
            match(self.reference, self.raw[self.n], self.threshold),
        )


CHANGED_TILE = 8  # reduced-grid px: the grain at which ``_changed_boxes`` tells changed flow from unchanged
CHANGED_WHOLE = 0.6  # share of the frame above which ``_changed_boxes`` gives the whole frame's rows instead


def _changed_boxes(before: np.ndarray, after: np.ndarray, shape: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """Full-size boxes (y0, y1, x0, x1) that hold every pixel whose enlarged flow (``_enlarge``: bilinear from
    the reduced grid) can differ between the reduced flows ``before`` and ``after``: each differing reduced
    pixel grown by one (bilinear reads two on each axis), taken as runs of tiles along each row of tiles."""
    changed = (before[..., 0] != after[..., 0]) | (before[..., 1] != after[..., 1])  # numpy's any(axis=2) is slow
    if not changed.any():
        return []
    changed = cv2.dilate(changed.view(np.uint8), np.ones((3, 3), np.uint8))
    h, w = changed.shape
    big_h, big_w = shape[:2]
    tile = CHANGED_TILE
    rows, cols = -(-h // tile), -(-w // tile)
    padded = np.zeros((rows * tile, cols * tile), np.float32)
    padded[:h, :w] = changed
    # Any pixel of a tile: its mean above 0 (the padded grid is a whole number of tiles).
    tiles = cv2.resize(padded, (cols, rows), interpolation=cv2.INTER_AREA) > 0
    if tiles.mean() > CHANGED_WHOLE:
        # The boxes would hold at least the changed tiles, so more than CHANGED_WHOLE of the frame (below): no
        # need to make them (a Python loop over ~45 rows of tiles on grainy 720p film). Any boxes that hold every
        # changed pixel give the same bits, these too.
        return row_blocks(big_h, big_w)

    def lo(i: int, big: int, small: int) -> int:  # first full-size pixel of reduced pixel i, less one
        return max(0, i * big // small - 1)

    def hi(i: int, big: int, small: int) -> int:  # past the last full-size pixel of reduced pixel i, plus one
        return min(big, -(-(i + 1) * big // small) + 1)

    boxes = []
    for r in np.flatnonzero(tiles.any(axis=1)):
        y0, y1 = lo(r * tile, big_h, h), hi(min(h, (r + 1) * tile) - 1, big_h, h)
        run = np.diff(np.concatenate([[0], tiles[r].astype(np.int8), [0]]))
        for c0, c1 in zip(np.flatnonzero(run == 1), np.flatnonzero(run == -1)):
            boxes.append((y0, y1, lo(c0 * tile, big_w, w), hi(min(w, c1 * tile) - 1, big_w, w)))
    if sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in boxes) > CHANGED_WHOLE * big_h * big_w:
        # Changed nearly everywhere (grainy film: the boxes, overlapping at their margins, held ~108% of a
        # 720p frame in ~120 remaps): the whole frame in warp's blocks of rows costs less.
        return row_blocks(big_h, big_w)
    return boxes


def _on_grid(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A full-size bool mask on a (possibly reduced) grid of ``shape``: a cell is set where any of its pixels
    is (as an area reduction's mean above 0 says). The mask itself when it is on that grid already: callers
    share it and never write into it."""
    h, w = shape[:2]
    big_h, big_w = mask.shape[:2]
    if (big_h, big_w) == (h, w):
        return mask
    scale = big_h // h
    if (big_h, big_w) == (h * scale, w * scale):
        # Each cell is a whole scale x scale block: the block's maximum (a dilation anchored at its corner, read
        # at every block's corner) without the float copy and the area reduction.
        block = np.ones((scale, scale), np.uint8)
        grown = cv2.dilate(np.ascontiguousarray(mask).view(np.uint8), block, anchor=(0, 0))
        return grown[::scale, ::scale] > 0
    return cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0


def _trusted(reliable: np.ndarray, window: int, excluded: np.ndarray | None = None) -> np.ndarray:
    """Where most of the ``window``-px neighbourhood had reliable flow. Where at most a quarter of that
    neighbourhood lies outside an ``excluded`` area (flow taken from around it: inside a blotch wider than the
    window, and just outside a concave one), the check only says that a blotch is there: the share is that of
    the reliable flow outside it, in a neighbourhood 3 or 9 times as wide (a blotch larger than the window was
    left to the spatial fill)."""
    trusted = cv2.blur(reliable.astype(np.float32), (window, window)) > 0.5
    if excluded is None:
        return trusted
    outside = (~excluded).astype(np.float32)
    todo = cv2.blur(outside, (window, window)) <= 0.25
    good = (reliable & ~excluded).astype(np.float32)
    for size in (3 * window, 9 * window):
        if not todo.any():
            break
        num, den = cv2.blur(good, (size, size)), cv2.blur(outside, (size, size))
        seen = todo & (den > 0.25)
        trusted[seen] = num[seen] > 0.5 * den[seen]
        todo &= ~seen
    return trusted


def _flow_x(motion: _Motion) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return lambda ys, xs: motion.at(ys, xs)[0][:, 0]


def _balance(busy: Mapping[str, float]) -> bool:
    """Whether the look-ahead thread takes the window's scratch candidates (a 720p frame's ~45 ms) from the
    detection's thread: while the detection has been the busier of the two (grainy film, where the fills
    dominate: 200 against 130 ms per 720p frame); on the real films the two are about even and it keeps
    them. Which thread computes them changes no bit: a frame's candidates depend on its luminance alone."""
    return busy["detect"] > busy["look"]


def _one_ahead(work: Callable[[int], _T], items: list[int]) -> Iterator[tuple[int, _T]]:
    """(item, work(item)) in order, work(next item) running in a worker thread while the caller uses this one.

    Both cores: the next frame's flows (DIS and their reliability check), the spike test's first look
    (``_Look``) and the copy its fill writes into are made while this frame is detected and filled (cv2 and
    numpy on large arrays release the GIL). One worker, the items in order: the flow cache sees what a sequential run
    sees, so every result is the same to the bit. The worker only adds frames at or after the current
    window's start to the shared caches."""
    if not items:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="frdm-classical") as worker:
        pending = worker.submit(work, items[0])
        for i, item in enumerate(items):
            result = pending.result()
            if i + 1 < len(items):
                pending = worker.submit(work, items[i + 1])
            yield item, result


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
