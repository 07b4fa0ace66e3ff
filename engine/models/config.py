"""One explicit, JSON-serialisable configuration for every HaineiFRDM network.

The backbone fields describe the frozen SD1.5 UNet, the AnimateDiff motion adapter, the VAE and the two CLIP
encoders exactly as diffusers / transformers take them (``unet_config()`` etc. return their constructor
arguments). The FRDM fields size the trainable parts: the Preprocess module, the Restoration-Guidance Network
and its global-fusion and texture-reconstruction modules.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

CONFIG_VERSION = 1


@dataclass
class FRDMConfig:
    # --- frozen UNet (diffusers UNet2DConditionModel) ---
    sample_size: int = 64
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    up_block_types: tuple[str, ...] = (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    )
    layers_per_block: int = 2
    cross_attention_dim: int = 768
    attention_head_dim: int = 8  # SD1.5 calls this the head *count* (8 heads at every level)
    norm_num_groups: int = 32
    # --- AnimateDiff motion adapter (diffusers MotionAdapter) ---
    motion_num_attention_heads: int = 8
    motion_norm_num_groups: int = 32
    motion_max_seq_length: int = 32
    use_motion_mid_block: bool = True  # v1.5 v2 has a mid-block motion module, v3 has none
    # --- VAE (diffusers AutoencoderKL) ---
    vae_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    vae_layers_per_block: int = 2
    vae_norm_num_groups: int = 32
    vae_sample_size: int = 512
    vae_scaling_factor: float = 0.18215
    # --- CLIP ViT-L/14 text encoder (transformers CLIPTextModel) ---
    text_hidden_size: int = 768
    text_num_layers: int = 12
    text_num_heads: int = 12
    text_intermediate_size: int = 3072
    text_vocab_size: int = 49408
    text_max_length: int = 77
    # --- CLIP ViT-L/14 vision encoder (transformers CLIPVisionModel): patch tokens ---
    vision_hidden_size: int = 1024
    vision_num_layers: int = 24
    vision_num_heads: int = 16
    vision_intermediate_size: int = 4096
    vision_image_size: int = 224
    vision_patch_size: int = 14
    projection_dim: int = 768
    # --- FRDM trainable modules ---
    num_frames: int = 16  # temporal window the model is trained on
    # Side of the square the degraded full frame is resized to before CLIP and the VAE read it (global-frame
    # fusion, the frequency reference): one size for training and inference, so it lives with the weights.
    # 256: CLIP reads 224 px anyway and the reference keeps only the lowest 8x8 frequencies of the 32x32
    # latent; 512 would quadruple the per-step VAE work for nothing either module uses.
    global_frame_size: int = 256
    preprocess_channels: tuple[int, ...] = (64, 128, 256, 256)  # one per scale: 1, 1/2, 1/4, 1/8 of the patch
    fourier_freqs: int = 8  # GLIGEN-style Fourier embedding of the box: 4 coords x 2 (sin, cos) x freqs
    location_hidden_dim: int = 512  # MLP width that fuses tokens with the box embedding
    texture_dim: int = 256  # width of the frequency tokens in TextureReconstruction
    texture_grid: int = 8  # reference frequency bins kept per frame and axis (grid x grid)
    texture_heads: int = 4
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried in saved weights

    # ------------------------------------------------------------------ presets
    @classmethod
    def sd15(cls) -> FRDMConfig:
        """Full size: SD1.5 UNet, AnimateDiff v1.5 v2 motion adapter, SD VAE, CLIP ViT-L/14."""
        return cls()

    @classmethod
    def tiny(cls) -> FRDMConfig:
        """Random-weight CPU test size: a full forward at 2 frames x 64x64 px in well under a second."""
        return cls(
            sample_size=8,
            block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=2,
            norm_num_groups=8,
            motion_num_attention_heads=2,
            motion_norm_num_groups=8,
            motion_max_seq_length=16,
            vae_block_out_channels=(8, 8, 16, 16),
            vae_layers_per_block=1,
            vae_norm_num_groups=4,
            vae_sample_size=64,
            text_hidden_size=32,
            text_num_layers=1,
            text_num_heads=2,
            text_intermediate_size=37,
            text_vocab_size=1000,
            text_max_length=16,
            vision_hidden_size=32,
            vision_num_layers=1,
            vision_num_heads=2,
            vision_intermediate_size=37,
            vision_image_size=32,
            vision_patch_size=8,
            projection_dim=32,
            num_frames=2,
            global_frame_size=32,
            preprocess_channels=(8, 8, 16, 16),
            fourier_freqs=4,
            location_hidden_dim=32,
            texture_dim=16,
            texture_grid=2,
            texture_heads=2,
        )

    # ------------------------------------------------------------------ derived sizes
    @property
    def vae_downscale(self) -> int:
        return 2 ** (len(self.vae_block_out_channels) - 1)

    def check(self) -> None:
        """Raise ValueError naming the field for sizes the networks cannot be built with."""
        if self.global_frame_size < 1 or self.global_frame_size % self.vae_downscale:
            raise ValueError(
                f"FRDMConfig.global_frame_size ({self.global_frame_size}) must be a positive multiple of the "
                f"VAE's downscale ({self.vae_downscale})"
            )

    @property
    def num_patch_tokens(self) -> int:
        return (self.vision_image_size // self.vision_patch_size) ** 2

    # ------------------------------------------------------------------ constructor arguments
    def unet_config(self) -> dict[str, Any]:
        return {
            "sample_size": self.sample_size,
            "in_channels": self.latent_channels,
            "out_channels": self.latent_channels,
            "down_block_types": list(self.down_block_types),
            "up_block_types": list(self.up_block_types),
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "cross_attention_dim": self.cross_attention_dim,
            "attention_head_dim": self.attention_head_dim,
            "norm_num_groups": self.norm_num_groups,
        }

    def motion_adapter_config(self) -> dict[str, Any]:
        return {
            "block_out_channels": list(self.block_out_channels),
            "motion_layers_per_block": self.layers_per_block,
            "motion_num_attention_heads": self.motion_num_attention_heads,
            "motion_norm_num_groups": self.motion_norm_num_groups,
            "motion_max_seq_length": self.motion_max_seq_length,
            "use_motion_mid_block": self.use_motion_mid_block,
        }

    def vae_config(self) -> dict[str, Any]:
        n = len(self.vae_block_out_channels)
        return {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n,
            "block_out_channels": list(self.vae_block_out_channels),
            "layers_per_block": self.vae_layers_per_block,
            "latent_channels": self.latent_channels,
            "norm_num_groups": self.vae_norm_num_groups,
            "sample_size": self.vae_sample_size,
            "scaling_factor": self.vae_scaling_factor,
        }

    def text_config(self) -> dict[str, Any]:
        # CLIP's special tokens sit at the end of its 49408-entry vocabulary; the tiny in-memory tokenizer
        # puts them first (0, 1) with "!" (2) as padding.
        special = {} if self.text_vocab_size >= 49408 else {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}
        return {
            **special,
            "hidden_size": self.text_hidden_size,
            "num_hidden_layers": self.text_num_layers,
            "num_attention_heads": self.text_num_heads,
            "intermediate_size": self.text_intermediate_size,
            "vocab_size": self.text_vocab_size,
            "max_position_embeddings": self.text_max_length,
            "projection_dim": self.projection_dim,
            "hidden_act": "quick_gelu",
        }

    def vision_config(self) -> dict[str, Any]:
        return {
            "hidden_size": self.vision_hidden_size,
            "num_hidden_layers": self.vision_num_layers,
            "num_attention_heads": self.vision_num_heads,
            "intermediate_size": self.vision_intermediate_size,
            "image_size": self.vision_image_size,
            "patch_size": self.vision_patch_size,
            "projection_dim": self.projection_dim,
            "hidden_act": "quick_gelu",
        }

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FRDMConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown FRDMConfig fields: {', '.join(unknown)}")
        kwargs = {}
        for name, value in data.items():
            default = known[name].default
            kwargs[name] = tuple(value) if isinstance(default, tuple) else value
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> FRDMConfig:
        return cls.from_dict(json.loads(text))
