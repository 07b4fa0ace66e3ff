"""Metrics against known values: Eq. 7 by hand, identical images, the LPIPS authors' check values, BRISQUE and
NIQE against their reference implementations' values, and clear errors on bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from frdm.engine import metrics as M
from frdm.engine.errors import InputError


def test_masked_psnr_by_hand() -> None:
    gt = np.zeros((2, 2, 3))
    pred = gt.copy()
    pred[0, 0] = [0.1, 0.2, 0.3]  # a defect pixel left partly unrestored
    pred[1, 1] = [0.5, 0.5, 0.5]  # an error outside the mask: MaskedPSNR must ignore it
    mask = np.array([[1, 0], [0, 0]])
    # Eq. 7: MSE over the 3 masked values = (0.01 + 0.04 + 0.09) / 3; MAX = 1
    expected = -10 * math.log10((0.14 / 3) / 1.0 + 0.1**8)
    assert M.masked_psnr(pred, gt, mask) == pytest.approx(expected, abs=1e-12)
    # MAX enters squared: 8-bit values give the same number as [0, 1] values
    assert M.masked_psnr(pred * 255, gt * 255, mask, max_value=255.0) == pytest.approx(expected, abs=1e-9)
    # the 0.1^8 term caps a perfect restoration at 80 dB
    assert M.masked_psnr(gt, gt, mask) == pytest.approx(80.0, abs=1e-12)


def test_psnr_ssim_on_known_cases() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((32, 40, 3))
    assert M.psnr(img, img) == math.inf
    assert M.psnr(img, img + 0.1) == pytest.approx(20.0, abs=1e-9)  # MSE 0.01
    assert M.ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    # constant images: no variance, SSIM reduces to the luminance term (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.3, 0.6, 0.01**2
    want = (2 * a * b + c1) / (a * a + b * b + c1)
    assert M.ssim(np.full((20, 20, 3), a), np.full((20, 20, 3), b)) == pytest.approx(want, abs=1e-9)
    noisy = np.clip(img + rng.normal(0, 0.1, img.shape), 0, 1)
    assert M.ssim(noisy, img) < 0.95


def test_ssim_equals_scikit_image_when_installed() -> None:
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a = rng.random((48, 64, 3))
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    ref = skm.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
    )
    assert M.ssim(a, b) == pytest.approx(ref, abs=1e-6)


def test_lpips_reproduces_the_authors_check_values(shared_data) -> None:  # noqa: ANN001
    from frdm.engine.frames import read_frame

    d = shared_data / "metrics" / "lpips_check"
    ref, p0, p1 = (read_frame(d / f"{n}.png").pixels[..., :3] for n in ("ex_ref", "ex_p0", "ex_p1"))
    assert M.lpips(ref, p0) == pytest.approx(0.7219, abs=1e-3)
    assert M.lpips(ref, p1) == pytest.approx(0.1376, abs=1e-3)
    assert M.lpips(ref, ref) == pytest.approx(0.0, abs=1e-6)


def _bunny_frame(shared_data) -> np.ndarray:  # noqa: ANN001
    import cv2

    from frdm.engine.frames import open_source

    px = open_source(str(shared_data / "clean" / "bigbuckbunny.mp4")).read(30).pixels
    u8 = np.round(cv2.resize(px, (640, 360), interpolation=cv2.INTER_AREA) * 255)
    return u8 / 255.0


def test_brisque_and_niqe_match_their_reference_implementations(shared_data) -> None:  # noqa: ANN001
    # Reference values computed once outside the project on this exact image (Big Buck Bunny frame 30,
    # area-resized to 640x360, 8-bit) with brisque 0.2.0's BRISQUE().score and basicsr 1.4.2's niqe():
    # 8.1075 and 3.3209 (docs/quality.md, "Validation").
    img = _bunny_frame(shared_data)
    assert M.brisque(img) == pytest.approx(8.1075, abs=0.05)
    assert M.niqe(img) == pytest.approx(3.3209, abs=1e-3)


def test_no_reference_scores_rise_with_distortion(shared_data) -> None:  # noqa: ANN001
    img = _bunny_frame(shared_data)
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 0.05, img.shape), 0, 1)
    assert M.brisque(noisy) > M.brisque(img) + 10
    assert M.niqe(noisy) > M.niqe(img) + 1


def test_warp_error_sees_flicker_not_motion() -> None:
    from frdm.engine.data.motion import fast_motion

    rng = np.random.default_rng(0)
    import cv2

    still = cv2.GaussianBlur(rng.random((200, 300, 3)).astype(np.float32), (0, 0), 3)
    still = (still - still.min()) / np.ptp(still)
    mc = fast_motion(still, 4, (96, 64), speed=10.0)
    flows = [mc.true_flow(t + 1, t) for t in range(3)]
    steady = M.warp_error(mc.frames, flows=flows)
    flicker = mc.frames * np.array([1.0, 0.8, 1.0, 0.8], np.float32)[:, None, None, None]
    assert M.warp_error(flicker, mc.frames, flows=flows) > 20 * steady
    # measured flow (DIS on the reference) agrees with the exact one
    assert M.warp_error(flicker, mc.frames) == pytest.approx(M.warp_error(flicker, mc.frames, flows=flows), rel=0.3)


def test_bad_input_is_a_clear_error(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    a = np.zeros((8, 8, 3))
    with pytest.raises(InputError, match="must match"):
        M.psnr(a, np.zeros((8, 9, 3)))
    with pytest.raises(InputError, match="mask is empty"):
        M.masked_psnr(a, a, np.zeros((8, 8)))
    with pytest.raises(InputError, match="mask is"):
        M.masked_psnr(a, a, np.ones((4, 4)))
    with pytest.raises(InputError, match="at least two 96x96 blocks"):
        M.niqe(np.random.default_rng(0).random((64, 64, 3)))
    # a missing parameter file names the file and what to do
    from frdm.engine.metrics import brisque_svr, lpips_net, niqe_mvg

    monkeypatch.setenv("FRDM_METRIC_PARAMS", str(tmp_path))
    for cache in (brisque_svr._model, niqe_mvg._pristine, lpips_net._model):
        cache.cache_clear()
    try:
        with pytest.raises(InputError, match="niqe_pris_params.npz: metric parameter file missing"):
            M.niqe(np.random.default_rng(0).random((200, 200, 3)))
        with pytest.raises(InputError, match="brisque_svm.txt: metric parameter file missing"):
            M.brisque(np.random.default_rng(0).random((64, 64, 3)))
        with pytest.raises(InputError, match="lpips_alex.safetensors"):
            M.lpips(a, a)
    finally:
        for cache in (brisque_svr._model, niqe_mvg._pristine, lpips_net._model):
            cache.cache_clear()


def test_evaluate_clip_checks_frames_and_masks() -> None:
    from frdm.engine.metrics.evaluate import evaluate_clip

    rng = np.random.default_rng(0)
    gt = rng.random((2, 24, 24, 3)).astype(np.float32)
    mask = np.zeros((2, 24, 24), bool)
    mask[0, 5:9, 5:9] = True
    res = evaluate_clip(gt, gt, mask, ["MaskedPSNR", "PSNR"])
    assert res["MaskedPSNR"] == pytest.approx(80.0) and res["masked_psnr_skipped_frames"] == [1]
    with pytest.raises(InputError, match="3 frames but the ground truth has 2"):
        evaluate_clip(np.concatenate([gt, gt[:1]]), gt, mask, ["PSNR"])
    with pytest.raises(InputError, match="every defect mask is empty"):
        evaluate_clip(gt, gt, np.zeros_like(mask), ["MaskedPSNR"])
    with pytest.raises(InputError, match="unknown metric"):
        evaluate_clip(gt, gt, mask, ["FID"])


def test_parameter_files_ship_inside_the_package() -> None:
    import os
    from pathlib import Path

    import tomllib

    from frdm.engine.metrics.params_files import PARAMS_DIR

    needed = {
        "lpips_alex.safetensors",
        "niqe_pris_params.npz",
        "brisque_svm.txt",
        "brisque_normalize.json",
        "LICENSE.lpips",
        "LICENSE.basicsr",
        "LICENSE.brisque",
        "README.md",
    }
    assert needed <= set(os.listdir(PARAMS_DIR))
    config = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert "params/*" in config["tool"]["setuptools"]["package-data"]["frdm.engine.metrics"]
