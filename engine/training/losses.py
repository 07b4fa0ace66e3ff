"""The paper's training losses (Sec. 3.3, Eqs. 3-6).

    L_noise      = E || eps - eps_theta(z_t, t) ||_2^2                                   (Eq. 3)
    L_preprocess = sum_j 1/N sum_i || I_pre^{i,j} - I_GT^i ||_1                         (Eq. 4)
    L_defect     = 1/N sum_i || (I_pred^i - I_GT^i) * m_defect^i ||_1                    (Eq. 5)
    L_total      = L_noise + a_p L_preprocess + a_d L_defect,  a_p = 1, a_d = 81         (Eq. 6)

The norms are taken as per-value means (mean squared / mean absolute error over a frame's values), as
diffusers' and PASD's training code compute them: with a per-value mean the defect loss of a frame is the
defect pixels' share of the error, which is what the paper's weight a_d = 81 compensates for ("defects
occupy only a small fraction of pixels"); a per-frame sum would make the three terms differ by the patch
area instead. Frames (N) and the batch are averaged.

I_pred is the decoded one-step clean estimate of the patch, x0_hat = (z_t - sqrt(1 - a_t) eps_hat) / sqrt(a_t)
(the DDPM identity for epsilon prediction), decoded by the frozen VAE under activation checkpointing: the
VAE decoder's activations at 512x512 x 16 frames are the largest tensors of a training step.

Weighting the defect loss by t (``defect_weight``): x0_hat - z0 = -(eps_hat - eps) / sqrt(SNR_t), with
SNR_t = a_t / (1 - a_t), so the one-step estimate's error is the noise-prediction error amplified by
1/sqrt(SNR_t): 1 at t = 353 on SD1.5's schedule, 14.6 at t = 999. Taken unweighted at t ~ U{0..999} and
multiplied by a_d = 81, the term would be mostly amplified noise error at large t. Each batch item's defect
loss is therefore multiplied by w_t = min(1, sqrt(SNR_t)) ("min-snr", Min-SNR-gamma weighting with gamma = 1
in the estimate's amplitude): unchanged where the estimate is at least as exact as the noise prediction
(t <= 353), and above, an error counts as much as the noise error it comes from (w = 0.62 at t = 500, 0.24 at
750, 0.068 at 999; the mean amplification over t falls from 3.0 to 0.83). "none" is Eq. 5 as written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


@dataclass
class LossTerms:
    total: Tensor
    noise: Tensor
    preprocess: Tensor
    defect: Tensor

    def as_floats(self) -> dict[str, float]:
        return {
            "loss": float(self.total.detach()),
            "l_noise": float(self.noise.detach()),
            "l_preprocess": float(self.preprocess.detach()),
            "l_defect": float(self.defect.detach()),
        }


def noise_loss(noise_pred: Tensor, noise: Tensor) -> Tensor:
    """Eq. 3: mean squared error between the true and predicted noise (float32 for stable reduction)."""
    return F.mse_loss(noise_pred.float(), noise.float())


def preprocess_loss(preprocess_images: list[Tensor], gt: Tensor) -> Tensor:
    """Eq. 4: sum over the Preprocess scales of the frame-mean L1 between each RGB head and the GT patch."""
    gt = gt.float()
    return sum((F.l1_loss(img.float(), gt) for img in preprocess_images), torch.zeros((), device=gt.device))


def defect_loss(pred: Tensor, gt: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
    """Eq. 5: L1 of (I_pred - I_GT) * m_defect, per-value mean over each frame, mean over frames and batch.

    pred, gt (B, F, 3, H, W); mask (B, F, 1, H, W) with 1 on defect pixels (broadcast over channels);
    ``weight`` (B,): each batch item's factor (``defect_weight``), none for Eq. 5 as written.
    """
    per_item = ((pred.float() - gt.float()) * mask.float()).abs().flatten(1).mean(1)
    if weight is not None:
        per_item = per_item * weight.to(per_item.device, torch.float32)
    return per_item.mean()


def defect_weight(timesteps: Tensor, alphas_cumprod: Tensor, weighting: str = "min-snr") -> Tensor:
    """(B,) factors of the defect loss at each item's timestep: min(1, sqrt(SNR_t)) for "min-snr" (see the
    module docstring for why), 1 for "none"."""
    if weighting == "none":
        return torch.ones(timesteps.shape, dtype=torch.float32, device=timesteps.device)
    if weighting != "min-snr":
        raise ValueError(f"unknown defect weighting {weighting!r} (use 'min-snr' or 'none')")
    a = alphas_cumprod.to(timesteps.device, torch.float32)[timesteps]
    return (a / (1 - a)).sqrt().clamp(max=1.0)


def predicted_clean_latents(noisy: Tensor, noise_pred: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """x0_hat = (z_t - sqrt(1 - a_t) eps_hat) / sqrt(a_t) per batch item; latents (B, F, C, h, w)."""
    a = alphas_cumprod.to(noisy.device, torch.float32)[timesteps].view(-1, 1, 1, 1, 1)
    return (noisy.float() - (1 - a).sqrt() * noise_pred.float()) / a.sqrt()


def decode_checkpointed(decode, latents: Tensor, chunk: int, *, checkpointing: bool = True) -> Tensor:  # noqa: ANN001
    """``decode`` (B, F', 4, h, w) -> (B, F', 3, H, W) over chunks of ``chunk`` frames.

    With ``checkpointing`` each chunk's decoder activations are dropped after the forward and recomputed in
    the backward (torch.utils.checkpoint, non-reentrant: the VAE's weights are frozen, only the latents need
    gradients).
    """
    outs = []
    for start in range(0, latents.shape[1], chunk):
        part = latents[:, start : start + chunk]
        if checkpointing and torch.is_grad_enabled() and part.requires_grad:
            outs.append(checkpoint(decode, part, use_reentrant=False))
        else:
            outs.append(decode(part))
    return torch.cat(outs, dim=1)


def total_loss(
    *,
    noise_pred: Tensor,
    noise: Tensor,
    preprocess_images: list[Tensor],
    decoded: Tensor,
    gt: Tensor,
    mask: Tensor,
    alpha_preprocess: float = 1.0,
    alpha_defect: float = 81.0,
    defect_weights: Tensor | None = None,
) -> LossTerms:
    """Eq. 6 from its parts; ``decoded`` is the VAE decode of the one-step clean estimate (I_pred);
    ``defect_weights`` (B,) from ``defect_weight`` (none: Eq. 5 unweighted). ``LossTerms.defect`` is the
    weighted term, the one in the total."""
    l_noise = noise_loss(noise_pred, noise)
    l_pre = preprocess_loss(preprocess_images, gt)
    l_def = defect_loss(decoded, gt, mask, defect_weights)
    return LossTerms(l_noise + alpha_preprocess * l_pre + alpha_defect * l_def, l_noise, l_pre, l_def)
