"""Describe a HaineiFRDM weights folder: what was found, parameter counts (trainable vs frozen), dtypes and an
estimate of the memory the weights need. Reads only the safetensors headers: fast, and needs no GPU."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, metavar="DIR", help="weights folder (layout: docs/weights.md)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _m(n: int) -> str:
    return f"{n / 1e6:,.1f}M"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def run(args: argparse.Namespace) -> int:
    from frdm.engine.weights import describe_weights

    info = describe_weights(args.weights)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"weights folder: {info['root']}")
    for key in ("sd15", "motion_module", "clip", "frdm"):
        print(f"  {key:14s} {info[key]}")
    print("components:")
    for name, c in info["components"].items():
        kind = "trainable" if c["trainable"] else "frozen"
        dtypes = ",".join(c["dtypes"]) or "-"
        size = _gib(c["bytes"]) if c["bytes"] else ""
        print(f"  {name:14s} {_m(c['params']):>10s}  {kind:9s}  {dtypes:6s}  {size}")
    print(f"parameters: frozen {_m(info['params_frozen'])}, trainable {_m(info['params_trainable'])}")
    mem = info["estimated_weights_memory_bytes"]
    print(
        f"estimated memory for the weights: fp16 {_gib(mem['fp16'])}, fp32 {_gib(mem['fp32'])} "
        "(activations come on top)"
    )
    return 0
