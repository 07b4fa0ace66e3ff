"""The Restoration-Guidance Network (paper Sec. 3.1, Fig. 2(a)).

A ControlNet-style trainable copy of the frozen UNet's encoder and mid block. It takes the noisy latent fused
with the Preprocess module's features; in each block the features run, in the paper's order, self-attention,
global-prompt fusion, global-frame fusion, texture reconstruction (then the feed-forward) and temporal
attention (an AnimateDiff motion module). One zero-initialised 1x1 conv per encoder output and one for the mid
block turn the features into the residuals added to the frozen UNet's skip connections, so an untrained
network leaves the backbone's prediction exactly unchanged.

Module names mirror diffusers' UNet (``down_blocks.i.resnets.j``,
``...attentions.j.transformer_blocks.0.attn1``, ``...motion_modules.j``) so that
:meth:`RestorationGuidanceNetwork.copy_from_backbone` is a plain state-dict copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import Downsample2D, ResnetBlock2D
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import Tensor, nn

from .config import FRDMConfig
from .fusion import GlobalFrameFusion, GlobalPromptFusion, LocationFusion
from .texture import FrequencyReference, TextureReconstruction


@dataclass
class GuidanceContext:
    """What every guidance block reads besides its features: computed once per forward."""

    prompt_tokens: Tensor  # (B*F, L, D_text) box-fused caption embeddings
    frame_tokens: Tensor  # (B*F, N, D_vis) box-fused CLIP patch tokens of the same frame
    reference: Tensor  # (B, R, texture_dim) frequency reference tokens
    num_frames: int


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class GuidanceTransformerBlock(nn.Module):
    """self-attention -> GlobalPromptFusion -> GlobalFrameFusion -> TextureReconstruction -> feed-forward."""

    def __init__(self, dim: int, heads: int, config: FRDMConfig):
        super().__init__()
        dim_head = dim // heads
        self.norm1 = nn.LayerNorm(dim)
        # A diffusers Attention as the UNet's attn1, so inference can install its KV-cache processor here too.
        self.attn1 = Attention(dim, heads=heads, dim_head=dim_head, out_bias=True)
        self.global_prompt_fusion = GlobalPromptFusion(dim, config.text_hidden_size, heads, dim_head)
        self.global_frame_fusion = GlobalFrameFusion(dim, config.vision_hidden_size, heads, dim_head)
        self.texture_reconstruction = TextureReconstruction(
            dim, config.texture_dim, inner_dim=config.texture_dim, heads=config.texture_heads
        )
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def forward(self, x: Tensor, ctx: GuidanceContext, height: int, width: int) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = self.global_prompt_fusion(x, ctx.prompt_tokens)
        x = self.global_frame_fusion(x, ctx.frame_tokens)
        x = self.texture_reconstruction(x, ctx.reference, ctx.num_frames, height, width)
        return x + self.ff(self.norm3(x))


class GuidanceTransformer(nn.Module):
    """Spatial transformer wrapper with the SD1.5 Transformer2DModel's layout (GroupNorm, 1x1 conv in/out)."""

    def __init__(self, channels: int, heads: int, config: FRDMConfig):
        super().__init__()
        self.norm = nn.GroupNorm(config.norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([GuidanceTransformerBlock(channels, heads, config)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, ctx: GuidanceContext) -> Tensor:
        bf, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(bf, h * w, c)
        for block in self.transformer_blocks:
            tokens = block(tokens, ctx, h, w)
        return x + self.proj_out(tokens.reshape(bf, h, w, c).permute(0, 3, 1, 2))


def _temporal_module(channels: int, config: FRDMConfig) -> AnimateDiffTransformer3D:
    # Same arguments as diffusers' MotionModules, so AnimateDiff weights copy straight in.
    heads = config.motion_num_attention_heads
    return AnimateDiffTransformer3D(
        num_attention_heads=heads,
        attention_head_dim=channels // heads,
        in_channels=channels,
        num_layers=1,
        norm_num_groups=config.motion_norm_num_groups,
        cross_attention_dim=None,
        activation_fn="geglu",
        attention_bias=False,
        positional_embeddings="sinusoidal",
        num_positional_embeddings=config.motion_max_seq_length,
    )


class GuidanceDownBlock(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        has_attention: bool,
        add_downsample: bool,
        config: FRDMConfig,
    ):
        super().__init__()
        n = config.layers_per_block
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(
                    in_channels=in_channels if i == 0 else out_channels,
                    out_channels=out_channels,
                    temb_channels=temb_channels,
                    groups=config.norm_num_groups,
                    eps=1e-5,
                )
                for i in range(n)
            ]
        )
        heads = config.attention_head_dim
        self.attentions = nn.ModuleList(
            [GuidanceTransformer(out_channels, heads, config) for _ in range(n)] if has_attention else []
        )
        self.motion_modules = nn.ModuleList([_temporal_module(out_channels, config) for _ in range(n)])
        self.downsamplers = nn.ModuleList(
            [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=1, name="op")]
            if add_downsample
            else []
        )

    def forward(self, x: Tensor, temb: Tensor, ctx: GuidanceContext) -> tuple[Tensor, list[Tensor]]:
        outputs = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions:
                x = self.attentions[i](x, ctx)
            x = self.motion_modules[i](x, num_frames=ctx.num_frames)
            outputs.append(x)
        for down in self.downsamplers:
            x = down(x)
            outputs.append(x)
        return x, outputs


class GuidanceMidBlock(nn.Module):
    def __init__(self, channels: int, temb_channels: int, config: FRDMConfig):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D(
                    in_channels=channels,
                    out_channels=channels,
                    temb_channels=temb_channels,
                    groups=config.norm_num_groups,
                    eps=1e-5,
                )
                for _ in range(2)
            ]
        )
        self.attentions = nn.ModuleList([GuidanceTransformer(channels, config.attention_head_dim, config)])
        self.motion_modules = nn.ModuleList([_temporal_module(channels, config)] if config.use_motion_mid_block else [])

    def forward(self, x: Tensor, temb: Tensor, ctx: GuidanceContext) -> Tensor:
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, ctx)
        for motion in self.motion_modules:
            x = motion(x, num_frames=ctx.num_frames)
        return self.resnets[1](x, temb)


class RestorationGuidanceNetwork(nn.Module):
    def __init__(self, config: FRDMConfig):
        super().__init__()
        self.config = config
        channels = config.block_out_channels
        temb_channels = channels[0] * 4
        # SD1.5's timestep embedding (flip_sin_to_cos=True, shift 0), copied from the UNet.
        self.time_proj = Timesteps(channels[0], True, 0)
        self.time_embedding = TimestepEmbedding(channels[0], temb_channels)
        self.conv_in = nn.Conv2d(config.latent_channels, channels[0], 3, padding=1)

        # Position-aware global tokens (Fig. 2(c)) and the frequency reference (Fig. 2(b)): once per forward.
        self.prompt_location = LocationFusion(config.text_hidden_size, config.fourier_freqs, config.location_hidden_dim)
        self.frame_location = LocationFusion(
            config.vision_hidden_size, config.fourier_freqs, config.location_hidden_dim
        )
        self.frequency_reference = FrequencyReference(config.latent_channels, config.texture_dim, config.texture_grid)

        blocks = []
        in_ch = channels[0]
        for i, (block_type, out_ch) in enumerate(zip(config.down_block_types, channels)):
            blocks.append(
                GuidanceDownBlock(
                    in_ch,
                    out_ch,
                    temb_channels,
                    has_attention="CrossAttn" in block_type,
                    add_downsample=i < len(channels) - 1,
                    config=config,
                )
            )
            in_ch = out_ch
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = GuidanceMidBlock(channels[-1], temb_channels, config)

        # Zero convs: one per UNet skip connection (conv_in output, each layer, each downsampler) + the mid
        # block.
        skip_channels = [channels[0]]
        for i, ch in enumerate(channels):
            skip_channels += [ch] * config.layers_per_block
            if i < len(channels) - 1:
                skip_channels.append(ch)
        self.controlnet_down_blocks = nn.ModuleList([_zero_conv(c) for c in skip_channels])
        self.controlnet_mid_block = _zero_conv(channels[-1])

    # ------------------------------------------------------------------ ControlNet-style initialisation
    _RENAMES = ((".norm2.", ".global_prompt_fusion.norm."), (".attn2.", ".global_prompt_fusion.attn."))

    def copy_from_backbone(self, unet: nn.Module) -> list[str]:
        """Copy the UNet's (UNetMotionModel's) encoder, mid block and motion modules into this network.

        The prompt cross-attention (UNet ``norm2``/``attn2``) becomes ``global_prompt_fusion``. Returns the
        names of the parameters that have no backbone counterpart (the FRDM modules and the zero convs), which
        keep their own initialisation.
        """
        own = self.state_dict()
        copied = {}
        for key, value in unet.state_dict().items():
            if not key.startswith(("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")):
                continue
            if ".attentions." in key:  # only the spatial transformers' text cross-attention is renamed;
                for old, new in self._RENAMES:  # resnets and motion modules have norm2/attn2 of their own
                    key = key.replace(old, new)
            if key in own and own[key].shape == value.shape:
                copied[key] = value
        missing, unexpected = self.load_state_dict(copied, strict=False)
        assert not unexpected, unexpected
        return sorted(missing)

    # ------------------------------------------------------------------ forward
    gradient_checkpointing = False  # recompute each block in backward: the 16-frame training memory budget

    def _run(self, block: nn.Module, x: Tensor, temb: Tensor, ctx: GuidanceContext):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, x, temb, ctx, use_reentrant=False)
        return block(x, temb, ctx)

    def forward(
        self,
        noisy_latents: Tensor,
        timesteps: Tensor,
        *,
        condition: Tensor,
        prompt_embeds: Tensor,
        global_tokens: Tensor,
        degraded_latents: Tensor,
        global_latents: Tensor,
        boxes: Tensor,
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        """Returns (down-block residuals, mid-block residual), each (B*F, C, h, w), for the frozen UNet."""
        b, f = noisy_latents.shape[:2]
        dtype = self.conv_in.weight.dtype
        temb = self.time_embedding(self.time_proj(timesteps.expand(b)).to(dtype))
        temb = temb.repeat_interleave(f, dim=0)

        x = self.conv_in(noisy_latents.flatten(0, 1).to(dtype)) + condition.to(dtype)
        ctx = GuidanceContext(
            prompt_tokens=self.prompt_location(prompt_embeds.to(dtype), boxes).repeat_interleave(f, dim=0),
            frame_tokens=self.frame_location(global_tokens.to(dtype), boxes).flatten(0, 1),
            reference=self.frequency_reference(degraded_latents, global_latents),
            num_frames=f,
        )
        skips = [x]
        for block in self.down_blocks:
            x, outs = self._run(block, x, temb, ctx)
            skips += outs
        x = self._run(self.mid_block, x, temb, ctx)
        down = tuple(conv(s) for conv, s in zip(self.controlnet_down_blocks, skips))
        return down, self.controlnet_mid_block(x)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
