"""Sampler math for patch-consistent inference: the global-residual weight of Eq. 2, the fusion of Eq. 1,
timesteps for a strength, and per-patch scheduler state.

Eq. 2 is written with the diffusion timestep t counting down from T; here T is the training schedule's
length (1000 for SD1.5) and t the sampler's actual timestep, so c_t = 0.5 at the noisiest step and falls to
about 0 at the last: the global residual steers the layout early and leaves the fine texture to the patches.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch

SAMPLERS = ("ddim", "dpmsolver")


def global_residual_weight(t: float, T: float) -> float:
    """c_t = 0.25 * (1 + cos(pi * (T - t) / T))  (paper Eq. 2)."""
    return 0.25 * (1.0 + math.cos(math.pi * (T - t) / T))


def fuse_global_residual(z_rs: torch.Tensor, z_gr: torch.Tensor, c_t: float) -> torch.Tensor:
    """z_t^fused = (1 - c_t) * z_t^RS + c_t * z_t^GR  (paper Eq. 1, the GRFM re-weighting)."""
    return (1.0 - c_t) * z_rs + c_t * z_gr


def make_scheduler(config: Mapping[str, Any], sampler: str = "ddim") -> Any:
    """A diffusers scheduler from the model's noise-schedule config.

    'trailing' spacing makes the first step the last training timestep (999): the paper starts stage 2
    from z_T^LQ, and SD1.5's default 'leading' spacing would start at 951 instead."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    cfg = dict(config)
    if sampler == "ddim":
        return DDIMScheduler.from_config(cfg, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=False)
    if sampler == "dpmsolver":
        return DPMSolverMultistepScheduler.from_config(
            cfg, timestep_spacing="trailing", algorithm_type="dpmsolver++", solver_order=2
        )
    raise ValueError(f"unknown sampler {sampler!r} (use one of {SAMPLERS})")


def timesteps_for(scheduler: Any, steps: int, strength: float, device: Any = None) -> torch.Tensor:
    """Set ``steps`` timesteps on ``scheduler`` and keep the last ``strength`` fraction (img2img-style):
    strength 1 starts from T, smaller values start from a less noisy degraded latent."""
    scheduler.set_timesteps(steps, device=device)
    keep = min(steps, max(1, int(round(steps * strength))))
    start = steps - keep
    ts = scheduler.timesteps[start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * scheduler.order)
    return ts


class PatchSchedulers:
    """One scheduler state per patch.

    DDIM's step depends only on its arguments, but multistep solvers (DPM-Solver++) keep the previous model
    outputs and a step counter: sharing one instance between patches would mix patch A's history into patch
    B's update. Each patch therefore steps its own copy of the configured scheduler."""

    def __init__(self, template: Any, count: int) -> None:
        self.template = template
        self._states = [copy.deepcopy(template) for _ in range(count)]

    def __len__(self) -> int:
        return len(self._states)

    def step(self, index: int, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> torch.Tensor:
        # Give the timestep as a Python int: each copy keeps its schedule tensors on the CPU, and indexing them
        # with a CUDA tensor would fail.
        return self._states[index].step(model_output, timestep, sample, return_dict=False)[0]


def add_noise(scheduler: Any, clean: torch.Tensor, noise: torch.Tensor, timestep: Any) -> torch.Tensor:
    """The forward process q(z_t | z_0) at one timestep (scheduler.add_noise wants a timestep tensor)."""
    t = torch.as_tensor(timestep, device=clean.device).reshape(1).long()
    return scheduler.add_noise(clean, noise, t)
