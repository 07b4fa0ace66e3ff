"""Assemble a HaineiFRDM from one local weights folder (layout: docs/weights.md); describe such a folder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from frdm.engine.errors import WeightsError

from .backbone import (
    POSITION_TABLES,
    check_clip_configs,
    folder_weights,
    load_clip_text,
    load_clip_vision,
    load_motion_adapter,
    load_sd15,
    motion_layout,
)
from .files import build_and_load, read_header
from .frdm_weights import load_frdm_weights, read_frdm_header

SD15_NAMES = ("sd15", "sd15.safetensors")
MOTION_NAMES = ("motion_module.safetensors", "motion_adapter")
CLIP_NAME = "clip"
FRDM_NAME = "frdm.safetensors"


@dataclass
class WeightsLayout:
    root: Path
    sd15: Path
    motion: Path
    clip: Path
    frdm: Path | None  # absent: untrained guidance (a ControlNet-style copy of the UNet)

    @property
    def text_encoder(self) -> Path:
        """SD1.5's own text encoder when the diffusers folder has one, else the CLIP folder's."""
        te = self.sd15 / "text_encoder"
        return te if self.sd15.is_dir() and te.is_dir() else self.clip


def find_weights(weights_dir: str | Path) -> WeightsLayout:
    root = Path(weights_dir)
    if not root.is_dir():
        raise WeightsError(f"{root}: weights folder not found")

    def first(names: tuple[str, ...], what: str) -> Path:
        for name in names:
            if (root / name).exists():
                return root / name
        raise WeightsError(f"{root}: no {what} (expected {' or '.join(names)}); see docs/weights.md")

    sd15 = first(SD15_NAMES, "SD1.5 weights")
    motion = first(MOTION_NAMES, "AnimateDiff motion module")
    clip = first((CLIP_NAME,), "CLIP ViT-L/14 folder")
    frdm = root / FRDM_NAME
    return WeightsLayout(root, sd15, motion, clip, frdm if frdm.exists() else None)


def assemble_unet_motion(unet2d, adapter):
    """UNetMotionModel from a UNet2DConditionModel and a MotionAdapter without a random-init pass.

    ``UNetMotionModel.from_unet2d`` alone would first initialise all 1.3B parameters randomly; building it on
    empty weights and assigning the two state dicts (whose key names coincide) takes seconds, not a minute.
    """
    from diffusers import UNetMotionModel

    motion = {k: v for k, v in adapter.state_dict().items() if ".motion_modules." in k}
    state = {**unet2d.state_dict(), **motion}
    device, dtype = unet2d.device, unet2d.dtype
    return build_and_load(
        lambda: UNetMotionModel.from_unet2d(unet2d, adapter, load_weights=False),
        state,
        Path("<assembled UNet + motion adapter>"),
        "UNetMotionModel",
        device=device,
        dtype=dtype,
        computed_buffers=POSITION_TABLES,
    )


def load_model(weights_dir: str | Path, *, device="cpu", dtype=torch.float32, config=None):
    """Everything HaineiFRDM needs, from one folder (docs/weights.md), with no network access.

    The FRDM config comes from ``frdm.safetensors``'s header when present; otherwise ``config`` (default: the
    sd15 preset, adjusted to the motion module found) and the guidance network starts untrained.
    """
    from frdm.engine.models import FRDMConfig, HaineiFRDM

    layout = find_weights(weights_dir)
    if layout.frdm is not None:
        config, _ = read_frdm_header(layout.frdm)
    config = FRDMConfig.from_dict((config or FRDMConfig.sd15()).to_dict())  # a copy we may adjust
    check_clip_configs(layout.text_encoder, layout.clip, config.text_config(), config.vision_config())
    shipped = config.unet_config() == FRDMConfig.sd15().unet_config()
    unet2d, vae = load_sd15(
        layout.sd15,
        dtype=dtype,
        unet_config=None if shipped else config.unet_config(),
        vae_config=None if shipped else config.vae_config(),
    )
    if list(unet2d.config.block_out_channels) != list(config.block_out_channels) or (
        unet2d.config.cross_attention_dim != config.cross_attention_dim
    ):
        raise WeightsError(f"{layout.sd15}: UNet architecture differs from the FRDM config's backbone")
    adapter, version = load_motion_adapter(layout.motion, dtype=dtype, config=config.motion_adapter_config())
    if adapter.config.use_motion_mid_block != config.use_motion_mid_block:
        if layout.frdm is not None:
            trained = "v1-5-v2" if config.use_motion_mid_block else "v1-5-v3"
            raise WeightsError(
                f"{layout.motion}: an AnimateDiff {version} motion module, but {layout.frdm} was trained with {trained}"
            )
        config.use_motion_mid_block = adapter.config.use_motion_mid_block
    config.motion_max_seq_length = adapter.config.motion_max_seq_length
    unet = assemble_unet_motion(unet2d, adapter)
    del unet2d, adapter
    text_encoder, tokenizer = load_clip_text(layout.text_encoder, dtype=dtype, expected=config.text_config())
    image_encoder = load_clip_vision(layout.clip, dtype=dtype, expected=config.vision_config())
    trainable = {}
    if layout.frdm is not None:
        # Trained weights replace every trainable tensor: skip the random init + backbone copy (600M parameters).
        from accelerate import init_empty_weights

        from frdm.engine.models import PreprocessModule, RestorationGuidanceNetwork

        with init_empty_weights(include_buffers=False):
            trainable["guidance"] = RestorationGuidanceNetwork(config)
            trainable["preprocess"] = PreprocessModule(config.preprocess_channels, config.block_out_channels[0])
    model = HaineiFRDM(
        config,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_encoder=image_encoder,
        **trainable,
    )
    if layout.frdm is not None:
        load_frdm_weights(layout.frdm, model, assign=True)
    return model.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------- description (frdm info)
_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _summarise(path: Path, prefixes: dict[str, tuple[str, ...]] | None = None) -> dict[str, dict[str, Any]]:
    """Per-part parameter count, dtypes and bytes of a safetensors file, from its header only."""
    _, tensors = read_header(path)
    parts: dict[str, dict[str, Any]] = {}
    for key, (dtype, shape) in tensors.items():
        if key.endswith((".pos_embed.pe", ".pos_encoder.pe", "position_ids")):
            continue  # fixed tables, not parameters
        name = "all"
        if prefixes:
            name = next((p for p, pres in prefixes.items() if key.startswith(pres)), "other")
        part = parts.setdefault(name, {"params": 0, "dtypes": set(), "bytes": 0, "file": str(path)})
        n = math.prod(shape)
        part["params"] += n
        part["dtypes"].add(dtype)
        part["bytes"] += n * _BYTES.get(dtype, 4)
    return parts


def describe_weights(weights_dir: str | Path) -> dict[str, Any]:
    """What a weights folder holds, without loading tensors: components, parameter counts, dtypes, memory."""
    from frdm.engine.models import FRDMConfig
    from frdm.engine.models.guidance import RestorationGuidanceNetwork
    from frdm.engine.models.preprocess import PreprocessModule

    layout = find_weights(weights_dir)
    components: dict[str, dict[str, Any] | None] = {}
    if layout.sd15.is_dir():
        components["unet"] = _summarise(folder_weights(layout.sd15 / "unet", "SD1.5 UNet"))["all"]
        components["vae"] = _summarise(folder_weights(layout.sd15 / "vae", "SD1.5 VAE"))["all"]
        sd15_kind = "diffusers folder"
    else:
        prefixes = {"unet": ("model.diffusion_model.",), "vae": ("first_stage_model.", "vae.")}
        parts = _summarise(layout.sd15, prefixes)
        components["unet"], components["vae"] = parts.get("unet"), parts.get("vae")
        sd15_kind = "single file"
    if layout.motion.is_file():
        info = motion_layout(layout.motion)
        motion_desc = f"{layout.motion} ({info['layout']} layout, {info['version']})"
        components["motion_module"] = _summarise(layout.motion)["all"]
    else:
        motion_desc = f"{layout.motion} (diffusers folder)"
        components["motion_module"] = _summarise(folder_weights(layout.motion, "motion adapter"))["all"]
    clip_file = folder_weights(layout.clip, "CLIP")
    if layout.text_encoder != layout.clip:
        components["text_encoder"] = _summarise(folder_weights(layout.text_encoder, "text encoder"))["all"]
        components["image_encoder"] = _summarise(clip_file, {"image_encoder": ("vision_model.",)}).get("image_encoder")
    else:
        parts = _summarise(clip_file, {"text_encoder": ("text_model.",), "image_encoder": ("vision_model.",)})
        components["text_encoder"], components["image_encoder"] = (
            parts.get("text_encoder"),
            parts.get("image_encoder"),
        )
    for name, part in components.items():
        if part is None:
            raise WeightsError(f"{layout.root}: no {name} weights found")
        part["trainable"] = False

    if layout.frdm is not None:
        config, version = read_frdm_header(layout.frdm)
        frdm = _summarise(layout.frdm)["all"]
        frdm_desc = f"{layout.frdm} (trained weights, format {version})"
    else:
        config = FRDMConfig.sd15()
        if layout.motion.is_file():  # the guidance network copies the motion module it will run with
            config.use_motion_mid_block = motion_layout(layout.motion)["version"] == "v1-5-v2"
        with torch.device("meta"):
            modules = (RestorationGuidanceNetwork(config), PreprocessModule(config.preprocess_channels))
            n = sum(p.numel() for m in modules for p in m.parameters())
        frdm = {"params": n, "dtypes": set(), "bytes": 0, "file": None}
        frdm_desc = "absent: the guidance network starts as a copy of the UNet encoder (untrained)"
    frdm["trainable"] = True
    components["frdm"] = frdm

    frozen = sum(c["params"] for c in components.values() if c and not c["trainable"])
    trainable = frdm["params"]
    return {
        "root": str(layout.root),
        "sd15": f"{layout.sd15} ({sd15_kind})",
        "motion_module": motion_desc,
        "clip": str(layout.clip),
        "frdm": frdm_desc,
        "components": {k: {**v, "dtypes": sorted(v["dtypes"])} for k, v in components.items() if v},
        "params_frozen": frozen,
        "params_trainable": trainable,
        "estimated_weights_memory_bytes": {
            "fp16": 2 * (frozen + trainable),
            "fp32": 4 * (frozen + trainable),
        },
    }
