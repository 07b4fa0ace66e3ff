"""`frdm degrade`, `frdm pairs` and `frdm eval` end to end on tiny inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from frdm.cli import main
from frdm.engine.frames import Frame, read_frame, write_frame


def _write_seq(folder, frames, name="f"):  # noqa: ANN001, ANN202
    folder.mkdir(parents=True, exist_ok=True)
    for i, px in enumerate(frames, start=1):
        h, w = px.shape[:2]
        write_frame(
            folder / f"{name}.{i:04d}.png", Frame(px, ("R", "G", "B"), ("uint16",) * 3, (0, 0, w, h), (0, 0, w, h))
        )
    return str(folder / f"{name}.####.png")


def _clean(t=3, h=64, w=96):  # noqa: ANN202
    ys, xs = np.mgrid[0:h, 0:w] / 50.0
    base = 0.5 + 0.2 * np.sin(3 * xs + 2 * ys)[..., None] * np.array([1.0, 0.7, 0.5])
    return [np.clip(np.roll(base, i * 2, axis=1), 0, 1).astype(np.float32) for i in range(t)]


def test_degrade_writes_a_shot_and_is_reproducible(tmp_path, capsys) -> None:  # noqa: ANN001
    src = _write_seq(tmp_path / "clean", _clean())
    assert main(["degrade", src, str(tmp_path / "a"), "--preset", "mixed", "--seed", "7"]) == 0
    assert main(["degrade", src, str(tmp_path / "b"), "--preset", "mixed", "--seed", "7"]) == 0
    for sub in ("degraded", "gt", "mask"):
        files = sorted(p.name for p in (tmp_path / "a" / sub).iterdir())
        assert files == ["frame.0001.png", "frame.0002.png", "frame.0003.png"]
    a = read_frame(tmp_path / "a" / "degraded" / "frame.0002.png").pixels
    b = read_frame(tmp_path / "b" / "degraded" / "frame.0002.png").pixels
    gt = read_frame(tmp_path / "a" / "gt" / "frame.0002.png").pixels
    mask = read_frame(tmp_path / "a" / "mask" / "frame.0002.png").pixels[..., 0] > 0.5
    assert np.array_equal(a, b) and mask.any() and not np.array_equal(a, gt)
    assert (tmp_path / "a" / "caption.txt").read_text().strip() == "an old film frame"
    info = json.loads((tmp_path / "a" / "defects.json").read_text())
    assert info["preset"] == "mixed" and info["seed"] == 7 and any(s["name"] == "dust" for s in info["steps"])


def test_degrade_fast_motion_from_a_still(tmp_path) -> None:  # noqa: ANN001
    src = _write_seq(tmp_path / "still", _clean(t=1, h=160, w=240))
    assert (
        main(
            [
                "degrade",
                src,
                str(tmp_path / "pan"),
                "--preset",
                "noisy-fast-motion",
                "--fast-motion",
                "8",
                "--motion-frames",
                "4",
                "--size",
                "96x64",
            ]
        )
        == 0
    )
    info = json.loads((tmp_path / "pan" / "defects.json").read_text())
    assert len(info["motion"]["transforms_output_to_source"]) == 4
    f1 = read_frame(tmp_path / "pan" / "gt" / "frame.0001.png").pixels
    f2 = read_frame(tmp_path / "pan" / "gt" / "frame.0002.png").pixels
    assert f1.shape == (64, 96, 3)
    # the camera moved 8 px: frame 2 is frame 1 shifted left by 8 px
    assert np.abs(f2[:, :-8] - f1[:, 8:]).mean() < 0.01


def test_eval_writes_the_table_and_rejects_mismatches(tmp_path, capsys) -> None:  # noqa: ANN001
    clean = _clean(h=128, w=200)
    gt = _write_seq(tmp_path / "gt", clean)
    pred_frames = [c.copy() for c in clean]
    masks = []
    for p in pred_frames:
        p[10:20, 10:20] = 0.0
        m = np.zeros_like(p)
        m[8:22, 8:22] = 1.0
        masks.append(m)
    pred = _write_seq(tmp_path / "pred", pred_frames)
    mask = _write_seq(tmp_path / "mask", masks)
    out = tmp_path / "res"
    args = ["eval", pred, gt, "--mask", mask, "--out", str(out), "--metrics", "MaskedPSNR,PSNR,SSIM"]
    assert main(args + ["--row", "classical", "--setting", "mixed"]) == 0
    assert main(args + ["--row", "Input", "--setting", "scratch"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["settings"] == ["mixed", "scratch"] and set(data["results"]) == {"classical", "Input"}
    assert data["results"]["classical"]["mixed"]["MaskedPSNR"] < data["results"]["classical"]["mixed"]["PSNR"]
    assert (out / "results.csv").read_text().startswith("restorer,setting,MaskedPSNR,PSNR,SSIM")
    assert "| classical |" in (out / "results.md").read_text()
    assert read_frame(out / "results.png").pixels.shape[2] == 3
    # fewer predicted frames than ground-truth frames, other sizes, empty masks: one clear line, exit code 2
    short = _write_seq(tmp_path / "short", pred_frames[:2])
    assert main(["eval", short, gt, "--out", str(out)]) == 2
    assert "has 2 frames but" in capsys.readouterr().err
    small = _write_seq(tmp_path / "small", [p[:64] for p in pred_frames])
    assert main(["eval", small, gt, "--out", str(out)]) == 2
    assert "must be the same size" in capsys.readouterr().err
    empty = _write_seq(tmp_path / "empty", [np.zeros_like(m) for m in masks])
    assert main(["eval", pred, gt, "--mask", empty, "--out", str(out)]) == 2
    assert "every defect mask is empty" in capsys.readouterr().err


@pytest.mark.slow
def test_pairs_command_writes_masks_and_a_report(tmp_path) -> None:  # noqa: ANN001
    import cv2

    from frdm.engine.data import synthesis as S

    # an aperiodic texture: a periodic one would make any alignment ambiguous
    texture = cv2.GaussianBlur(np.random.default_rng(1).random((128, 192, 3)).astype(np.float32), (0, 0), 2.0)
    texture = 0.2 + 0.6 * (texture - texture.min()) / np.ptp(texture)
    clean = np.stack([texture, texture])
    deg, _ = S.dust(clean, np.random.default_rng(0), density=80)
    other = np.ascontiguousarray(clean[1][::-1, ::-1])
    d = _write_seq(tmp_path / "deg", list(deg))
    r = _write_seq(tmp_path / "res", [clean[0], other])
    assert main(["pairs", d, r, str(tmp_path / "m" / "mask.####.png"), "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert [e["accepted"] for e in report] == [True, False] and report[1]["reason"]
    assert (tmp_path / "m" / "mask.0001.png").exists() and not (tmp_path / "m" / "mask.0002.png").exists()


@pytest.mark.slow
def test_bench_quality_builds_a_setting_and_ranks_the_classical_engine_above_the_input(tmp_path, shared_data) -> None:  # noqa: ANN001
    out = tmp_path / "bench"
    args = [
        "bench-quality",
        "--clean",
        str(shared_data / "clean"),
        "--out",
        str(out),
        "--size",
        "192x108",
        "--frames",
        "4",
        "--settings",
        "mixed",
        "--metrics",
        "MaskedPSNR,PSNR,SSIM",
    ]
    assert main(args) == 0
    data = json.loads((out / "results.json").read_text())
    rows = data["results"]
    assert set(rows) == {"Input", "classical"} and data["settings"] == ["mixed"]
    # the restorer removes defects: the defect pixels get closer to the ground truth
    assert rows["classical"]["mixed"]["MaskedPSNR"] > rows["Input"]["mixed"]["MaskedPSNR"] + 3
    assert (out / "data" / "mixed" / "mask" / "frame.0004.png").exists()
    assert (out / "classical" / "mixed" / "frame.0004.png").exists()
    # the settings are seeded: a second build is bit-identical
    first = read_frame(out / "data" / "mixed" / "degraded" / "frame.0002.png").pixels
    assert main(args[:4] + [str(tmp_path / "again")] + args[5:]) == 0
    assert np.array_equal(
        first, read_frame(tmp_path / "again" / "data" / "mixed" / "degraded" / "frame.0002.png").pixels
    )
