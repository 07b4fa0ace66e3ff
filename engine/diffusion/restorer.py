"""``DiffusionRestorer``: HaineiFRDM with the patch-consistent inference framework (paper Sec. 3.2).

Per temporal window (``windows.py``):

1. stage 1 - the window's frames are downsampled and padded to one patch, restored by the same sampler as a
   single patch, and upsampled back: the pre-restored frames. Their latents z_0^GR are the global residual.
2. stage 2 - the degraded frames' latents noised to the first timestep give z_T^LQ = z_T^RS. At every step
   z_t^fused = (1 - c_t) z_t^RS + c_t add_noise(z_0^GR, t) (Eq. 1-2), the fused latent is cut into overlapped
   patches, each is denoised with its box (GlobalFrameFusion) and the KV cache of its neighbours, stepped by
   its own scheduler state, and the patches are assembled with blend weights into z_{t-1}^RS.

Windows' final latents are blended per frame and decoded with the tiled VAE. Everything a frame's result
depends on is a function of the window's frames and of (seed, frame number), never of which range was asked
for, so chunked renders equal whole-range renders.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from frdm.engine import depends
from frdm.engine import params as params_mod
from frdm.engine.diffusion import planner
from frdm.engine.diffusion.kv_cache import PatchKVCache, installed
from frdm.engine.diffusion.patches import PatchAccumulator, PatchBox, blend_weights, patch_grid
from frdm.engine.diffusion.schedule import (
    PatchSchedulers,
    add_noise,
    fuse_global_residual,
    global_residual_weight,
    make_scheduler,
    timesteps_for,
)
from frdm.engine.diffusion.vae_tiling import LATENT_SCALE, tiled_decode, tiled_encode
from frdm.engine.diffusion.windows import (
    STREAM_STAGE1,
    STREAM_STAGE2,
    TemporalWindow,
    frame_noise,
    plan_windows,
    window_weight,
)
from frdm.engine.errors import ParamError
from frdm.engine.restorer import Clip, ProgressFn, RestoredFrame, no_progress

# Frames are padded to a multiple of this many pixels: the latent then divides by 8, which every UNet level
# of SD1.5 needs (three 2x downsamplings).
PAD_MULTIPLE = 64
WINDOW_CACHE_SIZE = 3
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad (..., h, w) below and right by edge replication (reflect fails if the pad exceeds the size)."""
    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return x
    return F.pad(x, (0, width - w, 0, height - h), mode="replicate")


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(x.shape[-2:]) == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)


class DiffusionRestorer:
    """The ``diffusion`` engine (see the module docstring)."""

    engine_version = depends.ENGINE_VERSIONS["diffusion"]

    def __init__(
        self,
        model: Any,
        device: str | torch.device | None = None,
        *,
        kv_pool: int = 2,
        window_cache: int = WINDOW_CACHE_SIZE,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if next(model.parameters()).device != self.device:
            self.model.to(self.device)
        self.model.eval()
        self.kv_pool = kv_pool
        self.log = log or (lambda m: print(m, file=sys.stderr))
        self.last_plan: planner.Plan | None = None
        self._plans_left: list[planner.Plan] = []
        # Final latents of the last few windows, keyed by parameters, frame numbers and pixels: the pipeline
        # restores in blocks of frames, and consecutive blocks share windows.
        self._window_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.window_cache_size = window_cache

    @classmethod
    def from_weights(cls, weights_dir: str, device: str | None = None) -> DiffusionRestorer:
        """Assemble HaineiFRDM from a local weights folder (docs/weights.md)."""
        try:
            from frdm.engine.weights import load_model  # type: ignore[attr-defined]
        except ImportError as exc:
            from frdm.engine.errors import WeightsError

            raise WeightsError(f"cannot load diffusion weights from {weights_dir}: no weights loader ({exc})") from None

        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
        return cls(load_model(weights_dir, device=dev, dtype=dtype), device=dev)

    # --- the Restorer interface -------------------------------------------------------------------------
    def context(self, params: Mapping[str, Any]) -> tuple[int, int]:
        """Every window containing a target must be complete, and the defect matte needs the detector's
        ``temporal_radius`` neighbours."""
        return depends.context({**params_mod.validate(params), "engine": "diffusion"})

    def restore(
        self, clip: Clip, params: Mapping[str, Any], progress: ProgressFn = no_progress
    ) -> Iterator[RestoredFrame]:
        height, width = clip.frames.shape[1:3]
        p = params_mod.validate(params)
        for frame, z0, plan in self.restore_latents(clip, p, progress):
            yield self._finish(clip, frame, z0, plan, height, width, p)

    def restore_latents(
        self, clip: Clip, params: Mapping[str, Any], progress: ProgressFn = no_progress
    ) -> Iterator[tuple[int, torch.Tensor, planner.Plan]]:
        """Like ``restore`` but yields each target's final latent z_0 (4, hp/8, wp/8) of the padded frame,
        before decoding (where the patches are assembled: the seam measure looks here), and the plan used."""
        p = params_mod.validate(params)
        limit = self.model.config.motion_max_seq_length
        if p["window"] > limit:
            raise ParamError(
                f"parameter 'window' ({p['window']}) exceeds the {limit} frames the motion module was trained on; "
                f"use at most {limit}"
            )
        dtype = self._dtype(p["precision"])
        height, width = clip.frames.shape[1:3]
        windows = plan_windows(clip.targets, clip.frame_numbers, p["window"], p["window_overlap"])
        last_window = {f: max(w.index for w in windows if w.start <= f < w.stop) for f in clip.targets}
        targets = sorted(clip.targets)
        plans = self._plans(p, height, width, dtype)
        self.last_plan = plans[0]
        self.log(f"frdm diffusion: {plans[0].describe()}")

        hp, wp = (math.ceil(s / PAD_MULTIPLE) * PAD_MULTIPLE for s in (height, width))
        grid = patch_grid(hp // LATENT_SCALE, wp // LATENT_SCALE, p["patch_size"] // LATENT_SCALE,
                          p["patch_overlap"] // LATENT_SCALE)  # fmt: skip
        stage1 = p["global_residual"] and len(grid) > 1
        units_per_window = (p["steps"] if stage1 else 0) + p["steps"] * len(grid)
        ticker = _Ticker(progress, units_per_window * len(windows))

        self._plans_left = plans
        sums: dict[int, torch.Tensor] = {}
        weights: dict[int, float] = {}
        emitted = 0
        for window in windows:
            idx = [clip.index(f) for f in window.frames]
            pixels = np.ascontiguousarray(clip.frames[idx])
            key = _window_key(p, window, pixels)
            cached = self._window_cache.get(key) if self.window_cache_size else None
            if cached is not None:  # the same window in the previous call (the pipeline's blocks overlap)
                z0 = cached.to(self.device)
                ticker(units_per_window, f"window {window.start}-{window.stop - 1}: reused")
            else:
                z0 = self._run_window(pixels, window, p, plans, dtype, ticker)
                if self.window_cache_size:
                    self._window_cache[key] = z0.cpu()
                while len(self._window_cache) > self.window_cache_size:
                    self._window_cache.popitem(last=False)
            for j, f in enumerate(window.frames):
                if f not in last_window:
                    continue
                w = window_weight(f, window, p["window_overlap"])
                sums[f] = sums[f] + w * z0[j] if f in sums else w * z0[j]
                weights[f] = weights.get(f, 0.0) + w
            while emitted < len(targets) and last_window[targets[emitted]] <= window.index:
                f = targets[emitted]
                yield f, sums.pop(f) / weights.pop(f), self.last_plan or plans[0]
                emitted += 1

    # --- internals -------------------------------------------------------------------------------------
    def _run_window(self, pixels, window, p, plans, dtype, ticker) -> torch.Tensor:
        frames = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        with torch.inference_mode():
            z0, used = planner.run_with_fallback(
                lambda plan: (self._restore_window(frames, window, p, plan, dtype, ticker), plan),
                self._plans_left,
                log=self.log,
            )
        # a plan that ran out of memory once is not tried again in this call
        self._plans_left = self._plans_left[self._plans_left.index(used) :]
        self.last_plan = used
        return z0

    def _dtype(self, precision: str) -> torch.dtype:
        dtype = _DTYPES[precision] if self.device.type == "cuda" else torch.float32  # CPU runs fp32
        if next(self.model.parameters()).dtype != dtype:
            self.model.to(dtype)
        return dtype

    def _plans(self, p: Mapping[str, Any], height: int, width: int, dtype: torch.dtype) -> list[planner.Plan]:
        fp = planner.ModelFootprint.of(self.model, dtype)
        hp, wp = (math.ceil(s / PAD_MULTIPLE) * PAD_MULTIPLE for s in (height, width))
        lp = p["patch_size"] // LATENT_SCALE
        cols = len(patch_grid(8, wp // LATENT_SCALE, lp, p["patch_overlap"] // LATENT_SCALE))
        return planner.make_plans(
            fp,
            budget_bytes=planner.budget_bytes(p["vram_budget_gb"], self.device),
            frames=p["window"],
            patch_latent=min(lp, max(hp, wp) // LATENT_SCALE),
            grid_cols=cols,
            dtype=dtype,
            device=self.device,
            kv_cache=p["kv_cache"],
            frame_latent_hw=(hp // LATENT_SCALE, wp // LATENT_SCALE),
        )

    def _finish(
        self,
        clip: Clip,
        frame: int,
        z0: torch.Tensor,
        plan: planner.Plan,
        height: int,
        width: int,
        p: Mapping[str, Any],
    ) -> RestoredFrame:
        with torch.inference_mode():
            img = tiled_decode(self.model, z0[None], tile=plan.vae_tile, overlap=plan.vae_tile // 8)[0]
        img = img[:, :height, :width].clamp(0.0, 1.0).permute(1, 2, 0).cpu().numpy().astype(np.float32)
        return RestoredFrame(frame, img, defect_matte(clip, frame, p))

    def _conditioning(self, frames: torch.Tensor, prompt: str, dtype: torch.dtype):
        """Prompt embeddings, and the global-frame conditioning (CLIP patch tokens, frequency-reference latents)
        of the window's full frames (n, 3, H, W): the model's own recipe, the one training uses."""
        m = self.model
        prompt_embeds = m.encode_prompt([prompt]).to(dtype)
        global_tokens, global_latents = m.encode_global_conditioning(frames[None])
        return prompt_embeds, global_tokens.to(dtype), global_latents

    def _restore_window(
        self,
        frames: torch.Tensor,
        window: TemporalWindow,
        p: Mapping[str, Any],
        plan: planner.Plan,
        dtype: torch.dtype,
        ticker: _Ticker,
    ) -> torch.Tensor:
        """Final latents z_0 (n, 4, hp/8, wp/8) of one window's frames (n, 3, H, W)."""
        x = frames.to(self.device, torch.float32)
        n, _, height, width = x.shape
        hp, wp = (math.ceil(s / PAD_MULTIPLE) * PAD_MULTIPLE for s in (height, width))
        xp = _pad_to(x, hp, wp)
        patch_px = p["patch_size"]
        cond = self._conditioning(x, p["prompt"], dtype)
        lp, lo = patch_px // LATENT_SCALE, p["patch_overlap"] // LATENT_SCALE
        grid = patch_grid(hp // LATENT_SCALE, wp // LATENT_SCALE, lp, lo)
        tile, tile_overlap = plan.vae_tile, plan.vae_tile // 8

        z_gr0 = None
        if p["global_residual"] and len(grid) > 1:
            pre = self._stage1(x, window, p, plan, dtype, cond, ticker)
            z_gr0 = tiled_encode(self.model, _pad_to(pre, hp, wp), tile=tile, overlap=tile_overlap)

        noise = torch.stack(
            [
                frame_noise(p["seed"], f, STREAM_STAGE2, (4, hp // LATENT_SCALE, wp // LATENT_SCALE))
                for f in window.frames
            ]
        ).to(self.device)
        z_lq0 = tiled_encode(self.model, xp, tile=tile, overlap=tile_overlap)
        return self._denoise(
            z_lq0, noise, xp, grid, z_gr0, (height / LATENT_SCALE, width / LATENT_SCALE), p, plan, dtype,
            cond, ticker, f"window {window.start}-{window.stop - 1}: stage 2",
        )  # fmt: skip

    def _stage1(self, x, window, p, plan, dtype, cond, ticker) -> torch.Tensor:
        """Downsample and pad to one patch, restore it, upsample back: the pre-restored (n, 3, H, W)."""
        n, _, height, width = x.shape
        size = p["patch_size"]
        scale = size / max(height, width)
        h1 = max(LATENT_SCALE, min(size, round(height * scale)))
        w1 = max(LATENT_SCALE, min(size, round(width * scale)))
        small = _pad_to(_resize(x, h1, w1).clamp(0, 1), size, size)
        lat = size // LATENT_SCALE
        noise = torch.stack([frame_noise(p["seed"], f, STREAM_STAGE1, (4, lat, lat)) for f in window.frames])
        z_lq0 = tiled_encode(self.model, small, tile=max(size, plan.vae_tile), overlap=0)
        box = PatchBox(0, 0, lat, lat)
        z0 = self._denoise(
            z_lq0, noise.to(self.device), small, [box], None, (h1 / LATENT_SCALE, w1 / LATENT_SCALE), p, plan,
            dtype, cond, ticker, f"window {window.start}-{window.stop - 1}: stage 1",
        )  # fmt: skip
        img = tiled_decode(self.model, z0, tile=max(size, plan.vae_tile), overlap=0)
        return _resize(img[:, :, :h1, :w1], height, width).clamp(0, 1)

    def _denoise(
        self,
        z_lq0: torch.Tensor,
        noise: torch.Tensor,
        pixels: torch.Tensor,
        grid: list[PatchBox],
        z_gr0: torch.Tensor | None,
        content_hw: tuple[float, float],
        p: Mapping[str, Any],
        plan: planner.Plan,
        dtype: torch.dtype,
        cond: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        ticker: _Ticker,
        label: str,
    ) -> torch.Tensor:
        """The stage-2 loop (stage 1 is the same loop with one patch and no global residual)."""
        m = self.model
        prompt_embeds, global_tokens, global_latents = cond
        sched = make_scheduler(m.noise_scheduler_config, p["sampler"])
        timesteps = timesteps_for(sched, p["steps"], p["strength"], device=self.device)
        T = int(sched.config.num_train_timesteps)
        states = PatchSchedulers(sched, len(grid))
        blend = [blend_weights(b, p["patch_blend"]).to(self.device) for b in grid]
        n = z_lq0.shape[0]
        z_rs = add_noise(sched, z_lq0, noise, timesteps[0])  # z_T^LQ is z_T^RS (paper, after Eq. 2)
        cache = PatchKVCache(
            enabled=bool(p["kv_cache"]) and len(grid) > 1,
            pool=self.kv_pool,
            attention_chunk=plan.attention_chunk,
        )
        batch = 1 if cache.enabled else plan.patch_batch
        hooks = installed([m.unet, getattr(m, "guidance", None)], cache)
        ctx = hooks if (cache.enabled or plan.attention_chunk) else nullcontext()
        ch, cw = content_hw
        with ctx:
            for step, t in enumerate(timesteps):
                z_in = z_rs
                if z_gr0 is not None:
                    c_t = global_residual_weight(float(t), T)
                    z_in = fuse_global_residual(z_rs, add_noise(sched, z_gr0, noise, t), c_t)
                cache.begin_step()
                acc = PatchAccumulator(z_rs.shape, device=self.device)
                for s in range(0, len(grid), batch):
                    chunk = list(range(s, min(s + batch, len(grid))))
                    boxes = [grid[i] for i in chunk]
                    if cache.enabled:
                        cache.begin_patch(chunk[0], boxes[0])
                    b = len(chunk)
                    lat = torch.stack([z_in[:, :, bx.y0 : bx.y1, bx.x0 : bx.x1] for bx in boxes])
                    lq = torch.stack([z_lq0[:, :, bx.y0 : bx.y1, bx.x0 : bx.x1] for bx in boxes])
                    pix = torch.stack(
                        [pixels[:, :, ys, xs] for ys, xs in (bx.scaled(LATENT_SCALE).slices for bx in boxes)]
                    )
                    box_t = torch.tensor([bx.normalised(ch, cw) for bx in boxes], device=self.device)
                    out = m(
                        lat.to(dtype),
                        t.reshape(1).expand(b).to(self.device).long(),
                        degraded=pix.to(dtype),
                        degraded_latents=lq.to(dtype),
                        prompt_embeds=prompt_embeds.expand(b, -1, -1),
                        global_tokens=global_tokens.expand(b, *global_tokens.shape[1:]),
                        global_latents=global_latents.to(dtype).expand(b, *global_latents.shape[1:]),
                        boxes=box_t.to(dtype),
                    ).noise_pred.float()
                    if cache.enabled:
                        cache.end_patch()
                    for j, i in enumerate(chunk):
                        prev = states.step(i, out[j], int(t), lat[j].float())
                        acc.add(grid[i], prev, blend[i])
                    ticker(len(chunk), f"{label} step {step + 1}/{len(timesteps)}")
                z_rs = acc.result()
        assert z_rs.shape[0] == n
        return z_rs


def _window_key(p: Mapping[str, Any], window: TemporalWindow, pixels: np.ndarray) -> str:
    """Everything a window's latents depend on: the parameters up to the fill stage (engine/depends.py), its
    frames and their pixels. The weights are the restorer's own, so an instance's cache never mixes them."""
    used = depends.params_hash({**p, "engine": "diffusion"}, "fill", DiffusionRestorer.engine_version)
    h = hashlib.blake2b(digest_size=20)
    h.update(json.dumps([used, window.frames]).encode())
    h.update(str(pixels.shape).encode())
    h.update(pixels.tobytes())
    return h.hexdigest()


class _Ticker:
    """Counts work units and forwards them to the progress callback (which may raise CancelledError)."""

    def __init__(self, progress: ProgressFn, total: int) -> None:
        self.progress = progress
        self.total = max(1, total)
        self.done = 0

    def __call__(self, units: int, message: str) -> None:
        self.done += units
        self.progress(float(self.done), float(self.total), message)


def defect_matte(clip: Clip, frame: int, params: Mapping[str, Any]) -> np.ndarray:
    """The 'auto' matte (mask=auto restores defects only): the classical engine's defect detector (spikes
    against motion-compensated neighbours, line scratches) on ``frame`` and its ``temporal_radius``
    neighbours, so both engines restore the same defects. Only the detector's matte is used, not its fill."""
    from frdm.engine.classical import ClassicalRestorer

    i = clip.index(frame)
    r = int(params["temporal_radius"])
    lo, hi = max(0, i - r), min(len(clip.frame_numbers), i + r + 1)
    sub = Clip(clip.frames[lo:hi], clip.frame_numbers[lo:hi], [frame])
    (result,) = list(ClassicalRestorer().restore(sub, params))
    return result.matte
