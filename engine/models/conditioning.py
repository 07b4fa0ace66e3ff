"""The one resize of the degraded full frame that global-frame conditioning starts from (torch only).

Training (the dataset, per frame as it reads it) and inference (``HaineiFRDM.encode_global_conditioning``)
both call :func:`resize_global_frame`, so the CLIP patch tokens and the frequency reference a model is trained
on are computed from the same pixels it later sees at inference. The size is the model's
(``FRDMConfig.global_frame_size``), stored with its weights.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def resize_global_frame(frames: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Degraded full frames (..., 3, H, W) in [0, 1] -> (..., 3, h, w) float32 in [0, 1].

    ``size`` is the side of the square the frame is squeezed into (or (h, w)). Antialiased bicubic in float32:
    a downscale of a 2K scan by 8 must average, not sample (plain bicubic would alias film grain and dust
    into the global frame); float32 because the antialiased kernel has no half-precision version on every
    device. Clamped (bicubic overshoots at edges; the model's inputs are [0, 1]). A frame already at the size
    is only clamped, so resizing twice (the dataset, then the model) equals resizing once.
    """
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    x = frames.float()
    if tuple(x.shape[-2:]) == (h, w):
        return x.clamp(0.0, 1.0)
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])
    out = F.interpolate(flat, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
    return out.reshape(*lead, *out.shape[-3:])
