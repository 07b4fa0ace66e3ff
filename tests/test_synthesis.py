"""Defect synthesis: exact masks, reproducible seeds, the defects look like what they claim to be."""

from __future__ import annotations

import numpy as np
import pytest

from frdm.engine.data import synthesis as S
from frdm.engine.data.motion import fast_motion
from frdm.engine.errors import InputError


def _clip(t: int = 4, h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth, textured clip in mid-tones, so that every defect colour differs from the background."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.5 + 0.15 * np.sin(6 * xs + 3 * ys)[..., None] * np.array([1.0, 0.8, 0.6])
    clip = np.stack([base + 0.02 * rng.standard_normal((h, w, 3)) for _ in range(t)])
    return np.clip(clip, 0.2, 0.8).astype(np.float32)


GENERATORS = {
    "dust": {"density": 200.0},
    "dirt": {"per_frame": 3.0},
    "hairs": {"per_frame": 2.0},
    "burns": {"count": 1, "frames_on": (2, 3)},
    "line_scratches": {"count": 2},
    "flicker_scratches": {"per_frame": 2.0},
    "templates": {"templates": [np.pad(np.ones((10, 20), np.float32), 4)], "per_frame": 2.0},
    "brightness_flicker": {},
    "film_grain": {},
    "blur": {},
    "rescale": {},
    "jpeg": {},
    "colour_fading": {},
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_mask_is_exactly_the_changed_pixels(name: str) -> None:
    clip = _clip()
    fn = {**S.DEFECTS, **S.QUALITY}[name]
    out, mask = fn(clip, np.random.default_rng(3), **GENERATORS[name])
    assert out.dtype == np.float32 and out.shape == clip.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert mask.shape == clip.shape[:3] and mask.dtype == bool
    assert mask.any(), f"{name} changed nothing"
    # every marked pixel changed, and nothing outside the mask changed by even one bit
    assert np.all(np.any(out != clip, axis=-1)[mask])
    assert np.array_equal(out[~mask], clip[~mask])
    if name in S.DEFECTS:
        assert mask.mean() < 0.3, f"{name} is local damage but covers {mask.mean():.0%}"


def test_seeds_reproduce_bit_exactly_and_differ_between_seeds() -> None:
    clip = _clip(t=3)
    for preset in S.PRESETS:
        a = S.synthesize(clip, preset, seed=11)
        b = S.synthesize(clip, preset, seed=11)
        c = S.synthesize(clip, preset, seed=12)
        assert np.array_equal(a.degraded, b.degraded) and np.array_equal(a.mask, b.mask)
        assert [s.name for s in a.steps] == [s.name for s in b.steps]
        assert not np.array_equal(a.degraded, c.degraded)


def test_preset_masks_mark_defects_only_and_every_frame_has_some() -> None:
    clip = _clip(t=4)
    for preset in S.PRESETS:
        syn = S.synthesize(clip, preset, seed=5)
        assert syn.mask.reshape(4, -1).any(axis=1).all(), f"{preset}: a frame without defects"
        assert syn.mask.mean() < 0.2
    # the scratch setting is made of line scratches: the masked columns stay put across the shot
    syn = S.synthesize(clip, "scratch", seed=5)
    cols = [set(np.nonzero(syn.mask[t].any(axis=0))[0]) for t in range(4)]
    assert len(cols[0] & cols[3]) >= 0.5 * len(cols[0])


def test_constant_scratch_is_fixed_and_flickering_scratch_moves() -> None:
    clip = _clip(t=6, h=120, w=200)
    _, fixed = S.line_scratches(clip, np.random.default_rng(1), count=1, wander=0.5)
    centres = [np.nonzero(fixed[t].any(axis=0))[0].mean() for t in range(6)]
    assert np.ptp(centres) < 4.0
    _, moving = S.flicker_scratches(clip, np.random.default_rng(1), per_frame=1.0)
    centres = [np.nonzero(moving[t].any(axis=0))[0].mean() for t in range(6) if moving[t].any()]
    assert len(centres) >= 3 and np.ptp(centres) > 10.0


def test_dust_is_small_specks_and_burns_sit_in_the_upper_right() -> None:
    import cv2

    clip = _clip(t=2, h=240, w=320)
    _, mask = S.dust(clip, np.random.default_rng(2), density=100.0)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask[0].astype(np.uint8), connectivity=8)
    assert n > 20 and np.median(stats[1:, cv2.CC_STAT_AREA]) < 40
    _, burn = S.burns(clip, np.random.default_rng(2), frames_on=(2, 2))
    ys, xs = np.nonzero(burn.any(axis=0))
    assert xs.min() > 0.6 * 320 and ys.max() < 0.4 * 240


def test_grain_depends_on_luminance() -> None:
    flat_mid = np.full((1, 64, 64, 3), 0.5, np.float32)
    flat_dark = np.full((1, 64, 64, 3), 0.03, np.float32)
    mid, _ = S.film_grain(flat_mid, np.random.default_rng(0), strength=0.03)
    dark, _ = S.film_grain(flat_dark, np.random.default_rng(0), strength=0.03)
    assert mid.std() > 2.0 * dark.std()


def test_templates_from_a_folder(tmp_path) -> None:  # noqa: ANN001
    from frdm.engine.frames import Frame, write_frame

    # a scan of a dark defect on white paper: loaded inverted (defect = opaque)
    px = np.ones((40, 40, 1), np.float32)
    px[15:25, 10:30] = 0.0
    write_frame(tmp_path / "blot.png", Frame(px, ("Y",), ("uint8",), (0, 0, 40, 40), (0, 0, 40, 40)))
    (tpl,) = S.load_templates(tmp_path)
    assert tpl[20, 20] == 1.0 and tpl[0, 0] == 0.0
    syn = S.apply_steps(_clip(t=2), [S.Step("templates", {"per_frame": 3.0})], np.random.default_rng(0), [tpl])
    assert syn.mask.any()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no template images"):
        S.load_templates(tmp_path / "empty")
    with pytest.raises(InputError, match="does not exist"):
        S.load_templates(tmp_path / "nowhere")


def test_bad_requests_are_clear_errors() -> None:
    clip = _clip(t=1)
    with pytest.raises(InputError, match="unknown preset"):
        S.synthesize(clip, "vintage", 0)
    with pytest.raises(ValueError, match="after a defect step"):
        S.apply_steps(clip, [S.Step("dust"), S.Step("blur")], np.random.default_rng(0))
    with pytest.raises(InputError, match="clip must be"):
        S.dust(clip[0], np.random.default_rng(0))


def test_fast_motion_moves_at_the_requested_speed_with_exact_flow() -> None:
    from frdm.engine.metrics.temporal import warp

    still = _clip(t=1, h=200, w=300)[0]
    mc = fast_motion(still, 4, (96, 64), speed=12.0)
    flow = mc.true_flow(1, 0)  # pixel x of frame 1 shows what frame 0 shows at x + flow
    assert np.allclose(flow[..., 0], 12.0, atol=1e-4) and np.allclose(flow[..., 1], 0.0, atol=1e-4)
    # with zoom and rotation the exact flow still maps frame t+1 onto frame t
    mc = fast_motion(still, 3, (96, 64), speed=8.0, zoom_per_frame=0.02, rotate_deg_per_frame=2.0)
    back = warp(mc.frames[0], mc.true_flow(1, 0))
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(back[inner] - mc.frames[1][inner]).mean() < 0.01
    with pytest.raises(InputError, match="leaves the"):
        fast_motion(still, 40, (96, 64), speed=30.0)
