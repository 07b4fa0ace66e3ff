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


def _tiled(
    frames: torch.Tensor, boxes: list, to_input: int, to_output: int, lh: int, lw: int, dtype: torch.dtype, run
) -> torch.Tensor:
    """Run ``run`` on each tile of each frame and blend the tiles back. Boxes are on the latent grid; a box
    times ``to_input`` crops the input, times ``to_output`` places the result (1 = latent, 8 = pixels)."""
    out = []
    for i in range(frames.shape[0]):
        acc: PatchAccumulator | None = None
        for box in boxes:
            ys, xs = box.scaled(to_input).slices
            result = run(frames[i : i + 1, :, ys, xs].to(dtype)[:, None])[0, 0].float()
            if acc is None:
                acc = PatchAccumulator((result.shape[0], lh * to_output, lw * to_output), device=result.device)
            placed = box.scaled(to_output)
            acc.add(placed, result, blend_weights(placed))
        assert acc is not None
        out.append(acc.result())
    return torch.stack(out)


def tiled_encode(model: Any, images: torch.Tensor, *, tile: int = 512, overlap: int = 64) -> torch.Tensor:
    """(F, 3, H, W) in [0, 1], H and W multiples of 8 -> (F, 4, H/8, W/8) latents (VAE-scaled, fp32)."""
    lh, lw = images.shape[2] // LATENT_SCALE, images.shape[3] // LATENT_SCALE
    dtype = next(model.vae.parameters()).dtype
    boxes = _tile_grid(lh, lw, tile, overlap)
    return _tiled(images, boxes, LATENT_SCALE, 1, lh, lw, dtype, model.encode_latents)


def tiled_decode(model: Any, latents: torch.Tensor, *, tile: int = 512, overlap: int = 64) -> torch.Tensor:
    """(F, 4, h, w) latents -> (F, 3, 8h, 8w) images in [0, 1]-ish (not clamped), fp32."""
    lh, lw = latents.shape[2], latents.shape[3]
    dtype = next(model.vae.parameters()).dtype
    boxes = _tile_grid(lh, lw, tile, overlap)
    return _tiled(latents, boxes, 1, LATENT_SCALE, lh, lw, dtype, model.decode_latents)
