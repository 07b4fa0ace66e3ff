"""KV cache across patches (paper Sec. 3.2, after [39]).

While stage 2 denoises the patches of one step one after another, each spatial self-attention layer
(diffusers ``Attention`` named ``attn1`` in the UNet's and the guidance network's transformer blocks) stores
its keys and values; the next patch's self-attention attends to its own tokens *and* to those of its
already-denoised neighbours at the same timestep. Texture statistics thus flow between neighbouring patches.

Stored keys/values are average-pooled ``pool`` x ``pool`` over the token grid: a neighbour's coarse summary
is what carries texture consistency, and pooling cuts the cache's memory by pool^2 (at 2K with a 16-frame
window the un-pooled cache of two patch rows is several GB). Only patches of the current and previous grid
row are kept: in row-major order no later patch can touch an older one.

Temporal attention (AnimateDiff motion modules) attends across frames, not space, and is left alone.
The processor also implements attention chunking (slices of the batch) for the memory planner.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frdm.engine.diffusion.patches import PatchBox


class PatchKVCache:
    """Shared state of all KV-cache processors during one denoising step of one window."""

    def __init__(self, *, enabled: bool = True, pool: int = 2, attention_chunk: int = 0) -> None:
        self.enabled = enabled
        self.pool = max(1, int(pool))
        self.attention_chunk = int(attention_chunk)  # 0 = whole batch in one call
        self._store: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._boxes: dict[int, PatchBox] = {}
        self._current: int | None = None
        self._neighbours: list[int] = []
        self._latent_hw: tuple[int, int] = (0, 0)

    def begin_step(self) -> None:
        """A new timestep: neighbours' keys from the previous timestep are stale."""
        self._store.clear()
        self._boxes.clear()
        self._current = None

    def begin_patch(self, index: int, box: PatchBox) -> None:
        """Patch ``index`` (grid order) at latent ``box`` is about to run (one patch per forward)."""
        self._current = index
        self._latent_hw = (box.height, box.width)
        old = [i for i, b in self._boxes.items() if b.row < box.row - 1]
        for i in old:
            del self._boxes[i]
        self._store = {key: kv for key, kv in self._store.items() if key[1] in self._boxes}
        self._neighbours = [i for i, b in self._boxes.items() if b.touches(box)] if self.enabled else []
        self._boxes[index] = box

    def end_patch(self) -> None:
        self._current = None

    @property
    def stored_bytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k, _ in self._store.values())

    # --- used by the processors ----------------------------------------------------------------------
    def neighbour_kv(self, layer: int, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.enabled or self._current is None:
            return None
        ks, vs = [], []
        for i in self._neighbours:
            kv = self._store.get((layer, i))
            if kv is not None and kv[0].shape[0] == batch:
                ks.append(kv[0])
                vs.append(kv[1])
        if not ks:
            return None
        return torch.cat(ks, dim=1), torch.cat(vs, dim=1)

    def record(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        if not self.enabled or self._current is None:
            return
        self._store[(layer, self._current)] = (self._pooled(key), self._pooled(value))

    def _pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens of the patch's grid at this layer -> (B, N / pool^2, C)."""
        if self.pool == 1:
            return tokens.detach()
        b, n, c = tokens.shape
        h, w = self._latent_hw
        scale = math.sqrt(h * w / n)  # the layer's downsampling factor relative to the latent
        gh, gw = round(h / scale), round(w / scale)
        if gh * gw != n or gh < self.pool or gw < self.pool:
            return tokens.detach()
        grid = tokens.detach().transpose(1, 2).reshape(b, c, gh, gw)
        pooled = F.avg_pool2d(grid, self.pool, ceil_mode=True)
        return pooled.flatten(2).transpose(1, 2).contiguous()


class PatchKVAttnProcessor:
    """Self-attention over the patch's own tokens plus cached neighbour tokens (scaled dot-product)."""

    def __init__(self, cache: PatchKVCache, layer: int) -> None:
        self.cache = cache
        self.layer = layer

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b4, ch, hh, ww = hidden_states.shape
            hidden_states = hidden_states.view(b4, ch, hh * ww).transpose(1, 2)
        batch, _, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.to_k(context)
        value = attn.to_v(context)

        if encoder_hidden_states is None and attention_mask is None:
            extra = self.cache.neighbour_kv(self.layer, batch)
            self.cache.record(self.layer, key, value)
            if extra is not None:
                key = torch.cat([key, extra[0].to(key.dtype)], dim=1)
                value = torch.cat([value, extra[1].to(value.dtype)], dim=1)

        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch)
            mask = mask.view(batch, heads, -1, mask.shape[-1])

        chunk = self.cache.attention_chunk or batch
        outs = []
        for s in range(0, batch, chunk):
            m = None if mask is None else mask[s : s + chunk]
            outs.append(
                F.scaled_dot_product_attention(
                    query[s : s + chunk], key[s : s + chunk], value[s : s + chunk], attn_mask=m
                )
            )
        hidden_states = torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b4, ch, hh, ww)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def spatial_self_attention_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The spatial self-attention modules (``attn1``) of ``module``, temporal / motion attention excluded."""
    from diffusers.models.attention_processor import Attention

    found = []
    for name, sub in module.named_modules():
        if not isinstance(sub, Attention) or not name.endswith("attn1") or sub.is_cross_attention:
            continue
        lowered = name.lower()
        if "motion" in lowered or "temporal" in lowered:
            continue
        found.append((name, sub))
    return found


@contextmanager
def installed(modules: list[nn.Module], cache: PatchKVCache) -> Iterator[int]:
    """Install KV-cache processors on every spatial self-attention layer of ``modules`` for the duration
    of the block; yields how many layers got one. The previous processors come back afterwards."""
    saved = []
    layer = 0
    for m in modules:
        if m is None:
            continue
        for _, attn in spatial_self_attention_layers(m):
            saved.append((attn, attn.processor))
            attn.set_processor(PatchKVAttnProcessor(cache, layer))
            layer += 1
    try:
        yield layer
    finally:
        for attn, proc in saved:
            attn.set_processor(proc)
