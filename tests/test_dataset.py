"""The dataset layout on disk and the patch-window Dataset the training loop reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frdm.engine.data.dataset import FilmRestorationDataset, list_shots, window_starts, write_shot
from frdm.engine.errors import InputError


def _shot(tmp_path, name="shot_a", t=5, h=72, w=100):  # noqa: ANN001, ANN202
    rng = np.random.default_rng(0)
    gt = rng.random((t, h, w, 3)).astype(np.float32)
    deg = np.clip(gt + 0.1, 0, 1).astype(np.float32)
    mask = rng.random((t, h, w)) > 0.9
    write_shot(tmp_path, name, deg, gt, mask, "a horse in a field", info={"preset": "mixed"})
    return deg, gt, mask


def test_window_starts_cover_everything_with_overlap() -> None:
    assert window_starts(100, 40, 10) == [0, 30, 60]
    assert window_starts(30, 40, 10) == [0]
    for length, size, overlap in ((257, 64, 16), (99, 32, 8)):
        starts = window_starts(length, size, overlap)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s : s + size] = True
        assert covered.all() and all(b - a <= size - overlap for a, b in zip(starts, starts[1:]))


def test_items_are_patches_of_the_written_frames(tmp_path) -> None:  # noqa: ANN001
    deg, gt, mask = _shot(tmp_path)
    (shot,) = list_shots(tmp_path)
    assert shot.caption == "a horse in a field" and shot.frames == [1, 2, 3, 4, 5] and shot.size == (100, 72)
    ds = FilmRestorationDataset(
        tmp_path,
        num_frames=3,
        patch_size=48,
        patch_overlap=16,
        frame_overlap=1,
        global_size=(24, 32),
        random_position=False,
    )
    # 2 temporal windows (0, 2) x rows (0, 24) x columns (0, 32, 52)
    assert len(ds) == 2 * 2 * 3
    item = ds[len(ds) - 1]
    assert set(item) >= {"degraded", "gt", "mask", "box", "global_frame", "caption"}
    assert item["degraded"].shape == (3, 3, 48, 48) and item["gt"].shape == (3, 3, 48, 48)
    assert item["mask"].shape == (3, 1, 48, 48) and item["global_frame"].shape == (3, 3, 24, 32)
    assert item["degraded"].dtype == torch.float32 and item["caption"] == "a horse in a field"
    # the box says where the patch is: the patch equals that crop of the (16-bit) frames
    x0, y0, x1, y1 = (item["box"] * torch.tensor([100, 72, 100, 72])).round().int().tolist()
    assert (x0, y0, x1, y1) == (52, 24, 100, 72)
    t0 = item["frames"][0] - 1
    np.testing.assert_allclose(item["gt"][0].permute(1, 2, 0).numpy(), gt[t0, y0:y1, x0:x1], atol=1 / 65535)
    np.testing.assert_allclose(item["degraded"][0].permute(1, 2, 0).numpy(), deg[t0, y0:y1, x0:x1], atol=1 / 65535)
    assert np.array_equal(item["mask"][0, 0].numpy() > 0.5, mask[t0, y0:y1, x0:x1])


def test_random_positions_are_seeded_per_epoch(tmp_path) -> None:  # noqa: ANN001
    _shot(tmp_path, t=8, h=120, w=160)
    ds = FilmRestorationDataset(
        tmp_path, num_frames=2, frame_overlap=0, patch_size=48, patch_overlap=16, random_position=True, seed=3
    )
    boxes = [ds[5]["box"] for _ in range(2)]
    assert torch.equal(boxes[0], boxes[1])
    moved = []
    for epoch in range(1, 6):
        ds.epoch = epoch
        moved.append(ds[5]["box"])
    assert any(not torch.equal(b, boxes[0]) for b in moved)
    for b in moved:
        assert 0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1
        assert b[2] - b[0] == pytest.approx(48 / 160) and b[3] - b[1] == pytest.approx(48 / 120)


def test_broken_layouts_are_clear_errors(tmp_path) -> None:  # noqa: ANN001
    _shot(tmp_path)
    (tmp_path / "shot_a" / "mask" / "frame.0003.png").unlink()
    with pytest.raises(InputError, match=r"mask/ does not match degraded/ \(missing frames 3, extra frames none\)"):
        list_shots(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        list_shots(tmp_path / "nothing")
    with pytest.raises(InputError, match="at most half"):
        FilmRestorationDataset(tmp_path, patch_size=32, patch_overlap=20, shots=[])
