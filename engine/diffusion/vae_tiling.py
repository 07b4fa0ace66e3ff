"""Tiled VAE encode and decode with blend weights.

A 2K frame through the SD VAE decoder at once needs several GB for its full-resolution 128-channel feature
maps; tiles of ``tile`` pixels bound that. Tiles overlap and are blended with the same cosine weights as the
latent patches, so their edges do not show. Frames go through one at a time: the result of a frame then never
depends on which other frames share its batch (needed for chunked == whole-range renders).
"""

from __future__ import annotations

from typing import Any

import torch

from frdm.engine.diffusion.patches import PatchAccumulator, blend_weights, patch_grid

LATENT_SCALE = 8  # SD VAE: one latent pixel per 8 x 8 image pixels


def _tile_grid(latent_h: int, latent_w: int, tile: int, overlap: int):
    tl = max(1, tile // LATENT_SCALE)
    ol = min(max(0, overlap // LATENT_SCALE), tl - 1)
    return patch_grid(latent_h, latent_w, tl, ol)


def tiled_encode(model: Any, images: torch.Tensor, *, tile: int = 512, overlap: int = 64) -> torch.Tensor:
    """(F, 3, H, W) in [0, 1], H and W multiples of 8 -> (F, 4, H/8, W/8) latents (VAE-scaled, fp32)."""
    f, _, h, w = images.shape
    lh, lw = h // LATENT_SCALE, w // LATENT_SCALE
    boxes = _tile_grid(lh, lw, tile, overlap)
    dtype = next(model.vae.parameters()).dtype
    out = []
    for i in range(f):
        acc: PatchAccumulator | None = None
        for box in boxes:
            ys, xs = box.scaled(LATENT_SCALE).slices
            crop = images[i : i + 1, :, ys, xs].to(dtype)
            z = model.encode_latents(crop[:, None])[0, 0].float()  # (4, th, tw)
            if acc is None:
                acc = PatchAccumulator((z.shape[0], lh, lw), device=z.device)
            acc.add(box, z, blend_weights(box))
        assert acc is not None
        out.append(acc.result())
    return torch.stack(out)


def tiled_decode(model: Any, latents: torch.Tensor, *, tile: int = 512, overlap: int = 64) -> torch.Tensor:
    """(F, 4, h, w) latents -> (F, 3, 8h, 8w) images in [0, 1]-ish (not clamped), fp32."""
    f, _, lh, lw = latents.shape
    boxes = _tile_grid(lh, lw, tile, overlap)
    dtype = next(model.vae.parameters()).dtype
    out = []
    for i in range(f):
        acc: PatchAccumulator | None = None
        for box in boxes:
            ys, xs = box.slices
            crop = latents[i : i + 1, :, ys, xs].to(dtype)
            img = model.decode_latents(crop[:, None])[0, 0].float()  # (3, 8th, 8tw)
            if acc is None:
                acc = PatchAccumulator((img.shape[0], lh * LATENT_SCALE, lw * LATENT_SCALE), device=img.device)
            pbox = box.scaled(LATENT_SCALE)
            acc.add(pbox, img, blend_weights(pbox))
        assert acc is not None
        out.append(acc.result())
    return torch.stack(out)
