"""Offline weight loading: layouts, strict key checks with named errors, FRDM weights round trip, info."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPConfig, CLIPModel  # noqa: E402

from frdm.engine.errors import WeightsError  # noqa: E402
from frdm.engine.models import FRDMConfig, HaineiFRDM  # noqa: E402
from frdm.engine.models.frdm import tiny_tokenizer  # noqa: E402
from frdm.engine.weights import (  # noqa: E402
    describe_weights,
    load_frdm_weights,
    load_model,
    load_motion_adapter,
    load_sd15,
    read_frdm_header,
    save_frdm_weights,
)
from frdm.engine.weights.backbone import CLIP_CONFIG_DIR, MOTION_CONFIG_DIR, SD15_CONFIG_DIR  # noqa: E402
from frdm.engine.weights.ldm_layout import motion_to_original, unet_to_ldm, vae_to_ldm  # noqa: E402


# ---------------------------------------------------------------------------- helpers: write weight folders
def _components(seed: int = 0, config: FRDMConfig | None = None) -> dict:
    cfg = config or FRDMConfig.tiny()
    torch.manual_seed(seed)
    clip_config = CLIPConfig(
        text_config=cfg.text_config(), vision_config=cfg.vision_config(), projection_dim=cfg.projection_dim
    )
    return {
        "config": cfg,
        "unet2d": UNet2DConditionModel(**cfg.unet_config()),
        "adapter": MotionAdapter(**cfg.motion_adapter_config()),
        "vae": AutoencoderKL(**cfg.vae_config()),
        "clip": CLIPModel(clip_config),
    }


def _write_weights(root: Path, comps: dict, *, sd15: str = "folder", motion: str = "original") -> Path:
    cfg: FRDMConfig = comps["config"]
    root.mkdir(parents=True, exist_ok=True)
    if sd15 == "folder":
        comps["unet2d"].save_pretrained(root / "sd15" / "unet")
        comps["vae"].save_pretrained(root / "sd15" / "vae")
    else:
        has_attn = ["CrossAttn" in t for t in cfg.up_block_types]
        state = unet_to_ldm(comps["unet2d"].state_dict(), cfg.layers_per_block, has_attn)
        state.update(vae_to_ldm(comps["vae"].state_dict(), len(cfg.vae_block_out_channels)))
        # A released checkpoint also carries its text encoder, schedule and EMA bookkeeping: passed over.
        state.update({k: torch.zeros(s[:1]) for k, s in REAL_SD15_OTHER_KEYS.items()})
        save_file({k: v.contiguous() for k, v in state.items()}, root / "sd15.safetensors")
    adapter_state = comps["adapter"].state_dict()
    if motion == "original":
        mm = motion_to_original(adapter_state, cfg.motion_max_seq_length)
        save_file(mm, root / "motion_module.safetensors")
    elif motion == "diffusers":
        save_file(adapter_state, root / "motion_module.safetensors")
    else:
        comps["adapter"].save_pretrained(root / "motion_adapter")
    comps["clip"].save_pretrained(root / "clip")
    tiny_tokenizer(cfg.text_max_length).save_pretrained(root / "clip")
    return root


def _expected_model(comps: dict) -> HaineiFRDM:
    """The model load_model should produce, assembled in memory from the same components."""
    cfg = comps["config"]
    clip = comps["clip"]
    # transformers 5: CLIPModel's towers are a CLIPTextModel and a CLIPVisionModel.
    return HaineiFRDM(
        cfg,
        unet=UNetMotionModel.from_unet2d(comps["unet2d"], comps["adapter"]),
        vae=copy.deepcopy(comps["vae"]),
        text_encoder=copy.deepcopy(clip.text_model),
        tokenizer=tiny_tokenizer(cfg.text_max_length),
        image_encoder=copy.deepcopy(clip.vision_model),
    )


def _assert_same_params(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _inputs(model: HaineiFRDM) -> dict:
    g = torch.Generator().manual_seed(3)
    degraded = torch.rand(1, 2, 3, 64, 64, generator=g)
    lat = model.encode_latents(degraded)
    return dict(
        noisy_latents=torch.randn(lat.shape, generator=g),
        timesteps=torch.tensor([400]),
        degraded=degraded,
        degraded_latents=lat,
        prompt_embeds=model.encode_prompt(["old film"]),
        global_tokens=model.encode_global_frame(degraded),
        global_latents=lat,
        boxes=torch.tensor([[0.0, 0.0, 0.5, 0.5]]),
    )


# ---------------------------------------------------------------------------- FRDM weights
def test_frdm_weights_round_trip_is_bit_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a = HaineiFRDM.build(FRDMConfig.tiny())
    with torch.no_grad():  # make the zero-initialised parameters non-trivial
        for p in a.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = save_frdm_weights(tmp_path / "frdm.safetensors", a)
    config, version = read_frdm_header(path)
    assert config == a.config and version == 1
    torch.manual_seed(1)
    b = HaineiFRDM.build(FRDMConfig.tiny())
    assert not torch.equal(a.guidance.conv_in.weight, b.guidance.conv_in.weight)
    load_frdm_weights(path, b)
    _assert_same_params(a.guidance, b.guidance)
    _assert_same_params(a.preprocess, b.preprocess)
    for name in ("unet", "vae", "text_encoder", "image_encoder"):  # same backbone, then the same output
        getattr(b, name).load_state_dict(getattr(a, name).state_dict())
    x = _inputs(a)
    with torch.no_grad():
        assert torch.equal(a(**x).noise_pred, b(**x).noise_pred)
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write leaves no temp file


def test_frdm_weights_errors_name_file_and_keys(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = HaineiFRDM.build(FRDMConfig.tiny())
    path = save_frdm_weights(tmp_path / "frdm.safetensors", model)
    meta = {"format": "frdm-trainable", "format_version": "1", "config": model.config.to_json()}
    state = load_file(str(path))
    # partial: one key dropped, one foreign key added
    partial = {k: v for k, v in state.items() if k != "guidance.conv_in.weight"}
    partial["guidance.not_a_layer.weight"] = torch.zeros(1)
    save_file(partial, tmp_path / "partial.safetensors", metadata=meta)
    expected = (
        r"partial\.safetensors.*missing keys: guidance\.conv_in\.weight.*"
        r"unexpected keys: guidance\.not_a_layer\.weight"
    )
    with pytest.raises(WeightsError, match=expected):
        load_frdm_weights(tmp_path / "partial.safetensors", model)
    # trained with another configuration
    other = FRDMConfig.tiny()
    other.texture_dim = 8
    save_file(state, tmp_path / "other.safetensors", metadata={**meta, "config": other.to_json()})
    with pytest.raises(WeightsError, match=r"other\.safetensors.*different configuration.*texture_dim"):
        load_frdm_weights(tmp_path / "other.safetensors", model)
    # newer format, no header, pickle, truncated
    save_file(state, tmp_path / "newer.safetensors", metadata={**meta, "format_version": "99"})
    with pytest.raises(WeightsError, match=r"newer\.safetensors.*format 99"):
        load_frdm_weights(tmp_path / "newer.safetensors", model)
    save_file(state, tmp_path / "bare.safetensors")
    with pytest.raises(WeightsError, match=r"bare\.safetensors: not an FRDM weights file"):
        load_frdm_weights(tmp_path / "bare.safetensors", model)
    (tmp_path / "frdm.ckpt").write_bytes(b"\x80\x04pickle")
    with pytest.raises(WeightsError, match=r"frdm\.ckpt.*pickle"):
        load_frdm_weights(tmp_path / "frdm.ckpt", model)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"cut\.safetensors"):
        load_frdm_weights(tmp_path / "cut.safetensors", model)


# ---------------------------------------------------------------------------- backbone layouts
@pytest.mark.slow
def test_load_model_from_folder_layout_matches_in_memory_model(tmp_path: Path) -> None:
    comps = _components(seed=5)
    root = _write_weights(tmp_path / "w", comps, sd15="folder", motion="original")
    expected = _expected_model(comps)
    save_frdm_weights(root / "frdm.safetensors", expected)
    loaded = load_model(root)
    for name in ("unet", "vae", "text_encoder", "image_encoder", "guidance", "preprocess"):
        _assert_same_params(getattr(loaded, name), getattr(expected, name))
    with torch.no_grad():
        assert torch.equal(loaded(**_inputs(loaded)).noise_pred, expected(**_inputs(expected)).noise_pred)
    assert all(not p.requires_grad for p in loaded.unet.parameters())
    assert all(p.requires_grad and not p.is_meta for p in loaded.trainable_parameters())
    assert not any(t.is_meta for t in loaded.state_dict().values())


@pytest.mark.slow
def test_load_model_from_single_file_checkpoint_and_diffusers_motion_layout(tmp_path: Path) -> None:
    comps = _components(seed=6)
    root = _write_weights(tmp_path / "w", comps, sd15="single", motion="diffusers")
    expected = _expected_model(comps)
    save_frdm_weights(root / "frdm.safetensors", expected)
    loaded = load_model(root)
    _assert_same_params(loaded.unet, expected.unet)
    _assert_same_params(loaded.vae, expected.vae)


def test_motion_module_v2_and_v3_layouts(tmp_path: Path) -> None:
    for mid, version in ((True, "v1-5-v2"), (False, "v1-5-v3")):
        cfg = FRDMConfig.tiny()
        cfg.use_motion_mid_block = mid
        torch.manual_seed(0)
        adapter = MotionAdapter(**cfg.motion_adapter_config())
        path = tmp_path / f"{version}.safetensors"
        save_file(motion_to_original(adapter.state_dict(), cfg.motion_max_seq_length), path)
        loaded, found = load_motion_adapter(path, config=cfg.motion_adapter_config())
        assert found == version and loaded.config.use_motion_mid_block == mid
        _assert_same_params(loaded, adapter)


def test_no_frdm_weights_starts_untrained_and_follows_motion_version(tmp_path: Path) -> None:
    cfg = FRDMConfig.tiny()
    cfg.use_motion_mid_block = False  # a v3 motion module
    comps = _components(seed=2, config=cfg)
    root = _write_weights(tmp_path / "w", comps)
    model = load_model(root, config=FRDMConfig.tiny())
    assert model.config.use_motion_mid_block is False
    assert len(model.guidance.mid_block.motion_modules) == 0
    x = _inputs(model)
    with torch.no_grad():  # untrained guidance: exactly the backbone
        out = model(**x).noise_pred
        assert torch.equal(out, model.backbone_forward(x["noisy_latents"], x["timesteps"], x["prompt_embeds"]))


def test_wrong_missing_and_partial_backbone_files_are_named(tmp_path: Path) -> None:
    comps = _components(seed=1)
    root = _write_weights(tmp_path / "w", comps, sd15="single")
    (root / "motion_module.safetensors").rename(root / "mm.safetensors")
    with pytest.raises(WeightsError, match="no AnimateDiff motion module.*motion_module.safetensors"):
        load_model(root, config=FRDMConfig.tiny())
    (root / "mm.safetensors").rename(root / "motion_module.safetensors")
    # a UNet with a layer missing
    state = load_file(str(root / "sd15.safetensors"))
    del state["model.diffusion_model.out.2.weight"]
    save_file(state, root / "sd15.safetensors")
    with pytest.raises(WeightsError, match=r"sd15\.safetensors: does not match the SD1.5 UNet.*conv_out\.weight"):
        load_model(root, config=FRDMConfig.tiny())
    # not a motion module at all
    save_file({"foo.weight": torch.zeros(2)}, root / "motion_module.safetensors")
    with pytest.raises(WeightsError, match=r"motion_module\.safetensors: not an AnimateDiff motion module"):
        load_motion_adapter(root / "motion_module.safetensors")
    # a diffusers folder without its VAE weights
    folder = _write_weights(tmp_path / "f", comps, sd15="folder")
    (folder / "sd15" / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"sd15/vae: no SD1.5 VAE weights"):
        load_sd15(folder / "sd15")


def test_shipped_configs_match_the_sd15_preset() -> None:
    cfg = FRDMConfig.sd15()
    unet = json.loads((SD15_CONFIG_DIR / "unet" / "config.json").read_text())
    for key, value in cfg.unet_config().items():
        assert unet[key] == value, key
    vae = json.loads((SD15_CONFIG_DIR / "vae" / "config.json").read_text())
    for key, value in cfg.vae_config().items():
        assert vae[key] == value, key
    v2 = json.loads((MOTION_CONFIG_DIR / "v1-5-v2" / "config.json").read_text())
    v3 = json.loads((MOTION_CONFIG_DIR / "v1-5-v3" / "config.json").read_text())
    assert v2["use_motion_mid_block"] and not v3["use_motion_mid_block"]
    text = json.loads((CLIP_CONFIG_DIR / "text_config.json").read_text())
    assert text["hidden_size"] == cfg.text_hidden_size == cfg.cross_attention_dim


def test_describe_weights_counts_from_headers(tmp_path: Path) -> None:
    comps = _components(seed=0)
    root = _write_weights(tmp_path / "w", comps, sd15="single")
    expected = _expected_model(comps)
    save_frdm_weights(root / "frdm.safetensors", expected)
    info = describe_weights(root)

    def n(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert info["components"]["unet"]["params"] == n(comps["unet2d"])
    assert info["components"]["motion_module"]["params"] == n(comps["adapter"])
    assert info["components"]["vae"]["params"] == n(comps["vae"])
    assert info["components"]["image_encoder"]["params"] == n(comps["clip"].vision_model)
    assert info["params_trainable"] == sum(p.numel() for p in expected.trainable_parameters())
    assert info["components"]["unet"]["dtypes"] == ["F32"]


def test_frdm_info_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from frdm.cli import main

    comps = _components(seed=0)
    root = _write_weights(tmp_path / "w", comps)
    assert main(["info", "--weights", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params_frozen"] > 0 and "absent" in report["frdm"]
    assert main(["info", "--weights", str(root)]) == 0
    text = capsys.readouterr().out
    assert "original layout, v1-5-v2" in text and "trainable" in text
    # A person's error: one line naming the folder, exit code 2.
    assert main(["info", "--weights", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: weights folder not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------- full size, offline
@pytest.mark.slow
def test_full_size_random_single_file_sd15_loads_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A random SD1.5 checkpoint in the original single-file layout (fp16, 1.9 GB) loads, shipped configs."""
    import socket

    from accelerate import init_empty_weights

    def no_network(*args, **kwargs):
        raise AssertionError("the loader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    unet_config = json.loads((SD15_CONFIG_DIR / "unet" / "config.json").read_text())
    vae_config = json.loads((SD15_CONFIG_DIR / "vae" / "config.json").read_text())
    with init_empty_weights():
        unet_shapes = {k: v.shape for k, v in UNet2DConditionModel.from_config(unet_config).state_dict().items()}
        vae_shapes = {k: v.shape for k, v in AutoencoderKL.from_config(vae_config).state_dict().items()}
    g = torch.Generator().manual_seed(0)

    def rand(shapes: dict) -> dict:
        return {k: torch.randn(s, generator=g, dtype=torch.float16) for k, s in shapes.items()}

    unet_state, vae_state = rand(unet_shapes), rand(vae_shapes)
    unet_probes = (
        "conv_in.weight",
        "up_blocks.3.attentions.2.proj_out.weight",
        "mid_block.resnets.1.conv2.bias",
    )
    probes = {k: unet_state[k].clone() for k in unet_probes}
    vae_probe = vae_state["decoder.mid_block.attentions.0.to_q.weight"].clone()
    ckpt = unet_to_ldm(unet_state, 2, ["CrossAttn" in t for t in unet_config["up_block_types"]])
    ckpt.update(vae_to_ldm(vae_state, 4))
    del unet_state, vae_state
    _assert_real_ldm_layout(ckpt)  # what is written is what a released file holds, not only what we read
    ckpt.update({k: torch.zeros(s, dtype=torch.float16) for k, s in REAL_SD15_OTHER_KEYS.items()})
    path = tmp_path / "sd15.safetensors"
    save_file(ckpt, path)
    del ckpt
    unet, vae = load_sd15(path, dtype=torch.float16)
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(859.52e6, rel=1e-4)
    assert unet.dtype == torch.float16 and not any(p.is_meta for p in unet.parameters())
    state = unet.state_dict()
    for key, value in probes.items():
        assert torch.equal(state[key], value), key
    assert torch.equal(vae.decoder.mid_block.attentions[0].to_q.weight, vae_probe)


# ---------------------------------------------------------------------------- CLIP, strictly
def _clip_folder(tmp_path: Path, name: str, state: dict, config_dir: Path) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text((config_dir / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    return folder


def test_partial_foreign_and_misshaped_clip_files_are_refused_naming_the_tensors(tmp_path: Path) -> None:
    from frdm.engine.weights import load_clip_text, load_clip_vision

    comps = _components(seed=0)
    root = _write_weights(tmp_path / "w", comps)
    state = load_file(str(root / "clip" / "model.safetensors"))
    cfg = comps["config"]
    text, vision = load_clip_text(root / "clip", expected=cfg.text_config())[0], load_clip_vision(root / "clip")
    assert torch.equal(text.final_layer_norm.weight, state["text_model.final_layer_norm.weight"])
    assert torch.equal(vision.state_dict()["post_layernorm.bias"], state["vision_model.post_layernorm.bias"])

    def without(*prefixes: str) -> dict:
        return {k: v for k, v in state.items() if not k.startswith(prefixes)}

    misshaped = {**state, "text_model.embeddings.position_embedding.weight": torch.zeros(8, 32)}
    cases = {
        "no_final_norm": (
            without("text_model.final_layer_norm."),
            load_clip_text,
            r"2 missing keys: text_model\.final_layer_norm\.bias, text_model\.final_layer_norm\.weight",
        ),
        "no_post_norm": (
            without("vision_model.post_layernorm."),
            load_clip_vision,
            r"2 missing keys: vision_model\.post_layernorm\.bias",
        ),
        "no_layer": (
            without("text_model.encoder.layers.0."),
            load_clip_text,
            r"16 missing keys: text_model\.encoder\.",
        ),
        "foreign": ({"conv_in.weight": torch.zeros(4)}, load_clip_vision, r"missing keys: .*unexpected keys: conv_in"),
        "misshaped": (
            misshaped,
            load_clip_text,
            r"wrong shape: text_model\.embeddings\.position_embedding\.weight \(8, 32\) \(expected \(16, 32\)\)",
        ),
    }
    for name, (bad, loader, message) in cases.items():
        folder = _clip_folder(tmp_path, name, bad, root / "clip")
        tiny_tokenizer(cfg.text_max_length).save_pretrained(folder)
        with pytest.raises(WeightsError, match=rf"{name}/model\.safetensors: does not match the CLIP .*{message}"):
            loader(folder)


def test_a_vit_h_clip_config_is_refused_at_load_against_the_model_config(tmp_path: Path) -> None:
    from frdm.engine.weights import load_clip_vision

    comps = _components(seed=0)
    root = _write_weights(tmp_path / "w", comps)
    config = json.loads((root / "clip" / "config.json").read_text())
    # OpenCLIP ViT-H/14's vision tower (what SD2.x uses): refused from its config.json, before any tensor.
    config["vision_config"].update(
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120, patch_size=14,
        image_size=224, hidden_act="gelu",
    )  # fmt: skip
    (root / "clip" / "config.json").write_text(json.dumps(config))
    (root / "clip" / "model.safetensors").write_bytes(b"not read")
    refused = r"clip/config\.json: this CLIP vision encoder is not the one.*hidden_size 1280 \(the model expects 1024\)"
    with pytest.raises(WeightsError, match=refused):
        load_clip_vision(root / "clip", expected=FRDMConfig.sd15().vision_config())
    # load_model compares with the model's own config (here the tiny one's 32-wide tower).
    with pytest.raises(WeightsError, match=r"clip/config\.json: .*hidden_size 1280 \(the model expects 32\)"):
        load_model(root, config=FRDMConfig.tiny())


# ---------------------------------------------------------------------------- the real single-file layout
# Key names and shapes of the released SD1.5 checkpoint (v1-5-pruned-emaonly, CompVis LDM layout), written
# out here rather than produced by our converter: what a real file holds, a sample from every kind of block.
REAL_SD15_LDM_KEYS = {
    "model.diffusion_model.time_embed.0.weight": (1280, 320),
    "model.diffusion_model.time_embed.2.weight": (1280, 1280),
    "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
    "model.diffusion_model.input_blocks.1.0.in_layers.0.weight": (320,),
    "model.diffusion_model.input_blocks.1.0.in_layers.2.weight": (320, 320, 3, 3),
    "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight": (320, 1280),
    "model.diffusion_model.input_blocks.1.0.out_layers.3.weight": (320, 320, 3, 3),
    "model.diffusion_model.input_blocks.1.1.norm.weight": (320,),
    "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": (320, 320),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.2.weight": (320, 1280),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.norm3.weight": (320,),
    "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
    "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
    "model.diffusion_model.input_blocks.7.0.skip_connection.weight": (1280, 640, 1, 1),
    "model.diffusion_model.input_blocks.9.0.op.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.input_blocks.11.0.out_layers.3.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.middle_block.0.in_layers.2.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.middle_block.1.proj_out.weight": (1280, 1280, 1, 1),
    "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_v.weight": (1280, 768),
    "model.diffusion_model.middle_block.2.out_layers.3.bias": (1280,),
    "model.diffusion_model.output_blocks.0.0.in_layers.2.weight": (1280, 2560, 3, 3),
    "model.diffusion_model.output_blocks.0.0.skip_connection.weight": (1280, 2560, 1, 1),
    "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.output_blocks.3.1.proj_in.weight": (1280, 1280, 1, 1),
    "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
    "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
    "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
    "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn1.to_out.0.weight": (320, 320),
    "model.diffusion_model.out.0.weight": (320,),
    "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
    "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
    "first_stage_model.encoder.down.0.block.0.norm1.weight": (128,),
    "first_stage_model.encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
    "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
    "first_stage_model.encoder.down.3.block.1.conv2.weight": (512, 512, 3, 3),
    "first_stage_model.encoder.mid.block_1.conv1.weight": (512, 512, 3, 3),
    "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
    "first_stage_model.encoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
    "first_stage_model.encoder.norm_out.weight": (512,),
    "first_stage_model.encoder.conv_out.weight": (8, 512, 3, 3),
    "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
    "first_stage_model.post_quant_conv.weight": (4, 4, 1, 1),
    "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
    "first_stage_model.decoder.mid.attn_1.norm.weight": (512,),
    "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
    "first_stage_model.decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
    "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
    "first_stage_model.decoder.norm_out.weight": (128,),
    "first_stage_model.decoder.conv_out.weight": (3, 128, 3, 3),
}
# What else a released checkpoint carries, which the loader must pass over.
REAL_SD15_OTHER_KEYS = {
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "alphas_cumprod": (1000,),
    "betas": (1000,),
    "model_ema.decay": (),
}


def _shipped_sd15_shapes() -> tuple[dict, dict]:
    from accelerate import init_empty_weights

    unet_config = json.loads((SD15_CONFIG_DIR / "unet" / "config.json").read_text())
    vae_config = json.loads((SD15_CONFIG_DIR / "vae" / "config.json").read_text())
    with init_empty_weights():
        unet = {k: v.shape for k, v in UNet2DConditionModel.from_config(unet_config).state_dict().items()}
        vae = {k: v.shape for k, v in AutoencoderKL.from_config(vae_config).state_dict().items()}
    return unet, vae


def _assert_real_ldm_layout(checkpoint: dict) -> None:
    wrong = {k: s for k, s in REAL_SD15_LDM_KEYS.items() if tuple(checkpoint[k].shape if k in checkpoint else ()) != s}
    assert not wrong, wrong


def test_written_single_file_layout_has_the_real_ldm_key_names() -> None:
    unet, vae = _shipped_sd15_shapes()
    meta = {k: torch.empty(s, device="meta") for k, s in unet.items()}
    ckpt = unet_to_ldm(meta, 2, [False, True, True, True])
    ckpt.update(vae_to_ldm({k: torch.empty(s, device="meta") for k, s in vae.items()}, 4))
    _assert_real_ldm_layout(ckpt)
    assert len(ckpt) == len(unet) + len(vae)  # one file key per diffusers tensor, none merged or dropped
