"""The classical detect-then-restore engine on shots with known dust, scratches and motion."""

from __future__ import annotations

import numpy as np
import pytest

from frdm.engine import params as P
from frdm.engine.classical import ClassicalRestorer
from frdm.engine.frames import Frame, MemorySource
from frdm.engine.pipeline import MATTE_CHANNEL, restore_frames
from frdm.engine.restorer import Clip

from synthetic import (
    add_dust,
    add_flicker,
    add_grain,
    add_moving_disc,
    add_scratch,
    detection_scores,
    highpass,
    masked_psnr,
    pan_clip,
    still_from_movie,
)

FRAMES = 11
TARGETS = list(range(2, FRAMES - 2))  # frames with full temporal context on both sides


def _source(frames: np.ndarray) -> MemorySource:
    h, w = frames.shape[1:3]
    return MemorySource(
        {
            n: Frame(f, ("R", "G", "B"), ("float",) * 3, (0, 0, w, h), (0, 0, w, h), {}, 0, f"f{n}")
            for n, f in enumerate(frames)
        }
    )


@pytest.fixture(scope="module")
def shot(shared_data):
    still = still_from_movie(shared_data / "clean" / "bigbuckbunny.mp4", index=60, width=360)
    clean = pan_clip(still, FRAMES, (256, 160), speed=(2.5, 0.75))
    clean, actor = add_moving_disc(clean, speed=7.0)
    rng = np.random.default_rng(3)
    dusty, dust = add_dust(clean, rng, per_frame=7)
    degraded, scratch = add_scratch(dusty, x=170, width=2)
    return clean, degraded, dust | scratch, actor


@pytest.fixture(scope="module")
def restored(shot):
    """Pipeline output (blended with the auto matte): {frame: (rgb, matte)}."""
    _, degraded, _, _ = shot
    out = restore_frames(_source(degraded), TARGETS, P.validate({}), ClassicalRestorer())
    return {n: (f.pixels[..., :3], f.pixels[..., f.channels.index(MATTE_CHANNEL)]) for n, f in out}


def test_detection_precision_and_recall(shot, restored):
    _, _, truth, _ = shot
    det = np.stack([restored[t][1] > 0.5 for t in TARGETS])
    precision, recall = detection_scores(det, truth[TARGETS])
    assert recall >= 0.9, f"recall {recall:.3f}"
    assert precision >= 0.8, f"precision {precision:.3f}"


def test_masked_psnr_improves_and_clean_pixels_stay(shot, restored):
    clean, degraded, truth, _ = shot
    out = np.stack([restored[t][0] for t in TARGETS])
    before = masked_psnr(degraded[TARGETS], clean[TARGETS], truth[TARGETS])
    after = masked_psnr(out, clean[TARGETS], truth[TARGETS])
    assert after > before + 6.0, f"MaskedPSNR {before:.2f} -> {after:.2f} dB"
    outside = ~truth[TARGETS]
    change = np.abs(out - degraded[TARGETS]).max(axis=-1)[outside].mean()
    assert change < 1.0 / 255.0, f"mean change outside defects {change * 255:.3f}/255"


def test_the_change_stays_within_a_few_pixels_of_the_matte(shot, restored):
    """Issue 11: keep the fill as tight as the defect plus a small halo. A defect's halo ends ~2 px outside the
    matte on real film; the output may change up to the feathered matte's edge (4 px with the default knobs),
    and nowhere further (a 6 px fill margin made the changed area ~8x the matte for small specks)."""
    import cv2

    _, degraded, _, _ = shot
    reach = []
    for t in TARGETS:
        rgb, matte = restored[t]
        changed = (rgb != degraded[t]).any(axis=-1)
        distance = cv2.distanceTransform((matte <= 0).astype(np.uint8), cv2.DIST_L2, 5)
        reach.append(float(distance[changed].max()) if changed.any() else 0.0)
        assert changed.sum() < 4 * (matte > 0).sum(), (
            f"frame {t}: {changed.sum()} px changed for a matte of {(matte > 0).sum()} (5x with a 6 px margin)"
        )
    assert max(reach) <= 4.5, f"changed pixels up to {max(reach):.1f} px from the matte"


def test_fast_moving_actor_stays_intact(shot, restored):
    _, degraded, truth, actor = shot
    body = np.stack([actor[t] & ~truth[t] for t in TARGETS])
    out = np.stack([restored[t][0] for t in TARGETS])
    change = np.abs(out - degraded[TARGETS]).max(axis=-1)[body]
    assert change.mean() < 0.02, f"actor changed by {change.mean():.3f} on average"


def test_chunked_run_equals_whole_run(shot):
    """The farm's promise: frames restored in chunks, each with its context, equal a whole-range run."""
    _, degraded, _, _ = shot
    source = _source(degraded)
    params = P.validate({})
    whole = dict(restore_frames(source, list(range(FRAMES)), params, ClassicalRestorer()))
    chunks = {}
    for chunk in ([0, 1, 2, 3], [4, 5, 6], [7, 8, 9, 10]):
        chunks.update(dict(restore_frames(source, chunk, params, ClassicalRestorer())))
    for n in range(FRAMES):
        assert np.array_equal(whole[n].pixels, chunks[n].pixels), f"frame {n} differs between chunked and whole runs"


def test_scratch_detector_ignores_moving_vertical_edges(shot):
    """A thin vertical line that moves with the picture (content) is not a persistent scratch."""
    from frdm.engine.classical import ScratchDetector
    from frdm.engine.classical.flow import luminance

    clean, _, _, _ = shot
    moving = clean.copy()
    for t in range(FRAMES):
        moving[t][:, 40 + 6 * t : 42 + 6 * t] = 0.02  # a thin dark pole passing by fast
    det = ScratchDetector()
    cands = [det.candidates(luminance(f)) for f in moving]
    middle = FRAMES // 2
    assert cands[middle][:, 40 + 6 * middle].any(), "the pole should look like a line in one frame"
    assert not det(cands, middle)[:, 40 + 6 * middle].any(), "but not like a persistent scratch"


@pytest.mark.slow
def test_large_frames_take_their_flow_on_a_reduced_copy_and_still_detect(shared_data):
    """Large frames get their flow on a reduced copy (the 2K speed path); detection must hold there too."""
    from frdm.engine.classical import restorer as classical

    still = still_from_movie(shared_data / "clean" / "bigbuckbunny.mp4", index=60, width=1600)
    clean = pan_clip(still, 5, (1400, 800), speed=(5.0, 1.5))
    assert int(np.ceil(1400 / classical.FLOW_MAX_SIDE)) > 1
    clean, actor = add_moving_disc(clean, speed=20.0, radius=30)
    degraded, truth = add_dust(clean, np.random.default_rng(5), per_frame=30)
    out = list(ClassicalRestorer().restore(Clip(degraded, list(range(5)), [2]), P.validate({})))[0]
    precision, recall = detection_scores(out.matte > 0.5, truth[2])
    assert recall >= 0.9 and precision >= 0.8, (precision, recall)
    assert masked_psnr(out.image, clean[2], truth[2]) > masked_psnr(degraded[2], clean[2], truth[2]) + 10
    assert np.abs(out.image - degraded[2]).max(-1)[actor[2] & ~truth[2]].mean() < 0.02


@pytest.fixture(scope="module")
def flicker_shot(shared_data):
    """A pan with strong flicker (global gain +-30% frame to frame, a +-15% smooth local field) and sparse dust."""
    still = still_from_movie(shared_data / "clean" / "bigbuckbunny.mp4", index=60, width=360)
    clean = pan_clip(still, 9, (256, 160), speed=(2.5, 0.75)) * 0.8
    rng = np.random.default_rng(11)
    flickering, gains = add_flicker(clean, rng)
    degraded, dust = add_dust(flickering, rng, per_frame=5)
    return flickering, degraded, dust, gains


def test_strong_flicker_is_not_taken_for_dirt(flicker_shot):
    """Neighbours are matched to the frame's local brightness before the spike test: a +-30% flicker must not
    turn regions into "defects" (the released engine covered up to 42% of a real flickering frame)."""
    _, degraded, dust, gains = flicker_shot
    assert np.abs(np.diff(gains)).max() > 0.25
    targets = list(range(2, 7))
    out = list(ClassicalRestorer().restore(Clip(degraded, list(range(9)), targets), P.validate({})))
    det = np.stack([r.matte > 0.5 for r in out])
    assert det.reshape(len(targets), -1).mean(axis=1).max() < 0.01, "matte covers >= 1% of a frame"
    _, recall = detection_scores(det, dust[targets])
    assert recall >= 0.9, f"recall {recall:.3f}"


def test_deflicker_is_opt_in_and_steadies_brightness(flicker_shot):
    flickering, degraded, _, _ = flicker_shot
    targets = list(range(2, 7))
    source = _source(degraded)
    plain = dict(restore_frames(source, targets, P.validate({}), ClassicalRestorer()))
    steady = dict(restore_frames(source, targets, P.validate({"deflicker": 1.0}), ClassicalRestorer()))

    def swing(frames: dict) -> float:
        means = np.array([frames[t].pixels[..., :3].mean() for t in targets])
        return float(np.abs(np.diff(means)).mean())

    assert swing(steady) < 0.6 * swing(plain), (swing(plain), swing(steady))
    # Off by default: away from the matte (beyond its grow and feather) the frame is the source, bit for bit.
    import cv2

    for t in targets:
        near = cv2.dilate((plain[t].pixels[..., 3] > 0).astype(np.uint8), np.ones((21, 21), np.uint8)) > 0
        assert np.array_equal(plain[t].pixels[..., :3][~near], degraded[t][~near])
        assert not np.array_equal(steady[t].pixels[..., :3][~near], degraded[t][~near])


def _regions(mask: np.ndarray) -> list[np.ndarray]:
    import cv2

    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [labels == i for i in range(1, n)]


def test_fills_on_grainy_footage_match_brightness_and_grain(shared_data):
    """Issue 11's bounds: on a grainy, flickering, soft picture (a sky, a wall), 90% of filled defects within
    2/255 of the true brightness and with >= 0.7 of the true grain.

    Each region is a defect grown by the blend's default matte_grow (2 px: what the output replaces at full
    weight), its fill's mean luma compared with the grain-free truth's there, its grain (high-pass std) with the
    grainy truth's. Grain averages differently over a region in each frame, so even a perfect fill (the picture
    with another frame's grain) is off by the grain's mean over the region; the test first checks that such a
    fill meets the bounds at these region sizes, so the bounds measure the engine, not the grain's luck."""
    import cv2

    still = cv2.GaussianBlur(
        still_from_movie(shared_data / "clean" / "bigbuckbunny.mp4", index=60, width=360), (0, 0), 5
    )
    rng = np.random.default_rng(21)
    smooth, _ = add_flicker(pan_clip(still, 9, (256, 160), speed=(2.0, 0.5)), rng, swing=0.2, local=0.05)
    truth = add_grain(smooth, rng, strength=0.015)
    other_grain = add_grain(smooth, np.random.default_rng(99), strength=0.015)
    degraded, dust = add_dust(truth, rng, per_frame=6)
    targets = list(range(2, 7))
    out = list(ClassicalRestorer().restore(Clip(degraded, list(range(9)), targets), P.validate({})))
    grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    steps, ratios, ideal = [], [], []
    for t, restored in zip(targets, out):
        luma, true_luma = restored.image.mean(-1), smooth[t].mean(-1)
        hp_got, hp_true = highpass(luma), highpass(truth[t].mean(-1))
        for defect in _regions(dust[t]):
            if defect.sum() < 20 or restored.matte[defect].mean() < 0.5:  # detection is tested elsewhere
                continue
            region = cv2.dilate(defect.astype(np.uint8), grow) > 0
            steps.append(abs(luma[region].mean() - true_luma[region].mean()))
            ratios.append(hp_got[region].std() / max(hp_true[region].std(), 1e-6))
            ideal.append(abs(other_grain[t].mean(-1)[region].mean() - true_luma[region].mean()))
    steps, ratios, ideal = np.array(steps) * 255, np.array(ratios), np.array(ideal) * 255
    assert len(steps) >= 18
    assert np.mean(ideal <= 2) >= 0.95, f"the measurement is unfair to a perfect fill: {np.sort(ideal).round(1)}"
    detail = f"steps (1/255) {np.sort(steps).round(1)}, grain ratios {np.sort(ratios).round(2)}"
    assert np.mean(steps <= 2) >= 0.9, detail
    assert np.mean(ratios >= 0.7) >= 0.9, detail


def test_a_misaligned_neighbour_is_not_pasted_across_an_edge():
    """San Francisco earthquake frame 133: a neighbour's content pasted a few px off drew a bright streak across
    a pillar. A candidate is judged on the region's ring: one whose edge does not line up with the frame's
    there (beyond the re-alignment search) is dropped, an aligned one is used, and with only the misaligned
    one the region is left to the spatial fill."""
    from frdm.engine.classical.fill import SHIFT_SEARCH, region_rings, temporal_fill

    rng = np.random.default_rng(4)
    h, w = 64, 64
    yy, xx = np.mgrid[0:h, 0:w]

    def picture(offset: float) -> np.ndarray:  # a bright diagonal bar (a pillar) on grey, with fresh grain
        bar = (np.abs(xx - yy - offset) < 4).astype(np.float32)
        grey = 0.3 + 0.4 * bar + 0.01 * rng.standard_normal((h, w)).astype(np.float32)
        return np.repeat(grey[..., None], 3, axis=-1)

    frame = picture(0.0)
    aligned, misaligned = picture(0.0) * 1.1, picture(2.0 * SHIFT_SEARCH + 4)  # one brighter (flicker), one off
    region = np.zeros((h, w), bool)
    region[26:38, 26:38] = True  # on the bar
    labels, ring, count = region_rings(region, region)
    frames = {0: aligned, 1: misaligned}

    def flow(k, ys, xs):  # the flow claims both neighbours are still
        return np.zeros((len(ys), 2), np.float32), np.ones(len(ys), bool)

    def sample(k, sx, sy):
        ix, iy = np.clip(np.rint(sx).astype(int), 0, w - 1), np.clip(np.rint(sy).astype(int), 0, h - 1)
        return frames[k][iy, ix], (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)

    ys, xs = np.nonzero(labels)
    truth = frame[ys, xs] @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    values, ok = temporal_fill(frame, flow, sample, [1, 0], labels, ring, count)
    assert ok.all()
    error = np.abs(values @ np.array([0.2126, 0.7152, 0.0722], np.float32) - truth)
    assert error.mean() < 0.02, f"mean error {error.mean() * 255:.1f}/255: the misaligned bar was pasted"
    _, ok = temporal_fill(frame, flow, sample, [1], labels, ring, count)
    assert not ok.any(), "the misaligned neighbour alone must leave the region to the spatial fill"


def test_flow_is_computed_once_per_frame_pair_across_blocks(shot, monkeypatch):
    """The pipeline restores in blocks; the frames at block edges are shared and so are their flows."""
    from frdm.engine.classical import flow

    _, degraded, _, _ = shot
    calls = []
    real = flow.FlowEstimator.__call__
    monkeypatch.setattr(flow.FlowEstimator, "__call__", lambda self, a, b: calls.append(1) or real(self, a, b))
    list(restore_frames(_source(degraded), list(range(FRAMES)), P.validate({}), ClassicalRestorer()))
    pairs = 2 * ((FRAMES - 1) + (FRAMES - 2))  # both directions, 1 and 2 frames apart
    assert len(calls) == pairs, f"{len(calls)} DIS calls for {pairs} frame pairs"


def test_one_frame_line_scratch_is_found(shot):
    """A line scratch on one frame only: too short for the persistence test, absent from both neighbours."""
    clean, _, _, _ = shot
    degraded, line = add_scratch(clean[5:6], x=120, width=2)
    frames = clean.copy()
    frames[5] = degraded[0]
    (out,) = list(ClassicalRestorer().restore(Clip(frames, list(range(FRAMES)), [5]), P.validate({})))
    found = (out.matte > 0.5)[line[0]].mean()
    assert found >= 0.9, f"{found:.2f} of the scratch found"
    assert (out.matte > 0.5).mean() < 0.02


@pytest.mark.slow
def test_live_action_scene_linear_exr_masked_psnr(shared_data, tmp_path):
    """Bikes (live action), dust added, written as scene-linear EXR, restored file to file: MaskedPSNR +10 dB."""
    import av

    from frdm.engine.color import from_model
    from frdm.engine.frames import read_frame, write_frame
    from frdm.engine.pipeline import restore_sequence

    with av.open(str(shared_data / "clean" / "bikes.mp4")) as movie:
        rgb = [f.to_ndarray(format="rgb24") for _, f in zip(range(9), movie.decode(video=0))]
    clean = np.stack(rgb).astype(np.float32) / 255.0
    degraded, dust = add_dust(clean, np.random.default_rng(8), per_frame=12)
    h, w = clean.shape[1:3]
    for n, f in enumerate(degraded):
        linear = from_model(f, "linear")
        write_frame(
            tmp_path / f"in.{n + 1:04d}.exr",
            Frame(linear, ("R", "G", "B"), ("float",) * 3, (0, 0, w, h), (0, 0, w, h), {}, 0, ""),
        )
    restore_sequence(
        str(tmp_path / "in.####.exr"),
        str(tmp_path / "out.####.exr"),
        frames=list(range(3, 8)),
        params={"colorspace": "linear"},
    )
    targets = list(range(2, 7))
    out = np.stack([read_frame(tmp_path / f"out.{n + 1:04d}.exr").pixels[..., :3] for n in targets])
    from frdm.engine.color import to_model

    out = np.clip(to_model(out, "linear"), 0, 1)
    before = masked_psnr(degraded[targets], clean[targets], dust[targets])
    after = masked_psnr(out, clean[targets], dust[targets])
    assert after >= before + 10.0, f"MaskedPSNR {before:.2f} -> {after:.2f} dB"


def test_a_spatial_fill_beside_the_black_gate_draws_nothing_from_it():
    """Market Street 52: a speck two pixels from the frame's black border was inpainted with the border's black
    (a dark disc in the sky). The gate is no picture: nothing is drawn from it, and it is not filled."""
    from frdm.engine.classical.fill import gate, spatial_fill

    rng = np.random.default_rng(5)
    image = np.clip(0.6 + rng.normal(0.0, 0.01, (96, 128, 3)), 0, 1).astype(np.float32)
    image[:, -3:] = 0.0  # the gate at the right edge
    image[:, -4] = 0.3  # and its soft edge
    yy, xx = np.mgrid[:96, :128]
    speck = (yy - 60) ** 2 + (xx - 120) ** 2 <= 16  # reaches into the soft column and the gate
    degraded = image.copy()
    degraded[speck] = 1.0
    assert gate(image)[:, -4:].all() and not gate(image)[:, :-4].any()
    out = spatial_fill(degraded, speck)
    inside = speck & ~gate(image)
    assert abs(float(out[inside].mean()) - 0.6) < 4 / 255, out[inside].mean()
    # The gate pixels of the region keep what they were.
    assert np.array_equal(out[speck & gate(image)], degraded[speck & gate(image)])
    # A frame without a gate has none.
    assert not gate(np.full((96, 128, 3), 0.52, np.float32)).any()


def test_a_temporal_fill_takes_nothing_from_a_neighbours_weaving_gate():
    """Market Street 40: the black gate weaves, so a neighbour's gate lies where this frame shows picture; a
    speck there was filled with the neighbour's black. The gate is no fill material."""
    rng = np.random.default_rng(8)
    base = np.clip(0.55 + rng.normal(0.0, 0.01, (80, 96, 1)), 0, 1).repeat(3, -1).astype(np.float32)
    frames = np.stack([base + rng.normal(0.0, 0.004, base.shape).astype(np.float32) for _ in range(5)])
    for k, width in enumerate((8, 8, 3, 8, 8)):  # the gate weaves by five pixels
        frames[k, :, :width] = 0.0
    degraded = frames.copy()
    degraded[2, 38:43, 4:9] = 0.95  # a speck beside this frame's gate, where the neighbours show theirs
    out = next(ClassicalRestorer().restore(Clip(degraded, list(range(5)), [2]), P.validate({})))
    assert out.matte[38:43, 4:9].mean() > 0.5, "the speck was not found: nothing to check"
    fill = out.image[38:43, 4:9]
    assert abs(float(fill.mean()) - 0.55) < 4 / 255, fill.mean(-1)
    np.testing.assert_array_equal(out.image[:, :3], degraded[2, :, :3])  # the gate itself is not filled


def test_a_spatial_fill_takes_grain_not_the_edges_beside_it():
    """Market Street 39: a dark smudge beside the tower was filled with a ghost of the building's edges, and
    Train Robbery 23 got patches of wainscot over its dirt: the spatial fill's grain was the high frequencies of
    the patch beside the region, edges and all. Boards on the left, plain grainy wall elsewhere: the fill
    carries the wall's grain (neither the boards nor a smooth patch)."""
    from frdm.engine.classical.fill import spatial_fill

    rng = np.random.default_rng(6)
    h, w = 96, 160
    grain = 0.012
    image = 0.5 + grain * rng.standard_normal((h, w, 1)).astype(np.float32).repeat(3, -1)
    xx = np.arange(w)
    boards = (xx < 62) & (xx % 6 < 2)  # dark grooves every 6 px, left of the region only
    image[:, boards] -= 0.25
    region = np.zeros((h, w), bool)
    region[40:56, 70:86] = True
    degraded = image.copy()
    degraded[region] = 0.9
    out = spatial_fill(degraded, region)
    got = highpass(out.mean(-1))[region].std()
    wall = highpass(image.mean(-1))[:, 100:].std()
    assert got < 1.5 * wall, f"the fill carries {got / wall:.1f}x the wall's grain: the boards were pasted in"
    assert got > 0.6 * wall, f"the fill carries {got / wall:.2f}x the wall's grain: too smooth"
    assert abs(float(out[region].mean()) - 0.5) < 3 / 255


def test_a_large_blotch_is_filled_from_the_neighbours_without_patches(shared_data, monkeypatch):
    """Train Robbery 23: a blotch larger than the flow's trust window was filled mostly by inpainting, with
    temporal pieces here and there (patches). Its flow is taken from the motion around it for every neighbour
    (the detector's two references included) and is as trustworthy as that motion, so a blotch in one frame
    of a pan is filled from the neighbours as a whole. The matte is given (finding such a blotch is the
    detector's business, tested elsewhere)."""
    from frdm.engine.classical import restorer as R

    still = still_from_movie(shared_data / "clean" / "bigbuckbunny.mp4", index=60, width=360)
    rng = np.random.default_rng(7)
    truth = add_grain(pan_clip(still, 5, (200, 144), speed=(2.0, 0.5)), rng, strength=0.02)
    yy, xx = np.mgrid[:144, :200]
    blotch = ((yy - 70) / 30.0) ** 2 + ((xx - 100) / 22.0) ** 2 <= 1  # 44 x 60 px, over the arm and body
    degraded = truth.copy()
    degraded[2][blotch] = degraded[2][blotch] * 0.3 + 0.7
    monkeypatch.setattr(R.SpikeDetector, "__call__", lambda self, *args, **kwargs: blotch.copy())
    out = next(ClassicalRestorer().restore(Clip(degraded, list(range(5)), [2]), P.validate({})))
    error = np.abs(out.image - truth[2]).mean(-1)[blotch] * 255
    detail = f"mean error {error.mean():.1f}/255, {np.mean(error > 30):.1%} of the blotch off by > 30/255"
    assert error.mean() < 9, detail
    assert np.mean(error > 30) < 0.03, detail


@pytest.mark.parametrize(("h", "w"), [(11, 11), (15, 200), (40, 10), (30, 1400)])
def test_a_frame_too_small_for_the_flow_is_an_input_error_naming_it_and_the_minimum(h, w):
    """OpenCV's DIS raised a raw cv2.error below 12x12 and crashed the process on strips 8-15 px high
    (measured: 12x48, 16x1000 reduced to 8x500 for the flow). The restorer refuses them before any flow,
    naming the frame, its size and the least it needs; the smallest sizes it takes still restore."""
    from frdm.engine.classical.restorer import check_frame_size
    from frdm.engine.errors import InputError

    with pytest.raises(InputError, match=rf"frame 7: {w}x{h} pixels is too small .* needs at least (16|32|48)"):
        check_frame_size(h, w, 7)
    if (h, w) == (11, 11):  # what DIS raises on rather than crashes: the restorer itself refuses it
        frames = np.random.default_rng(0).random((3, h, w, 3), dtype=np.float32)
        with pytest.raises(InputError, match=r"frame 2: 11x11 pixels"):
            list(ClassicalRestorer().restore(Clip(frames, [1, 2, 3], [2, 3]), P.validate({})))
    for least in ((16, 16), (16, 640), (32, 1280)):  # the least it takes
        check_frame_size(*least, 1)
        frames = np.random.default_rng(1).random((3, *least, 3), dtype=np.float32)
        assert len(list(ClassicalRestorer().restore(Clip(frames, [1, 2, 3], [2]), P.validate({})))) == 1
