"""Full-size HaineiFRDM on the CPU from weight files in both layouts: `frdm info` and one denoising step.

Writes random full-size weights (SD1.5 UNet + VAE, AnimateDiff v1.5 v2 motion module, CLIP ViT-L/14; fp16
files, values N(0, 0.02): the point is shapes, key names, dtypes and memory, not pictures) twice:

    a/  sd15/ as a diffusers folder, motion_module.safetensors in the AnimateDiff release layout, clip/
    b/  sd15.safetensors as one original-layout (LDM) checkpoint, the motion module in diffusers layout, clip/

then, for each, runs `frdm info --json` and loads the model (float32, no frdm.safetensors: the guidance network
is copied from the UNet) and restores one 128x128 frame pair with one step (a 16x16 latent: one patch, so the
step is one full HaineiFRDM forward on 2 frames, plus CLIP, the VAE and the defect matte). Each phase runs in
its own process so its peak RSS is its own. Not in CI: it needs ~10 GB of RAM and ~8 GB of disk.

    python benchmarks/full_size_cpu.py [--dir DIR] [--keep] [--json FILE]
    python benchmarks/full_size_cpu.py --tiny          # the same phases on the tiny config (checks the script)

Prints one JSON object: per phase wall time (s) and peak RSS (GiB, ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)  # KiB on Linux


def _random_state(model_factory) -> dict:
    """fp16 N(0, 0.02) tensors in the shapes of the model's state dict, without building it for real."""
    import torch
    from accelerate import init_empty_weights

    with init_empty_weights():
        shapes = {k: v.shape for k, v in model_factory().state_dict().items()}
    g = torch.Generator().manual_seed(0)
    return {k: (torch.randn(s, generator=g) * 0.02).half() for k, s in shapes.items()}


def _config():
    from frdm.engine.models import FRDMConfig

    return FRDMConfig.tiny() if os.environ.get("FRDM_BENCH_TINY") == "1" else FRDMConfig.sd15()


def write_weights(root: Path) -> dict:
    import torch
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel

    from frdm.engine.models.frdm import tiny_tokenizer
    from frdm.engine.weights.backbone import MOTION_CONFIG_DIR, sd15_unet_config, sd15_vae_config
    from frdm.engine.weights.files import load_json
    from frdm.engine.weights.ldm_layout import motion_to_original, unet_to_ldm, vae_to_ldm

    cfg = _config()
    tiny = cfg.block_out_channels != (320, 640, 1280, 1280)
    a, b = root / "a", root / "b"
    for sub in (a / "sd15" / "unet", a / "sd15" / "vae", b):
        sub.mkdir(parents=True, exist_ok=True)
    # The shipped SD1.5 configs are what a real diffusers folder holds and what a single file is read with.
    unet_config, vae_config = (cfg.unet_config(), cfg.vae_config()) if tiny else (sd15_unet_config(), sd15_vae_config())

    def contiguous(state: dict) -> dict:
        return {k: v.contiguous() for k, v in state.items()}

    unet = _random_state(lambda: UNet2DConditionModel.from_config(unet_config))
    save_file(unet, a / "sd15" / "unet" / "diffusion_pytorch_model.safetensors")
    (a / "sd15" / "unet" / "config.json").write_text(json.dumps(unet_config))
    vae = _random_state(lambda: AutoencoderKL.from_config(vae_config))
    save_file(vae, a / "sd15" / "vae" / "diffusion_pytorch_model.safetensors")
    (a / "sd15" / "vae" / "config.json").write_text(json.dumps(vae_config))
    has_attn = ["CrossAttn" in t for t in unet_config["up_block_types"]]
    single = unet_to_ldm(unet, unet_config["layers_per_block"], has_attn)
    single.update(vae_to_ldm(vae, len(vae_config["block_out_channels"])))
    save_file(contiguous(single), b / "sd15.safetensors")
    del unet, vae, single

    shipped_motion = load_json(MOTION_CONFIG_DIR / "v1-5-v2" / "config.json")
    motion_cfg = cfg.motion_adapter_config() if tiny else {k: v for k, v in shipped_motion.items() if k[0] != "_"}
    motion = _random_state(lambda: MotionAdapter(**motion_cfg))
    save_file(
        contiguous(motion_to_original(motion, motion_cfg["motion_max_seq_length"])), a / "motion_module.safetensors"
    )
    save_file(motion, b / "motion_module.safetensors")
    del motion

    clip_config = CLIPConfig(
        text_config=cfg.text_config(), vision_config=cfg.vision_config(), projection_dim=cfg.projection_dim
    )
    clip = _random_state(lambda: CLIPModel(clip_config))
    (a / "clip").mkdir()
    save_file(clip, a / "clip" / "model.safetensors")
    (a / "clip" / "config.json").write_text(clip_config.to_json_string())
    # The real CLIP BPE vocabulary is a download; a small offline one tokenizes into the same 49408-entry table.
    tiny_tokenizer(cfg.text_max_length).save_pretrained(a / "clip")
    shutil.copytree(a / "clip", b / "clip")
    del clip
    sizes = {p.name: round(sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e9, 2) for p in (a, b)}
    return {"disk_gb": sizes, "torch_threads": torch.get_num_threads()}


def info(root: Path) -> dict:
    import contextlib
    import io

    from frdm.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["info", "--weights", str(root), "--json"])
    report = json.loads(out.getvalue())
    return {
        "rc": rc,
        "sd15": report["sd15"],
        "motion_module": report["motion_module"],
        "params_frozen_M": round(report["params_frozen"] / 1e6, 2),
        "params_trainable_M": round(report["params_trainable"] / 1e6, 2),
    }


def step(root: Path) -> dict:
    import numpy as np
    import torch

    from frdm.engine.diffusion import DiffusionRestorer
    from frdm.engine.restorer import Clip
    from frdm.engine.weights import load_model

    t0 = time.perf_counter()
    model = load_model(root, device="cpu", dtype=torch.float32, config=_config())
    load_s = time.perf_counter() - t0
    restorer = DiffusionRestorer(model, device="cpu", window_cache=0, log=lambda message: None)
    rng = np.random.default_rng(0)
    size = 16 * model.config.vae_downscale  # a 16x16 latent
    frames = np.clip(0.5 + 0.1 * rng.standard_normal((2, size, size, 3)), 0, 1).astype(np.float32)
    params = {"engine": "diffusion", "steps": 1, "window": 2, "window_overlap": 0, "patch_size": size,
              "patch_overlap": 16, "mask": "none"}  # fmt: skip
    t1 = time.perf_counter()
    out = list(restorer.restore(Clip(frames, [0, 1], [0, 1]), params))
    step_s = time.perf_counter() - t1
    image = out[0].image
    return {
        "frames": f"2 x {size}x{size}",
        "load_s": round(load_s, 1),
        "step_s": round(step_s, 1),
        "params_total_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "output": list(image.shape),
        "output_finite": bool(np.isfinite(image).all()),
        "plan": restorer.last_plan.describe() if restorer.last_plan else None,
    }


PHASES = {"write": write_weights, "info": info, "step": step}


def _child(phase: str, root: Path) -> dict:
    """Run one phase in a fresh process (its own peak RSS) and read its JSON line."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--dir", str(root)], capture_output=True, text=True, check=False
    )
    wall = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "wall_s": wall}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="where to write the weights (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the weights afterwards")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--tiny", action="store_true", help="the tiny config (a quick check of this script)")
    ap.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.tiny:
        os.environ["FRDM_BENCH_TINY"] = "1"  # the children read it
    if args.phase:  # a child: one phase, one JSON line
        result = PHASES[args.phase](Path(args.dir))
        result["peak_rss_gib"] = _peak_rss_gib()
        print(json.dumps(result))
        return 0
    root = Path(args.dir or tempfile.mkdtemp(prefix="frdm-full-size-"))
    report: dict = {"dir": str(root)}
    try:
        report["write"] = _child("write", root)
        for layout in ("a", "b"):
            report[f"info_{layout}"] = _child("info", root / layout)
            report[f"step_{layout}"] = _child("step", root / layout)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
