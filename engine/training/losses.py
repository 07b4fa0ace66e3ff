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


def defect_loss(pred: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """Eq. 5: L1 of (I_pred - I_GT) * m_defect, per-value mean over each frame, mean over frames and batch.

    pred, gt (B, F, 3, H, W); mask (B, F, 1, H, W) with 1 on defect pixels (broadcast over channels).
    """
    return ((pred.float() - gt.float()) * mask.float()).abs().mean()


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
) -> LossTerms:
    """Eq. 6 from its parts; ``decoded`` is the VAE decode of the one-step clean estimate (I_pred)."""
    l_noise = noise_loss(noise_pred, noise)
    l_pre = preprocess_loss(preprocess_images, gt)
    l_def = defect_loss(decoded, gt, mask)
    return LossTerms(l_noise + alpha_preprocess * l_pre + alpha_defect * l_def, l_noise, l_pre, l_def)
