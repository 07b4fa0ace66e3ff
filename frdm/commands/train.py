"""Train HaineiFRDM's Preprocess module and Restoration-Guidance Network (paper Sec. 3.1, 3.3).

  frdm train configs/train_sd15.yaml
  frdm train configs/train_sd15.yaml --set max_steps=2000 --set resume=latest
  accelerate launch --num_processes 4 -m frdm.cli train configs/train_sd15.yaml     # several GPUs (DDP)

The config (YAML or JSON) is a TrainConfig: every key is documented in docs/training.md. The dataset folder
is checked before any step runs (missing masks or captions, frames of mixed sizes). Checkpoints land in
OUTPUT/checkpoints/step-NNNNNNNN/ (safetensors + state.json, no pickle); `resume: latest` continues exactly.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="training config file (.yaml, .yml or .json)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (VALUE parsed as YAML: 2000, true, [256, 256]); repeatable",
    )
    parser.add_argument("--check", action="store_true", help="check the config and datasets, then stop")
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end")


def _overrides(items: list[str]) -> dict:
    import yaml

    from frdm.engine.errors import InputError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r}: use KEY=VALUE, e.g. --set max_steps=2000")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(args: argparse.Namespace) -> int:
    from frdm.engine.training import load_config

    config = load_config(args.config, **_overrides(args.set))
    if args.check:
        from frdm.engine.training.data import check_training_folder

        shots = check_training_folder(config.data_dir, what="data_dir")
        val = check_training_folder(config.val_dir, what="val_dir") if config.val_dir else []
        print(f"config OK: {len(shots)} training shot(s), {len(val)} validation shot(s)")
        return 0
    from frdm.engine.training.trainer import Trainer

    trainer = Trainer(config)
    if trainer.resumed_from and trainer.accelerator.is_main_process:
        print(f"resuming from {trainer.resumed_from} (step {trainer.step})")
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        if args.json:
            print(json.dumps(result, indent=1))
        else:
            print(f"done: step {result['step']}, weights in {config.output_dir}/frdm_weights.safetensors")
    return 0
