"""Loaders for the frozen backbone: SD1.5 (UNet, VAE), the AnimateDiff motion module, CLIP text and vision.

Every loader reads local safetensors only, takes its configuration from the local folder or from the configs
shipped in ``configs/``, and never reaches a model hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from frdm.engine.errors import WeightsError

from .files import CONFIG_DIR, build_and_load, load_json, load_tensors, read_header, require_safetensors

SD15_CONFIG_DIR = CONFIG_DIR / "sd15"
MOTION_CONFIG_DIR = CONFIG_DIR / "motion_adapter"
CLIP_CONFIG_DIR = CONFIG_DIR / "clip-vit-large-patch14"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
# Sinusoidal position tables of the motion modules: fixed functions of the sequence length, computed by the
# constructor, never loaded (the AnimateDiff release files carry them under another name, or not at all).
POSITION_TABLES = (".pos_embed.pe",)


# ---------------------------------------------------------------------------- diffusers folders
def folder_weights(folder: Path, what: str) -> Path:
    """The safetensors weights file of a diffusers / transformers model folder."""
    folder = Path(folder)
    for name in (DIFFUSERS_WEIGHTS, "diffusion_pytorch_model.fp16.safetensors", "model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    for name in (DIFFUSERS_WEIGHTS, "model.safetensors"):  # sharded
        if (folder / f"{name}.index.json").is_file():
            return folder / f"{name}.index.json"
    if any((folder / name).is_file() for name in ("diffusion_pytorch_model.bin", "pytorch_model.bin")):
        raise WeightsError(f"{folder}: {what} weights are only in pickle (.bin) form; FRDM loads .safetensors")
    raise WeightsError(f"{folder}: no {what} weights ({DIFFUSERS_WEIGHTS} or model.safetensors) in this folder")


def _read_folder_state(folder: Path, what: str) -> tuple[dict[str, Any], Path]:
    path = folder_weights(folder, what)
    if path.name.endswith(".index.json"):  # sharded: read every shard the index names
        index = load_json(path)
        state: dict[str, Any] = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            state.update(load_tensors(folder / shard, f"{what} shard"))
        return state, path
    return load_tensors(path, what), path


def load_diffusers_model(cls, folder: Path, what: str, *, device="cpu", dtype=torch.float32):
    """A diffusers model from ``folder/config.json`` + safetensors weights, strictly checked."""
    folder = Path(folder)
    config = load_json(folder / "config.json")
    state, source = _read_folder_state(folder, what)
    return build_and_load(
        lambda: cls.from_config(config),
        state,
        source,
        what,
        device=device,
        dtype=dtype,
        computed_buffers=POSITION_TABLES,
    )


# ---------------------------------------------------------------------------- SD1.5
def sd15_unet_config() -> dict[str, Any]:
    return load_json(SD15_CONFIG_DIR / "unet" / "config.json")


def sd15_vae_config() -> dict[str, Any]:
    return load_json(SD15_CONFIG_DIR / "vae" / "config.json")


def load_sd15(
    path: Path,
    *,
    device="cpu",
    dtype=torch.float32,
    unet_config: dict[str, Any] | None = None,
    vae_config: dict[str, Any] | None = None,
):
    """SD1.5 UNet and VAE from a diffusers folder (``unet/``, ``vae/``) or one ``.safetensors`` checkpoint.

    A single file is read in the original (LDM) layout and converted with diffusers' converters; its
    architecture comes from the configs shipped in the package (``unet_config``/``vae_config`` replace them,
    for tests with small networks). Returns (UNet2DConditionModel, AutoencoderKL).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    path = Path(path)
    if path.is_dir():
        for sub in ("unet", "vae"):
            if not (path / sub).is_dir():
                raise WeightsError(f"{path}: not an SD1.5 diffusers folder (no {sub}/); see docs/weights.md")
        unet = load_diffusers_model(UNet2DConditionModel, path / "unet", "SD1.5 UNet", device=device, dtype=dtype)
        vae = load_diffusers_model(AutoencoderKL, path / "vae", "SD1.5 VAE", device=device, dtype=dtype)
        return unet, vae

    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    checkpoint = load_tensors(require_safetensors(path, "SD1.5 checkpoint"), "SD1.5 checkpoint")
    unet_config = unet_config or sd15_unet_config()
    vae_config = vae_config or sd15_vae_config()
    if not any(k.startswith("model.diffusion_model.") for k in checkpoint):
        raise WeightsError(
            f"{path}: no UNet weights (model.diffusion_model.*) in this single-file checkpoint; "
            "expected an original-layout SD1.5 checkpoint"
        )
    if not any(k.startswith(("first_stage_model.", "vae.")) for k in checkpoint):
        raise WeightsError(f"{path}: no VAE weights (first_stage_model.*) in this single-file checkpoint")
    unet_state = convert_ldm_unet_checkpoint(checkpoint, unet_config)
    vae_state = convert_ldm_vae_checkpoint(checkpoint, vae_config)
    del checkpoint
    unet = build_and_load(
        lambda: UNet2DConditionModel.from_config(unet_config),
        unet_state,
        path,
        "SD1.5 UNet",
        device=device,
        dtype=dtype,
    )
    del unet_state
    vae = build_and_load(
        lambda: AutoencoderKL.from_config(vae_config),
        vae_state,
        path,
        "SD1.5 VAE",
        device=device,
        dtype=dtype,
    )
    return unet, vae


# ---------------------------------------------------------------------------- AnimateDiff motion module
def motion_layout(path: Path) -> dict[str, Any]:
    """What a motion-module file holds, from its header only.

    Returns the key layout ('original' AnimateDiff release or 'diffusers'), the version ('v1-5-v2' has a
    mid-block motion module, 'v1-5-v3' has none) and the maximum sequence length of its position tables.
    """
    _, tensors = read_header(path)
    keys = set(tensors)
    if not any(".motion_modules." in k for k in keys):
        raise WeightsError(f"{path}: not an AnimateDiff motion module (no *.motion_modules.* keys)")
    original = any(".temporal_transformer." in k for k in keys)
    has_mid = any(k.startswith("mid_block.") for k in keys)
    seq_len = 32
    pe = [v for k, v in tensors.items() if k.endswith(("pos_encoder.pe", "pos_embed.pe"))]
    if pe:
        seq_len = pe[0][1][1]
    if seq_len == 24:
        raise WeightsError(f"{path}: AnimateDiff v1 motion modules (24 frames) are not supported; use v2 or v3")
    return {
        "layout": "original" if original else "diffusers",
        "version": "v1-5-v2" if has_mid else "v1-5-v3",
        "max_seq_length": seq_len,
    }


def load_motion_adapter(path: Path, *, device="cpu", dtype=torch.float32, config: dict[str, Any] | None = None):
    """AnimateDiff motion module from a safetensors file (original v1.5 v2 / v3 release layout, or diffusers
    layout) or a diffusers MotionAdapter folder. Returns (MotionAdapter, version)."""
    from diffusers import MotionAdapter
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    path = Path(path)
    if path.is_dir():
        adapter = load_diffusers_model(MotionAdapter, path, "motion adapter", device=device, dtype=dtype)
        return adapter, "v1-5-v2" if adapter.config.use_motion_mid_block else "v1-5-v3"
    info = motion_layout(require_safetensors(path, "motion module"))
    state = load_tensors(path, "motion module")
    if info["layout"] == "original":
        state = convert_animatediff_checkpoint_to_diffusers(state)  # also drops its pos_encoder tables
    cfg = dict(config or load_json(MOTION_CONFIG_DIR / info["version"] / "config.json"))
    cfg["use_motion_mid_block"] = info["version"] == "v1-5-v2"
    cfg["motion_max_seq_length"] = info["max_seq_length"]
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    adapter = build_and_load(
        lambda: MotionAdapter(**cfg),
        state,
        path,
        f"AnimateDiff {info['version']} motion module",
        device=device,
        dtype=dtype,
        computed_buffers=POSITION_TABLES,
    )
    return adapter, info["version"]


# ---------------------------------------------------------------------------- CLIP
# The architecture fields compared with the model's configuration before any tensor is read: a ViT-H/14 image
# encoder (1280 wide, "gelu") in clip/ is refused by name here instead of failing later in a matmul.
CLIP_ARCHITECTURE_FIELDS = {
    "text": (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "hidden_act",
    ),
    "vision": (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "image_size",
        "patch_size",
        "hidden_act",
    ),
}
# Parts of a CLIPModel file that the other tower's loader leaves alone (not "unexpected"). position_ids are
# index tables older transformers saved; the constructor computes them.
_CLIP_TOWER = {"text": "text_model.", "vision": "vision_model."}
_CLIP_SHARED = ("text_projection.", "visual_projection.", "logit_scale")
_CLIP_COMPUTED = ("position_ids",)


def _clip_config(cls, folder: Path, what: str, tower: str, expected: dict[str, Any] | None):
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"{folder}: no config.json for the {what}; expected a local transformers folder")
    data = load_json(config_path)
    # A CLIPModel folder nests each tower's config; a CLIPTextModel / CLIPVisionModel folder has it at the top.
    if data.get("model_type") == "clip" or f"{tower}_config" in data:
        data = data.get(f"{tower}_config") or {}
    try:
        config = cls(**{k: v for k, v in data.items() if not k.startswith("_")})
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{config_path}: not a valid {what} configuration ({exc})") from exc
    if expected is not None:
        fields = CLIP_ARCHITECTURE_FIELDS[tower]
        differ = [
            f"{k} {getattr(config, k)!r} (the model expects {expected[k]!r})"
            for k in fields
            if k in expected and getattr(config, k) != expected[k]
        ]
        if differ:
            raise WeightsError(
                f"{config_path}: this {what} is not the one the model is built for ({'; '.join(differ)}); "
                "FRDM's SD1.5 backbone needs CLIP ViT-L/14 (openai/clip-vit-large-patch14), see docs/weights.md"
            )
    return config


def check_clip_configs(text_folder: Path, vision_folder: Path, text: dict[str, Any], vision: dict[str, Any]) -> None:
    """Compare both CLIP folders' config.json with the model's before anything is loaded (a refusal after
    minutes of loading the UNet would come too late)."""
    from transformers import CLIPTextConfig, CLIPVisionConfig

    _clip_config(CLIPTextConfig, Path(text_folder), "CLIP text encoder", "text", text)
    _clip_config(CLIPVisionConfig, Path(vision_folder), "CLIP vision encoder", "vision", vision)


def _clip_tower(model_cls, config_cls, folder: Path, what: str, tower: str, *, device, dtype, expected):
    """One CLIP tower from a CLIPModel folder (keys ``text_model.*`` / ``vision_model.*``) or its own folder,
    strictly: missing, unexpected and mis-shaped tensors are named, nothing is left random."""
    folder = Path(folder)
    config = _clip_config(config_cls, folder, what, tower, expected)
    if not list(folder.glob("*.safetensors")) and not list(folder.glob("*.safetensors.index.json")):
        raise WeightsError(f"{folder}: no .safetensors weights for the {what} (pickle .bin files are not read)")
    state, source = _read_folder_state(folder, what)
    other = _CLIP_TOWER["vision" if tower == "text" else "text"]
    # The other tower and the projections of a CLIPModel file are not this loader's; anything else is checked.
    tower_state = {k: v for k, v in state.items() if not k.startswith((other, *_CLIP_SHARED))}
    # transformers 5 saves a tower alone without its prefix; a CLIPModel file (and older saves) carry it.
    prefix = _CLIP_TOWER[tower] if any(k.startswith(_CLIP_TOWER[tower]) for k in state) else ""
    model = build_and_load(
        lambda: model_cls(config),
        tower_state,
        source,
        what,
        device=device,
        dtype=dtype,
        computed_buffers=_CLIP_COMPUTED,
        prefix=prefix,
    )
    return model.eval()


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )


def load_clip_text(folder: Path, *, device="cpu", dtype=torch.float32, expected: dict[str, Any] | None = None):
    """CLIP text encoder + tokenizer from a local folder: a CLIPModel folder (clip-vit-large-patch14) or an
    SD1.5 diffusers ``text_encoder/`` folder, whose tokenizer then sits beside it in ``tokenizer/``.

    ``expected`` (``FRDMConfig.text_config()``): the architecture the model needs; a folder whose
    config.json differs in ``CLIP_ARCHITECTURE_FIELDS`` is refused before its tensors are read."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    model = _clip_tower(
        CLIPTextModel, CLIPTextConfig, folder, "CLIP text encoder", "text", device=device, dtype=dtype,
        expected=expected,
    )  # fmt: skip
    tok_dir = folder if _has_tokenizer(folder) else folder.parent / "tokenizer"
    if not _has_tokenizer(tok_dir):
        raise WeightsError(
            f"{folder}: no CLIP tokenizer (tokenizer.json, or vocab.json + merges.txt) here or in {tok_dir}"
        )
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    return model, tokenizer


def load_clip_vision(folder: Path, *, device="cpu", dtype=torch.float32, expected: dict[str, Any] | None = None):
    """CLIP vision encoder (patch tokens) from a local CLIPModel or CLIPVisionModel folder; ``expected``
    (``FRDMConfig.vision_config()``) as for :func:`load_clip_text`."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    return _clip_tower(
        CLIPVisionModel, CLIPVisionConfig, Path(folder), "CLIP vision encoder", "vision", device=device,
        dtype=dtype, expected=expected,
    )  # fmt: skip
