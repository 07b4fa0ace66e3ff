"""Frame I/O: EXR channels, data windows, metadata, pixel types and compression round-trip exactly."""

from __future__ import annotations

import os

import numpy as np
import OpenImageIO as oiio
import pytest

from frdm.engine.errors import InputError
from frdm.engine.frames import (
    Frame,
    ImageSequenceSource,
    SequencePattern,
    decode_image,
    encode_image,
    format_frame_range,
    open_source,
    parse_frame_range,
    read_frame,
    write_frame,
)


def _write_raw_exr(path, pixels, channels, fmt="half", channelformats=None, window=(0, 0), display=None, **attrs):
    """Write an EXR with OpenImageIO directly (not through FRDM), as another application would."""
    h, w, c = pixels.shape
    spec = oiio.ImageSpec(w, h, c, fmt)
    if channelformats:
        spec.channelformats = tuple(oiio.TypeDesc(f) for f in channelformats)
    spec.channelnames = channels
    spec.x, spec.y = window
    if display:
        spec.full_x, spec.full_y, spec.full_width, spec.full_height = display
    for k, v in attrs.items():
        if isinstance(v, tuple) and isinstance(v[0], oiio.TypeDesc):
            spec.attribute(k.replace("__", ":"), v[0], v[1])
        else:
            spec.attribute(k.replace("__", ":"), v)
    out = oiio.ImageOutput.create(str(path))
    assert out.open(str(path), spec)
    assert out.write_image(pixels)
    out.close()


def _raw_pixels(path):
    """The file's pixels in their native type, read by OpenImageIO directly."""
    inp = oiio.ImageInput.open(str(path))
    spec = inp.spec()
    data = inp.read_image(0, 0, 0, spec.nchannels, spec.format)
    inp.close()
    return np.asarray(data)


def test_exr_half_rgba_extra_channels_window_and_metadata_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    pixels = (rng.normal(0.5, 1.0, (24, 40, 5))).astype(np.float16)  # values above 1 and below 0 too
    src = tmp_path / "in.exr"
    _write_raw_exr(
        src,
        pixels,
        ("R", "G", "B", "A", "mask"),
        "half",
        window=(7, 3),
        display=(0, 0, 64, 32),
        compression="piz",
        frdm__note="shot sh010",
        smpte__TimeCode=(oiio.TypeDesc("timecode"), (0x01020304, 0)),
        FramesPerSecond=(oiio.TypeDesc("rational2i"), (24, 1)),
    )
    frame = read_frame(src)
    assert frame.channels == ("R", "G", "B", "A", "mask")
    assert frame.formats == ("half",) * 5
    assert frame.data_window == (7, 3, 40, 24) and frame.display_window == (0, 0, 64, 32)
    assert frame.compression == "piz"
    dst = tmp_path / "out.exr"
    write_frame(dst, frame)
    back = read_frame(dst)
    assert np.array_equal(_raw_pixels(dst), _raw_pixels(src)), "half pixels must round-trip bit-exactly"
    assert back.channels == frame.channels and back.data_window == frame.data_window
    assert back.display_window == frame.display_window and back.compression == "piz"
    assert back.attributes["frdm:note"][1] == "shot sh010"
    assert tuple(back.attributes["smpte:TimeCode"][1]) == (0x01020304, 0)
    assert tuple(back.attributes["FramesPerSecond"][1]) == (24, 1)


def test_exr_float_and_mixed_channel_types_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.normal(0, 10, (8, 9, 4)).astype(np.float32)
    src = tmp_path / "mixed.exr"
    _write_raw_exr(src, pixels, ("R", "G", "B", "Z"), "half", channelformats=("half", "half", "half", "float"))
    frame = read_frame(src)
    assert frame.formats == ("half", "half", "half", "float")
    dst = tmp_path / "mixed_out.exr"
    write_frame(dst, frame, compression="zip")
    back = read_frame(dst)
    assert back.formats == frame.formats and back.compression == "zip"
    assert np.array_equal(back.pixels, frame.pixels)
    assert np.array_equal(back.pixels[..., 3], pixels[..., 3]), "a float channel keeps full precision"

    full = tmp_path / "float.exr"
    _write_raw_exr(full, pixels, ("R", "G", "B", "A"), "float")
    write_frame(tmp_path / "float_out.exr", read_frame(full))
    assert np.array_equal(_raw_pixels(tmp_path / "float_out.exr"), pixels)


@pytest.mark.parametrize(
    ("ext", "fmt", "bits", "scale"),
    [
        (".png", "uint8", 0, 255),
        (".png", "uint16", 0, 65535),
        (".tif", "uint16", 0, 65535),
        (".dpx", "uint16", 10, 1023),
    ],
)
def test_integer_formats_round_trip(tmp_path, ext, fmt, bits, scale):
    rng = np.random.default_rng(2)
    codes = rng.integers(0, scale + 1, (12, 16, 3))
    pixels = (codes / scale).astype(np.float32)
    frame = Frame(pixels, ("R", "G", "B"), (fmt,) * 3, (0, 0, 16, 12), (0, 0, 16, 12), {}, bits)
    path = tmp_path / f"img{ext}"
    write_frame(path, frame)
    back = read_frame(path)
    assert np.array_equal(np.round(back.pixels * scale), codes), f"{ext} {fmt} code values changed"
    assert back.formats[0] == fmt
    if bits:
        assert back.bits_per_sample == bits


def test_atomic_write_never_leaves_partial_files(tmp_path, monkeypatch):
    frame = Frame(np.zeros((4, 4, 3), np.float32), ("R", "G", "B"), ("half",) * 3, (0, 0, 4, 4), (0, 0, 4, 4))
    dst = tmp_path / "f.exr"
    write_frame(dst, frame)
    before = dst.read_bytes()

    def crash(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(InputError, match=r"f\.exr: cannot write here \(disk full\)"):  # one clear line
        write_frame(dst, frame.with_pixels(np.ones((4, 4, 3), np.float32)))
    assert dst.read_bytes() == before, "the old frame must survive a failed write"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.exr"], "no temporary file may be left behind"


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(InputError, match="missing.exr: file does not exist"):
        read_frame(tmp_path / "missing.exr")
    good = tmp_path / "good.exr"
    _write_raw_exr(good, np.ones((64, 64, 3), np.float16), ("R", "G", "B"), compression="none")
    truncated = tmp_path / "truncated.exr"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match=r"truncated\.exr: the file is truncated or corrupted"):
        read_frame(truncated)
    junk = tmp_path / "junk.exr"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match=r"junk\.exr: not a readable image"):
        read_frame(junk)
    nan = np.ones((5, 6, 3), np.float16)
    nan[2, 4, 1] = np.nan
    _write_raw_exr(tmp_path / "nan.exr", nan, ("R", "G", "B"), window=(10, 20))
    with pytest.raises(InputError, match=r"nan\.exr: 1 NaN/Inf values \(first at x=14, y=22, channel G\)"):
        read_frame(tmp_path / "nan.exr")


def test_sequence_patterns_and_gaps(tmp_path):
    frame = Frame(np.zeros((2, 2, 3), np.float32), ("R", "G", "B"), ("half",) * 3, (0, 0, 2, 2), (0, 0, 2, 2))
    for n in (1, 2, 3, 7, 10):
        write_frame(tmp_path / f"shot.{n:04d}.exr", frame)
    write_frame(tmp_path / "shot.99.exr", frame)  # too little padding: another sequence
    for pattern in ("shot.%04d.exr", "shot.####.exr", "shot.@@@@.exr", "shot.#.exr"):
        seq = SequencePattern.parse(str(tmp_path / pattern))
        assert seq.path(7) == str(tmp_path / "shot.0007.exr")
        assert seq.extension == ".exr"
        assert seq.existing() == [1, 2, 3, 7, 10]
    source = open_source(str(tmp_path / "shot.####.exr"))
    assert isinstance(source, ImageSequenceSource)
    with pytest.raises(InputError, match=r"frame\(s\) 4-6 missing"):
        source.check_frames(parse_frame_range("1-7"))
    with pytest.raises(InputError, match="no frames found"):
        open_source(str(tmp_path / "other.####.exr"))


def test_frame_ranges():
    assert parse_frame_range("1-5") == [1, 2, 3, 4, 5]
    assert parse_frame_range("1-9x4") == [1, 5, 9]
    assert parse_frame_range("1,3, 5-6,3") == [1, 3, 5, 6]
    assert parse_frame_range("-2--1") == [-2, -1]
    assert format_frame_range([1, 2, 3, 5, 7, 8]) == "1-3,5,7-8"
    for bad in ("", "a-b", "5-1", "1-4x0"):
        with pytest.raises(InputError):
            parse_frame_range(bad)


def test_movie_frames_through_pyav(shared_data):
    source = open_source(str(shared_data / "clean" / "bikes.mp4"))
    assert source.frame_numbers[0] == 1 and len(source.frame_numbers) == 250
    f5 = source.read(5)
    assert f5.pixels.shape == (272, 640, 3) and f5.formats == ("uint8",) * 3
    f3 = source.read(3)  # backwards: re-opens and decodes again
    again = source.read(5)
    assert np.array_equal(again.pixels, f5.pixels) and not np.array_equal(f3.pixels, f5.pixels)


def test_encode_decode_bytes(tmp_path):
    frame = Frame(
        np.random.default_rng(4).random((6, 7, 3), np.float32),
        ("R", "G", "B"),
        ("float",) * 3,
        (0, 0, 7, 6),
        (0, 0, 7, 6),
    )
    data = encode_image(frame)
    assert data[:4] == b"\x76\x2f\x31\x01"  # the OpenEXR magic number
    assert np.array_equal(decode_image(data).pixels, frame.pixels)
    with pytest.raises(InputError, match="frame 12 of job 3"):
        decode_image(data[:100], name="frame 12 of job 3")


def test_written_frames_get_the_users_permissions_not_0600(tmp_path):
    frame = Frame(np.zeros((4, 4, 3), np.float32), ("R", "G", "B"), ("half",) * 3, (0, 0, 4, 4), (0, 0, 4, 4))
    old = os.umask(0o022)
    try:
        write_frame(tmp_path / "f.exr", frame)
    finally:
        os.umask(old)
    assert (tmp_path / "f.exr").stat().st_mode & 0o777 == 0o644


def test_lossy_exr_compression_is_not_reapplied(tmp_path):
    """A DWAA source written back with compression 'same' must keep its pixels: zip (lossless) is used."""
    rng = np.random.default_rng(3)
    pixels = rng.random((64, 64, 3)).astype(np.float16)
    _write_raw_exr(tmp_path / "dwaa.exr", pixels, ("R", "G", "B"), compression="dwaa")
    frame = read_frame(tmp_path / "dwaa.exr")
    write_frame(tmp_path / "out.exr", frame)
    assert read_frame(tmp_path / "out.exr").compression == "zip"
    assert np.array_equal(_raw_pixels(tmp_path / "out.exr"), _raw_pixels(tmp_path / "dwaa.exr"))


def test_unassociated_alpha_png_round_trips(tmp_path):
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 256, (8, 8, 4)).astype(np.uint8)
    spec = oiio.ImageSpec(8, 8, 4, "uint8")
    out = oiio.ImageOutput.create(str(tmp_path / "a.png"))
    out.open(str(tmp_path / "a.png"), spec)
    out.write_image(codes)
    out.close()
    write_frame(tmp_path / "b.png", read_frame(tmp_path / "a.png"))
    assert np.array_equal(_raw_pixels(tmp_path / "b.png"), _raw_pixels(tmp_path / "a.png"))


def test_multi_part_exr_is_refused_by_name(tmp_path):
    path = str(tmp_path / "multi.exr")
    specs = [oiio.ImageSpec(4, 4, 3, "half"), oiio.ImageSpec(4, 4, 1, "half")]
    out = oiio.ImageOutput.create(path)
    assert out.open(path, specs)
    out.write_image(np.zeros((4, 4, 3), np.float16))
    out.open(path, specs[1], "AppendSubimage")
    out.write_image(np.zeros((4, 4, 1), np.float16))
    out.close()
    with pytest.raises(InputError, match=r"multi\.exr: a multi-part EXR"):
        read_frame(path)


def test_an_all_half_exr_is_held_as_its_halves_and_decoded_exactly_when_asked(tmp_path):
    """The file path never converts an all-half frame to float32: it holds the file's halves (half the
    memory), ``pixels`` decodes them exactly on first use, and from then on the float32 pixels are the truth
    (a change to them is what is written, not the halves read)."""
    rng = np.random.default_rng(7)
    halves = rng.normal(0.4, 2.0, (20, 30, 4)).astype(np.float16)
    halves[0, :4, 0] = np.float16([0.0, -0.0, 6e-8, 65504.0])  # zero's sign, a subnormal, the largest half
    _write_raw_exr(tmp_path / "in.exr", halves, ("R", "G", "B", "A"), compression="zip")
    frame = read_frame(tmp_path / "in.exr")
    assert frame.half is not None and frame.samples.dtype == np.float16
    assert frame.samples.nbytes == halves.nbytes and (frame.height, frame.width) == (20, 30)
    write_frame(tmp_path / "same.exr", frame)
    assert frame.half is not None, "writing a frame of halves does not decode it"
    assert np.array_equal(_raw_pixels(tmp_path / "same.exr").view(np.uint16), halves.view(np.uint16))
    as_float = oiio.ImageInput.open(str(tmp_path / "in.exr")).read_image("float")
    assert np.array_equal(frame.pixels.view(np.uint32), np.asarray(as_float, np.float32).view(np.uint32))
    assert frame.half is None and frame.samples.dtype == np.float32
    frame.pixels[3, 5, 1] = 0.25
    write_frame(tmp_path / "changed.exr", frame)
    expected = halves.copy()
    expected[3, 5, 1] = 0.25
    assert np.array_equal(_raw_pixels(tmp_path / "changed.exr").view(np.uint16), expected.view(np.uint16))
    # Mixed types (a float channel) are read as float32 as before; a half frame is written as float on request.
    mixed = np.ones((4, 5, 2), np.float32)
    _write_raw_exr(tmp_path / "mixed.exr", mixed, ("Y", "depth"), channelformats=("half", "float"))
    assert read_frame(tmp_path / "mixed.exr").half is None
    write_frame(tmp_path / "float.exr", read_frame(tmp_path / "in.exr"), pixel_type="float")
    assert np.array_equal(_raw_pixels(tmp_path / "float.exr"), halves.astype(np.float32))


def test_a_nan_in_half_data_is_found_by_its_bits(tmp_path):
    halves = np.ones((6, 7, 3), np.float16)
    halves[4, 1, 2] = np.inf
    _write_raw_exr(tmp_path / "inf.exr", halves, ("R", "G", "B"))
    with pytest.raises(InputError, match=r"inf\.exr: 1 NaN/Inf values \(first at x=1, y=4, channel B\)"):
        read_frame(tmp_path / "inf.exr")
    assert read_frame(tmp_path / "inf.exr", check_finite=False).half is not None


def test_zip_is_written_at_the_fast_level_with_the_same_pixels(tmp_path):
    """'zip' (asked for or the input's own) is written at ``EXR_ZIP_LEVEL``: the file says zip, holds the same
    pixels, and is the file OpenImageIO writes at that level (not at its default level)."""
    from frdm.engine.frames import EXR_ZIP_LEVEL

    rng = np.random.default_rng(8)
    halves = (rng.normal(0.3, 0.1, (96, 128, 3)) + np.linspace(0, 1, 128)[None, :, None]).astype(np.float16)
    _write_raw_exr(tmp_path / "in.exr", halves, ("R", "G", "B"), compression="zip")
    write_frame(tmp_path / "out.exr", read_frame(tmp_path / "in.exr"))
    assert read_frame(tmp_path / "out.exr").compression == "zip"
    assert np.array_equal(_raw_pixels(tmp_path / "out.exr").view(np.uint16), halves.view(np.uint16))
    for level in (EXR_ZIP_LEVEL, 9):
        _write_raw_exr(tmp_path / f"zip{level}.exr", halves, ("R", "G", "B"), compression=f"zip:{level}")
    size = os.path.getsize(tmp_path / "out.exr")
    assert size == os.path.getsize(tmp_path / f"zip{EXR_ZIP_LEVEL}.exr") != os.path.getsize(tmp_path / "zip9.exr")
    write_frame(tmp_path / "nine.exr", read_frame(tmp_path / "in.exr"), compression="zip:9")
    assert os.path.getsize(tmp_path / "nine.exr") == os.path.getsize(tmp_path / "zip9.exr")


def test_halves_are_kept_only_for_files_that_store_half():
    """Blended pixels are rounded to half only where the file stores half: for a format the writer turns into
    its own integer type (DPX, PNG, or one the engine has no rule for), rounding to half first would put a
    second rounding in front of the writer's."""
    from frdm.engine.frames import halves_written

    assert halves_written(".exr", None) and halves_written(".EXR", "same") and halves_written(".tif", "half")
    assert not halves_written(".exr", "float")
    for ext in (".dpx", ".png", ".cin", ".jpg"):
        assert not halves_written(ext, None), ext


def test_two_threads_asking_a_half_frame_for_its_pixels_get_one_decode_and_the_same_array(monkeypatch):
    """``Frame.pixels`` decodes held halves on first use, under a lock: two threads asking at once must not
    each decode (what one wrote into its own copy would be lost), they share the one float32 array."""
    import threading
    import time

    from frdm.engine import frames as frames_module
    from frdm.engine.halves import half_to_float32

    calls = []

    def slow_decode(half):  # wide enough a window that both threads are inside it without the lock
        calls.append(threading.get_ident())
        time.sleep(0.2)
        return half_to_float32(half)

    monkeypatch.setattr(frames_module, "half_to_float32", slow_decode)
    win = (0, 0, 4, 2)
    frame = frames_module.Frame(np.full((2, 4, 3), 0.25, np.float16), ("R", "G", "B"), ("half",) * 3, win, win)
    start = threading.Barrier(2)
    got: list[np.ndarray] = []

    def ask() -> None:
        start.wait()
        got.append(frame.pixels)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and len(got) == 2
    assert got[0] is got[1] and got[0].dtype == np.float32 and frame.half is None
    np.testing.assert_array_equal(got[0], 0.25)
