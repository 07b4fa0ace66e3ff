"""Full-size training step: time and peak GPU memory of one HaineiFRDM optimizer step (Eq. 6 with the
checkpointed VAE decode of the defect loss) at batch 1, 512x512, 16 frames, bf16, gradient checkpointing.

Random weights built on the device (FRDMConfig.sd15: SD1.5 UNet + AnimateDiff motion module + VAE + CLIP, the
Restoration-Guidance Network and the Preprocess module); the step is the real Trainer step on a toy shot
written to a temporary folder. Does it fit the paper's 24 GB cards (Sec. 5.1: four RTX 4090)?

    python benchmarks/gpu_train.py --device cuda                 # full size, prints JSON
    python benchmarks/gpu_train.py --tiny --device cpu --steps 2 # the same code path on CPU, tiny config
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda or cpu")
    ap.add_argument("--tiny", action="store_true", help="FRDMConfig.tiny, 64x64, 2 frames (a CPU check)")
    ap.add_argument("--size", type=int, default=None, help="patch size in pixels (default 512; tiny 64)")
    ap.add_argument("--frames", type=int, default=None, help="frames per window (default 16; tiny 2)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up steps")
    ap.add_argument("--mixed-precision", default=None, choices=("no", "bf16", "fp16"), help="default bf16 (tiny: no)")
    ap.add_argument("--no-checkpointing", action="store_true", help="turn gradient checkpointing off")
    ap.add_argument("--json", metavar="FILE", help="also write the JSON figures to FILE")
    args = ap.parse_args()

    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # accelerate picks the device: hide GPUs for a CPU check
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from frdm.engine.training import TrainConfig
    from frdm.engine.training.checkpoint import trainable_state
    from frdm.engine.training.toy import make_toy_dataset
    from frdm.engine.training.trainer import Trainer

    size = args.size or (64 if args.tiny else 512)
    frames = args.frames or (2 if args.tiny else 16)
    mp = args.mixed_precision or ("no" if args.tiny else "bf16")
    with tempfile.TemporaryDirectory() as tmp:
        make_toy_dataset(os.path.join(tmp, "data"), shots=1, frames=frames, size=size, seed=0)
        config = TrainConfig(
            data_dir=os.path.join(tmp, "data"),
            output_dir=os.path.join(tmp, "out"),
            num_frames=frames,
            patch_size=size,
            patch_overlap=0,
            frame_overlap=0,
            num_workers=0,
            model="tiny" if args.tiny else "sd15",
            batch_size=1,
            mixed_precision=mp,
            gradient_checkpointing=not args.no_checkpointing,
            vae_decode_chunk=1 if not args.tiny else 2,
            progress=False,
        )
        cuda = torch.cuda.is_available() and args.device.startswith("cuda")
        t0 = time.perf_counter()
        trainer = Trainer(config)
        build_s = time.perf_counter() - t0
        batches = trainer.batches()
        for _ in range(2):  # warm-up: cuDNN autotuning, allocator growth
            trainer.train_step(batches)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        losses = {}
        for _ in range(args.steps):
            t = time.perf_counter()
            losses = trainer.train_step(batches)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        core = trainer.core
        result = {
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "config": "tiny" if args.tiny else "sd15",
            "patch": f"{size}x{size}",
            "frames": frames,
            "batch": 1,
            "mixed_precision": mp,
            "gradient_checkpointing": not args.no_checkpointing,
            "params_total_M": round(sum(p.numel() for p in core.parameters()) / 1e6, 1),
            "params_trainable_M": round(sum(v.numel() for v in trainable_state(core).values()) / 1e6, 1),
            "build_s": round(build_s, 1),
            "step_s_median": round(statistics.median(times), 3),
            "step_s_all": [round(t, 3) for t in times],
            "last_losses": {k: round(v, 5) for k, v in losses.items()},
        }
        if cuda:
            gib = 1024**3
            result["peak_allocated_GiB"] = round(torch.cuda.max_memory_allocated() / gib, 2)
            result["peak_reserved_GiB"] = round(torch.cuda.max_memory_reserved() / gib, 2)
            # An RTX 4090 has 24 GiB; leave ~1 GiB for the CUDA context and fragmentation.
            result["fits_24GiB_card"] = result["peak_reserved_GiB"] < 23.0
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
