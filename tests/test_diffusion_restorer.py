"""DiffusionRestorer end to end on the tiny random-weight HaineiFRDM (CPU): output sizes at 1000x700 and
2048x1536, determinism, chunked == whole-range renders, the seam measure, KV cache on/off, the pipeline."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from frdm.engine.diffusion import DiffusionRestorer  # noqa: E402
from frdm.engine.diffusion.patches import patch_grid, seam_energy  # noqa: E402
from frdm.engine.restorer import Clip  # noqa: E402

FAST = {"engine": "diffusion", "steps": 1, "window": 2, "window_overlap": 0, "patch_size": 64, "patch_overlap": 16}


@pytest.fixture(scope="module")
def model():
    from frdm.engine.models.config import FRDMConfig
    from frdm.engine.models.frdm import HaineiFRDM

    torch.manual_seed(0)
    return HaineiFRDM.build(FRDMConfig.tiny())


@pytest.fixture(scope="module")
def restorer(model):
    # no window cache: every call recomputes (determinism and chunk equivalence must hold for recomputation)
    return DiffusionRestorer(model, device="cpu", window_cache=0, log=lambda message: None)


def _frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients with a moving blob and a few dust specks: content with structure, in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for t in range(count):
        base = 0.3 + 0.4 * (x / width) * (0.5 + 0.5 * y / height)
        blob = np.exp(-(((x - (0.3 + 0.02 * t) * width) ** 2 + (y - 0.5 * height) ** 2) / (0.02 * width * height)))
        img = np.stack([base + 0.3 * blob, base * 0.9, base * 0.8 + 0.1 * blob], -1)
        for _ in range(3):
            cy, cx = rng.integers(2, height - 2), rng.integers(2, width - 2)
            img[cy - 1 : cy + 2, cx - 1 : cx + 2] = 0.02
        out.append(np.clip(img, 0, 1))
    return np.stack(out).astype(np.float32)


def _run(restorer, frames, numbers, targets, params):
    return list(restorer.restore(Clip(frames, list(numbers), list(targets)), params))


def test_output_size_small_non_multiple(restorer):
    frames = _frames(2, 150, 200)  # pads to 192 x 256: a 3 x 4 grid of 64 px patches
    (a, b) = _run(restorer, frames, [0, 1], [0, 1], FAST)
    assert a.image.shape == b.image.shape == (150, 200, 3) and a.matte.shape == (150, 200)
    assert np.isfinite(a.image).all()


@pytest.mark.slow
def test_output_size_1000x700(restorer):
    frames = _frames(1, 700, 1000)
    # 256 px patches (tiny-model attention over 4096 tokens of a 512 px patch is slow on a CPU)
    params = {**FAST, "window": 1, "patch_size": 256, "patch_overlap": 32, "kv_cache": True}
    (out,) = _run(restorer, frames, [5], [5], params)
    assert out.frame_number == 5
    assert out.image.shape == (700, 1000, 3) and out.image.dtype == np.float32
    assert out.matte.shape == (700, 1000)
    assert np.isfinite(out.image).all() and out.image.min() >= 0 and out.image.max() <= 1
    # 1000x700 pads to 1024x704: a 3 x 5 grid of 256 px patches that overlap by 32 px or more
    assert len(patch_grid(704 // 8, 1024 // 8, 32, 4)) == 15


@pytest.mark.slow
def test_output_size_2048x1536(restorer):
    frames = _frames(1, 1536, 2048)
    params = {**FAST, "window": 1, "patch_size": 256, "patch_overlap": 32, "kv_cache": True}
    (out,) = _run(restorer, frames, [0], [0], params)
    assert out.image.shape == (1536, 2048, 3) and out.matte.shape == (1536, 2048)
    assert np.isfinite(out.image).all()


@pytest.mark.slow
def test_determinism_seed_and_kv_cache(restorer):
    frames = _frames(2, 64, 128)
    params = {**FAST, "steps": 2, "seed": 3}
    a = _run(restorer, frames, [10, 11], [10, 11], params)
    b = _run(restorer, frames, [10, 11], [10, 11], params)
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image)
    c = _run(restorer, frames, [10, 11], [10, 11], {**params, "seed": 4})
    assert not np.allclose(a[0].image, c[0].image, atol=1e-4)
    # the KV cache changes what patches attend to: both run, and the results differ
    off = _run(restorer, frames, [10, 11], [10, 11], {**params, "kv_cache": False})
    assert np.isfinite(off[0].image).all()
    assert not np.allclose(a[0].image, off[0].image, atol=1e-5)


def test_dpmsolver_and_strength_run(restorer):
    frames = _frames(1, 64, 128)
    params = {**FAST, "window": 1, "steps": 3, "sampler": "dpmsolver", "strength": 0.5}
    (out,) = _run(restorer, frames, [0], [0], params)
    assert np.isfinite(out.image).all() and out.image.shape == (64, 128, 3)


@pytest.mark.slow
def test_chunked_render_equals_whole_range(restorer):
    """Frames 0-31 at once == 0-15 and 16-31 in two calls, each with the context the restorer asks for."""
    frames = _frames(32, 64, 128, seed=1)
    numbers = list(range(32))
    params = {**FAST, "window": 8, "window_overlap": 2}
    before, after = restorer.context(params)
    assert (before, after) == (7, 7)
    whole = {r.frame_number: r for r in _run(restorer, frames, numbers, numbers, params)}
    chunks = {}
    for lo, hi in ((0, 15), (16, 31)):
        a, b = max(0, lo - before), min(31, hi + after)
        for r in _run(restorer, frames[a : b + 1], numbers[a : b + 1], range(lo, hi + 1), params):
            chunks[r.frame_number] = r
    assert sorted(chunks) == numbers
    for n in numbers:
        assert np.array_equal(whole[n].image, chunks[n].image), f"frame {n} differs"
        assert np.array_equal(whole[n].matte, chunks[n].matte)


class PatchShiftDenoiser(torch.nn.Module):
    """The blocking failure of Sec. 3.2 in a controlled form: a denoiser that knows the clean latent (the
    degraded frame's) but adds a different brightness offset in each patch, as a patch model lacking global
    context does. Its noise prediction is exact for that shifted target. Encoders and sizes are the tiny
    HaineiFRDM's."""

    def __init__(self, inner, schedule):
        super().__init__()
        self.inner = inner
        self.unet, self.vae, self.guidance, self.config = inner.unet, inner.vae, inner.guidance, inner.config
        self.noise_scheduler_config = inner.noise_scheduler_config
        self.alphas = schedule.alphas_cumprod
        self.encode_prompt, self.encode_global_conditioning = inner.encode_prompt, inner.encode_global_conditioning
        self.encode_latents, self.decode_latents = inner.encode_latents, inner.decode_latents

    def forward(self, noisy_latents, timesteps, *, degraded_latents, boxes, **_):
        from types import SimpleNamespace

        a = self.alphas[timesteps.cpu()].to(noisy_latents.device).view(-1, 1, 1, 1, 1).float()
        # an offset of up to +-0.5 latent units that depends on the patch's position (its box)
        shift = 0.5 * torch.sin(37.0 * boxes[:, 0].float() + 53.0 * boxes[:, 1].float()).view(-1, 1, 1, 1, 1)
        target = degraded_latents.float() + shift
        eps = (noisy_latents.float() - a.sqrt() * target) / (1 - a).sqrt()
        return SimpleNamespace(noise_pred=eps)


def test_seam_measure_blend_and_global_residual_beat_uniform_independent_patches(model):
    from diffusers import DDIMScheduler

    oracle = PatchShiftDenoiser(model, DDIMScheduler.from_config(model.noise_scheduler_config))
    restorer = DiffusionRestorer(oracle, device="cpu", log=lambda message: None)
    frames = _frames(1, 192, 256)
    boxes = patch_grid(24, 32, 16, 4)
    base = {**FAST, "window": 1, "steps": 4, "patch_size": 128, "patch_overlap": 32}
    ratio = {}
    for name, extra in {
        "uniform independent": {"patch_blend": "uniform", "global_residual": False, "kv_cache": False},
        "uniform + global residual": {"patch_blend": "uniform", "global_residual": True, "kv_cache": False},
        "blend": {"patch_blend": "cosine", "global_residual": False, "kv_cache": False},
        "blend + global residual": {"patch_blend": "cosine", "global_residual": True, "kv_cache": True},
    }.items():
        _, z0, _ = next(restorer.restore_latents(Clip(frames, [0], [0]), {**base, **extra}))
        border, interior = seam_energy(z0, boxes)
        ratio[name] = border / interior
    print("seam energy ratio (border / interior):", ratio)
    assert ratio["uniform independent"] > 2.0  # the checkerboard of offsets shows as seams
    # The global residual reaches the sampler (the result moves) and does not add seams of its own; it cannot
    # remove a bias the denoiser adds at every step (c_t falls to ~0 by the last steps, Eq. 2).
    assert ratio["uniform + global residual"] != ratio["uniform independent"]
    assert ratio["uniform + global residual"] <= ratio["uniform independent"]
    assert ratio["blend + global residual"] < 0.5 * ratio["uniform independent"]
    assert ratio["blend"] < 0.5 * ratio["uniform independent"]


def test_pipeline_restores_with_the_diffusion_engine(restorer):
    from frdm.engine.frames import Frame, MemorySource
    from frdm.engine.pipeline import restore_frames

    frames = _frames(3, 64, 64)
    source = MemorySource(
        {n: Frame(frames[n], ("R", "G", "B"), ("float",) * 3, (0, 0, 64, 64), (0, 0, 64, 64)) for n in range(3)}
    )
    params = {**FAST, "colorspace": "raw", "mask": "none", "window": 3, "window_overlap": 1}
    out = dict(restore_frames(source, [0, 1, 2], params, restorer))
    assert sorted(out) == [0, 1, 2]
    assert out[1].pixels.shape[:2] == (64, 64) and "frdm.matte" in out[1].channels


def test_frdm_restore_cli_with_the_diffusion_engine_and_a_weights_folder(tmp_path):
    """`frdm restore --engine diffusion --weights DIR`: create_restorer -> from_weights -> load_model."""
    from test_weights import _components, _expected_model, _write_weights

    from frdm.cli import main
    from frdm.engine.frames import Frame, read_frame, write_frame
    from frdm.engine.weights import save_frdm_weights

    comps = _components(seed=2)
    root = _write_weights(tmp_path / "w", comps)
    save_frdm_weights(root / "frdm.safetensors", _expected_model(comps))  # carries the tiny config
    frames = _frames(2, 64, 96)
    for n in range(2):
        frame = Frame(frames[n], ("R", "G", "B"), ("float",) * 3, (0, 0, 96, 64), (0, 0, 96, 64))
        write_frame(tmp_path / f"sh.{n + 1:04d}.exr", frame)
    args = ["restore", str(tmp_path / "sh.####.exr"), str(tmp_path / "out.####.exr"), "--quiet", "--engine",
            "diffusion", "--weights", str(root), "--steps", "1", "--window", "2", "--window-overlap", "0",
            "--patch-size", "64", "--patch-overlap", "16", "--mask", "none", "--colorspace", "raw"]  # fmt: skip
    assert main(args) == 0
    out = read_frame(tmp_path / "out.0002.exr")
    assert out.pixels.shape[:2] == (64, 96) and "frdm.matte" in out.channels
    assert not np.allclose(out.pixels[..., :3], frames[1], atol=1e-3)  # the network changed the frame


def test_progress_reports_and_cancels_between_patches(restorer):
    from frdm.engine.errors import CancelledError

    frames = _frames(1, 64, 128)
    seen = []

    def progress(done, total, message):
        seen.append((done, total, message))
        if len(seen) == 2:
            raise CancelledError("stop")

    with pytest.raises(CancelledError):
        _run_with_progress(restorer, frames, {**FAST, "window": 1, "steps": 3}, progress)
    assert len(seen) == 2 and seen[0][1] == 3 + 3 * 3  # stage 1 steps + stage 2 steps x 3 patches
    assert seen[1][0] > seen[0][0] and "stage" in seen[0][2]


def _run_with_progress(restorer, frames, params, progress):
    return list(restorer.restore(Clip(frames, [0], [0]), params, progress))


def test_out_of_memory_falls_back_to_leaner_settings(model, monkeypatch):
    said = []
    restorer = DiffusionRestorer(model, device="cpu", log=said.append)
    real = restorer._restore_window
    tried = []

    def flaky(frames, window, p, plan, dtype, ticker):
        tried.append(plan)
        if plan.attention_chunk == 0:  # the first CPU plans: pretend they do not fit
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(frames, window, p, plan, dtype, ticker)

    monkeypatch.setattr(restorer, "_restore_window", flaky)
    frames = _frames(3, 64, 64)
    out = _run(restorer, frames, [0, 1, 2], [0, 1, 2], {**FAST, "window": 2, "window_overlap": 0})
    assert [o.frame_number for o in out] == [0, 1, 2] and np.isfinite(out[0].image).all()
    assert restorer.last_plan is not None and restorer.last_plan.attention_chunk > 0
    assert any("retrying" in m for m in said)
    # windows after the first start from the plan that worked, not from the one that ran out of memory
    assert sum(p.attention_chunk == 0 for p in tried) == 1 and len(tried) == 3  # 1 failure + 2 windows
    assert restorer.last_plan.estimated_peak_bytes <= tried[0].estimated_peak_bytes


def test_window_cache_reuses_a_window_shared_by_consecutive_calls(model):
    restorer = DiffusionRestorer(model, device="cpu", log=lambda message: None)
    frames = _frames(4, 64, 64)
    params = {**FAST, "window": 4, "window_overlap": 0}
    messages = []
    first = _run(restorer, frames, range(4), [0, 1], params)  # as the pipeline's first block
    second = list(restorer.restore(Clip(frames, list(range(4)), [2, 3]), params, lambda d, t, m: messages.append(m)))
    assert any("reused" in m for m in messages)
    fresh = DiffusionRestorer(model, device="cpu", window_cache=0, log=lambda message: None)
    again = _run(fresh, frames, range(4), [2, 3], params)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(second, again))
    changed = frames.copy()
    changed[1, 10:20, 10:20] = 0.9  # other pixels: a different key, computed anew
    messages.clear()
    list(restorer.restore(Clip(changed, list(range(4)), [2, 3]), params, lambda d, t, m: messages.append(m)))
    assert not any("reused" in m for m in messages) and len(first) == 2


def test_a_window_longer_than_the_motion_module_is_a_clear_parameter_error(restorer):
    from frdm.engine.errors import ParamError

    limit = restorer.model.config.motion_max_seq_length
    frames = _frames(2, 64, 64)
    with pytest.raises(ParamError, match=rf"'window' \({limit + 1}\) exceeds the {limit} frames"):
        _run(restorer, frames, [0, 1], [0, 1], {**FAST, "window": limit + 1, "window_overlap": 0})


# ---------------------------------------------------------------------------- stage 1 and the global residual
class _Recorder:
    """Records what reaches the model and the GRFM fusion (Eq. 1) during a restore, calling the real ones."""

    def __init__(self, model, monkeypatch):
        import frdm.engine.diffusion.restorer as restorer_mod

        self.calls: list[dict] = []  # every model forward: its timestep and latents
        self.fusions: list[tuple[float, torch.Tensor, torch.Tensor]] = []  # (c_t, z_t^GR, z_t^fused)
        forward, fuse = model.forward, restorer_mod.fuse_global_residual

        def recording_forward(noisy_latents, timesteps, **kw):
            self.calls.append({"t": int(timesteps[0]), "latents": noisy_latents.clone()})
            return forward(noisy_latents, timesteps, **kw)

        def recording_fuse(z_rs, z_gr, c_t):
            out = fuse(z_rs, z_gr, c_t)
            self.fusions.append((c_t, z_gr.clone(), out.clone()))
            return out

        monkeypatch.setattr(model, "forward", recording_forward)
        monkeypatch.setattr(restorer_mod, "fuse_global_residual", recording_fuse)


def test_stage2_fuses_the_global_residual_with_the_eq2_weight_at_every_step(model, monkeypatch):
    import math

    restorer = DiffusionRestorer(model, device="cpu", window_cache=0, log=lambda message: None)
    rec = _Recorder(model, monkeypatch)
    frames = _frames(1, 64, 128)  # three overlapped 64 px patches: stage 1 runs
    params = {**FAST, "window": 1, "steps": 3, "kv_cache": False, "global_residual": True}
    _run(restorer, frames, [0], [0], params)
    grid = patch_grid(8, 16, 8, 2)
    n = len(grid)
    assert n == 3 and len(rec.calls) == 3 + 3 * n  # stage 1: one patch per step; stage 2: every patch
    stage2 = rec.calls[3:]
    steps = [stage2[n * k]["t"] for k in range(3)]
    assert steps[0] == 999 and steps == sorted(steps, reverse=True)
    # c_t = 0.25 (1 + cos(pi (T - t) / T)) with T = 1000 at each of the sampler's timesteps: 0.5 at the start.
    eq2 = [0.25 * (1 + math.cos(math.pi * (1000 - t) / 1000)) for t in steps]
    assert [c for c, _, _ in rec.fusions] == pytest.approx(eq2)
    assert rec.fusions[0][0] == pytest.approx(0.5, abs=1e-5)
    for k, (_, z_gr, fused) in enumerate(rec.fusions):
        # The fused latent is what the patches are cut from: the model sees z_t^fused, not z_t^RS.
        for j, box in enumerate(grid):
            seen = stage2[n * k + j]["latents"][0]
            assert torch.equal(seen, fused[:, :, box.y0 : box.y1, box.x0 : box.x1]), (k, j)
        # z_t^GR is stage 1's result noised to this step: it changes with t and is not the patches' own latent.
        assert not torch.allclose(z_gr, fused)
    assert not torch.allclose(rec.fusions[0][1], rec.fusions[-1][1])


def test_output_differs_with_the_global_residual_on_and_off(restorer):
    frames = _frames(1, 64, 128)
    params = {**FAST, "window": 1, "steps": 2, "kv_cache": False}
    clip = Clip(frames, [0], [0])
    (_, on, _), (_, off, _) = (
        next(restorer.restore_latents(clip, {**params, "global_residual": flag})) for flag in (True, False)
    )
    assert on.shape == off.shape
    assert (on - off).abs().max() > 1e-3  # stage 1's pre-restored frame steers stage 2


def test_stage1_is_skipped_when_the_frame_is_one_patch(model, monkeypatch):
    restorer = DiffusionRestorer(model, device="cpu", window_cache=0, log=lambda message: None)
    frames = _frames(1, 64, 64)  # pads to 64 x 64: one 64 px patch, the whole frame already is stage 1's input
    params = {**FAST, "window": 1, "steps": 3}
    (off,) = _run(restorer, frames, [0], [0], {**params, "global_residual": False})
    rec = _Recorder(model, monkeypatch)
    seen = []
    on = list(
        restorer.restore(
            Clip(frames, [0], [0]), {**params, "global_residual": True}, lambda d, t, m: seen.append((t, m))
        )
    )
    assert len(rec.calls) == 3 and not rec.fusions  # stage 2's three steps only, nothing fused
    assert seen[-1][0] == 3 and not any("stage 1" in m for _, m in seen)
    assert np.array_equal(on[0].image, off.image)
