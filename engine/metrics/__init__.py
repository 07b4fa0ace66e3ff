"""Restoration metrics of the paper's Sec. 5.1: MaskedPSNR (Eq. 7), PSNR, SSIM, LPIPS, BRISQUE, NIQE, and the
temporal warp error.

Images are (H, W, 3) float arrays with values in [0, 1] (display-referred RGB, the model's space); masks are
(H, W) with 1 = defect pixel. The parameter files for LPIPS, BRISQUE and NIQE ship in ``params/`` beside this
file (see its README for their origin and licences); ``FRDM_METRIC_PARAMS`` may name another folder.
"""

from __future__ import annotations

from frdm.engine.metrics.fidelity import masked_psnr, mse, psnr, ssim
from frdm.engine.metrics.params_files import param_path

__all__ = ["masked_psnr", "mse", "psnr", "ssim", "param_path", "lpips", "brisque", "niqe", "warp_error"]


def lpips(pred, gt, *, device: str = "cpu") -> float:  # noqa: ANN001 - thin lazy wrapper
    """LPIPS-AlexNet distance (lower is better); see ``frdm.engine.metrics.lpips_net``."""
    from frdm.engine.metrics.lpips_net import lpips_distance

    return lpips_distance(pred, gt, device=device)


def brisque(image) -> float:  # noqa: ANN001
    """BRISQUE score (lower is better); see ``frdm.engine.metrics.brisque_svr``."""
    from frdm.engine.metrics.brisque_svr import brisque_score

    return brisque_score(image)


def niqe(image) -> float:  # noqa: ANN001
    """NIQE score (lower is better); see ``frdm.engine.metrics.niqe_mvg``."""
    from frdm.engine.metrics.niqe_mvg import niqe_score

    return niqe_score(image)


def warp_error(frames, reference=None, **kwargs) -> float:  # noqa: ANN001
    """Temporal warp error (lower is steadier); see ``frdm.engine.metrics.temporal``."""
    from frdm.engine.metrics.temporal import warp_error as _warp_error

    return _warp_error(frames, reference, **kwargs)
