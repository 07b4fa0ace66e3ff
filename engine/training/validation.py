"""Validation during training: MaskedPSNR (Eq. 7) and PSNR of the model's one-step clean estimate on a
held-out set, and a before/after strip image.

The one-step estimate starts where inference starts (Sec. 3.2: the degraded patch's latent, noised to
``timestep``), predicts the noise with the full model and decodes x0_hat = (z_t - sqrt(1-a_t) eps_hat) /
sqrt(a_t). Starting from the *degraded* latent (not the GT's, as the training loss does) means the defect
pixels are only removed if the model removes them. The noise and the items are fixed (seeded), so two
validations differ only by the weights.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .losses import predicted_clean_latents


def step_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integer keys (seed, step, rank, ...): per-step randomness that a resumed
    run reproduces without replaying the past."""
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def condition_inputs(core: Any, batch: dict[str, Any], captions: list[str], device: torch.device) -> dict[str, Tensor]:
    """The frozen encoders' outputs the model is conditioned on (Fig. 2): no gradients flow into them.

    The global frame goes through the model's ``encode_global_conditioning``, as at inference: the dataset
    resized it with the same function to the same size, so the tokens and latents are those inference
    computes for the same frame."""
    degraded = batch["degraded"].to(device)
    with torch.no_grad():
        global_tokens, global_latents = core.encode_global_conditioning(batch["global_frame"].to(device))
        return {
            "degraded": degraded,
            "degraded_latents": core.encode_latents(degraded).float(),
            "prompt_embeds": core.encode_prompt(captions),
            "global_tokens": global_tokens,
            "global_latents": global_latents,
            "boxes": batch["box"].to(device),
        }


@torch.no_grad()
def one_step_estimate(core: Any, batch: dict[str, Any], alphas_cumprod: Tensor, timestep: int, seed: int) -> Tensor:
    """The decoded one-step clean estimate (B, F, 3, H, W) in [0, 1] from the noised degraded latent."""
    device = core.device
    cond = condition_inputs(core, batch, list(batch["caption"]), device)
    z_lq = cond["degraded_latents"]
    noise = torch.randn(z_lq.shape, generator=step_generator(seed, 7919)).to(device)
    t = torch.full((z_lq.shape[0],), timestep, dtype=torch.long, device=device)
    a = alphas_cumprod.to(device, torch.float32)[t].view(-1, 1, 1, 1, 1)
    z_t = a.sqrt() * z_lq + (1 - a).sqrt() * noise
    out = core(z_t, t, **cond)
    x0 = predicted_clean_latents(z_t, out.noise_pred, t, alphas_cumprod)
    return core.decode_latents(x0).float().clamp(0, 1)


def _hwc(x: Tensor) -> np.ndarray:
    return x.detach().cpu().float().permute(1, 2, 0).numpy()


def validate(
    core: Any,
    items: list[dict[str, Any]],
    alphas_cumprod: Tensor,
    *,
    timestep: int,
    seed: int,
    strip_path: str | None = None,
) -> dict[str, float]:
    """Mean MaskedPSNR / PSNR over the frames of ``items`` (dataset samples, batch of 1 each), for the
    estimate and, as the reference to beat, the degraded input itself. Frames without defect pixels are
    left out of MaskedPSNR (it is undefined there)."""
    from frdm.engine.metrics import masked_psnr, psnr

    was_training = core.training
    core.eval()
    scores: dict[str, list[float]] = {"masked_psnr": [], "psnr": [], "masked_psnr_input": [], "psnr_input": []}
    abs_err: list[float] = []
    strip_rows = []
    try:
        for n, item in enumerate(items):
            batch = {k: (v.unsqueeze(0) if isinstance(v, Tensor) else [v]) for k, v in item.items()}
            pred = one_step_estimate(core, batch, alphas_cumprod, timestep, seed + n)[0]
            for f in range(pred.shape[0]):
                p, g, d = _hwc(pred[f]), _hwc(item["gt"][f]), _hwc(item["degraded"][f])
                m = item["mask"][f, 0].numpy()
                scores["psnr"].append(psnr(p, g))
                scores["psnr_input"].append(psnr(d, g))
                if m.sum() > 0:
                    scores["masked_psnr"].append(masked_psnr(p, g, m))
                    scores["masked_psnr_input"].append(masked_psnr(d, g, m))
                    abs_err.append(float((np.abs(p - g) * m[..., None]).sum() / (3 * m.sum())))
            if strip_path is not None and n < 4:
                m3 = np.repeat(item["mask"][0, 0].numpy()[..., None], 3, -1)
                strip_rows.append(
                    np.concatenate([_hwc(item["degraded"][0]), _hwc(pred[0]), _hwc(item["gt"][0]), m3], 1)
                )
    finally:
        core.train(was_training)
    result = {
        k: float(np.mean([v for v in vals if math.isfinite(v)])) if vals else float("nan") for k, vals in scores.items()
    }
    result["defect_l1"] = float(np.mean(abs_err)) if abs_err else float("nan")
    if strip_path is not None and strip_rows:
        write_strip(strip_path, np.concatenate(strip_rows, 0))
    return result


def write_strip(path: str, pixels: np.ndarray) -> None:
    """Rows of [degraded | one-step estimate | GT | defect mask] as an 8-bit PNG."""
    from frdm.engine.frames import Frame, write_frame

    h, w = pixels.shape[:2]
    frame = Frame(
        np.ascontiguousarray(np.clip(pixels, 0, 1), np.float32),
        ("R", "G", "B"),
        ("uint8",) * 3,
        (0, 0, w, h),
        (0, 0, w, h),
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_frame(path, frame)
