"""Preprocess module (paper Sec. 3.1 and Eq. 4; PASD-style degradation removal).

A per-frame convolutional encoder of the degraded patch at several scales (1, 1/2, 1/4, 1/8). Each scale has
an RGB head whose image is supervised against the ground truth (the preprocess loss), which pushes the
features to be defect-free; the deepest feature, at latent resolution, is what the Restoration-Guidance
Network receives, through a zero-initialised projection (as ControlNet's condition embedding).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class _ResidualConvBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.act(self.conv1(self.act(x))))


class PreprocessModule(nn.Module):
    def __init__(self, channels: tuple[int, ...] = (64, 128, 256, 256), out_channels: int = 320):
        super().__init__()
        self.conv_in = nn.Conv2d(3, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList([_ResidualConvBlock(c) for c in channels])
        self.rgb_heads = nn.ModuleList([nn.Conv2d(c, 3, 3, padding=1) for c in channels])
        # A stride-2 conv between consecutive scales: len(channels) scales -> 2**(len-1) downscale.
        self.downsamplers = nn.ModuleList(
            [nn.Conv2d(channels[i], channels[i + 1], 3, stride=2, padding=1) for i in range(len(channels) - 1)]
        )
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def num_scales(self) -> int:
        return len(self.blocks)

    def forward(self, degraded: Tensor) -> tuple[Tensor, list[Tensor]]:
        """degraded (B, F, 3, H, W) in [0, 1] -> (features (B*F, out_channels, H/8, W/8), images per scale).

        Each image is (B, F, 3, H, W), upsampled to the patch size so Eq. 4 compares it to the full-size GT.
        """
        b, f, _, height, width = degraded.shape
        x = self.conv_in(degraded.flatten(0, 1).to(self.conv_in.weight.dtype) * 2 - 1)
        images = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            rgb = self.rgb_heads[i](x)
            if rgb.shape[-2:] != (height, width):
                rgb = F.interpolate(rgb, size=(height, width), mode="bilinear", align_corners=False)
            # Heads predict in [-1, 1] like the VAE's image space; report in [0, 1] as the GT.
            images.append(((rgb + 1) / 2).unflatten(0, (b, f)))
            if i < len(self.downsamplers):
                x = self.downsamplers[i](x)
        return self.conv_out(x), images
