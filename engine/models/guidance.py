"""The Restoration-Guidance Network (paper Sec. 3.1, Fig. 2(a)).

A ControlNet-style trainable copy of the frozen UNet's encoder and mid block. It takes the noisy latent fused
with the Preprocess module's features; in each block the features run, in the paper's order, self-attention,
global-prompt fusion, global-frame fusion, texture reconstruction (then the feed-forward) and temporal
attention (an AnimateDiff motion module). One zero-initialised 1x1 conv per encoder output and one for the mid
block turn the features into the residuals added to the frozen UNet's skip connections, so an untrained
network leaves the backbone's prediction exactly unchanged.

Module names mirror diffusers' UNet (``down_blocks.i.resnets.j``,
``...attentions.j.transformer_blocks.0.attn1``, ``...motion_modules.j``); the blocks take explicit arguments,
as diffusers' do, and only the network itself reads the FRDMConfig.
:meth:`RestorationGuidanceNetwork.copy_from_backbone` copies the backbone module by module and raises on
anything it cannot copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        text_dim: int,
        vision_dim: int,
        texture_dim: int,
        texture_heads: int,
    ):
        super().__init__()
        dim_head = dim // num_heads
        self.norm1 = nn.LayerNorm(dim)
        # A diffusers Attention as the UNet's attn1, so inference can install its KV-cache processor here too.
        self.attn1 = Attention(dim, heads=num_heads, dim_head=dim_head, out_bias=True)
        self.global_prompt_fusion = GlobalPromptFusion(dim, text_dim, num_heads, dim_head)
        self.global_frame_fusion = GlobalFrameFusion(dim, vision_dim, num_heads, dim_head)
        self.texture_reconstruction = TextureReconstruction(
            dim, texture_dim, inner_dim=texture_dim, heads=texture_heads
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

    def __init__(self, channels: int, num_heads: int, *, norm_num_groups: int, **block_args: int):
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([GuidanceTransformerBlock(channels, num_heads, **block_args)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, ctx: GuidanceContext) -> Tensor:
        bf, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(bf, h * w, c)
        for block in self.transformer_blocks:
            tokens = block(tokens, ctx, h, w)
        return x + self.proj_out(tokens.reshape(bf, h, w, c).permute(0, 3, 1, 2))


def _temporal_module(channels: int, num_heads: int, norm_num_groups: int, max_seq_length: int) -> nn.Module:
    # Same arguments as diffusers' MotionModules, so AnimateDiff weights copy straight in.
    return AnimateDiffTransformer3D(
        num_attention_heads=num_heads,
        attention_head_dim=channels // num_heads,
        in_channels=channels,
        num_layers=1,
        norm_num_groups=norm_num_groups,
        cross_attention_dim=None,
        activation_fn="geglu",
        attention_bias=False,
        positional_embeddings="sinusoidal",
        num_positional_embeddings=max_seq_length,
    )


def _resnet(in_channels: int, out_channels: int, temb_channels: int, groups: int) -> ResnetBlock2D:
    return ResnetBlock2D(
        in_channels=in_channels, out_channels=out_channels, temb_channels=temb_channels, groups=groups, eps=1e-5
    )


class GuidanceDownBlock(nn.Module):
    """One encoder level: ``num_layers`` x (resnet -> [GuidanceTransformer] -> motion module), then a
    downsampler (CrossAttnDownBlockMotion's layout, or DownBlockMotion's without the transformers)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        *,
        num_layers: int,
        has_attention: bool,
        add_downsample: bool,
        resnet_groups: int,
        attention_heads: int,
        motion_heads: int,
        motion_groups: int,
        motion_max_seq_length: int,
        **block_args: int,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                _resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, resnet_groups)
                for i in range(num_layers)
            ]
        )
        self.attentions = nn.ModuleList(
            [
                GuidanceTransformer(out_channels, attention_heads, norm_num_groups=resnet_groups, **block_args)
                for _ in range(num_layers)
            ]
            if has_attention
            else []
        )
        self.motion_modules = nn.ModuleList(
            [
                _temporal_module(out_channels, motion_heads, motion_groups, motion_max_seq_length)
                for _ in range(num_layers)
            ]
        )
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
    """resnet -> GuidanceTransformer -> [motion module] -> resnet (UNetMidBlockCrossAttnMotion's layout)."""

    def __init__(
        self,
        channels: int,
        temb_channels: int,
        *,
        resnet_groups: int,
        attention_heads: int,
        use_motion_module: bool,
        motion_heads: int,
        motion_groups: int,
        motion_max_seq_length: int,
        **block_args: int,
    ):
        super().__init__()
        self.resnets = nn.ModuleList([_resnet(channels, channels, temb_channels, resnet_groups) for _ in range(2)])
        self.attentions = nn.ModuleList(
            [GuidanceTransformer(channels, attention_heads, norm_num_groups=resnet_groups, **block_args)]
        )
        self.motion_modules = nn.ModuleList(
            [_temporal_module(channels, motion_heads, motion_groups, motion_max_seq_length)]
            if use_motion_module
            else []
        )

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

        # The arguments every level shares; the config is read here only, the blocks take plain numbers.
        shared = dict(
            resnet_groups=config.norm_num_groups,
            attention_heads=config.attention_head_dim,  # SD1.5's "head dim" is its head count
            motion_heads=config.motion_num_attention_heads,
            motion_groups=config.motion_norm_num_groups,
            motion_max_seq_length=config.motion_max_seq_length,
            text_dim=config.text_hidden_size,
            vision_dim=config.vision_hidden_size,
            texture_dim=config.texture_dim,
            texture_heads=config.texture_heads,
        )
        blocks = []
        in_ch = channels[0]
        for i, (block_type, out_ch) in enumerate(zip(config.down_block_types, channels)):
            blocks.append(
                GuidanceDownBlock(
                    in_ch,
                    out_ch,
                    temb_channels,
                    num_layers=config.layers_per_block,
                    has_attention="CrossAttn" in block_type,
                    add_downsample=i < len(channels) - 1,
                    **shared,
                )
            )
            in_ch = out_ch
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = GuidanceMidBlock(
            channels[-1], temb_channels, use_motion_module=config.use_motion_mid_block, **shared
        )

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
    def copy_from_backbone(self, unet: nn.Module) -> list[str]:
        """Copy the UNet's (UNetMotionModel's) encoder, mid block and motion modules into this network, module
        by module as diffusers' ``ControlNetModel.from_unet`` does.

        Each spatial transformer's text cross-attention (UNet ``norm2``/``attn2``) becomes
        ``global_prompt_fusion``. Every parameter with a UNet counterpart must be copied: a module missing on
        either side or a tensor of another shape raises WeightsError listing all of them, instead of leaving
        random weights in a network that should start as the backbone. Returns the names of the parameters
        that have no counterpart by design (the FRDM modules and the zero convs), which keep their own
        initialisation.
        """
        from frdm.engine.errors import WeightsError

        copier = _Copier(self)
        copier.copy("conv_in", self.conv_in, getattr(unet, "conv_in", None))
        copier.copy("time_embedding", self.time_embedding, getattr(unet, "time_embedding", None))
        theirs_down = list(getattr(unet, "down_blocks", []))
        if len(theirs_down) != len(self.down_blocks):
            copier.fail("down_blocks", f"{len(self.down_blocks)} levels here, {len(theirs_down)} in the UNet")
        for i, (mine, theirs) in enumerate(zip(self.down_blocks, theirs_down)):
            copier.copy_block(f"down_blocks.{i}", mine, theirs)
        mid = getattr(unet, "mid_block", None)
        if mid is None:
            copier.fail("mid_block", "the UNet has no mid block")
        else:
            copier.copy_block("mid_block", self.mid_block, mid)
        if copier.failures:
            listed = "; ".join(copier.failures)
            raise WeightsError(
                f"the guidance network could not be copied from the UNet ({len(copier.failures)} problems): {listed}"
            )
        return copier.own_parameters()

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


class _Copier:
    """Module-by-module state copy with the failures collected under this network's parameter names."""

    def __init__(self, network: nn.Module):
        self.network = network
        self.failures: list[str] = []
        self.copied: set[str] = set()

    def fail(self, name: str, why: str) -> None:
        self.failures.append(f"{name}: {why}")

    def copy(self, name: str, mine: nn.Module | None, theirs: nn.Module | None) -> None:
        if mine is None or theirs is None:
            self.fail(name, "no such module " + ("here" if mine is None else "in the UNet"))
            return
        own, src = mine.state_dict(), theirs.state_dict()
        problems = [f"missing in the UNet: {k}" for k in own if k not in src]
        problems += [f"only in the UNet: {k}" for k in src if k not in own]
        problems += [
            f"{k} {tuple(src[k].shape)} (expected {tuple(own[k].shape)})"
            for k in own
            if k in src and src[k].shape != own[k].shape
        ]
        if problems:
            self.fail(name, ", ".join(problems))
            return
        mine.load_state_dict(src, strict=True)
        self.copied.update(f"{name}.{k}" for k in own)

    def copy_list(self, name: str, mine: nn.ModuleList, theirs: Any) -> None:
        theirs = list(theirs or [])
        if len(theirs) != len(mine):
            self.fail(name, f"{len(mine)} modules here, {len(theirs)} in the UNet")
        for j, (a, b) in enumerate(zip(mine, theirs)):
            self.copy(f"{name}.{j}", a, b)

    def copy_block(self, name: str, mine: nn.Module, theirs: nn.Module) -> None:
        self.copy_list(f"{name}.resnets", mine.resnets, getattr(theirs, "resnets", None))
        self.copy_list(f"{name}.motion_modules", mine.motion_modules, getattr(theirs, "motion_modules", None))
        if hasattr(mine, "downsamplers"):
            self.copy_list(f"{name}.downsamplers", mine.downsamplers, getattr(theirs, "downsamplers", None))
        theirs_attn = list(getattr(theirs, "attentions", None) or [])
        if len(theirs_attn) != len(mine.attentions):
            self.fail(f"{name}.attentions", f"{len(mine.attentions)} transformers here, {len(theirs_attn)} in the UNet")
        for j, (a, b) in enumerate(zip(mine.attentions, theirs_attn)):
            self.copy_transformer(f"{name}.attentions.{j}", a, b)

    def copy_transformer(self, name: str, mine: GuidanceTransformer, theirs: nn.Module) -> None:
        for part in ("norm", "proj_in", "proj_out"):
            self.copy(f"{name}.{part}", getattr(mine, part), getattr(theirs, part, None))
        blocks = list(getattr(theirs, "transformer_blocks", []))
        if len(blocks) != len(mine.transformer_blocks):
            self.fail(
                f"{name}.transformer_blocks",
                f"{len(mine.transformer_blocks)} blocks here, {len(blocks)} in the UNet",
            )
        for k, (a, b) in enumerate(zip(mine.transformer_blocks, blocks)):
            prefix = f"{name}.transformer_blocks.{k}"
            for part in ("norm1", "attn1", "norm3", "ff"):
                self.copy(f"{prefix}.{part}", getattr(a, part), getattr(b, part, None))
            # The UNet's text cross-attention is where the global prompt enters: it becomes the fusion module.
            self.copy(f"{prefix}.global_prompt_fusion.norm", a.global_prompt_fusion.norm, getattr(b, "norm2", None))
            self.copy(f"{prefix}.global_prompt_fusion.attn", a.global_prompt_fusion.attn, getattr(b, "attn2", None))

    def own_parameters(self) -> list[str]:
        return sorted(n for n, _ in self.network.named_parameters() if n not in self.copied)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
