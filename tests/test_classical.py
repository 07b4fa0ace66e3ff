"""The classical detect-then-restore engine on shots with known dust, scratches and motion."""

from __future__ import annotations

import numpy as np
import pytest

from frdm.engine import params as P
from frdm.engine.classical import ClassicalRestorer
from frdm.engine.frames import Frame, MemorySource
from frdm.engine.pipeline import MATTE_CHANNEL, restore_frames
from frdm.engine.restorer import Clip

from synthetic import add_dust, add_moving_disc, add_scratch, detection_scores, masked_psnr, pan_clip, still_from_movie

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
    """Above 1280 px the flow runs at half size (the 2K speed path); detection must hold there too."""
    from frdm.engine.classical import restorer as classical

    still = still_from_movie(shared_data / "clean" / "bigbuckbunny.mp4", index=60, width=1600)
    clean = pan_clip(still, 5, (1400, 800), speed=(5.0, 1.5))
    assert int(np.ceil(1400 / classical.FLOW_MAX_SIDE)) == 2
    clean, actor = add_moving_disc(clean, speed=20.0, radius=30)
    degraded, truth = add_dust(clean, np.random.default_rng(5), per_frame=30)
    out = list(ClassicalRestorer().restore(Clip(degraded, list(range(5)), [2]), P.validate({})))[0]
    precision, recall = detection_scores(out.matte > 0.5, truth[2])
    assert recall >= 0.9 and precision >= 0.8, (precision, recall)
    assert masked_psnr(out.image, clean[2], truth[2]) > masked_psnr(degraded[2], clean[2], truth[2]) + 10
    assert np.abs(out.image - degraded[2]).max(-1)[actor[2] & ~truth[2]].mean() < 0.02
