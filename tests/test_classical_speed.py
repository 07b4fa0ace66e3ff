"""The classical engine's fast paths compute exactly what the plain full-frame formulas compute."""

from __future__ import annotations

import cv2
import numpy as np

from frdm.engine.classical.detect import ScratchDetector, SpikeDetector, pixels
from frdm.engine.classical.fill import RING, _boxes, region_rings


def _frames(seed: int = 0, shape: tuple[int, int] = (96, 128)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grainy frame, two shifted noisy neighbours, and specks (bright and dark, some at the border)."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 3) * 2.0
    frame = base + rng.normal(0, 0.02, shape).astype(np.float32)
    prev = np.roll(base, 1, axis=1) + rng.normal(0, 0.02, shape).astype(np.float32)
    nxt = np.roll(base, -1, axis=0) + rng.normal(0, 0.02, shape).astype(np.float32)
    for y, x, v in ((0, 5, 0.3), (40, 0, -0.3), (95, 127, 0.2), (50, 60, 0.25), (20, 90, -0.12), (70, 30, 0.045)):
        frame[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] += v
    return frame, prev, nxt


def _dense_spikes(frame: np.ndarray, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    box = np.ones((3, 3), np.uint8)
    bright = np.minimum(frame - cv2.dilate(prev, box), frame - cv2.dilate(nxt, box))
    dark = np.minimum(cv2.erode(prev, box) - frame, cv2.erode(nxt, box) - frame)
    return np.maximum(bright, dark)


def _dense_suspects(det: SpikeDetector, frame, prev, nxt, spike) -> np.ndarray:
    box = np.ones((3, 3), np.uint8)
    bright = np.maximum(frame - cv2.dilate(prev, box), frame - cv2.dilate(nxt, box))
    dark = np.maximum(cv2.erode(prev, box) - frame, cv2.erode(nxt, box) - frame)
    near = cv2.dilate((spike > 0.5 * det.threshold).astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    found = (np.maximum(bright, dark) > det.threshold) & near
    n, labels, stats, _ = cv2.connectedComponentsWithStats(found.astype(np.uint8), connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] <= det.large_share * frame.size
    small[0] = False
    return small[labels]


def test_sparse_spikes_equal_the_full_frame_rank_order_test():
    """Exact wherever the spike exceeds exact_share of the threshold, at or below that level elsewhere: every
    comparison with the rim level and up (rim, seed, transient scratch) comes out as on the full-frame version."""
    for seed in range(4):
        frame, prev, nxt = _frames(seed)
        det = SpikeDetector(threshold=0.05)
        dense = _dense_spikes(frame, prev, nxt)
        fast = det.spikes(frame, prev, nxt)
        level = det.exact_share * det.threshold
        assert level <= 0.5 * det.threshold  # the rim test's level
        above = dense > level
        assert above.sum() >= 9  # the specks are found, at the border too
        assert np.array_equal(fast[above], dense[above])
        assert (fast[~above] <= level).all()
        # The suspects follow the full-frame formulas exactly.
        assert np.array_equal(det.suspects(frame, prev, nxt, fast), _dense_suspects(det, frame, prev, nxt, dense))


def test_scratch_candidates_keep_tall_thin_lines_only():
    """Heights and areas counted from the line's own pixels: a tall thin line is kept, a short one and a wide
    bar are not (as cv2's component statistics would decide)."""
    rng = np.random.default_rng(1)
    grey = (0.4 + rng.normal(0, 0.01, (200, 160))).astype(np.float32)
    grey[10:190, 40] += 0.2  # a scratch: tall and one pixel wide
    grey[10:60, 80] += 0.2  # too short
    grey[10:190, 110:124] += 0.2  # too wide to be a scratch
    found = ScratchDetector().candidates(grey)
    cols = np.nonzero(found.any(axis=0))[0]
    assert 40 in cols
    assert not found[:, 75:130].any()
    assert found[:, 40].sum() >= 150


def test_pixels_and_boxes_match_numpy_and_cv2():
    """pixels() gives np.nonzero's order (sums over them add up in the same order); _boxes gives the bounding
    boxes cv2's component statistics give, for components touching every border too."""
    rng = np.random.default_rng(3)
    mask = cv2.dilate((rng.random((120, 90)) > 0.98).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    mask[0, :5] = mask[-1, -7:] = mask[50:, 0] = True
    ys, xs = pixels(mask)
    want_y, want_x = np.nonzero(mask)
    assert np.array_equal(ys, want_y) and np.array_equal(xs, want_x)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    assert n > 20
    assert np.array_equal(_boxes(labels, mask, n)[1:], stats[1:, :4])


def test_region_rings_equal_the_float_dilation_with_few_and_many_labels():
    """The 16-bit ring dilation gives the float32 one's labels; past 65535 regions it falls back to float32."""
    rng = np.random.default_rng(4)
    few = cv2.dilate((rng.random((80, 100)) > 0.99).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    many = np.zeros((520, 520), bool)
    many[::2, ::2] = True  # 260 x 260 isolated pixels: more labels than 16 bits hold
    for region in (few, many):
        matte = region & (rng.random(region.shape) > 0.5)
        labels, ring, n = region_rings(region, matte)
        grown = cv2.dilate(labels.astype(np.float32), np.ones((2 * RING + 1, 2 * RING + 1), np.uint8))
        assert np.array_equal(ring, np.where(region | matte, 0, grown).astype(np.int32))
    assert n > 65536


def test_a_restore_abandoned_midway_leaves_the_next_one_exact():
    """Flows are computed one frame ahead in a worker thread and shared through the restorer's flow cache: a
    restore stopped after one frame (closing it waits for its worker) leaves flows of frames it never restored
    in the cache, and a second restore on the same restorer still gives the frames a fresh restorer gives."""
    from frdm.engine import params as P
    from frdm.engine.classical import ClassicalRestorer
    from frdm.engine.restorer import Clip

    rng = np.random.default_rng(5)
    base = 0.4 + (cv2.GaussianBlur(rng.random((72, 96)).astype(np.float32), (0, 0), 4) - 0.5) * 3.0
    frames = []
    for t in range(7):
        grey = np.roll(base, t, axis=1) + rng.normal(0, 0.01, base.shape).astype(np.float32)
        grey[10 + 7 * t : 13 + 7 * t, 20 + 5 * t : 23 + 5 * t] = 1.0  # a speck on each frame, elsewhere
        frames.append(np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2))
    clip = Clip(np.stack(frames), list(range(7)), list(range(7)))
    params = P.validate({})
    want = list(ClassicalRestorer().restore(clip, params))
    assert sum(float(r.matte.sum()) for r in want) > 0  # the specks are found
    shared = ClassicalRestorer()
    started = shared.restore(clip, params)
    next(started)
    started.close()
    got = list(shared.restore(clip, params))
    for a, b in zip(want, got):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.matte, b.matte)


def test_a_frame_returned_unchanged_leaves_no_copy_behind(monkeypatch):
    """The worker copies each target ahead for its fill to write into; a frame without defects is returned as
    it came, and its copy (a whole frame: 26 MB at 2K) must not stay held for the rest of its window."""
    from frdm.engine import params as P
    from frdm.engine.classical import ClassicalRestorer
    from frdm.engine.classical import restorer as engine
    from frdm.engine.restorer import Clip

    made: list[engine._Frames] = []
    plain_init = engine._Frames.__init__

    def init(self, *args, **kwargs):
        plain_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(engine._Frames, "__init__", init)
    rng = np.random.default_rng(6)
    base = 0.4 + (cv2.GaussianBlur(rng.random((72, 96)).astype(np.float32), (0, 0), 4) - 0.5) * 2.0
    frames = np.stack([np.repeat(np.roll(base, t, axis=1)[..., None], 3, axis=2) for t in range(5)])
    restoring = ClassicalRestorer().restore(Clip(frames, list(range(5)), list(range(5))), P.validate({}))
    for t in range(5):
        restored = next(restoring)
        assert not restored.matte.any()  # clean frames
        assert t not in made[0]._copies, f"frame {t}'s copy is still held"
    restoring.close()


def test_targets_given_out_of_order_come_back_in_increasing_order():
    """The Restorer protocol yields targets in increasing frame order, and the worker one frame ahead relies on
    it (the restore forgets what frames before the current window derived while the worker looks at the next
    target's window): targets listed out of order give the frames of an ordered run, in order."""
    from frdm.engine import params as P
    from frdm.engine.classical import ClassicalRestorer
    from frdm.engine.restorer import Clip

    rng = np.random.default_rng(7)
    base = 0.4 + (cv2.GaussianBlur(rng.random((72, 96)).astype(np.float32), (0, 0), 4) - 0.5) * 2.0
    frames = []
    for t in range(7):
        grey = np.roll(base, t, axis=1) + rng.normal(0, 0.01, base.shape).astype(np.float32)
        grey[30:33, 20 + 6 * t : 23 + 6 * t] = 1.0  # a speck on each frame, elsewhere
        frames.append(np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2))
    frames = np.stack(frames)
    params = P.validate({})
    want = list(ClassicalRestorer().restore(Clip(frames, list(range(7)), [1, 3, 5]), params))
    got = list(ClassicalRestorer().restore(Clip(frames, list(range(7)), [5, 1, 3]), params))
    assert [r.frame_number for r in got] == [1, 3, 5]
    assert sum(float(r.matte.sum()) for r in want) > 0  # the specks are found
    for a, b in zip(want, got):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.matte, b.matte)


def test_a_restore_left_unclosed_never_runs_dis_beside_the_next(monkeypatch):
    """A restore whose generator is dropped without being closed keeps its worker running on the next target;
    a second restore on the same restorer must not run the shared DIS object at the same time (the flow cache
    takes its lock around it). The estimator is slowed down so that the two workers surely meet."""
    import threading
    import time

    from frdm.engine import params as P
    from frdm.engine.classical import ClassicalRestorer, flow
    from frdm.engine.restorer import Clip

    inside, most = [0], [0]
    count = threading.Lock()
    real = flow.FlowEstimator.__call__

    def slow(self, a, b):
        with count:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.03)
        try:
            return real(self, a, b)
        finally:
            with count:
                inside[0] -= 1

    monkeypatch.setattr(flow.FlowEstimator, "__call__", slow)
    rng = np.random.default_rng(8)
    base = 0.4 + (cv2.GaussianBlur(rng.random((48, 64)).astype(np.float32), (0, 0), 4) - 0.5) * 2.0
    frames = np.stack([np.repeat(np.roll(base, t, axis=1)[..., None], 3, axis=2) for t in range(6)])
    clip = Clip(frames, list(range(6)), list(range(6)))
    params = P.validate({})
    shared = ClassicalRestorer()
    left = shared.restore(clip, params)
    next(left)  # its worker now computes frame 1's flows; the generator stays open
    list(shared.restore(clip, params))
    assert most[0] == 1, "two DIS runs on one DIS object at once"
    left.close()


def test_luminance_in_row_blocks_equals_the_one_line_formula():
    """Blocks of rows (and a last, shorter block) give the bits of the whole-frame formula."""
    from frdm.engine.classical import flow

    rng = np.random.default_rng(8)
    rgb = rng.random((flow.LUMA_ROWS * 2 + 5, 37, 3)).astype(np.float32) * 1.5 - 0.2
    plain = (rgb[..., 0] * 0.2126 + rgb[..., 1] * 0.7152 + rgb[..., 2] * 0.0722).astype(np.float32)
    assert np.array_equal(flow.luminance(rgb), plain)


def test_match_to_a_reference_equals_the_plain_match():
    """A frame's brightness Reference, made once and used for several neighbours, gives what reducing the frame
    and its valid pixels for each neighbour gives; at full resolution (factor 1) and on a reduced grid."""
    from frdm.engine.classical import brightness as B

    rng = np.random.default_rng(9)
    for shape in ((96, 120), (400, 530)):
        frame = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 5)
        valid = rng.random(shape) > 0.2
        ref = B.Reference(frame, valid)
        for _ in range(2):
            other = frame * 1.3 - 0.1 + rng.normal(0, 0.01, shape).astype(np.float32)
            plain = B.match(frame, other, 0.05, valid)
            assert np.array_equal(B.match(ref, other, 0.05), plain)
            assert not np.array_equal(plain, other)
        assert np.array_equal(B.match(B.Reference(frame), other, 0.05), B.match(frame, other, 0.05))


def _smooth_flow(rng: np.random.Generator, shape: tuple[int, int], amount: float) -> np.ndarray:
    flow = cv2.GaussianBlur(rng.normal(0, 1, (*shape, 2)).astype(np.float32), (0, 0), 3) * amount
    return np.ascontiguousarray(flow)


def test_rewarp_of_the_changed_boxes_equals_a_fresh_warp():
    """Where a reduced flow changed in a few places, enlarging it and re-warping only the boxes
    ``_changed_boxes`` names gives the warp of the whole new flow, bit for bit: on exact and inexact size
    ratios, at full resolution (scale 1), for changes at the borders, and with nothing changed."""
    from frdm.engine.classical import restorer as R
    from frdm.engine.classical.flow import rewarp, warp

    rng = np.random.default_rng(10)
    for small_shape, shape in (((48, 64), (192, 256)), ((37, 51), (150, 205)), ((60, 80), (60, 80))):
        image = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 2)
        before = _smooth_flow(rng, small_shape, 20.0)
        after = before.copy()
        h, w = small_shape
        for y, x in ((0, 0), (h - 1, w - 1), (h // 2, 3), (5, w // 2)):
            after[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] += rng.normal(0, 3, 2).astype(np.float32)
        for new in (after, before.copy()):
            old_full, new_full = R._enlarge(before, shape), R._enlarge(new, shape)
            warped = warp(image, old_full)
            boxes = R._changed_boxes(before, new, shape)
            rewarp(image, new_full, warped, boxes)
            assert np.array_equal(warped, warp(image, new_full))
            covered = np.zeros(shape, bool)
            for y0, y1, x0, x1 in boxes:
                covered[y0:y1, x0:x1] = True
            assert covered.mean() < 0.5  # only where the flow changed, not the whole frame
            if new is not after:
                assert boxes == []


def test_the_second_look_equals_warping_the_excluded_flow_anew():
    """_Look.again (the warps of the first look redone only where excluding the suspects changed the flow)
    gives the neighbours warped and brightness-matched from scratch with the new flow."""
    from frdm.engine.classical import restorer as R
    from frdm.engine.classical.brightness import match
    from frdm.engine.classical.detect import SpikeDetector
    from frdm.engine.classical.flow import FlowEstimator, flow_input, warp

    rng = np.random.default_rng(11)
    shape = (300, 400)
    base = 0.4 + (cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 4) - 0.5) * 3.0
    frames = []
    for t in range(3):
        grey = np.roll(base, 2 * t, axis=1) + rng.normal(0, 0.01, shape).astype(np.float32)
        frames.append(np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2))
    frames[1][100:130, 150:185] = 0.95  # a blotch the flow would follow
    frames[1][20:23, 40:43] = 0.0
    data = R._Frames(np.stack(frames), 2, None)
    dis = FlowEstimator()
    small = {i: flow_input(data.small(i)) for i in range(3)}
    motion = {k: R._Motion(dis(small[1], small[k]), dis(small[k], small[1]), 1.0, 2) for k in (0, 2)}
    spikes = SpikeDetector()
    look = R._Look(data, 1, 0, 2, motion, spikes, shape)
    assert look.suspect.any()
    got = look.again(data, motion, shape)
    for k, warped in zip((0, 2), got):
        plain = match(data.grey(1), warp(data.grey(k), motion[k].full(shape)), spikes.threshold, look.trusted)
        assert np.array_equal(warped, plain)


def _plain_fill_unreliable(flow: np.ndarray, reliable: np.ndarray, sigma: float = 6.0) -> np.ndarray:
    from frdm.engine.classical.flow import _smooth

    out, reliable = flow.copy(), reliable.copy()
    for s in (sigma, sigma * 4, sigma * 16):
        weight = reliable.astype(np.float32)
        num = _smooth(out * weight[..., None], s)
        den = _smooth(weight, s)[..., None]
        todo = (~reliable) & (den[..., 0] > 1e-3)
        out[todo] = (num / np.maximum(den, 1e-6))[todo]
        reliable |= todo
        if reliable.all():
            break
    return out


def test_fill_unreliable_divides_at_the_holes_only_with_the_same_result():
    """Holes small and large (filled at the first, second or third scale) get the quotients the whole-grid
    division gives."""
    from frdm.engine.classical.flow import fill_unreliable

    rng = np.random.default_rng(12)
    flow = _smooth_flow(rng, (120, 160), 5.0)
    reliable = rng.random((120, 160)) > 0.3
    reliable[20:100, 30:140] = False  # wide enough to need the larger scales
    got = fill_unreliable(flow, reliable)
    assert np.array_equal(got, _plain_fill_unreliable(flow, reliable))
    assert not np.array_equal(got, flow)


def test_a_neighbours_flow_is_filled_only_when_read(monkeypatch):
    """A neighbour's unreliable flow is filled when first read; one whose flow is taken from around the
    defects before anything reads it is filled once (not once before and once after), with the same result
    as filling it in that order."""
    from frdm.engine.classical import restorer as R

    calls = []
    plain = R.fill_unreliable
    monkeypatch.setattr(R, "fill_unreliable", lambda f, r: calls.append(1) or plain(f, r))
    rng = np.random.default_rng(13)
    forward = _smooth_flow(rng, (48, 64), 4.0)
    backward = -forward + rng.normal(0, 0.3, forward.shape).astype(np.float32)
    defects = np.zeros((96, 128), bool)
    defects[30:40, 50:70] = True
    lazy = R._Motion(forward, backward, 1.0, 2)
    assert calls == []
    lazy.exclude(R._on_grid(defects, forward.shape))
    got = lazy.flow
    assert len(calls) == 1
    eager = R._Motion(forward, backward, 1.0, 2)
    first = eager.flow
    eager.exclude(R._on_grid(defects, forward.shape))
    assert np.array_equal(got, eager.flow) and not np.array_equal(got, first)


def test_pixels_of_a_label_image_equal_numpy_nonzero():
    """pixels() on int32 labels (made bool first) gives np.nonzero's pixels in np.nonzero's order."""
    rng = np.random.default_rng(14)
    mask = cv2.dilate((rng.random((90, 130)) > 0.99).astype(np.uint8), np.ones((3, 3), np.uint8))
    _, labels = cv2.connectedComponents(mask, connectivity=8)
    labels[0, 0], labels[-1, -1] = 7, -3  # the corners, and a negative value
    ys, xs = pixels(labels)
    want = np.nonzero(labels)
    assert np.array_equal(ys, want[0]) and np.array_equal(xs, want[1]) and len(ys) > 50


def test_warp_in_row_blocks_equals_one_remap_of_the_whole_frame():
    """warp() remaps a block of rows at a time (a last, shorter block too), for one- and two-channel images."""
    from frdm.engine.classical import flow as F

    rng = np.random.default_rng(15)
    h, w = F.WARP_ROWS * 2 + 7, 90
    motion = _smooth_flow(rng, (h, w), 15.0)
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), axis=2)
    for image in (rng.random((h, w)).astype(np.float32), rng.random((h, w, 2)).astype(np.float32)):
        plain = cv2.remap(image, motion + grid, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        assert np.array_equal(F.warp(image, motion), plain)


def test_scratch_candidates_of_a_tall_frame_equal_the_reduced_rows_repeated():
    """A frame taller than ~400 rows is searched on a copy of averaged rows; each found row goes back onto the
    rows it averaged and the last onto the rows left over (h not a multiple of the rows averaged)."""
    rng = np.random.default_rng(16)
    h, w = 1001, 120
    grey = (0.4 + rng.normal(0, 0.01, (h, w))).astype(np.float32)
    grey[50:950, 60] += 0.2
    det = ScratchDetector()
    rows = h // 384
    found = det._candidates(cv2.resize(grey, (w, h // rows), interpolation=cv2.INTER_AREA))
    want = np.repeat(found, rows, axis=0)
    want = np.concatenate([want, np.repeat(want[-1:], h - want.shape[0], axis=0)])
    got = det.candidates(grey)
    assert np.array_equal(got, want) and got[:, 60].sum() > 800 and h % rows


def test_a_mask_on_the_flows_grid_equals_its_area_mean_above_zero():
    """_on_grid: a reduced pixel is set when any pixel of its block is, as cv2's area reduction says; for sizes
    a whole number of blocks (the corner dilation) and others (the area reduction itself); a mask on the grid
    already is that mask."""
    from frdm.engine.classical import restorer as R

    rng = np.random.default_rng(17)
    for small, shape in (((24, 32), (96, 128)), ((20, 30), (60, 90)), ((25, 33), (51, 67))):
        mask = rng.random(shape) > 0.97
        mask[0, 0] = mask[-1, -1] = True
        want = cv2.resize(mask.astype(np.float32), small[::-1], interpolation=cv2.INTER_AREA) > 0
        got = R._on_grid(mask, small)
        assert got.shape == small and np.array_equal(got, want) and 0 < got.mean() < 1
        assert R._on_grid(got, small) is got


def test_excluding_one_grid_from_every_neighbour_leaves_that_grid_as_it_was():
    """_fill gives every neighbour the same defects on the flow's grid (and _on_grid returns a mask on the grid
    as it is): a neighbour whose flow was already taken from around other specks joins them into a new mask,
    not into the one the next neighbour is given, and both end with the same flow as if each had its own copy."""
    from frdm.engine.classical import restorer as R

    rng = np.random.default_rng(18)
    forward = _smooth_flow(rng, (48, 64), 4.0)
    backward = -forward + rng.normal(0, 0.3, forward.shape).astype(np.float32)
    earlier = np.zeros((48, 64), bool)
    earlier[5:12, 5:12] = True
    defects = np.zeros((48, 64), bool)
    defects[30:40, 40:55] = True
    grid = defects.copy()
    seen, fresh = R._Motion(forward, backward, 1.0, 2), R._Motion(forward, backward, 1.0, 2)
    seen.exclude(earlier)
    for motion in (seen, fresh):
        motion.exclude(grid)
    assert np.array_equal(grid, defects)
    alone = R._Motion(forward, backward, 1.0, 2)
    alone.exclude(defects.copy())
    assert np.array_equal(fresh.flow, alone.flow) and np.array_equal(fresh.trusted, alone.trusted)
    assert seen._excluded[5:12, 5:12].all() and seen._excluded[30:40, 40:55].all()


def test_suspects_and_ranges_over_whole_rows_equal_the_gathered_pixels(monkeypatch):
    """Both forms of the suspects' test and of the spikes (gathered pixels, whole rows when many pixels ask) and
    of the 3x3 ranges (nine gathers, a whole-frame dilation when many pixels ask) give the full-frame formulas'
    bits, at the border too, on grainy frames where near covers most of the frame and on sparse ones."""
    from frdm.engine.classical import detect

    box = np.ones((3, 3), np.uint8)
    rng = np.random.default_rng(5)
    for seed, grain in ((0, 0.0), (1, 0.05)):
        frame, prev, nxt = _frames(seed)
        frame = frame + rng.normal(0, grain, frame.shape).astype(np.float32)  # grain: spikes everywhere
        det = SpikeDetector(threshold=0.05)
        spike = _dense_spikes(frame, prev, nxt)
        want = _dense_suspects(det, frame, prev, nxt, spike)
        ys, xs = pixels(rng.random(frame.shape) < 0.3)
        spikes = []
        for dense in (2.0, 0.0):  # never, always
            monkeypatch.setattr(detect, "NEAR_DENSE", dense)
            monkeypatch.setattr(detect, "RANGE_DENSE", dense)
            monkeypatch.setattr(detect, "SPIKES_DENSE", dense)
            assert np.array_equal(det.suspects(frame, prev, nxt, spike), want)
            spikes.append(det.spikes(frame, prev, nxt))
            hi, lo = detect._range_at(prev, ys, xs)
            assert np.array_equal(hi, cv2.dilate(prev, box)[ys, xs]) and np.array_equal(
                lo, cv2.erode(prev, box)[ys, xs]
            )
        assert want.any()
        # spikes(): both forms the same bits (signs of zero too), the full-frame rank test's above its exact level.
        assert np.array_equal(spikes[0], spikes[1]) and np.array_equal(np.signbit(spikes[0]), np.signbit(spikes[1]))
        above = spike > det.exact_share * det.threshold
        assert above.any() and np.array_equal(spikes[1][above], spike[above])


def test_median_equals_numpys_to_the_bit():
    """fill._median: float(np.median(v)) for odd and even lengths, ties, float64 and -0.0 (np.mean's sum starts
    at +0.0) and NaN."""
    from frdm.engine.classical.fill import _median

    rng = np.random.default_rng(6)
    cases = [np.array([-0.0], np.float32), np.array([-0.0, -0.0], np.float32), np.array([1.0, np.nan], np.float32)]
    for n in range(1, 40):
        cases.append(rng.normal(0, 0.02, n).astype(np.float32))
        cases.append(-np.abs(np.round(rng.normal(0, 1, n))).astype(np.float32))  # ties and -0.0
        cases.append(rng.normal(0, 1, 7 * n))
    for values in cases:
        want, got = float(np.median(values)), _median(values)
        assert (np.isnan(want) and np.isnan(got)) or (want == got and np.signbit(want) == np.signbit(got)), values


def test_a_flow_changed_nearly_everywhere_is_rewarped_as_whole_rows(monkeypatch):
    """When the changed boxes would hold most of the frame (grainy film), ``_changed_boxes`` gives the frame's
    rows in warp's blocks instead, and re-warping them gives the fresh warp's bits, as the boxes themselves do."""
    from frdm.engine.classical import restorer as R
    from frdm.engine.classical.flow import rewarp, row_blocks, warp

    rng = np.random.default_rng(12)
    small_shape, shape = (48, 64), (192, 256)
    image = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 2)
    before = _smooth_flow(rng, small_shape, 20.0)
    after = before.copy()
    after[::6, ::6] += 0.5  # a change in every tile
    boxes = R._changed_boxes(before, after, shape)
    assert boxes == row_blocks(*shape)
    warped = warp(image, R._enlarge(before, shape))
    rewarp(image, R._enlarge(after, shape), warped, boxes)
    assert np.array_equal(warped, warp(image, R._enlarge(after, shape)))
    # The boxes the switch replaces (never whole rows): the same bits, so the switch changes none.
    monkeypatch.setattr(R, "CHANGED_WHOLE", float("inf"))
    sparse = R._changed_boxes(before, after, shape)
    assert sparse != boxes and sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in sparse) > 0.6 * shape[0] * shape[1]
    by_boxes = warp(image, R._enlarge(before, shape))
    rewarp(image, R._enlarge(after, shape), by_boxes, sparse)
    assert np.array_equal(by_boxes, warped)


def _panning_scratch_shot(seed: int, count: int) -> np.ndarray:
    """A textured picture panning 1 px a frame, a line scratch that stays put, and a speck on each frame,
    elsewhere: (count, 96, 128, 3) float32."""
    rng = np.random.default_rng(seed)
    base = 0.4 + (cv2.GaussianBlur(rng.random((96, 128)).astype(np.float32), (0, 0), 4) - 0.5) * 3.0
    frames = []
    for t in range(count):
        grey = np.roll(base, t, axis=1) + rng.normal(0, 0.01, base.shape).astype(np.float32)
        grey[:, 64] += 0.25  # a line scratch that stays put while the picture moves
        grey[10 + 7 * t : 13 + 7 * t, 20 + 5 * t : 23 + 5 * t] = 1.0  # a speck on each frame, elsewhere
        frames.append(np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2))
    return np.stack(frames)


def test_the_scratch_candidates_give_the_same_frames_in_either_thread(monkeypatch):
    """The look-ahead thread takes the window's scratch candidates while the detection's thread is the busier
    (``_balance``): whichever thread computes them, every frame and matte comes out the same, a scratch and
    specks found."""
    from frdm.engine import params as P
    from frdm.engine.classical import restorer as R
    from frdm.engine.restorer import Clip

    clip = Clip(_panning_scratch_shot(15, 7), list(range(7)), list(range(7)))
    params = P.validate({})
    runs = []
    for worker_takes in (False, True):
        asked = []
        monkeypatch.setattr(R, "_balance", lambda busy, w=worker_takes, a=asked: a.append(dict(busy)) or w)
        runs.append(list(R.ClassicalRestorer().restore(clip, params)))
        assert len(asked) == 7 and asked[-1]["detect"] > 0.0 and asked[-1]["look"] > 0.0
    for a, b in zip(*runs):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.matte, b.matte)
    assert all(r.matte[:, 64].mean() > 0.5 for r in runs[0])  # the scratch
    assert sum(float(r.matte.sum()) for r in runs[0]) > 7 * 9 + 7 * 96


def test_the_restored_frames_do_not_depend_on_cv2s_thread_count():
    """A process running the engine sets cv2's pool to the cores its two threads leave (``cv2_threads``): every frame
    and matte (DIS flows, filters, labelling, inpainting) comes out the same with 1 and with 4 cv2 threads."""
    from frdm.engine import params as P
    from frdm.engine.classical import restorer as R
    from frdm.engine.restorer import Clip

    assert [R.cv2_threads(n) for n in (1, 2, 3, 16)] == [1, 1, 1, 14]
    rng = np.random.default_rng(16)
    base = 0.4 + (cv2.GaussianBlur(rng.random((240, 320)).astype(np.float32), (0, 0), 4) - 0.5) * 3.0
    frames = []
    for t in range(5):
        grey = np.roll(base, 2 * t, axis=1) + rng.normal(0, 0.02, base.shape).astype(np.float32)
        grey[:, 150] += 0.25
        for y, x in rng.integers(10, 230, (12, 2)):
            grey[y : y + 3 + t, x : x + 4] = 1.0 if (y + x) % 2 else 0.0  # specks and blotches
        frames.append(np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2))
    clip = Clip(np.stack(frames), list(range(5)), list(range(5)))
    runs = []
    try:
        for threads in (1, 4):
            restorer = R.ClassicalRestorer()
            cv2.setNumThreads(threads)
            runs.append(list(restorer.restore(clip, P.validate({}))))
    finally:
        cv2.setNumThreads(R.cv2_threads(R._cores()))
    for a, b in zip(*runs):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.matte, b.matte)
    assert sum(float(r.matte.sum()) for r in runs[0]) > 100


def test_the_repeated_frame_test_is_made_once_per_pair_with_either_order():
    """_Frames.duplicate asks ``_duplicate`` once per pair of frames, in either order the same answer as the
    plain test gives for both orders: for a repeated frame (compression noise only), a still scene with new
    dust and a moving one."""
    from frdm.engine.classical import restorer as R

    rng = np.random.default_rng(17)
    a = cv2.GaussianBlur(rng.random((64, 80)).astype(np.float32), (0, 0), 3)
    repeat = a + rng.normal(0, 0.0005, a.shape).astype(np.float32)
    dusty = a.copy()
    dusty[10:13, 20:23] = 1.0
    moved = np.roll(a, 3, axis=1)
    frames = np.stack([np.repeat(x[..., None], 3, axis=2) for x in (a, repeat, dusty, moved)])
    data = R._Frames(frames, 1, None)
    asked = []
    plain = R._duplicate
    try:
        R._duplicate = lambda x, y: asked.append(1) or plain(x, y)
        for i in range(4):
            for j in range(4):
                if i != j:
                    grey_i, grey_j = data.grey(i), data.grey(j)
                    assert data.duplicate(i, j) == plain(grey_i, grey_j) == plain(grey_j, grey_i)
    finally:
        R._duplicate = plain
    assert len(asked) == 6  # once per pair
    assert data.duplicate(0, 1) and not data.duplicate(0, 2) and not data.duplicate(0, 3)
    data.forget_before(1)
    assert all(i >= 1 for i, _ in data._same)


def test_cv2s_pool_counts_the_cores_cv2_may_use_and_keeps_a_users_count(monkeypatch):
    """The cores the engine's threads leave to cv2 are those cv2 itself counts (``cv2.getNumberOfCPUs``: the
    process's affinity and a container's CPU quota, cgroups v1 and v2): a container limited to 3 CPUs of a
    64-core host gets 1 cv2 thread, not 62 (the affinity alone lists all 64). A count the user set for OpenCV
    (OPENCV_FOR_THREADS_NUM) is kept, as ``tune_malloc`` keeps a user's malloc settings."""
    from frdm.engine.classical import restorer as R

    before = cv2.getNumThreads()
    try:
        monkeypatch.setattr(R.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
        monkeypatch.setattr(R.os, "cpu_count", lambda: 64)
        monkeypatch.setattr(cv2, "getNumberOfCPUs", lambda: 3)
        monkeypatch.delenv("OPENCV_FOR_THREADS_NUM", raising=False)
        assert R.tune_cv2_threads() == 1 and cv2.getNumThreads() == 1
        cv2.setNumThreads(5)
        monkeypatch.setenv("OPENCV_FOR_THREADS_NUM", "5")
        assert R.tune_cv2_threads() == 5, "the user's OPENCV_FOR_THREADS_NUM was overridden"
        cv2.setNumThreads(3)
        R.ClassicalRestorer()  # a constructor leaves the process's pool alone (the diffusion engine makes many)
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


def test_std_equals_numpys_to_the_bit():
    """``fill._std`` gives np.std's float32 value exactly, on lengths odd and even, small and large."""
    from frdm.engine.classical.fill import _std

    rng = np.random.default_rng(21)
    for n in (1, 2, 3, 7, 8, 129, 1000, 4097):
        for scale in (1e-3, 0.05, 3.0):
            values = (rng.standard_t(3, n) * scale + rng.normal() * 5 * scale).astype(np.float32)
            assert _std(values) == float(values.std())


def _gated_fill_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grainy frame, regions of many sizes (some touching the frame's edge, one beside a black gate) and
    the gate: what ``spatial_fill`` inpaints."""
    rng = np.random.default_rng(seed)
    shape = (120, 160)
    grey = 0.5 + (cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 3) - 0.5) * 2.0
    image = np.clip(grey[..., None] + rng.normal(0, 0.03, shape + (3,)), 0, 1).astype(np.float32)
    image[:, :6] = 0.01  # a black gate at the left
    region = np.zeros(shape, bool)
    for y, x, r in ((20, 40, 1), (60, 80, 4), (0, 100, 2), (118, 150, 3), (90, 30, 6), (40, 9, 2), (70, 140, 9)):
        region[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = True
    border = np.zeros(shape, bool)
    border[:, :7] = True
    return image, region, border


def test_spatial_fill_on_the_crop_telea_reads_equals_the_whole_crop(monkeypatch):
    """A region is inpainted on a crop of radius + INPAINT_REACH px around it (the gate near: on the whole
    crop): the same bits as on the crop of 2 * radius + 2 px the grain patch is taken around."""
    from frdm.engine.classical import fill as F

    for seed in range(3):
        image, region, border = _gated_fill_case(seed)
        matte = region.copy()
        narrow = F.spatial_fill(image, region, matte, border=border)
        monkeypatch.setattr(F, "INPAINT_REACH", 5 + 2)  # radius + 7: the whole crop, as before
        whole = F.spatial_fill(image, region, matte, border=border)
        monkeypatch.undo()
        assert np.array_equal(narrow, whole)
        assert not np.array_equal(narrow[region], image[region])


def test_a_blocks_context_frames_take_their_scratch_candidates_from_the_block_before(monkeypatch):
    """Restored in two blocks that share context frames (as frdm restore and the server send them), the
    second block's shared frames are not searched for scratch candidates again, and every frame is the one a
    fresh restorer gives."""
    from frdm.engine import params as P
    from frdm.engine.classical import restorer as R
    from frdm.engine.restorer import Clip

    frames = _panning_scratch_shot(16, 10)
    params = P.validate({})
    radius = int(params["temporal_radius"])
    want = list(R.ClassicalRestorer().restore(Clip(frames, list(range(10)), list(range(10))), params))
    searched = []
    search = R.ScratchDetector.candidates
    monkeypatch.setattr(R.ScratchDetector, "candidates", lambda self, grey: searched.append(1) or search(self, grey))
    shared = R.ClassicalRestorer()
    # Targets 0-4 with frames 0-4 + radius, then targets 5-9 with frames 5 - radius .. 9.
    first = list(shared.restore(Clip(frames[: 5 + radius], list(range(5 + radius)), list(range(5))), params))
    start = 5 - radius
    second = list(shared.restore(Clip(frames[start:], list(range(start, 10)), list(range(5, 10))), params))
    assert len(searched) == 10  # each frame once: the 2 * radius frames both blocks hold were not searched again
    for a, b in zip(want, first + second):
        assert a.frame_number == b.frame_number
        assert np.array_equal(a.image, b.image) and np.array_equal(a.matte, b.matte)
    assert all(r.matte[:, 64].mean() > 0.5 for r in want)  # the scratch
