"""`frdm qc`: the figures of made-up (source, restored) pairs whose answer is known, the page and JSON, errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from frdm.cli import main
from frdm.engine.color import from_model
from frdm.engine.errors import InputError
from frdm.engine.frames import Frame, write_frame
from frdm.engine.qc import GRAIN_LOW, STEP_VISIBLE, analyse_frame, made_step, motion_map, summarise

H, W = 160, 240


def _grainy(rng: np.random.Generator, level: float = 0.5, sigma: float = 8.0) -> np.ndarray:
    """A flat grey with film-like grain (correlated over ~1 px) of ``sigma`` 8-bit units, (H, W, 3)."""
    noise = cv2.GaussianBlur(rng.standard_normal((H, W)).astype(np.float32), (0, 0), 0.7)
    grey = level + noise / noise.std() * sigma / 255.0
    return np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)


def _disc(cx: int, cy: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_flat_fill_shows_its_step_and_no_grain_while_a_grainy_fill_passes():
    rng = np.random.default_rng(1)
    src = _grainy(rng)
    out = src.copy()
    flat, grainy = _disc(60, 80, 14), _disc(170, 80, 14)
    out[flat] = 0.5 + 10.0 / 255.0  # a smooth disc 10/255 brighter than the grey it sits on
    out[grainy] = _grainy(rng)[grainy]  # other grain of the same strength: what a good temporal fill gives
    src[20:40, 110:130] += 60.0 / 255.0  # a bright object the restorer touched by 1.5/255 only
    out[20:40, 110:130] = src[20:40, 110:130] + 1.5 / 255.0
    qc = analyse_frame(src, out, 7)
    assert len(qc.regions) == 3
    r_object = next(r for r in qc.regions if r.y < 50)
    r_flat, r_grainy = sorted((r for r in qc.regions if r.y >= 50), key=lambda r: r.x)
    assert r_object.step > 40 and made_step(r_object) == pytest.approx(1.5, abs=0.1)
    assert r_flat.change == pytest.approx(10.0, abs=1.0) and made_step(r_flat) > 8.5
    # Pixels whose grain happens to lie within 0.5/255 of the new value are not changes, hence the tolerance.
    assert flat.sum() * 0.9 <= r_flat.area <= flat.sum()
    assert (r_flat.x, r_flat.y, r_flat.w, r_flat.h) == (46, 66, 29, 29)
    assert r_flat.step == pytest.approx(10.0, abs=1.5)
    assert r_flat.grain is not None and r_flat.grain < 0.05
    assert abs(r_grainy.step) < 2.0 and 0.8 < r_grainy.grain < 1.25
    assert r_flat.score > 3 * r_grainy.score, "the visible disc must rank as the more suspicious"
    assert r_flat.score > 3 * r_object.score, "an object's own contrast is not the restorer's doing"
    assert qc.changed_share == pytest.approx((r_flat.area + r_grainy.area + r_object.area) / (H * W))
    summary = summarise([qc])
    assert summary["share_grain_below_0.45"] == pytest.approx(1 / 3)
    assert summary["worst_steps"][0]["region"] == r_flat.id


def test_unchanged_frames_report_zero():
    src = _grainy(np.random.default_rng(2))
    qc = analyse_frame(src, src.copy(), 3)
    assert qc.changed_pixels == 0 and qc.changed_share == 0.0 and qc.regions == [] and qc.max_change == 0.0
    below = src + 0.4 / 255.0  # under the 0.5/255 threshold: not a change (a colour round trip's noise)
    assert analyse_frame(src, below, 3).changed_pixels == 0
    s = summarise([qc, qc])
    assert s["mean_changed_share"] == 0.0 and s["regions"] == 0 and s["share_grain_below_0.45"] is None


def test_regions_on_moving_content_are_flagged_and_weave_is_not_motion():
    rng = np.random.default_rng(3)
    base = cv2.GaussianBlur(rng.random((H, W)).astype(np.float32), (0, 0), 3.0) * 0.5 + 0.25
    frames = []
    for t in range(3):
        img = np.roll(base, (t, 2 * t), axis=(0, 1)).copy()  # the whole picture weaves by (2, 1) px/frame
        cv2.circle(img, (60 + 8 * t, 80), 16, 0.9, -1)  # an actor crossing at 8 px/frame
        cv2.circle(img, (60 + 8 * t + 5, 75), 4, 0.6, -1)  # with a detail the flow can follow
        frames.append(np.repeat(img[..., None], 3, axis=-1))
    src = frames[1]
    motion = motion_map(src, [frames[0], frames[2]])
    out = src.copy()
    out[_disc(69, 80, 4)] = 0.5  # a "fill" on the actor
    out[_disc(180, 40, 4)] = 0.1  # and one on the still background
    qc = analyse_frame(src, out, 2, motion=motion)
    on_actor, on_background = sorted(qc.regions, key=lambda r: r.x)
    assert on_actor.moving and on_actor.motion > 4.0
    assert not on_background.moving and on_background.motion < 1.0
    assert summarise([qc])["share_moving"] == 0.5


def _write_seq(folder, name, frames, linear=False):
    for n, rgb in enumerate(frames, start=1):
        px = from_model(rgb, "linear") if linear else rgb
        fmt = ("float",) * 3 if linear else ("uint16",) * 3
        ext = "exr" if linear else "png"
        write_frame(folder / f"{name}.{n:04d}.{ext}", Frame(px, ("R", "G", "B"), fmt, (0, 0, W, H), (0, 0, W, H)))


def test_qc_command_writes_page_json_and_crops_in_display_space(tmp_path, capsys):
    rng = np.random.default_rng(4)
    src = [_grainy(rng, 0.3 + 0.05 * t) for t in range(4)]
    out = [f.copy() for f in src]
    out[1][_disc(60, 80, 12)] = 0.35 + 6.0 / 255.0  # frame 2: a smooth fill 6/255 above its ring (display)
    out[2][_disc(150, 50, 20)] = out[2][_disc(150, 50, 20)] + 20.0 / 255.0  # frame 3: a big bright patch
    # Scene-linear EXR in and out: the figures must be those of the display-referred picture.
    _write_seq(tmp_path, "src", src, linear=True)
    _write_seq(tmp_path, "out", out, linear=True)
    qc_dir = tmp_path / "qc"
    argv = ["qc", str(tmp_path / "src.####.exr"), str(tmp_path / "out.####.exr"), "--dir", str(qc_dir), "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    record = json.loads((qc_dir / "qc.json").read_text())
    assert printed == record["summary"] and record["colorspace"] == "linear"
    frames = {f["frame"]: f for f in record["frames"]}
    assert sorted(frames) == [1, 2, 3, 4]
    assert frames[1]["changed_share"] == 0.0 and frames[4]["regions"] == []
    (fill,) = frames[2]["regions"]
    assert fill["step"] == pytest.approx(6.0, abs=1.5) and fill["grain"] < 0.1
    (patch,) = frames[3]["regions"]
    assert patch["step"] == pytest.approx(20.0, abs=2.0) and patch["area"] == _disc(150, 50, 20).sum()
    page = (qc_dir / "index.html").read_text()
    names = {c["file"] for c in record["crops"]}
    assert names == {"crop_f00002_r0001.png", "crop_f00003_r0001.png"}
    for c in record["crops"]:
        assert c["file"] in page and (qc_dir / c["file"]).is_file()
        img = cv2.imread(str(qc_dir / c["file"]))
        x, y, w, h = c["window"]
        assert img.shape[:2] == (h, 3 * w + 8), "three tiles at 100%, 4 px apart"
    largest = next(c for c in record["crops"] if c["frame"] == 3)
    assert "largest" in largest["why"]
    assert "plot.png" in page and cv2.imread(str(qc_dir / "plot.png")) is not None
    # A second run over fewer frames drops the crops the first run wrote and this one does not show.
    assert main(argv[:-1] + ["--frames", "1-2"]) == 0
    assert not (qc_dir / "crop_f00003_r0001.png").exists() and (qc_dir / "crop_f00002_r0001.png").exists()


def test_restore_with_qc_checks_what_it_wrote(tmp_path):
    rng = np.random.default_rng(5)
    frames = [_grainy(rng, 0.4, sigma=1.0) for _ in range(5)]
    for t, f in enumerate(frames):
        f[60:64, 30 + 40 * t : 34 + 40 * t] = 1.0  # a speck somewhere else on each frame: dust
    _write_seq(tmp_path, "sh", frames)
    qc_dir = tmp_path / "qc"
    argv = ["restore", str(tmp_path / "sh.####.png"), str(tmp_path / "out.####.png"), "--quiet", "--qc", str(qc_dir)]
    assert main(argv) == 0
    record = json.loads((qc_dir / "qc.json").read_text())
    assert [f["frame"] for f in record["frames"]] == [1, 2, 3, 4, 5]
    assert record["colorspace"] == "srgb" and record["summary"]["regions"] >= 1
    assert record["summary"]["share_moving"] == 0.0, "dust on a still, flat picture is not moving content"
    changed = [f for f in record["frames"] if f["regions"]]
    assert changed and all(
        any(r["x"] <= 33 + 40 * (f["frame"] - 1) < r["x"] + r["w"] + 3 for r in f["regions"]) for f in changed
    ), "changes where the specks were"


def test_a_speck_on_a_thin_line_filled_right_is_not_a_made_step_but_a_wrong_fill_is():
    """Train Robbery 38: a white speck on a thin bright line (a groove's highlight), filled with the line: the
    fill is brighter than most of the picture 2-5 px around it, so its step against the ring is the line's own
    contrast. The ring's sides (the line runs through two of them) span the fill: no made step. The same speck
    filled darker than anything around it (Train Robbery 2: a bright stroke replaced by a dark smudge) lies below
    every side: a made step. (A fill at the ground's level, the line cut, lies between the sides: this figure
    cannot tell it from a speck on the ground; the crops show it.)"""
    rng = np.random.default_rng(10)
    src = _grainy(rng, 0.3, sigma=2.0)
    src[:, 59:62] += 0.25  # thin bright lines at x=60 and x=180
    src[:, 179:182] += 0.25
    truth = src.copy()
    out = src.copy()
    matte = np.zeros((H, W), np.float32)
    for x in (60, 180):
        defect = _disc(x, 80, 2)
        src[defect] = 0.95  # the speck
        matte[defect] = 1.0
    right, cut = _disc(60, 80, 4), _disc(180, 80, 4)
    out[right] = truth[right]
    out[cut] = np.where(_disc(180, 80, 2)[..., None], 0.15, truth)[cut]
    qc = analyse_frame(src, out, 1, matte=matte)
    good, wrong = sorted(qc.regions, key=lambda r: r.x)
    # The sides' means carry the grain's luck and a little of the ground beside the line: a few levels, not the
    # line's contrast.
    assert abs(good.step) > 25.0 and made_step(good) < 0.3 * abs(good.step), (good.step, good.outside)
    assert made_step(wrong) > 10.0 and made_step(wrong) > 2 * made_step(good), (wrong.step, wrong.outside)


def test_qc_reads_the_matte_the_restore_wrote_and_a_matte_sequence(tmp_path, capsys):
    """`frdm restore` into EXR writes the matte as a channel: `--qc` judges every region on it. `frdm qc --matte`
    takes the mattes of a PNG restore as a sequence of their own; a matte of another size names its file."""
    rng = np.random.default_rng(9)
    frames = [_grainy(rng, 0.4, sigma=1.0) for _ in range(5)]
    for t, f in enumerate(frames):
        f[60:64, 30 + 40 * t : 34 + 40 * t] = 1.0  # dust
    _write_seq(tmp_path, "sh", frames, linear=True)
    qc_dir = tmp_path / "qc"
    argv = ["restore", str(tmp_path / "sh.####.exr"), str(tmp_path / "out.####.exr"), "--quiet", "--qc", str(qc_dir)]
    assert main(argv) == 0
    record = json.loads((qc_dir / "qc.json").read_text())
    regions = [r for f in record["frames"] for r in f["regions"]]
    assert regions and all(r["judged"] == "matte" and r["filled"] > 0 for r in regions)
    assert record["summary"]["regions_judged_on_matte"] == len(regions)
    # The same restore's mattes as a separate sequence (what a PNG restore can keep beside its frames).
    from frdm.engine.frames import read_frame

    for n in range(1, 6):
        exr = read_frame(tmp_path / f"out.{n:04d}.exr")
        matte = exr.pixels[..., exr.channels.index("frdm.matte")]
        write_frame(
            tmp_path / f"m.{n:04d}.png", Frame(matte[..., None], ("Y",), ("uint8",), (0, 0, W, H), (0, 0, W, H))
        )
    argv = ["qc", str(tmp_path / "sh.####.exr"), str(tmp_path / "out.####.exr"), "--dir", str(tmp_path / "qc2")]
    assert main(argv + ["--matte", str(tmp_path / "m.####.png")]) == 0
    again = json.loads((tmp_path / "qc2" / "qc.json").read_text())
    assert [r for f in again["frames"] for r in f["regions"]] == regions
    small = Frame(np.zeros((80, W, 1), np.float32), ("Y",), ("uint8",), (0, 0, W, 80), (0, 0, W, 80))
    write_frame(tmp_path / "m.0003.png", small)
    capsys.readouterr()
    assert main(argv + ["--matte", str(tmp_path / "m.####.png")]) == 2
    assert "m.0003.png" in capsys.readouterr().err


def test_bad_input_errors_name_the_file_and_write_nothing(tmp_path, capsys):
    rng = np.random.default_rng(6)
    src = [_grainy(rng) for _ in range(3)]
    _write_seq(tmp_path, "src", src)
    _write_seq(tmp_path, "out", src[:2])
    qc_dir = tmp_path / "qc"
    # A restored frame with no source frame.
    _write_seq(tmp_path, "long", src + [src[0]])
    assert main(["qc", str(tmp_path / "src.####.png"), str(tmp_path / "long.####.png"), "--dir", str(qc_dir)]) == 2
    assert "src.####.png" in capsys.readouterr().err
    # A restored frame of another size.
    small = Frame(src[0][:80], ("R", "G", "B"), ("uint16",) * 3, (0, 0, W, 80), (0, 0, W, 80))
    write_frame(tmp_path / "out.0002.png", small)
    assert main(["qc", str(tmp_path / "src.####.png"), str(tmp_path / "out.####.png"), "--dir", str(qc_dir)]) == 2
    err = capsys.readouterr().err
    assert "out.0002.png" in err and "src.0002.png" in err
    # A file that is not an image.
    (tmp_path / "out.0002.png").write_bytes(b"not a png")
    assert main(["qc", str(tmp_path / "src.####.png"), str(tmp_path / "out.####.png"), "--dir", str(qc_dir)]) == 2
    assert "out.0002.png" in capsys.readouterr().err
    # Nothing restored there at all.
    assert main(["qc", str(tmp_path / "src.####.png"), str(tmp_path / "none.####.png"), "--dir", str(qc_dir)]) == 2
    assert "none.####.png" in capsys.readouterr().err
    assert not qc_dir.exists()


def test_fills_are_judged_on_the_matte_whatever_the_margin_around_them():
    """A fill is judged on the restorer's matte (the filled defect) against the picture beside it, not on every
    changed pixel: around a defect the fill also swaps the frame's grain for a neighbour's in a margin, and on
    changed pixels that margin outweighs the defect. A speck filled smooth and 10/255 too bright inside a wide
    grainy margin then passed (grain above 0.45, made step under 2); on the matte it shows both, while a good
    fill (the same picture with other grain) scores ~1 and no step."""
    rng = np.random.default_rng(8)
    src = _grainy(rng)
    out = src.copy()
    other = _grainy(rng)  # a good fill: the same picture with other grain
    matte = np.zeros((H, W), np.float32)
    for x, smooth in ((60, False), (170, True)):
        defect = _disc(x, 80, 5)
        src[defect] += 40.0 / 255.0  # a bright speck
        matte[defect] = 1.0
        margin = _disc(x, 80, 12)
        out[margin] = other[margin]  # the fill's margin: other grain
        out[defect] = 0.5 + 10.0 / 255.0 if smooth else other[defect]
    plain, judged = analyse_frame(src, out, 1), analyse_frame(src, out, 1, matte=matte)
    assert [r.judged for r in plain.regions] == ["changed"] * 2 and [r.judged for r in judged.regions] == ["matte"] * 2
    assert [r.area for r in plain.regions] == [r.area for r in judged.regions], "the same regions, judged otherwise"
    good, flat = sorted(judged.regions, key=lambda r: r.x)
    good_plain, flat_plain = sorted(plain.regions, key=lambda r: r.x)
    assert flat_plain.grain > 0.45 and made_step(flat_plain) < STEP_VISIBLE, "the margin hid the smooth disc"
    assert good.filled == flat.filled == int(_disc(60, 80, 5).sum())
    assert 0.7 < good.grain < 1.4 and abs(good.step) < 2.5, (good.grain, good.step)
    assert flat.grain < GRAIN_LOW and flat.step == pytest.approx(10.0, abs=4.0), (flat.grain, flat.step)
    assert good.step_before == pytest.approx(40.0, abs=4.0), "the source's speck against the same ring"
    assert flat.score > 3 * good.score and flat.score > 3 * flat_plain.score
    with pytest.raises(InputError, match="matte is 10x10"):
        analyse_frame(src, out, 1, matte=np.zeros((10, 10), np.float32))


def test_the_matte_ring_is_whole_whatever_the_changed_ring():
    """Judged on the matte, a region's figures come from its matte ring (``matte_ring`` px, ``ring_gap`` px
    outside the matte) alone: the crop each region is measured in must hold it, also where the matte ring is
    wider than the ring of changed pixels (``ring``). A narrow ``ring`` cut the matte ring at the crop's edge."""
    from frdm.engine.qc import QCSettings

    rng = np.random.default_rng(12)
    src = _grainy(rng)
    src[:, 120:] += 30.0 / 255.0  # an edge beside the speck: the sides of its ring differ
    out = src.copy()
    matte = np.zeros((H, W), np.float32)
    defect = _disc(116, 80, 3)
    src[defect] += 60.0 / 255.0
    matte[defect] = 1.0
    out[defect] = 0.2  # a dark fill
    figures = []
    for ring in (1, 12):
        (region,) = analyse_frame(src, out, 1, matte=matte, settings=QCSettings(ring=ring, matte_ring=8)).regions
        assert region.judged == "matte"
        figures.append((region.step, region.step_before, region.grain, region.outside))
    assert figures[0] == figures[1]


def test_the_real_film_benchmark_writes_a_zero_matte_for_a_frame_with_none(tmp_path):
    """``RestoredFrame.matte`` None means no defect found: benchmarks/qc_real_film.py's MatteWriter raised
    on it (np.clip of None) and left the frame without a matte file; it writes an all-zero matte of the
    clip's size, and the restorer's own matte as it came."""
    import importlib.util
    from pathlib import Path

    from frdm.engine.restorer import Clip, RestoredFrame

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "qc_real_film.py"
    spec = importlib.util.spec_from_file_location("qc_real_film", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    found = np.zeros((12, 20), np.float32)
    found[3:5, 7:9] = 1.0

    class Stub:
        engine_version = "stub-1"

        def context(self, params):
            return (0, 0)

        def restore(self, clip, params, progress=None):
            yield RestoredFrame.unchanged(1)  # nothing found: no matte
            yield RestoredFrame(2, None, found)

    clip = Clip(np.zeros((2, 12, 20, 3), np.float32), [1, 2], [1, 2])
    writer = bench.MatteWriter(Stub(), str(tmp_path / "matte.####.png"))
    assert [f.frame_number for f in writer.restore(clip, {})] == [1, 2]
    none = cv2.imread(str(tmp_path / "matte.0001.png"), cv2.IMREAD_UNCHANGED)
    assert none is not None and none.shape == (12, 20) and not none.any()
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "matte.0002.png"), cv2.IMREAD_UNCHANGED), found * 255)
