"""Defect masks from (degraded, restored) pairs: accuracy on shifted, grainy synthetic pairs; rejections."""

from __future__ import annotations

import numpy as np
import pytest

from frdm.engine.data import synthesis as S
from frdm.engine.data.pairs import pair_mask


@pytest.fixture(scope="module")
def picture(shared_data):  # noqa: ANN001, ANN201
    import cv2

    from frdm.engine.frames import open_source

    px = open_source(str(shared_data / "clean" / "bigbuckbunny.mp4")).read(60).pixels
    return cv2.resize(px, (400, 226), interpolation=cv2.INTER_AREA)


def _pair(big: np.ndarray, trial: int, dx: float, dy: float):  # noqa: ANN202
    """(degraded, restored, true mask): the restored frame is the clean picture shifted by (dx, dy) px and
    re-sampled; the degraded one is the clean picture with grain and dust, dirt and scratches."""
    import cv2

    clean = big[20:200, 40:360].copy()
    m = np.float32([[1, 0, 40 + dx], [0, 1, 20 + dy]])
    restored = np.clip(cv2.warpAffine(big, m, (320, 180), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP), 0, 1)
    rng = np.random.default_rng(trial)
    base, _ = S.film_grain(clean[None], rng, strength=0.02)
    deg, m1 = S.dust(base, rng, density=60)
    deg, m2 = S.dirt(deg, rng, per_frame=2)
    deg, m3 = S.flicker_scratches(deg, rng)
    return deg[0], restored, (m1 | m2 | m3)[0]


@pytest.mark.slow
def test_recall_and_precision_on_shifted_grainy_pairs(picture) -> None:  # noqa: ANN001
    rng = np.random.default_rng(1)
    tp = fp = fn = 0
    inner = (slice(4, -4), slice(4, -4))  # the shifted frame's border has no counterpart
    for trial in range(10):
        dx, dy = rng.uniform(-2, 2, 2)
        deg, restored, true = _pair(picture, trial, dx, dy)
        res = pair_mask(deg, restored, align="shift")
        assert res.accepted, res.reason
        # the estimated map takes degraded pixels to restored ones: the inverse of the synthetic shift
        assert np.allclose(res.transform[:, 2], [-dx, -dy], atol=0.5)
        m, t = res.mask[inner], true[inner]
        tp += int((m & t).sum())
        fp += int((m & ~t).sum())
        fn += int((~m & t).sum())
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert precision >= 0.9, precision
    assert recall >= 0.9, recall


def test_regrade_is_not_a_defect_but_another_picture_is_rejected(picture) -> None:  # noqa: ANN001
    deg, restored, true = _pair(picture, 0, 0.6, -0.4)
    regraded = np.clip(restored * 0.85 + 0.05, 0, 1)  # a colourist's lift and gain
    res = pair_mask(deg, regraded, align="shift")
    assert res.accepted and res.mask.sum() < 3 * true.sum()
    other = np.ascontiguousarray(picture[::-1, ::-1][20:200, 40:360])
    res = pair_mask(deg, other)
    assert not res.accepted and res.mask is None
    assert "do not match" in res.reason or "shift" in res.reason


def test_size_mismatch_and_implausible_shift_are_rejected_with_reasons(picture) -> None:  # noqa: ANN001
    deg, restored, _ = _pair(picture, 0, 0.0, 0.0)
    res = pair_mask(deg, restored[:-2])
    assert not res.accepted and "sizes differ" in res.reason
    import cv2

    far = cv2.warpAffine(restored, np.float32([[1, 0, 40], [0, 1, 0]]), (320, 180), borderMode=cv2.BORDER_REFLECT)
    res = pair_mask(deg, far, max_shift=0.05)
    assert not res.accepted and "shift" in res.reason


def test_rotated_and_zoomed_pair_needs_the_affine_alignment(picture) -> None:  # noqa: ANN001
    import cv2

    # the restored release is rotated by 0.6 degrees and zoomed by 1% against the scan
    rot = cv2.getRotationMatrix2D((200, 113), 0.6, 1.01)
    restored = np.clip(cv2.warpAffine(picture, rot, (400, 226), flags=cv2.INTER_CUBIC)[20:200, 40:360], 0, 1)
    rng = np.random.default_rng(0)
    base, _ = S.film_grain(picture[None, 20:200, 40:360].copy(), rng, strength=0.02)
    deg, _ = S.dust(base, rng, density=60)
    shifted = pair_mask(deg[0], restored, align="shift")
    assert not shifted.accepted and "grow with picture detail" in shifted.reason
    res = pair_mask(deg[0], restored, align="affine")
    assert res.accepted, res.reason
    # degraded pixel -> restored pixel is the rotation's own linear part, in crop coordinates
    assert np.allclose(res.transform[:, :2], rot[:, :2], atol=2e-3)
    assert res.stats["detail_noise_ratio"] < 2.5 < shifted.stats["detail_noise_ratio"]
