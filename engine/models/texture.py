"""Texture reconstruction in the frequency domain (paper Sec. 3.1, Fig. 2(b); after SFHformer).

The degraded patch's VAE latent and the resized degraded full frame's latent go through a 3D FFT over
(frames, H, W); the low band of each (the same choice for both, see ``FrequencyReference``), real and
imaginary parts concatenated, is refined by an MLP into reference tokens (computed once per forward). In
every guidance block, ``TextureReconstruction`` takes the block's features to the frequency domain the same
way, lets each frequency bin attend to the reference tokens, and brings the result back with the inverse 3D
FFT, injected as a residual.
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


def low_band(spec: Tensor, grid: int) -> Tensor:
    """(..., H, W) unshifted spectrum -> (..., grid, grid): the exact coefficients of the ``grid x grid``
    lowest spatial frequencies, -grid//2 .. grid - grid//2 - 1 cycles per extent on each axis, DC at
    [grid//2, grid//2].

    A latent smaller than the grid has no coefficient for the outer frequencies: they are 0, which is what
    its zero-padded spectrum would hold (the same frame, just not resolved that finely).
    """
    out = spec.new_zeros(*spec.shape[:-2], grid, grid)
    h, w = spec.shape[-2:]
    freqs = range(-(grid // 2), grid - grid // 2)

    def rows(n: int) -> tuple[list[int], list[int]]:  # (positions in the band, indices in the spectrum)
        keep = [(i, k % n) for i, k in enumerate(freqs) if -(n // 2) <= k <= (n - 1) // 2]
        return [i for i, _ in keep], [j for _, j in keep]

    (oy, sy), (ox, sx) = rows(h), rows(w)
    iy, jy = torch.tensor(oy), torch.tensor(sy)
    ix, jx = torch.tensor(ox), torch.tensor(sx)
    out[..., iy[:, None], ix[None, :]] = spec[..., jy[:, None], jx[None, :]]
    return out


class FrequencyReference(nn.Module):
    """Reference tokens for TextureReconstruction, from the degraded patch and the global frame latents.

    Both references are the same choice: the exact 3D-FFT coefficients (real and imaginary parts, as the
    paper concatenates them) of the lowest ``grid x grid`` spatial frequencies of each temporal frequency,
    per pixel. Why this and not pooled bins: an average of complex bins cancels their phase (neighbouring
    bins of a shifted patch point in different directions) and, in unshifted order, pools +f with -f, so
    the pooled numbers describe neither the patch's content nor its texture. A coefficient of k cycles per
    extent means the same thing at every latent size once divided by the pixel count, so the 32x32 global
    latent of training and inference and a patch of any size give comparable tokens. The band is what the
    paper asks the reference for, colour and lightness (the global frame's, and the degraded patch's own);
    the fine texture is not lost to the module: TextureReconstruction transforms the block features' full
    spectrum, and those features carry the degraded patch (the Preprocess condition). The grid bounds the
    cross-attention: every bin of a 64x64x16 block attending to all of its own bins would be quadratic.
    """

    def __init__(self, latent_channels: int, dim: int, grid: int):
        super().__init__()
        self.grid = grid

        def mlp() -> nn.Sequential:
            return nn.Sequential(nn.Linear(2 * latent_channels, dim), nn.SiLU(), nn.Linear(dim, dim))

        self.patch_mlp = mlp()
        self.global_mlp = mlp()

    def tokens(self, latents: Tensor) -> Tensor:
        """(B, F, C, h, w) latents -> (B, F * grid * grid, 2C) float32 low-band coefficients per pixel."""
        band = low_band(_per_pixel(fft3(latents)), self.grid)  # (B, F, 2C, g, g)
        b, f, c = band.shape[:3]
        return band.permute(0, 1, 3, 4, 2).reshape(b, f * self.grid * self.grid, c)

    def forward(self, degraded_latents: Tensor, global_latents: Tensor) -> Tensor:
        """(B, F, 4, h, w), (B, F, 4, hg, wg) -> tokens (B, 2 * F * grid * grid, dim)."""
        dtype = self.patch_mlp[0].weight.dtype
        patch_tokens = self.patch_mlp(self.tokens(degraded_latents).to(dtype))
        global_tokens = self.global_mlp(self.tokens(global_latents).to(dtype))
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
        spec = fft3(feats).permute(0, 1, 3, 4, 2).reshape(b, num_frames * hw, 2 * c)
        # The spectrum stays float32 through the LayerNorm: its DC bin is sqrt(F*H*W) times the mean feature
        # (x 128 for a 16-frame 32x32 block), past fp16's 65504 on bright blocks. Normalised, it fits any dtype.
        norm = self.norm
        normed = F.layer_norm(spec, norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)
        h = self.proj_in(normed.to(x.dtype))
        h = h + self.attn(h, encoder_hidden_states=reference.to(x.dtype))
        spec = self.proj_out(h).view(b, num_frames, height, width, 2 * c).permute(0, 1, 4, 2, 3)
        back = ifft3(spec)
        if x.dtype in (torch.float16, torch.bfloat16):  # the inverse sums F*H*W bins: keep it finite in x.dtype
            limit = torch.finfo(x.dtype).max
            back = back.clamp(-limit, limit)
        back = back.to(x.dtype).permute(0, 1, 3, 4, 2).reshape(bf, hw, c)
        return x + self.out(back)
