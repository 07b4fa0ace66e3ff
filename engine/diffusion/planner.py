"""The memory planner: from a VRAM budget, pick the patch batch, the VAE tile and the attention chunking.

The estimate is a coarse model of inference (no gradients) memory, written down so it can be checked against
a measured peak (benchmarks/gpu_restore.py prints both):

- weights: every parameter at its dtype;
- denoiser activations: the UNet and the guidance network keep their skip features; at inference the peak is
  about ``ACT_FACTOR`` tensors of the first block's width at the patch's latent resolution per frame;
- attention scores when SDPA cannot use a fused kernel (CPU, fp32): batch x heads x tokens x keys, divided
  by the attention chunking;
- the KV cache: pooled keys and values of two patch rows;
- the VAE: about ``VAE_FACTOR`` full-resolution tensors of the decoder's widest first-level width per tile.

Candidates go from fastest to leanest; the first one under the budget wins, and ``run_with_fallback`` steps
down the list when CUDA still runs out of memory, instead of failing the render.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

ACT_FACTOR = 40
VAE_FACTOR = 10
KV_LAYER_FACTOR = 13  # sum over attn1 layers of (channels * tokens) relative to the first level, x both nets
GIB = 1024**3

T = TypeVar("T")


@dataclass(frozen=True)
class ModelFootprint:
    weight_bytes: int
    unet_channels: int  # the first block's width (320 for SD1.5)
    attention_heads: int
    vae_channels: int  # the decoder's full-resolution width (128 for SD1.5)

    @classmethod
    def of(cls, model: Any, dtype: torch.dtype) -> ModelFootprint:
        nbytes = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
        weights = sum(p.numel() for p in model.parameters()) * nbytes
        ucfg = model.unet.config
        heads = ucfg.get("attention_head_dim", 8) if hasattr(ucfg, "get") else 8
        heads = heads[0] if isinstance(heads, (list, tuple)) else heads
        return cls(
            weight_bytes=weights,
            unet_channels=int(ucfg.block_out_channels[0]),
            attention_heads=int(heads or 8),
            vae_channels=int(model.vae.config.block_out_channels[0]),
        )


@dataclass(frozen=True)
class Plan:
    patch_batch: int  # patches per forward (1 whenever the KV cache is on)
    vae_tile: int  # pixels
    attention_chunk: int  # frames per attention call; 0 = all at once
    estimated_peak_bytes: int = 0

    def describe(self) -> str:
        chunk = self.attention_chunk or "off"
        return (
            f"patch batch {self.patch_batch}, VAE tile {self.vae_tile}px, attention chunking {chunk}, "
            f"estimated peak {self.estimated_peak_bytes / GIB:.2f} GiB"
        )


def estimate_peak_bytes(
    fp: ModelFootprint,
    *,
    frames: int,
    patch_latent: int,
    grid_cols: int,
    patch_batch: int,
    vae_tile: int,
    attention_chunk: int,
    dtype_bytes: int,
    fused_attention: bool,
    kv_cache: bool,
    kv_pool: int = 2,
    frame_latent_hw: tuple[int, int] = (0, 0),
) -> int:
    tokens = patch_latent * patch_latent
    batch = frames * patch_batch
    act = ACT_FACTOR * batch * fp.unet_channels * tokens * dtype_bytes
    keys = tokens * (1 + (4 / kv_pool**2 if kv_cache else 0))
    scores = 0
    if not fused_attention:
        chunk = attention_chunk or batch
        scores = 2 * chunk * fp.attention_heads * tokens * int(keys) * dtype_bytes
    kv = 0
    if kv_cache:
        kv = 2 * (grid_cols + 2) * frames * (tokens // kv_pool**2) * fp.unet_channels * KV_LAYER_FACTOR * dtype_bytes
    vae = VAE_FACTOR * fp.vae_channels * vae_tile * vae_tile * dtype_bytes
    lh, lw = frame_latent_hw
    latents = 8 * frames * 4 * lh * lw * 4  # z_RS, z_GR, z_LQ, noise, accumulators (fp32)
    return int(fp.weight_bytes + max(act + scores + kv, vae) + latents)


def candidates(*, kv_cache: bool, cuda: bool) -> list[tuple[int, int, int]]:
    """(patch_batch, vae_tile, attention_chunk) from fastest to leanest. With the KV cache on, patches run
    one at a time: a patch must see its neighbours' keys, and results must not depend on the batch."""
    lean = [(1, 1024, 0), (1, 512, 0), (1, 512, 4), (1, 256, 4), (1, 256, 1)]
    if not cuda:
        # No budget on the CPU, but time: the VAE's mid-block attention is quadratic in a tile's tokens.
        return lean[1:]
    if kv_cache:
        return lean
    return [(4, 1024, 0), (2, 1024, 0), *lean]


def make_plans(
    fp: ModelFootprint,
    *,
    budget_bytes: int | None,
    frames: int,
    patch_latent: int,
    grid_cols: int,
    dtype: torch.dtype,
    device: torch.device,
    kv_cache: bool,
    frame_latent_hw: tuple[int, int] = (0, 0),
) -> list[Plan]:
    """Plans in the order to try: the first that fits ``budget_bytes`` (None = no limit), then every leaner
    one (the out-of-memory fallbacks)."""
    cuda = device.type == "cuda"
    dtype_bytes = torch.finfo(dtype).bits // 8
    fused = cuda and dtype in (torch.float16, torch.bfloat16)
    plans = [
        Plan(
            b,
            tile,
            chunk,
            estimate_peak_bytes(
                fp,
                frames=frames,
                patch_latent=patch_latent,
                grid_cols=grid_cols,
                patch_batch=b,
                vae_tile=tile,
                attention_chunk=chunk,
                dtype_bytes=dtype_bytes,
                fused_attention=fused,
                kv_cache=kv_cache,
                frame_latent_hw=frame_latent_hw,
            ),
        )  # fmt: skip
        for b, tile, chunk in candidates(kv_cache=kv_cache, cuda=cuda)
    ]
    if budget_bytes is None:
        return plans
    for i, p in enumerate(plans):
        if p.estimated_peak_bytes <= budget_bytes:
            return plans[i:]
    return plans[-1:]  # nothing fits by the estimate: try the leanest; the fallback reports a real failure


def budget_bytes(vram_budget_gb: float, device: torch.device) -> int | None:
    """The budget: the parameter when set, else 90% of the GPU's total memory; None on CPU (no limit).

    Not the memory free at call time: the plan (VAE tile, patch batch) changes the result in the last bits, and
    two farm chunks rendered while other work held different amounts of memory must still agree. A real
    shortage is handled by the out-of-memory fallback."""
    if vram_budget_gb > 0:
        return int(vram_budget_gb * GIB)
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        return int(total * 0.9)
    return None


def run_with_fallback(fn: Callable[[Plan], T], plans: list[Plan], *, log: Callable[[str], None] | None = None) -> T:
    """``fn(plan)`` with the first plan; on CUDA out-of-memory free the cache and retry with the next one."""
    say = log or (lambda m: print(m, file=sys.stderr))
    last: BaseException | None = None
    for i, plan in enumerate(plans):
        try:
            return fn(plan)
        except torch.cuda.OutOfMemoryError as exc:
            last = exc
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if i + 1 < len(plans):
                say(f"frdm: out of GPU memory with {plan.describe()}; retrying with {plans[i + 1].describe()}")
    from frdm.engine.errors import ParamError

    raise ParamError(
        "out of GPU memory even with the leanest settings: lower 'patch_size' or 'window', or use "
        f"precision fp16 ({last})"
    ) from None
