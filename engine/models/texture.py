"""Texture reconstruction in the frequency domain (paper Sec. 3.1, Fig. 2(b); after SFHformer).

The degraded patch's VAE latent and the resized degraded full frame's latent go through a 3D FFT over
(frames, H, W); real and imaginary parts are concatenated and refined by an MLP into reference tokens
(``FrequencyReference``, computed once per forward). In every guidance block, ``TextureReconstruction`` takes
the block's features to the frequency domain the same way, lets each frequency bin attend to the reference
tokens, and brings the result back with the inverse 3D FFT, injected as a residual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn


def fft3(x: Tensor) -> Tensor:
    """(B, F, C, H, W) real -> (B, F, 2C, H, W): real and imaginary parts of the 3D FFT over (F, H, W).

    Computed in float32: cuFFT in half precision only takes power-of-two sizes, and the spectrum's DC bin
    overflows fp16 on large blocks.
    """
    spec = torch.fft.fftn(x.float(), dim=(1, 3, 4), norm="ortho")
    return torch.cat([spec.real, spec.imag], dim=2)


def ifft3(x: Tensor) -> Tensor:
    """Inverse of :func:`fft3`: (B, F, 2C, H, W) -> (B, F, C, H, W), real part of the inverse 3D FFT."""
    re, im = x.float().chunk(2, dim=2)
    # The attention output is not an exact Hermitian spectrum, so the inverse has a small imaginary part; the
    # feature space is real, so keep the real part.
    return torch.fft.ifftn(torch.complex(re, im), dim=(1, 3, 4), norm="ortho").real


def _per_pixel(spec: Tensor) -> Tensor:
    return spec / float(spec.shape[-2] * spec.shape[-1]) ** 0.5


class FrequencyReference(nn.Module):
    """Reference tokens for TextureReconstruction, from the degraded patch and the global frame latents.

    Patch: all frequency bins, averaged over blocks of bins down to ``grid x grid`` per frame (the block
    features attend to them at every level; keeping every bin would make the top-level attention quadratic in
    64x64x16). Global frame: only the lowest ``grid x grid`` spatial frequencies (after fftshift, the centre):
    the paper uses it as the low-frequency (colour, lightness) reference.
    """

    def __init__(self, latent_channels: int, dim: int, grid: int):
        super().__init__()
        self.grid = grid

        def mlp() -> nn.Sequential:
            return nn.Sequential(nn.Linear(2 * latent_channels, dim), nn.SiLU(), nn.Linear(dim, dim))

        self.patch_mlp = mlp()
        self.global_mlp = mlp()

    def _low_frequencies(self, spec: Tensor) -> Tensor:
        spec = torch.fft.fftshift(spec, dim=(3, 4))
        h, w = spec.shape[-2:]
        g = self.grid
        if h < g or w < g:
            spec = F.interpolate(spec.flatten(0, 1), size=(max(h, g), max(w, g)), mode="nearest").unflatten(
                0, spec.shape[:2]
            )
            h, w = spec.shape[-2:]
        top, left = (h - g) // 2, (w - g) // 2
        return spec[..., top : top + g, left : left + g]

    def forward(self, degraded_latents: Tensor, global_latents: Tensor) -> Tensor:
        """(B, F, 4, h, w), (B, F, 4, hg, wg) -> tokens (B, 2 * F * grid * grid, dim)."""
        dtype = self.patch_mlp[0].weight.dtype
        # The orthonormal FFT grows with sqrt(pixels): divide by sqrt(h * w) so the reference means the same
        # whatever the latent's size (training patches and global frames are smaller than inference's).
        spec = _per_pixel(fft3(degraded_latents))
        b, f, c = spec.shape[:3]
        spec = F.adaptive_avg_pool2d(spec.flatten(0, 1), self.grid).view(b, f, c, self.grid, self.grid)
        patch_tokens = self.patch_mlp(spec.permute(0, 1, 3, 4, 2).reshape(b, -1, c).to(dtype))
        low = self._low_frequencies(_per_pixel(fft3(global_latents)))
        global_tokens = self.global_mlp(low.permute(0, 1, 3, 4, 2).reshape(b, -1, c).to(dtype))
        return torch.cat([patch_tokens, global_tokens], dim=1)


class TextureReconstruction(nn.Module):
    """Block features -> 3D FFT -> cross-attention to the reference tokens -> inverse 3D FFT -> residual.

    The output projection starts at zero: an untrained module adds nothing.
    """

    def __init__(self, dim: int, reference_dim: int, inner_dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(2 * dim)
        self.proj_in = nn.Linear(2 * dim, inner_dim)
        self.attn = Attention(
            inner_dim,
            cross_attention_dim=reference_dim,
            heads=heads,
            dim_head=inner_dim // heads,
            out_bias=True,
        )
        self.proj_out = nn.Linear(inner_dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, reference: Tensor, num_frames: int, height: int, width: int) -> Tensor:
        """x (B*F, H*W, dim) tokens; reference (B, R, reference_dim)."""
        bf, hw, c = x.shape
        b = bf // num_frames
        feats = x.view(b, num_frames, height, width, c).permute(0, 1, 4, 2, 3)  # (B, F, C, H, W)
        spec = fft3(feats).permute(0, 1, 3, 4, 2).reshape(b, num_frames * hw, 2 * c).to(x.dtype)
        h = self.proj_in(self.norm(spec))
        h = h + self.attn(h, encoder_hidden_states=reference.to(x.dtype))
        spec = self.proj_out(h).view(b, num_frames, height, width, 2 * c).permute(0, 1, 4, 2, 3)
        back = ifft3(spec).to(x.dtype).permute(0, 1, 3, 4, 2).reshape(bf, hw, c)
        return x + self.out(back)
