"""The training loop (paper Sec. 3.1 / 3.3 / 5.1) on HF accelerate.

One ``Trainer`` runs on one process of ``accelerate launch`` (or alone): the frozen CLIP / VAE / UNet sit in
the mixed-precision dtype, the trainable Preprocess module and Restoration-Guidance Network in float32 under
DDP, and AdamW updates ``model.trainable_parameters()`` only.

Every step's randomness (timesteps, noise, caption dropout) comes from a generator seeded by (seed, step,
process, micro-batch) and the sample order from (seed, epoch): a resumed run reproduces the uninterrupted
one exactly without replaying it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from typing import Any

import torch

from frdm.engine.errors import InputError

from .checkpoint import (
    checkpoint_name,
    load_checkpoint,
    load_weights,
    prune_checkpoints,
    resolve_resume,
    save_checkpoint,
    save_weights,
)
from .config import TrainConfig
from .data import ResumableSampler, check_training_folder
from .losses import LossTerms, decode_checkpointed, defect_weight, predicted_clean_latents, total_loss
from .validation import condition_inputs, step_generator, validate

LOG_FIELDS = ("step", "epoch", "loss", "l_noise", "l_preprocess", "l_defect", "lr", "steps_per_s")
VAL_FIELDS = ("step", "masked_psnr", "psnr", "defect_l1", "masked_psnr_input", "psnr_input")


def model_config(config: TrainConfig) -> Any:
    """The FRDMConfig a run trains: the trained file's own (``weights_dir``'s frdm.safetensors), else the
    preset (sd15 for pretrained backbones, ``model`` for random weights) with ``model_overrides``.
    Known before any network is built, so the dataset can resize its global frames to the model's size."""
    from frdm.engine.models import FRDMConfig

    preset = FRDMConfig.tiny() if config.model == "tiny" else FRDMConfig.sd15()
    if config.weights_dir:
        from frdm.engine.weights import find_weights, read_frdm_header

        layout = find_weights(config.weights_dir)
        if layout.frdm is not None:
            if config.model_overrides:
                raise InputError(
                    f"config: model_overrides cannot change the configuration {layout.frdm} was trained with"
                )
            return read_frdm_header(layout.frdm)[0]
        preset = FRDMConfig.sd15()
    data = preset.to_dict()
    for key in config.model_overrides:
        if key not in data:
            raise InputError(f"config: model_overrides has unknown FRDMConfig field '{key}'")
    data.update(config.model_overrides)
    try:
        model = FRDMConfig.from_dict(data)
        model.check()
    except (TypeError, ValueError) as exc:
        raise InputError(f"config: model_overrides: {exc}") from None
    return model


def build_model(config: TrainConfig, device: torch.device | str = "cpu") -> Any:
    """HaineiFRDM from local pretrained weights (``weights_dir``) or with random weights (the preset)."""
    from frdm.engine.models import HaineiFRDM

    frdm_config = model_config(config)
    if config.weights_dir:
        from frdm.engine.weights import load_model

        model = load_model(config.weights_dir, device=device, dtype=torch.float32, config=frdm_config)
    else:
        torch.manual_seed(config.seed)  # reproducible random initialisation
        model = HaineiFRDM.build(frdm_config, device=device)
    if config.init_weights:
        load_weights(config.init_weights, model)
    return model


class Trainer:
    def __init__(self, config: TrainConfig, *, model: Any = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        config.validate()
        self.config = config
        # Bad input is found here, before any model is built or step runs.
        check_training_folder(config.data_dir, what="data_dir")
        if config.val_dir:
            check_training_folder(config.val_dir, what="val_dir")

        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            project_dir=config.output_dir,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        )
        acc = self.accelerator
        self.device = acc.device
        self.weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision, torch.float32)

        # The global frames are resized to the model's size: the config is read (not built) first.
        self.global_frame_size = (model.config if model is not None else model_config(config)).global_frame_size
        self.dataset = self._dataset(config.data_dir, random_position=config.random_position)
        self.val_dataset = self._dataset(config.val_dir, random_position=False) if config.val_dir else None
        self.per_process = len(self.dataset) // acc.num_processes
        if self.per_process < config.batch_size:
            raise InputError(
                f"data_dir {config.data_dir}: {len(self.dataset)} patch windows for {acc.num_processes} process(es) "
                f"is fewer than batch_size {config.batch_size}; add shots or lower batch_size/patch_size"
            )

        model = model if model is not None else build_model(config, self.device)
        # Frozen networks in the compute dtype (they only run forward); trainable ones stay float32 for AdamW.
        for frozen in model.frozen_modules():
            frozen.to(self.device, dtype=self.weight_dtype)
        # CLIP vision stays float32: encode_global_frame resizes in the encoder's dtype and PyTorch's CPU
        # antialiased bicubic has no bfloat16 kernel; it runs once per step without gradients (0.3B params).
        model.image_encoder.to(dtype=torch.float32)
        for module in model.trainable_modules().values():
            module.to(self.device, dtype=torch.float32)
        if config.gradient_checkpointing:
            model.enable_gradient_checkpointing()  # the guidance blocks and the frozen UNet (engine/models)
        model.train()

        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        # from_config: the shared SD1.5 config also carries DDIM-only keys (set_alpha_to_one) DDPM ignores.
        self.noise_scheduler = DDPMScheduler.from_config(model.noise_scheduler_config)
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(torch.float32)
        optimizer = torch.optim.AdamW(
            model.trainable_parameters(),
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay,
            eps=config.adam_epsilon,
        )
        lr_scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer,
            # accelerate's AcceleratedScheduler steps the wrapped scheduler once per process on each call:
            # count in those steps so warmup and decay last the configured number of optimizer steps.
            num_warmup_steps=config.lr_warmup_steps * acc.num_processes,
            num_training_steps=config.max_steps * acc.num_processes,
        )
        self.ema = None
        if config.ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(model.trainable_parameters(), decay=config.ema_decay)
        self.model, self.optimizer, self.lr_scheduler = acc.prepare(model, optimizer, lr_scheduler)
        self.core = acc.unwrap_model(self.model)
        self.step = 0
        self.epoch = 0
        self.position = 0  # samples of this epoch's order this process has consumed
        resume = resolve_resume(config.resume, config.output_dir)
        if resume:
            state = load_checkpoint(
                resume,
                model=self.core,
                optimizer=_unwrapped(self.optimizer, "optimizer"),
                lr_scheduler=_unwrapped(self.lr_scheduler, "scheduler"),
                ema=self.ema,
                scaler=acc.scaler,
            )
            self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
            if state.get("num_processes", 1) != acc.num_processes or state.get("batch_size") != config.batch_size:
                acc.print("warning: resuming with another process count or batch size: the data order differs")
        self.resumed_from = resume

    # ------------------------------------------------------------------ data
    def _dataset(self, root: str, *, random_position: bool) -> Any:
        from frdm.engine.data.dataset import FilmRestorationDataset

        c = self.config
        return FilmRestorationDataset(
            root,
            num_frames=c.num_frames,
            patch_size=c.patch_size,
            patch_overlap=c.patch_overlap,
            frame_overlap=c.frame_overlap,
            global_size=self.global_frame_size,
            random_position=random_position,
            seed=c.seed,
        )

    def _epoch_loader(self) -> Any:
        """This process's batches for the rest of the current epoch (its share of the seeded order)."""
        acc = self.accelerator
        self.dataset.epoch = self.epoch  # new random patch positions every epoch (the dataset's own seeding)
        order = ResumableSampler(len(self.dataset), self.config.seed, self.epoch).order()
        share = order[acc.process_index :: acc.num_processes][: self.per_process]
        usable = len(share) - len(share) % self.config.batch_size  # every process runs the same step count
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.config.batch_size,
            sampler=share[self.position : usable],
            num_workers=self.config.num_workers,
            drop_last=True,
        )

    def batches(self) -> Any:
        """Endless (epoch, batch) stream that keeps ``self.position`` / ``self.epoch`` current."""
        while True:
            for batch in self._epoch_loader():
                self.position += self.config.batch_size
                yield batch
            self.epoch += 1
            self.position = 0

    # ------------------------------------------------------------------ one step
    def compute_loss(self, batch: dict[str, Any], generator: torch.Generator) -> LossTerms:
        """Eq. 6 for one batch: noise the GT patch latent, predict, decode x0_hat, the three losses."""
        c, core, device = self.config, self.core, self.device
        gt = batch["gt"].to(device)
        mask = batch["mask"].to(device)
        b = gt.shape[0]
        drop = torch.rand(b, generator=generator) < c.caption_dropout
        captions = ["" if d else cap for d, cap in zip(drop.tolist(), batch["caption"])]
        with torch.no_grad():
            z0 = core.encode_latents(gt).float()
        cond = condition_inputs(core, batch, captions, device)
        noise = torch.randn(z0.shape, generator=generator).to(device)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=generator)
        timesteps = timesteps.to(device)
        noisy = self.noise_scheduler.add_noise(z0, noise, timesteps)
        with self.accelerator.autocast():
            out = self.model(noisy, timesteps, **cond)
            x0_hat = predicted_clean_latents(noisy, out.noise_pred, timesteps, self.alphas_cumprod)
            # Always checkpointed (the issue and Sec. 3.1: the decoder's activations are the step's largest).
            decoded = decode_checkpointed(core.decode_latents, x0_hat, c.vae_decode_chunk, checkpointing=True)
        return total_loss(
            noise_pred=out.noise_pred,
            noise=noise,
            preprocess_images=out.preprocess_images,
            decoded=decoded,
            gt=gt,
            mask=mask,
            alpha_preprocess=c.alpha_preprocess,
            alpha_defect=c.alpha_defect,
            defect_weights=defect_weight(timesteps, self.alphas_cumprod, c.defect_weighting),
        )

    def train_step(self, batches: Any) -> dict[str, float]:
        """One optimizer step (``gradient_accumulation_steps`` micro-batches); returns the mean loss terms."""
        acc, c = self.accelerator, self.config
        sums: dict[str, float] = {}
        for micro in range(c.gradient_accumulation_steps):
            batch = next(batches)
            generator = step_generator(c.seed, self.step, acc.process_index, micro)
            with acc.accumulate(self.model):
                terms = self.compute_loss(batch, generator)
                acc.backward(terms.total)
                if acc.sync_gradients and c.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.core.trainable_parameters(), c.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            for k, v in terms.as_floats().items():
                sums[k] = sums.get(k, 0.0) + v / c.gradient_accumulation_steps
        if self.ema is not None:
            self.ema.step(self.core.trainable_parameters())
        self.step += 1
        if acc.num_processes > 1:  # log the mean over every process's batch, not the main process's alone
            keys = sorted(sums)
            mean = acc.reduce(torch.tensor([sums[k] for k in keys], device=self.device), reduction="mean")
            sums = dict(zip(keys, mean.tolist()))
        return sums

    # ------------------------------------------------------------------ bookkeeping
    def checkpoint(self) -> str:
        acc = self.accelerator
        folder = os.path.join(self.config.output_dir, "checkpoints", checkpoint_name(self.step))
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_checkpoint(
                folder,
                model=self.core,
                optimizer=_unwrapped(self.optimizer, "optimizer"),
                lr_scheduler=_unwrapped(self.lr_scheduler, "scheduler"),
                ema=self.ema,
                scaler=acc.scaler,
                state={
                    "step": self.step,
                    "epoch": self.epoch,
                    "position": self.position,
                    "seed": self.config.seed,
                    "batch_size": self.config.batch_size,
                    "num_processes": acc.num_processes,
                    "config": self.config.to_dict(),
                },
            )
            prune_checkpoints(self.config.output_dir, self.config.keep_checkpoints)
        acc.wait_for_everyone()
        return folder

    def validation_items(self) -> list[dict[str, Any]]:
        if self.val_dataset is None:
            return []
        n = min(self.config.validation_items, len(self.val_dataset))
        return [self.val_dataset[i] for i in range(n)]

    def run_validation(self, items: list[dict[str, Any]] | None = None, strip: bool = True) -> dict[str, float]:
        """Validation metrics with the EMA weights when EMA is on (what would be exported)."""
        items = self.validation_items() if items is None else items
        if not items:
            return {}
        strip_path = os.path.join(self.config.output_dir, "validation", f"step-{self.step:08d}.png") if strip else None
        if self.ema is not None:
            self.ema.store(self.core.trainable_parameters())
            self.ema.copy_to(self.core.trainable_parameters())
        try:
            return validate(
                self.core,
                items,
                self.alphas_cumprod,
                timestep=self.config.validation_timestep,
                seed=self.config.seed,
                strip_path=strip_path,
            )
        finally:
            if self.ema is not None:
                self.ema.restore(self.core.trainable_parameters())

    def export_weights(self, path: str | None = None) -> str:
        """The trained weights (EMA weights when EMA is on) in FRDM's weights format."""
        path = path or os.path.join(self.config.output_dir, "frdm_weights.safetensors")
        if self.ema is not None:
            self.ema.store(self.core.trainable_parameters())
            self.ema.copy_to(self.core.trainable_parameters())
        try:
            if self.accelerator.is_main_process:
                save_weights(path, self.core)
        finally:
            if self.ema is not None:
                self.ema.restore(self.core.trainable_parameters())
        return path

    # ------------------------------------------------------------------ the loop
    def train(self, max_steps: int | None = None) -> dict[str, Any]:
        """Run until ``max_steps`` (the config's by default); returns the last losses and validation."""
        from tqdm.auto import tqdm

        acc, c = self.accelerator, self.config
        max_steps = c.max_steps if max_steps is None else max_steps
        main = acc.is_main_process
        os.makedirs(c.output_dir, exist_ok=True)
        writer = None
        if main:
            with open(os.path.join(c.output_dir, "train_config.json"), "w") as fh:
                json.dump(c.to_dict(), fh, indent=1)
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(os.path.join(c.output_dir, "tensorboard"), purge_step=self.step or None)
            except ImportError:  # tensorboard is an engine dependency; a bare install still trains
                writer = None
        log_csv = _CsvLog(os.path.join(c.output_dir, "log.csv"), LOG_FIELDS, main)
        val_csv = _CsvLog(os.path.join(c.output_dir, "validation.csv"), VAL_FIELDS, main)
        val_items = self.validation_items() if main else []
        bar = tqdm(
            total=max_steps,
            initial=self.step,
            disable=not (main and c.progress),
            desc="frdm train",
            unit="step",
            dynamic_ncols=True,
        )
        batches = self.batches()
        last: dict[str, float] = {}
        last_val: dict[str, float] = {}
        window: list[dict[str, float]] = []
        t_window = time.perf_counter()
        try:
            while self.step < max_steps:
                last = self.train_step(batches)
                if not math.isfinite(last["loss"]):
                    raise FloatingPointError(f"step {self.step}: the loss is {last['loss']}; lower learning_rate")
                window.append(last)
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.4f}", defect=f"{last['l_defect']:.4f}")
                if self.step % c.log_every == 0 or self.step == max_steps:
                    elapsed = time.perf_counter() - t_window
                    row = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                    row.update(
                        step=self.step,
                        epoch=self.epoch,
                        lr=self.lr_scheduler.get_last_lr()[0],
                        steps_per_s=len(window) / max(elapsed, 1e-9),
                    )
                    log_csv.write(row)
                    if writer is not None:
                        for k in ("loss", "l_noise", "l_preprocess", "l_defect", "lr", "steps_per_s"):
                            writer.add_scalar(f"train/{k}", row[k], self.step)
                    window, t_window = [], time.perf_counter()
                if val_items and (self.step % c.validate_every == 0 or self.step == max_steps):
                    last_val = self.run_validation(val_items)
                    val_csv.write({"step": self.step, **last_val})
                    if writer is not None:
                        for k, v in last_val.items():
                            writer.add_scalar(f"val/{k}", v, self.step)
                    if main:
                        bar.write(
                            f"step {self.step}: MaskedPSNR {last_val['masked_psnr']:.2f} dB "
                            f"(input {last_val['masked_psnr_input']:.2f}), PSNR {last_val['psnr']:.2f} dB"
                        )
                if self.step % c.checkpoint_every == 0 or self.step == max_steps:
                    self.checkpoint()
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        self.export_weights()
        acc.wait_for_everyone()
        return {"step": self.step, "losses": last, "validation": last_val}


class _CsvLog:
    """Append-only CSV (a resumed run continues the same file)."""

    def __init__(self, path: str, fields: tuple[str, ...], enabled: bool):
        self.path, self.fields, self.enabled = path, fields, enabled

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        new = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in self.fields})


def _unwrapped(obj: Any, attr: str) -> Any:
    """The torch object inside accelerate's wrapper (AcceleratedOptimizer.optimizer, AcceleratedScheduler.scheduler):
    checkpoints hold the plain objects' state."""
    return getattr(obj, attr, obj)
