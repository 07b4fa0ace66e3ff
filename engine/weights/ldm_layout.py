"""The original release layouts, written from diffusers weights: Stable Diffusion's single-file ("LDM")
checkpoint and AnimateDiff's motion-module file.

Loading goes the other way, through diffusers' own converters. This direction exists so that tests, the
full-size benchmark (and anyone preparing a checkpoint) can write those files from diffusers-layout weights;
the round trip diffusers -> original -> diffusers is the identity (tests/test_weights.py, which also pins real
SD1.5 key names so the written layout is checked against a released file, not against this module).
"""

from __future__ import annotations

import re
from typing import Any

_UNET_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet_rest(rest: str) -> str:
    head, _, tail = rest.partition(".")
    for new, old in _UNET_RESNET:
        if head == new:
            return f"{old}.{tail}"
    return rest


def _unet_key(key: str, n: int, layers_per_block: int, up_block_has_attention: list[bool]) -> str:
    for d, ldm in _UNET_TOP.items():
        if key.startswith(d + "."):
            return ldm + key[len(d) :]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        idx = 1 + int(m[1]) * n + int(m[3])
        return f"input_blocks.{idx}.0.{_resnet_rest(m[4])}" if m[2] == "resnets" else f"input_blocks.{idx}.1.{m[4]}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * n}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet_rest(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        idx = int(m[1]) * n + int(m[3])
        return f"output_blocks.{idx}.0.{_resnet_rest(m[4])}" if m[2] == "resnets" else f"output_blocks.{idx}.1.{m[4]}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        i = int(m[1])
        slot = 2 if up_block_has_attention[i] else 1
        return f"output_blocks.{i * n + layers_per_block}.{slot}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet key {key}")


def unet_to_ldm(state: dict[str, Any], layers_per_block: int, up_block_has_attention: list[bool]) -> dict[str, Any]:
    """diffusers UNet2DConditionModel keys -> ``model.diffusion_model.*`` keys."""
    n = layers_per_block + 1
    return {
        "model.diffusion_model." + _unet_key(k, n, layers_per_block, up_block_has_attention): v
        for k, v in state.items()
    }


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(state: dict[str, Any], num_blocks: int) -> dict[str, Any]:
    """diffusers AutoencoderKL keys -> ``first_stage_model.*`` keys (attention weights as LDM's 1x1 convs)."""
    out = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        # The decoder's up blocks are numbered from the bottom in LDM, from the top in diffusers.
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.resnets\.",
            lambda m: f"decoder.up.{num_blocks - 1 - int(m[1])}.block.",
            new,
        )
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.",
            new,
        )
        new = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", new)
        if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$", new):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
            if m[3] == "weight" and m[2] != "group_norm":
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def motion_to_original(state: dict[str, Any], max_seq_length: int) -> dict[str, Any]:
    """diffusers MotionAdapter keys -> the AnimateDiff release layout (``temporal_transformer``,
    ``attention_blocks``, ``norms``, ``ff_norm``), with the ``pos_encoder.pe`` tables the release files carry
    (zeros here: loaders recompute them)."""
    import torch

    out = {}
    for key, value in state.items():
        if key.endswith(".pos_embed.pe"):  # release files carry pos_encoder.pe instead (added below)
            continue
        new = (
            key.replace(".attn1.", ".attention_blocks.0.")
            .replace(".attn2.", ".attention_blocks.1.")
            .replace(".norm1.", ".norms.0.")
            .replace(".norm2.", ".norms.1.")
            .replace(".norm3.", ".ff_norm.")
        )
        new = re.sub(r"(motion_modules\.\d+\.)", r"\1temporal_transformer.", new)
        out[new] = value
        if new.endswith(("attention_blocks.0.to_q.weight", "attention_blocks.1.to_q.weight")):
            pe = torch.zeros(1, max_seq_length, value.shape[1], dtype=value.dtype)
            out[new.replace("to_q.weight", "pos_encoder.pe")] = pe
    return out
