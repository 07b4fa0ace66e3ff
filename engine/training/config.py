"""``TrainConfig``: every setting of a training run, loaded from YAML or JSON.

Unknown keys are errors that name the key and the closest valid one: a typo in a config file must never
silently fall back to a default for a run that takes days.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from frdm.engine.errors import InputError

MIXED_PRECISION = ("no", "bf16", "fp16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
DEFECT_WEIGHTINGS = ("min-snr", "none")
# Keys older configs had, with where the setting lives now.
MOVED_KEYS = {
    "global_size": "the global frame's size is the model's (FRDMConfig.global_frame_size, saved with its weights, "
    "so inference resizes the same way); set it with model_overrides: {global_frame_size: N}",
}


@dataclass
class TrainConfig:
    # --- data (engine/data layout: one folder per shot with degraded/, gt/, mask/, caption.txt) ---
    data_dir: str = ""
    val_dir: str | None = None  # held-out shots; None: no validation
    output_dir: str = "frdm-train"
    num_frames: int = 16  # temporal window (the paper's 16-frame AnimateDiff windows)
    patch_size: int = 512  # square patch in pixels (Sec. 3.1: overlapped windows of the full frame)
    patch_overlap: int = 128
    frame_overlap: int = 4
    random_position: bool = True  # random patch position inside its window cell (Sec. 3.1)
    num_workers: int = 2
    # --- model ---
    model: str = "tiny"  # "tiny" | "sd15": FRDMConfig preset for random-weight builds (weights_dir unset)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # FRDMConfig fields over the preset
    weights_dir: str | None = None  # pretrained SD1.5 + motion module + CLIP (docs/weights.md): load_model
    init_weights: str | None = None  # FRDM trainable weights (.safetensors) to start from
    # --- optimisation ---
    seed: int = 0
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_steps: int = 1000
    learning_rate: float = 1e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = 0.9999
    caption_dropout: float = 0.1  # probability of an empty caption (keeps unconditional generation usable)
    # --- losses (Eq. 6) ---
    alpha_preprocess: float = 1.0
    alpha_defect: float = 81.0
    defect_weighting: str = "min-snr"  # the defect loss's factor by t: "min-snr" min(1, sqrt(SNR_t)), or "none"
    vae_decode_chunk: int = 4  # frames decoded per checkpointed VAE call in the defect loss
    # --- bookkeeping ---
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3  # 0 keeps every checkpoint
    validate_every: int = 500
    validation_items: int = 8  # patches of the held-out set per validation
    validation_timestep: int = 500  # timestep of the one-step clean estimate
    resume: str | None = None  # "latest" or a checkpoint folder
    progress: bool = True

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise InputError naming the field for values no run can use."""
        if not self.data_dir:
            raise InputError("config: data_dir is required (a dataset folder, one sub-folder per shot)")
        if self.mixed_precision not in MIXED_PRECISION:
            raise InputError(f"config: mixed_precision '{self.mixed_precision}' must be one of {MIXED_PRECISION}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise InputError(f"config: lr_scheduler '{self.lr_scheduler}' must be one of {LR_SCHEDULERS}")
        if self.defect_weighting not in DEFECT_WEIGHTINGS:
            raise InputError(f"config: defect_weighting '{self.defect_weighting}' must be one of {DEFECT_WEIGHTINGS}")
        if self.model not in ("tiny", "sd15"):
            raise InputError(f"config: model '{self.model}' must be 'tiny' or 'sd15'")
        for name in (
            "batch_size",
            "max_steps",
            "num_frames",
            "patch_size",
            "gradient_accumulation_steps",
            "log_every",
            "checkpoint_every",
            "validate_every",
            "vae_decode_chunk",
        ):
            if int(getattr(self, name)) < 1:
                raise InputError(f"config: {name} must be at least 1 (got {getattr(self, name)})")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise InputError(f"config: caption_dropout must be in [0, 1] (got {self.caption_dropout})")
        if not 0 <= self.validation_timestep < 1000:
            raise InputError(f"config: validation_timestep must be in [0, 999] (got {self.validation_timestep})")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a mapping of settings at the top level")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key in MOVED_KEYS:
                raise InputError(f"{source}: '{key}' is no longer a training key: {MOVED_KEYS[key]}")
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
                hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
                raise InputError(f"{source}: unknown key '{key}'{hint}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in data.items():
            default = fields[key].default
            if value is None or default is dataclasses.MISSING or default is None:
                continue
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, (int, float)):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                if ok and isinstance(default, int) and not isinstance(default, bool) and value != int(value):
                    ok = False
            elif isinstance(default, str):
                ok = isinstance(value, str)
            else:
                ok = True
            if not ok:
                raise InputError(f"{source}: '{key}' must be of type {type(default).__name__} (got {value!r})")
        cfg = cls(**data)
        cfg.validate()
        return cfg


def load_config(path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
    """Read a YAML (.yaml/.yml) or JSON (.json) file; ``overrides`` replace keys after reading.

    Relative data/output paths are taken relative to the config file's folder, so a config travels with
    its dataset.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: the training config file does not exist")
    with open(path) as fh:
        text = fh.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the file's fault
        raise InputError(f"{path}: not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of settings at the top level")
    data.update(overrides)
    base = os.path.dirname(os.path.abspath(path))
    for key in ("data_dir", "val_dir", "output_dir", "weights_dir", "init_weights"):
        value = data.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value):
            data[key] = os.path.normpath(os.path.join(base, value))
    if isinstance(data.get("resume"), str) and data["resume"] not in ("latest",) and not os.path.isabs(data["resume"]):
        data["resume"] = os.path.normpath(os.path.join(base, data["resume"]))
    return TrainConfig.from_dict(data, source=path)
