"""`frdm restore` end to end: progress, resume, dry run, contact sheet, and clear errors on bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from frdm.cli import main
from frdm.engine.frames import Frame, read_attributes, read_frame, write_frame


def _shot(folder, count=6, size=(40, 56), start=1, fmt="half"):
    rng = np.random.default_rng(9)
    h, w = size
    base = rng.random((h, w, 1)).astype(np.float32) * 0.3 + 0.3
    for n in range(start, start + count):
        px = np.repeat(base, 3, axis=2) + rng.normal(0, 0.002, (h, w, 3)).astype(np.float32)
        px[5 + n : 8 + n, 10:13] = 1.0  # a bright speck
        write_frame(folder / f"sh.{n:04d}.exr", Frame(px, ("R", "G", "B"), (fmt,) * 3, (0, 0, w, h), (0, 0, w, h)))


def _outputs(folder):
    return sorted(p.name for p in folder.glob("out.*"))


def test_restore_resume_and_parameter_change(tmp_path, capsys):
    _shot(tmp_path)
    src, out = str(tmp_path / "sh.####.exr"), str(tmp_path / "out.####.exr")
    assert main(["restore", src, out, "--quiet", "--json"]) == 0
    assert _outputs(tmp_path) == [f"out.{n:04d}.exr" for n in range(1, 7)]
    first = {n: os.stat(tmp_path / f"out.{n:04d}.exr").st_mtime_ns for n in range(1, 7)}
    attrs = read_attributes(tmp_path / "out.0003.exr")
    from frdm.engine.classical import ClassicalRestorer

    assert attrs["frdm:engine_version"] == ClassicalRestorer.engine_version and len(attrs["frdm:params_hash"]) == 32
    capsys.readouterr()
    assert main(["restore", src, out, "--quiet", "--json"]) == 0
    report = capsys.readouterr().out
    assert '"written": []' in report, "a re-run with the same parameters must skip every frame"
    assert {n: os.stat(tmp_path / f"out.{n:04d}.exr").st_mtime_ns for n in range(1, 7)} == first
    assert main(["restore", src, out, "--quiet", "--json", "--frames", "2-3", "--feather", "4"]) == 0
    report = capsys.readouterr().out
    assert '"written": [\n    2,\n    3\n  ]' in report


def test_dry_run_writes_nothing_and_tells_the_plan(tmp_path, capsys):
    _shot(tmp_path)
    assert (
        main(["restore", str(tmp_path / "sh.####.exr"), str(tmp_path / "out.####.exr"), "--dry-run", "--frames", "2-4"])
        == 0
    )
    text = capsys.readouterr().out
    assert "restore  2-4" in text and "context 2 before / 2 after" in text
    assert _outputs(tmp_path) == []


def test_contact_sheet_and_preset(tmp_path):
    _shot(tmp_path)
    preset = tmp_path / "shot.json"
    preset.write_text('{"frdm_preset": 1, "params": {"feather": 0.5}}')
    sheet = tmp_path / "sheet.png"
    assert (
        main(
            [
                "restore",
                str(tmp_path / "sh.####.exr"),
                str(tmp_path / "out.####.exr"),
                "--quiet",
                "--preset",
                str(preset),
                "--contact-sheet",
                str(sheet),
            ]
        )
        == 0
    )
    img = read_frame(sheet)
    assert img.width == 3 * 56 and img.height == 4 * 40, "4 rows of before | after | matte"
    assert '"feather":0.5' in read_attributes(tmp_path / "out.0001.exr")["frdm:params"]


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("gap", ["--frames", "1-6"], r"frame\(s\) 4 missing"),
        ("none", ["--frames", "3-2"], "ends before it starts"),
        ("none", ["--frames", ""], "empty frame range"),
        ("truncated", [], r"sh\.0004\.exr: the file is truncated or corrupted"),
        ("nan", [], r"sh\.0002\.exr: 1 NaN/Inf values"),
        ("mask_size", ["--mask", "MASK"], r"mask\.0001\.exr: mask for frame 1 is 20x10 but the source is 56x40"),
        ("same", ["OUT=SRC"], "OUT would overwrite the source frame"),
        ("none", ["--feather", "-3"], "parameter 'feather' must be >= 0.0"),
        # The classical engine's flow (OpenCV DIS) raised a raw cv2.error on frames under 12x12.
        ("tiny", [], "frame 1: 11x11 pixels is too small for the classical engine, which needs at least 16 pixels"),
    ],
)
def test_bad_input_is_named_and_nothing_partial_is_written(tmp_path, capsys, setup, args, message):
    _shot(tmp_path)
    src, out = str(tmp_path / "sh.####.exr"), str(tmp_path / "out.####.exr")
    if setup == "gap":
        (tmp_path / "sh.0004.exr").unlink()
    elif setup == "tiny":
        _shot(tmp_path, size=(11, 11))
    elif setup == "truncated":
        data = (tmp_path / "sh.0004.exr").read_bytes()
        (tmp_path / "sh.0004.exr").write_bytes(data[: len(data) // 2])
    elif setup == "nan":
        f = read_frame(tmp_path / "sh.0002.exr")
        f.pixels[3, 3, 0] = np.inf
        write_frame(tmp_path / "sh.0002.exr", f)
    elif setup == "mask_size":
        for n in range(1, 7):
            write_frame(
                tmp_path / f"mask.{n:04d}.exr",
                Frame(np.ones((10, 20, 1), np.float32), ("A",), ("half",), (0, 0, 20, 10), (0, 0, 20, 10)),
            )
        args = ["--mask", str(tmp_path / "mask.####.exr")]
    if args == ["OUT=SRC"]:
        out, args = src, []
    code = main(["restore", src, out, "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, "one clear line, no traceback"
    assert __import__("re").search(message, err), err
    for p in tmp_path.iterdir():  # no temporary or half-written file anywhere
        assert ".tmp" not in p.name
    for p in tmp_path.glob("out.*.exr"):
        read_frame(p)  # any frame that was written is complete


def test_console_script_runs_with_a_progress_bar(tmp_path):
    _shot(tmp_path, count=3)
    proc = subprocess.run(
        [sys.executable, "-m", "frdm.cli", "restore", str(tmp_path / "sh.####.exr"), str(tmp_path / "o.%04d.exr")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3/3" in proc.stderr and "restored 3 frame(s)" in proc.stderr
    assert sorted(p.name for p in tmp_path.glob("o.*")) == ["o.0001.exr", "o.0002.exr", "o.0003.exr"]


def test_resume_does_not_skip_frames_made_from_another_source(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _shot(a, count=3)
    _shot(b, count=3)
    for n in (1, 2, 3):  # shot B is a brighter grade of A
        f = read_frame(b / f"sh.{n:04d}.exr")
        f.pixels[...] += 0.05
        write_frame(b / f"sh.{n:04d}.exr", f)
    out = str(tmp_path / "out.####.exr")
    assert main(["restore", str(a / "sh.####.exr"), out, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["restore", str(b / "sh.####.exr"), out, "--quiet", "--json"]) == 0
    assert '"skipped": []' in capsys.readouterr().out, "frames from another source must be re-rendered"
    got, want = read_frame(tmp_path / "out.0002.exr").pixels[..., :3], read_frame(b / "sh.0002.exr").pixels
    assert np.median(np.abs(got - want)) == 0.0


def test_dpx_output_works_without_the_matte_channel_and_jpeg_is_refused(tmp_path, capsys):
    _shot(tmp_path, count=3)
    assert main(["restore", str(tmp_path / "sh.####.exr"), str(tmp_path / "o.####.dpx"), "--quiet"]) == 0
    out = read_frame(tmp_path / "o.0002.dpx")
    assert out.channels == ("R", "G", "B") and out.formats[0] == "uint16"
    assert main(["restore", str(tmp_path / "sh.####.exr"), str(tmp_path / "o.####.jpg"), "--quiet"]) == 2
    assert "JPEG is lossy" in capsys.readouterr().err


def test_restore_sets_cv2s_pool_but_keeps_glibcs_malloc(tmp_path, monkeypatch):
    """``frdm restore`` tunes its process in the one place (``frdm.commands.tuning.tune_process``): cv2's pool
    beside the engine's threads, but not the server's malloc settings, which held ~420 MiB more at the peak of
    a 24-frame 2K restore (over the 1.5 GB it may hold)."""
    from frdm.commands import tuning
    from frdm.engine.classical import restorer

    malloc, pool = [], []
    monkeypatch.setattr(tuning, "tune_malloc", lambda: malloc.append(1) or True)
    monkeypatch.setattr(restorer, "tune_cv2_threads", lambda: pool.append(1) or 1)
    _shot(tmp_path, count=2)
    assert main(["restore", str(tmp_path / "sh.####.exr"), str(tmp_path / "out.####.exr"), "--dry-run"]) == 0
    assert pool == [1] and malloc == []
