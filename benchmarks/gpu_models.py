"""HaineiFRDM at full size: forward time and peak memory at 512x512 x 16 frames (random weights, built directly
on the device), against the frozen backbone alone (UNet + motion module) in the same run.

    python benchmarks/gpu_models.py --device cuda                 # sd15 preset, fp16, 512x512 x 16 frames
    python benchmarks/gpu_models.py --device cuda --backward      # + one training step's backward (memory)
    python benchmarks/gpu_models.py --device cpu --tiny           # check the script itself on a CPU

Prints one JSON object. Times are medians over --repeats after --warmup runs; peak memory is
torch.cuda.max_memory_allocated around each phase, minus what the weights already held.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from frdm.engine.models import FRDMConfig, HaineiFRDM


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, warmup: int, repeats: int) -> tuple[float, float | None]:
    """(median seconds, peak bytes allocated above the level before the call, or None off CUDA)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    base = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) - base if base is not None else None
    return statistics.median(times), peak


def _gib(n: float | None) -> float | None:
    return None if n is None else round(n / 2**30, 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny config (CPU check of this script)")
    ap.add_argument("--size", type=int, default=None, help="patch size in pixels (default 512; tiny: 64)")
    ap.add_argument("--frames", type=int, default=None, help="frames per window (default 16; tiny: 2)")
    ap.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default=None, help="default fp16 (cpu: fp32)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backward", action="store_true", help="also time forward+backward into trainable params")
    args = ap.parse_args()

    device = torch.device(args.device)
    config = FRDMConfig.tiny() if args.tiny else FRDMConfig.sd15()
    size = args.size or (64 if args.tiny else 512)
    frames = args.frames or config.num_frames
    dtype_name = args.dtype or ("fp32" if device.type == "cpu" else "fp16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = HaineiFRDM.build(config, device=device, dtype=dtype)
    build_s = time.perf_counter() - t0
    weights_bytes = torch.cuda.memory_allocated(device) if device.type == "cuda" else None

    g = torch.Generator(device=device).manual_seed(0)
    b, h = 1, size // config.vae_downscale
    degraded = torch.rand(b, frames, 3, size, size, device=device, dtype=dtype, generator=g)
    full_frame = torch.rand(b, frames, 3, size, size, device=device, dtype=dtype, generator=g)
    with torch.no_grad():
        vae_s, vae_peak = _timed(lambda: model.encode_latents(degraded), device, args.warmup, args.repeats)
        degraded_latents = model.encode_latents(degraded)
        prompt_embeds = model.encode_prompt(["an old film scene"] * b)
        global_tokens, global_latents = model.encode_global_conditioning(full_frame)
    noisy = torch.randn(b, frames, config.latent_channels, h, h, device=device, dtype=dtype, generator=g)
    timesteps = torch.full((b,), 500, device=device, dtype=torch.long)
    inputs = dict(
        degraded=degraded,
        degraded_latents=degraded_latents,
        prompt_embeds=prompt_embeds,
        global_tokens=global_tokens,
        global_latents=global_latents,
        boxes=torch.tensor([[0.25, 0.25, 0.75, 0.75]] * b, device=device),
    )

    def frdm_forward():
        with torch.no_grad():
            return model(noisy, timesteps, **inputs).noise_pred

    def backbone_forward():
        with torch.no_grad():
            return model.backbone_forward(noisy, timesteps, prompt_embeds)

    frdm_s, frdm_peak = _timed(frdm_forward, device, args.warmup, args.repeats)
    backbone_s, backbone_peak = _timed(backbone_forward, device, args.warmup, args.repeats)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "config": "tiny" if args.tiny else "sd15",
        "dtype": dtype_name,
        "patch": f"{size}x{size}",
        "frames": frames,
        "batch": b,
        "params_million": {
            "unet_with_motion": round(sum(p.numel() for p in model.unet.parameters()) / 1e6, 2),
            "guidance": round(sum(p.numel() for p in model.guidance.parameters()) / 1e6, 2),
            "preprocess": round(sum(p.numel() for p in model.preprocess.parameters()) / 1e6, 2),
            "total": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        },
        "build_s": round(build_s, 2),
        "weights_gib": _gib(weights_bytes),
        "vae_encode_s": round(vae_s, 4),
        "vae_encode_peak_gib": _gib(vae_peak),
        "frdm_forward_s": round(frdm_s, 4),
        "frdm_forward_peak_gib": _gib(frdm_peak),
        "backbone_forward_s": round(backbone_s, 4),
        "backbone_forward_peak_gib": _gib(backbone_peak),
        "frdm_over_backbone_time": round(frdm_s / backbone_s, 3),
    }
    if args.backward:
        model.train()
        params = model.trainable_parameters()

        def step():
            out = model(noisy, timesteps, **inputs)
            loss = out.noise_pred.float().square().mean() + sum(i.float().abs().mean() for i in out.preprocess_images)
            loss.backward()
            for p in params:
                p.grad = None

        train_s, train_peak = _timed(step, device, args.warmup, args.repeats)
        report["train_step_s"] = round(train_s, 4)
        report["train_step_peak_gib"] = _gib(train_peak)
        report["train_note"] = f"forward+backward in {dtype_name}, no optimizer state, no gradient checkpointing"
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
