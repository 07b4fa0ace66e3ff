"""Training checkpoints without pickle: tensors in safetensors files, small scalar state in JSON.

A checkpoint is a folder ``OUTPUT/checkpoints/step-00001000/`` holding

    frdm_weights.safetensors   the trainable weights, in FRDM's weights format (config in the header)
    optimizer.safetensors      the optimizer's per-parameter tensors (AdamW moments and step counts)
    ema.safetensors            (with EMA) the EMA shadow weights
    state.json                 step, epoch and position in the epoch's sample order, seed, the optimizer's
                               param groups and hyper-parameters, the LR scheduler's state, the grad scaler's,
                               the EMA counters, RNG states (python, numpy, torch, cuda) as lists of ints,
                               and the run's TrainConfig

It is written to a temporary folder and renamed, so a crash never leaves a half-written checkpoint that
``resume: latest`` would pick.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from frdm.engine.atomic import atomic_path, remove_stale
from frdm.engine.errors import InputError

STATE_FILE = "state.json"
WEIGHTS_FILE = "frdm_weights.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
EMA_FILE = "ema.safetensors"
CHECKPOINT_FORMAT = 1


# ---------------------------------------------------------------------------------------------- weights
def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{module}.{param}`` for the model's trainable modules (preprocess, guidance): FRDM's weights keys."""
    from frdm.engine.weights.frdm_weights import trainable_state_dict

    return trainable_state_dict(model)


def save_weights(path: str, model: torch.nn.Module) -> None:
    """The trainable weights in FRDM's weights format (what inference's ``load_frdm_weights`` reads)."""
    from frdm.engine.weights import save_frdm_weights

    save_frdm_weights(path, model)


def load_weights(path: str, model: torch.nn.Module) -> None:
    from frdm.engine.weights import load_frdm_weights

    load_frdm_weights(path, model)


# ---------------------------------------------------------------------------------------------- optimizer
def _split_optimizer(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, pstate in opt_state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    py = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ---------------------------------------------------------------------------------------------- folders
def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(output_dir: str) -> list[str]:
    folder = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.startswith("step-"))  # temporaries are .frdm-partial-*
    return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n, STATE_FILE))]


def resolve_resume(resume: str | None, output_dir: str) -> str | None:
    """``"latest"`` -> newest complete checkpoint under output_dir (None if none); a folder -> itself."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    if not os.path.isfile(os.path.join(resume, STATE_FILE)):
        raise InputError(f"resume: {resume} is not a checkpoint folder (no {STATE_FILE} inside)")
    return resume


def save_checkpoint(
    folder: str,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    state: dict[str, Any],
    ema: Any = None,
    scaler: Any = None,
) -> str:
    """Write a checkpoint folder atomically; ``state`` carries step/epoch/position/seed/config."""
    with atomic_path(folder) as tmp:  # the folder appears complete or not at all
        os.makedirs(tmp)
        _write_checkpoint(tmp, model, optimizer, lr_scheduler, state, ema, scaler)
    return folder


def _write_checkpoint(
    tmp: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    state: dict[str, Any],
    ema: Any,
    scaler: Any,
) -> None:
    save_weights(os.path.join(tmp, WEIGHTS_FILE), model)
    opt_tensors, opt_meta = _split_optimizer(optimizer.state_dict())
    save_file(opt_tensors, os.path.join(tmp, OPTIMIZER_FILE))
    full = dict(state)
    full["format"] = CHECKPOINT_FORMAT
    full["optimizer"] = opt_meta
    full["lr_scheduler"] = lr_scheduler.state_dict()
    full["rng"] = rng_state()
    if scaler is not None:
        full["grad_scaler"] = {
            k: (float(v) if isinstance(v, (int, float)) else v) for k, v in scaler.state_dict().items()
        }
    if ema is not None:
        ema_state = ema.state_dict()
        shadow = ema_state.pop("shadow_params")
        save_file({str(i): p.detach().contiguous().cpu() for i, p in enumerate(shadow)}, os.path.join(tmp, EMA_FILE))
        full["ema"] = ema_state
    with open(os.path.join(tmp, STATE_FILE), "w") as fh:
        json.dump(full, fh)


def load_checkpoint(
    folder: str,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    ema: Any = None,
    scaler: Any = None,
) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` wrote; returns the state dict (step, epoch, position, ...)."""
    with open(os.path.join(folder, STATE_FILE)) as fh:
        state = json.load(fh)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{folder}: checkpoint format {state.get('format')} is not {CHECKPOINT_FORMAT}")
    load_weights(os.path.join(folder, WEIGHTS_FILE), model)
    device = next(iter(model.trainable_parameters())).device
    tensors = {k: v.to(device) for k, v in load_file(os.path.join(folder, OPTIMIZER_FILE)).items()}
    # AdamW keeps its per-parameter "step" on the CPU unless capturable/fused: put it back where it was.
    tensors = {k: (v.cpu() if k.endswith(".step") else v) for k, v in tensors.items()}
    optimizer.load_state_dict(_join_optimizer(tensors, state["optimizer"]))
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if scaler is not None and "grad_scaler" in state:
        scaler.load_state_dict(state["grad_scaler"])
    if ema is not None:
        path = os.path.join(folder, EMA_FILE)
        if not os.path.isfile(path):
            raise InputError(f"{folder}: ema is on but the checkpoint has no {EMA_FILE}")
        shadow = load_file(path)
        ema_state = dict(state["ema"])
        ema_state["shadow_params"] = [shadow[str(i)].to(device) for i in range(len(shadow))]
        ema.load_state_dict(ema_state)
    set_rng_state(state["rng"])
    return state


def prune_checkpoints(output_dir: str, keep: int) -> None:
    remove_stale(os.path.join(output_dir, "checkpoints"))  # a killed save's half-written folder
    if keep <= 0:
        return
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
