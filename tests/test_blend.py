"""Mask-constrained blending: nothing outside the mask changes, down to the bits of the written file."""

from __future__ import annotations

import numpy as np
import OpenImageIO as oiio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from frdm.engine import params as P
from frdm.engine.blend import MASK_FLOOR, blend, feather_mask
from frdm.engine.classical import ClassicalRestorer
from frdm.engine.pipeline import restore_sequence

floats = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    original=arrays(np.float32, (6, 7, 3), elements=floats),
    restored=arrays(np.float32, (6, 7, 3), elements=floats),
    mask=arrays(np.float32, (6, 7), elements=st.sampled_from([0.0, 0.0, 0.25, 1.0])),
)
def test_blend_is_the_original_wherever_the_mask_is_zero(original, restored, mask):
    out = blend(original, restored, mask)
    zero = mask == 0
    assert np.array_equal(out[zero], original[zero])
    one = mask == 1
    np.testing.assert_allclose(out[one], restored[one], rtol=1e-5, atol=1e-2)


def test_feather_keeps_the_core_and_softens_outwards():
    mask = np.zeros((41, 41), np.float32)
    mask[20, 20] = 1.0  # a one-pixel speck
    hard = feather_mask(mask, 0.0, grow=2)
    assert hard[20, 22] == 1.0 and hard[20, 23] == 0.0
    soft = feather_mask(mask, 3.0, grow=2)
    assert soft[20, 20] == 1.0 and soft[20, 22] == 1.0, "a feather must not fade the defect itself"
    assert 0.0 < soft[20, 26] < 1.0, "the soft edge lies outside the grown mask"
    assert soft[0, 0] == 0.0 and (soft[soft > 0] >= MASK_FLOOR).all(), "far tails are exactly zero"
    assert feather_mask(mask, 6.0, 2).sum() > soft.sum()


def _write_source(path, pixels, fmt):
    h, w, c = pixels.shape
    spec = oiio.ImageSpec(w, h, c, fmt)
    spec.channelnames = ("R", "G", "B", "A")
    spec.attribute("compression", "zip")
    out = oiio.ImageOutput.create(str(path))
    out.open(str(path), spec)
    out.write_image(pixels)
    out.close()


def _native(path):
    inp = oiio.ImageInput.open(str(path))
    spec = inp.spec()
    data = np.asarray(inp.read_image(0, 0, 0, spec.nchannels, spec.format))
    names = spec.channelnames
    inp.close()
    return data, names


@pytest.mark.parametrize("fmt", ["half", "float"])
@pytest.mark.parametrize("mask_mode", ["auto", "artist"])
def test_written_pixels_are_bit_identical_outside_the_mask(tmp_path, fmt, mask_mode):
    """A dusty scene-linear shot with values above 1 (highlights): only masked pixels may change."""
    rng = np.random.default_rng(5)
    h, w = 48, 64
    base = np.clip(rng.normal(0.3, 0.02, (h, w, 1)), 0, None) + np.linspace(0, 1.5, w)[None, :, None]
    frames = []
    for t in range(5):
        f = np.concatenate([np.repeat(base, 3, axis=2), np.ones((h, w, 1))], axis=2).astype(np.float32)
        f[..., :3] += rng.normal(0, 0.003, (h, w, 3))
        f[4 + 8 * t : 7 + 8 * t, 20:23, :3] = 0.0  # a dark speck on each frame, elsewhere each time (dust)
        frames.append(f)
        _write_source(tmp_path / f"src.{t + 1:04d}.exr", f.astype(np.float16 if fmt == "half" else np.float32), fmt)
    mask_arg = "auto"
    if mask_mode == "artist":
        for t in range(5):
            m = np.zeros((h, w, 4), np.float32)
            m[:, :32] = 1.0  # the artist allows changes on the left half only
            _write_source(tmp_path / f"mask.{t + 1:04d}.exr", m, "half")
        mask_arg = str(tmp_path / "mask.####.exr")
    params = P.validate({"colorspace": "linear", "feather": 1.5, "mask": "none" if mask_mode == "artist" else "auto"})
    restore_sequence(
        str(tmp_path / "src.####.exr"),
        str(tmp_path / "out.####.exr"),
        params=params,
        mask=mask_arg,
        restorer=ClassicalRestorer(),
    )
    changed_somewhere = False
    for t in range(1, 6):
        src, _ = _native(tmp_path / f"src.{t:04d}.exr")
        out, names = _native(tmp_path / f"out.{t:04d}.exr")
        assert names[:4] == ("R", "G", "B", "A") and names[4] == "frdm.matte"
        matte = out[..., 4].astype(np.float32)
        if mask_mode == "auto":
            allowed = feather_mask(matte, 1.5, P.defaults()["matte_grow"]) > 0
        else:
            allowed = np.zeros((h, w), bool)
            allowed[:, :32] = True  # the artist's half, nothing beyond (their mask is used as given)
        # Highlights above 1 (scene-linear) are not representable in model space: they must stay too.
        assert np.array_equal(src[..., :4][~allowed], out[..., :4][~allowed]), f"frame {t}: pixels changed outside"
        assert src[..., :4].dtype == out[..., :4].dtype
        changed_somewhere |= not np.array_equal(src[..., :3], out[..., :3])
    assert changed_somewhere, "the dust was not touched at all"


class _EverythingRestorer:
    """Changes every pixel (as a whole-frame restorer may): only the mask can keep pixels as they were."""

    engine_version = "everything-1"

    def context(self, params):
        return (0, 0)

    def restore(self, clip, params, progress=None):
        from frdm.engine.restorer import RestoredFrame

        for t in clip.targets:
            image = np.clip(clip.frames[clip.index(t)] * 0.5 + 0.1, 0, 1).astype(np.float32)
            yield RestoredFrame(t, image, np.ones(image.shape[:2], np.float32))


@pytest.mark.parametrize("fmt", ["half", "float"])
def test_an_artist_mask_is_used_as_given_with_the_default_feather(tmp_path, fmt):
    """Outside the artist's (soft-edged) mask not one written value changes, with the default feather and
    grow; inside, the restorer's result is blended by the mask's own values."""
    rng = np.random.default_rng(2)
    h, w = 40, 48
    dtype = np.float16 if fmt == "half" else np.float32
    src = rng.uniform(0.05, 1.4, (3, h, w, 4)).astype(dtype)
    yy, xx = np.mgrid[0:h, 0:w]
    alpha = np.clip(8.0 - np.hypot(yy - 20, xx - 24), 0.0, 1.0)  # a roto disc with a 1 px soft edge
    for t in range(3):
        _write_source(tmp_path / f"src.{t + 1:04d}.exr", src[t], fmt)
        _write_source(tmp_path / f"roto.{t + 1:04d}.exr", np.repeat(alpha[..., None], 4, axis=2).astype(dtype), fmt)
    assert P.defaults()["feather"] > 0 and P.defaults()["matte_grow"] > 0
    restore_sequence(
        str(tmp_path / "src.####.exr"),
        str(tmp_path / "out.####.exr"),
        params={"colorspace": "linear"},
        mask=str(tmp_path / "roto.####.exr"),
        restorer=_EverythingRestorer(),
    )
    written_alpha, _ = _native(tmp_path / "roto.0001.exr")
    outside = written_alpha[..., 3] == 0
    assert outside.sum() > 0.8 * h * w
    for t in range(1, 4):
        before, _ = _native(tmp_path / f"src.{t:04d}.exr")
        after, _ = _native(tmp_path / f"out.{t:04d}.exr")
        changed = before[..., :4] != after[..., :4]
        assert changed[outside].sum() == 0, f"frame {t}: {int(changed[outside].sum())} values changed outside"
        assert changed[..., :3][written_alpha[..., 3] == 1].mean() > 0.2  # (values above 1 are kept)
