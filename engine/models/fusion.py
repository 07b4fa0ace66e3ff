"""Global fusion (paper Sec. 3.1, Fig. 2(c)): give a local patch the context of its whole frame.

The patch's normalised box is Fourier-embedded (GLIGEN-style) and fused with the global tokens (CLIP patch
tokens of the resized degraded full frame, or the full-frame caption's text embeddings) into position-aware
tokens; the guidance network's features then read them through cross-attention.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn


class FourierEmbedder(nn.Module):
    """sin/cos of each box coordinate at ``num_freqs`` geometric frequencies (as GLIGEN's position net)."""

    def __init__(self, num_freqs: int = 8, temperature: float = 100.0):
        super().__init__()
        # Not a buffer: model.to(fp16) would round the bands (31.62 -> 31.625), moving the box angles at
        # inference away from training's. Computed in float32 on every call instead (a few numbers).
        self.temperature = float(temperature)
        self.num_freqs = num_freqs

    @property
    def out_dim(self) -> int:
        return 4 * 2 * self.num_freqs

    def forward(self, boxes: Tensor) -> Tensor:
        """boxes (B, 4) in [0, 1] -> (B, 4 * 2 * num_freqs)."""
        # Angles in float32 whatever the model dtype: high frequencies lose the box position in fp16.
        k = torch.arange(self.num_freqs, device=boxes.device, dtype=torch.float32)
        bands = self.temperature ** (k / self.num_freqs)
        x = boxes.float()[..., None] * bands * (2 * math.pi)  # (B, 4, K)
        emb = torch.cat([torch.sin(x), torch.cos(x)], dim=-1)  # (B, 4, 2K)
        return emb.flatten(1)


class LocationFusion(nn.Module):
    """Fuse every global token with the patch's box embedding: token + MLP([token, fourier(box)]).

    The last layer starts at zero so an untrained fusion passes the tokens through unchanged: the guidance
    network then starts as an exact ControlNet copy of the UNet (its prompt cross-attention sees the caption).
    """

    def __init__(self, token_dim: int, fourier_freqs: int, hidden_dim: int):
        super().__init__()
        self.fourier = FourierEmbedder(fourier_freqs)
        self.mlp = nn.Sequential(
            nn.Linear(token_dim + self.fourier.out_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, token_dim),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, tokens: Tensor, boxes: Tensor) -> Tensor:
        """tokens (B, ..., N, D), boxes (B, 4) -> position-aware tokens of the same shape."""
        loc = self.fourier(boxes).to(tokens.dtype)  # (B, E)
        loc = loc.view(loc.shape[0], *([1] * (tokens.dim() - 2)), loc.shape[-1]).expand(*tokens.shape[:-1], -1)
        return tokens + self.mlp(torch.cat([tokens, loc], dim=-1))


class GlobalPromptFusion(nn.Module):
    """Cross-attention from the block's tokens to the box-fused full-frame caption embeddings.

    It takes the place of the UNet block's text cross-attention (``norm2``/``attn2``), whose weights it
    copies.
    """

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, cross_attention_dim=context_dim, heads=heads, dim_head=dim_head, out_bias=True)

    def forward(self, x: Tensor, prompt_tokens: Tensor) -> Tensor:
        """x (B*F, L, dim); prompt_tokens (B*F, T, context_dim)."""
        return x + self.attn(self.norm(x), encoder_hidden_states=prompt_tokens)


class GlobalFrameFusion(nn.Module):
    """Cross-attention from the block's tokens to the box-fused CLIP patch tokens of the same frame.

    New to FRDM (no UNet counterpart): the output projection starts at zero so it adds nothing before
    training.
    """

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, cross_attention_dim=context_dim, heads=heads, dim_head=dim_head, out_bias=True)
        nn.init.zeros_(self.attn.to_out[0].weight)
        nn.init.zeros_(self.attn.to_out[0].bias)

    def forward(self, x: Tensor, frame_tokens: Tensor) -> Tensor:
        """x (B*F, L, dim); frame_tokens (B*F, N, context_dim)."""
        return x + self.attn(self.norm(x), encoder_hidden_states=frame_tokens)
