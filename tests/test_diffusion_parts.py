"""The pure parts of patch-consistent inference: patch grid, blend weights, Eq. 1-2, windows, seeds, the
KV-cache attention processor, tiled VAE blending and the memory planner."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from frdm.engine.diffusion import planner  # noqa: E402
from frdm.engine.diffusion.kv_cache import PatchKVAttnProcessor, PatchKVCache  # noqa: E402
from frdm.engine.diffusion.patches import (  # noqa: E402
    PatchAccumulator,
    axis_starts,
    blend_weights,
    patch_grid,
    seam_energy,
)
from frdm.engine.diffusion.schedule import (  # noqa: E402
    PatchSchedulers,
    fuse_global_residual,
    global_residual_weight,
    make_scheduler,
    timesteps_for,
)
from frdm.engine.diffusion.windows import (  # noqa: E402
    context_frames,
    frame_noise,
    frame_seed,
    plan_windows,
    window_weight,
    windows_containing,
)

SD_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
}


# --- patch grid ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [8, 40, 64, 65, 88, 125, 192, 256, 1000])
@pytest.mark.parametrize("patch,overlap", [(64, 16), (64, 0), (32, 8), (64, 32)])
def test_axis_starts_cover_with_at_least_the_overlap(length, patch, overlap):
    starts = axis_starts(length, patch, overlap)
    size = min(patch, length)
    assert starts[0] == 0 and starts[-1] + size == length
    for a, b in zip(starts, starts[1:]):
        assert b > a and a + size - b >= overlap  # neighbours share at least `overlap`
    if length > patch:  # fewest patches: one fewer would not keep the overlap
        assert (len(starts) - 2) * (patch - overlap) + patch < length or len(starts) == 2


def test_patch_grid_covers_non_multiple_sizes_and_records_overlaps():
    h, w = 88, 125  # a 1000x700-ish latent that is no multiple of the patch
    boxes = patch_grid(h, w, 64, 16)
    cover = torch.zeros(h, w)
    for b in boxes:
        assert (b.height, b.width) == (64, 64)
        cover[b.slices] += 1
    assert bool((cover >= 1).all())
    rows = {b.row for b in boxes}
    cols = {b.col for b in boxes}
    assert len(boxes) == len(rows) * len(cols) == 2 * 3
    first, last = boxes[0], boxes[-1]
    assert first.overlap_top == first.overlap_left == 0 and first.overlap_right > 0 and first.overlap_bottom > 0
    assert last.overlap_bottom == last.overlap_right == 0
    assert boxes[1].overlap_left == boxes[0].overlap_right == boxes[0].x1 - boxes[1].x0


def test_small_frame_is_one_patch_of_its_own_size():
    (box,) = patch_grid(40, 24, 64, 16)
    assert (box.y0, box.x0, box.y1, box.x1) == (0, 0, 40, 24)
    assert box.normalised(40, 24) == (0.0, 0.0, 1.0, 1.0)


# --- blend weights -------------------------------------------------------------------------------------
def test_cosine_weights_partition_unity_and_are_flat_on_frame_borders():
    boxes = patch_grid(88, 176, 64, 16)  # real overlaps 40 rows, 27 columns: at most pairs overlap per axis
    total = torch.zeros(88, 176)
    for b in boxes:
        wgt = blend_weights(b)
        assert float(wgt.min()) > 0
        total[b.slices] += wgt
    # neighbours' sin^2 / cos^2 ramps sum to one, wherever two or four patches overlap
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
    w0 = blend_weights(boxes[0])
    assert float(w0[0, 0]) == 1.0 and float(w0[-1, -1]) < 0.01


def test_accumulator_of_a_constant_is_that_constant_and_smooth_where_uniform_is_not():
    boxes = patch_grid(40, 72, 24, 8)
    ramps = []
    for kind in ("cosine", "uniform"):
        acc = PatchAccumulator((1, 40, 72))
        for i, b in enumerate(boxes):
            acc.add(b, torch.full((1, b.height, b.width), float(i % 2)), blend_weights(b, kind))
        out = acc.result()
        # a patch disagreeing with its neighbour: uniform jumps by 0.5 at a patch edge, cosine ramps
        ramps.append(float((out[..., 1:] - out[..., :-1]).abs().max()))
    assert ramps[0] < 0.2 < ramps[1]
    acc = PatchAccumulator((2, 40, 72))
    for b in boxes:
        acc.add(b, torch.full((2, b.height, b.width), 0.7), blend_weights(b))
    assert torch.allclose(acc.result(), torch.full((2, 40, 72), 0.7))


def test_seam_energy_sees_blocks():
    boxes = patch_grid(32, 32, 16, 0)
    blocky = torch.zeros(32, 32)
    for i, b in enumerate(boxes):
        blocky[b.slices] = i * 0.1
    border, inner = seam_energy(blocky, boxes)
    assert border > 0 and inner == 0
    smooth = torch.linspace(0, 1, 32)[None].expand(32, 32)
    border, inner = seam_energy(smooth, boxes)
    assert math.isclose(border, inner, rel_tol=0.5)


# --- Eq. 1-2 and the schedulers ------------------------------------------------------------------------
def test_global_residual_weight_is_eq2():
    T = 1000
    assert global_residual_weight(T, T) == pytest.approx(0.5)
    assert global_residual_weight(0, T) == pytest.approx(0.0, abs=1e-12)
    assert global_residual_weight(500, T) == pytest.approx(0.25)
    ts = [999 - 50 * i for i in range(20)]
    cs = [global_residual_weight(t, T) for t in ts]
    assert all(a > b for a, b in zip(cs, cs[1:]))  # cosine-decreasing as t goes down
    z_rs, z_gr = torch.zeros(3), torch.ones(3)
    assert torch.allclose(fuse_global_residual(z_rs, z_gr, 0.3), torch.full((3,), 0.3))


def test_timesteps_start_at_T_and_strength_shortens():
    s = make_scheduler(SD_SCHEDULE, "ddim")
    full = timesteps_for(s, 20, 1.0)
    assert int(full[0]) == 999 and len(full) == 20
    half = timesteps_for(make_scheduler(SD_SCHEDULE, "ddim"), 20, 0.5)
    assert len(half) == 10 and int(half[0]) < 600


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver"])
def test_per_patch_scheduler_state_equals_separate_runs(sampler):
    """Interleaving two patches' steps must give what two separate samplers give (multistep history)."""
    torch.manual_seed(0)
    outs = [torch.randn(6, 1, 4, 4, 4) for _ in range(2)]
    starts = [torch.randn(1, 4, 4, 4) for _ in range(2)]

    def separate(k):
        s = make_scheduler(SD_SCHEDULE, sampler)
        ts = timesteps_for(s, 6, 1.0)
        x = starts[k]
        for i, t in enumerate(ts):
            x = s.step(outs[k][i], t, x, return_dict=False)[0]
        return x

    s = make_scheduler(SD_SCHEDULE, sampler)
    ts = timesteps_for(s, 6, 1.0)
    states = PatchSchedulers(s, 2)
    xs = list(starts)
    for i, t in enumerate(ts):
        for k in range(2):
            xs[k] = states.step(k, outs[k][i], t, xs[k])
    for k in range(2):
        assert torch.equal(xs[k], separate(k))
    if sampler == "dpmsolver":  # one shared instance mixes the histories (and runs past its step count)
        shared = make_scheduler(SD_SCHEDULE, sampler)
        ts = timesteps_for(shared, 6, 1.0)
        ys = list(starts)
        try:
            for i, t in enumerate(ts):
                for k in range(2):
                    ys[k] = shared.step(outs[k][i], t, ys[k], return_dict=False)[0]
        except IndexError:
            return
        assert not torch.allclose(ys[0], xs[0])


# --- temporal windows and seeds --------------------------------------------------------------------------
def test_windows_are_anchored_on_frame_numbers():
    assert windows_containing(0, 16, 4) == [-1, 0]
    assert windows_containing(13, 16, 4) == [0, 1]
    assert windows_containing(16, 16, 4) == [1]
    assert windows_containing(-1, 16, 4) == [-1]
    whole = plan_windows(range(0, 32), range(0, 32), 16, 4)
    a = plan_windows(range(0, 16), range(0, 31), 16, 4)  # chunk 0-15 with 15 context frames after
    b = plan_windows(range(16, 32), range(1, 32), 16, 4)  # chunk 16-31 with 15 before
    by_k = {w.index: w for w in whole}
    for w in a + b:
        assert by_k[w.index] == w  # the same windows with the same frames
    assert {w.index for w in a} | {w.index for w in b} == set(by_k)
    assert context_frames(16, 4) == (15, 15)


def test_window_weights_hand_over_and_sum_to_one():
    ws = plan_windows(range(0, 40), range(0, 40), 8, 3)
    for f in range(3, 37):
        total = sum(window_weight(f, w, 3) for w in ws if w.start <= f < w.stop)
        assert total == pytest.approx(1.0) or f < 5  # frames 0..4 lie in a truncated first window too
    w0 = next(w for w in ws if w.index == 0)
    assert window_weight(0, w0, 3) < window_weight(2, w0, 3) < window_weight(4, w0, 3) == 1.0


def test_frame_noise_depends_on_seed_frame_and_stream_only():
    a = frame_noise(7, 12, 2, (4, 3, 5))
    assert torch.equal(a, frame_noise(7, 12, 2, (4, 3, 5)))
    assert not torch.allclose(a, frame_noise(7, 13, 2, (4, 3, 5)))
    assert not torch.allclose(a, frame_noise(8, 12, 2, (4, 3, 5)))
    assert not torch.allclose(a, frame_noise(7, 12, 1, (4, 3, 5)))
    assert frame_seed(0, -5, 1) != frame_seed(0, 5, 1)
    assert 0 <= frame_seed(2**31 - 1, 10**6, 2) < 2**63


# --- KV cache ----------------------------------------------------------------------------------------------
def _attention():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=8, heads=2, dim_head=4)


def test_kv_processor_without_neighbours_equals_plain_attention():
    attn = _attention()
    x = torch.randn(2, 16, 8)  # 2 frames, a 4x4 token grid
    plain = attn(x)
    cache = PatchKVCache(enabled=True, pool=1)
    attn.set_processor(PatchKVAttnProcessor(cache, 0))
    from frdm.engine.diffusion.patches import PatchBox

    cache.begin_step()
    cache.begin_patch(0, PatchBox(0, 0, 4, 4))
    assert torch.allclose(attn(x), plain, atol=1e-6)
    cache.end_patch()
    # the next patch, touching the first, attends to its keys too: different output
    cache.begin_patch(1, PatchBox(0, 3, 4, 7, col=1))
    y = torch.randn(2, 16, 8)
    with_cache = attn(y)
    cache.end_patch()
    cache.enabled = False
    cache.begin_patch(1, PatchBox(0, 3, 4, 7, col=1))
    assert not torch.allclose(with_cache, attn(y), atol=1e-4)
    # chunked attention is the same computation
    cache.attention_chunk = 1
    assert torch.allclose(attn(y), plain_of(y), atol=1e-6)


def plain_of(y):
    return _attention()(y)


def test_kv_cache_pools_and_forgets_old_rows():
    from frdm.engine.diffusion.patches import PatchBox

    cache = PatchKVCache(enabled=True, pool=2)
    cache.begin_step()
    cache.begin_patch(0, PatchBox(0, 0, 8, 8, row=0))
    k = torch.randn(3, 64, 6)
    cache.record(5, k, k)
    cache.end_patch()
    assert cache._store[(5, 0)][0].shape == (3, 16, 6)  # 8x8 tokens pooled 2x2
    cache.begin_patch(1, PatchBox(6, 0, 14, 8, row=1))
    assert cache.neighbour_kv(5, 3) is not None
    cache.end_patch()
    cache.begin_patch(2, PatchBox(12, 0, 20, 8, row=2))  # row 0 can no longer touch anything
    assert (5, 0) not in cache._store
    assert cache.neighbour_kv(5, 3) is None  # patch 1 stored nothing at layer 5


# --- planner ---------------------------------------------------------------------------------------------
FP_SD15 = planner.ModelFootprint(weight_bytes=int(2.1e9 * 2), unet_channels=320, attention_heads=8, vae_channels=128)


def test_planner_picks_leaner_settings_for_smaller_budgets():
    kw = dict(frames=16, patch_latent=64, grid_cols=5, dtype=torch.float16, device=torch.device("cuda"),
              kv_cache=False, frame_latent_hw=(192, 256))  # fmt: skip
    roomy = planner.make_plans(FP_SD15, budget_bytes=80 * planner.GIB, **kw)
    tight = planner.make_plans(FP_SD15, budget_bytes=int(roomy[-1].estimated_peak_bytes * 1.01), **kw)
    assert roomy[0].patch_batch > tight[0].patch_batch
    assert roomy[0].estimated_peak_bytes > tight[0].estimated_peak_bytes
    assert all(p.estimated_peak_bytes <= 80 * planner.GIB for p in roomy[:1])
    # every later plan is a fallback, never heavier than the one before it
    peaks = [p.estimated_peak_bytes for p in roomy]
    assert peaks == sorted(peaks, reverse=True)
    assert all(p.patch_batch == 1 for p in planner.make_plans(FP_SD15, budget_bytes=None, **{**kw, "kv_cache": True}))


def test_fallback_steps_down_on_out_of_memory():
    plans = [planner.Plan(4, 1024, 0, 3), planner.Plan(1, 512, 4, 2), planner.Plan(1, 256, 1, 1)]
    tried, said = [], []

    def fn(plan):
        tried.append(plan)
        if plan.patch_batch > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return plan.vae_tile

    assert planner.run_with_fallback(fn, plans, log=said.append) == 512
    assert tried == plans[:2] and "retrying" in said[0]
    from frdm.engine.errors import ParamError

    with pytest.raises(ParamError, match="patch_size"):
        planner.run_with_fallback(
            lambda p: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("x")), plans, log=said.append
        )
